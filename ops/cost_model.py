"""Cost per 1M requests and per 1M output tokens from measured throughput, beside the reference design's $165/1M.

Throughput per replica comes from a loadtest ``results.json`` (its ``throughput_rps`` and
``output_tokens_per_s``; a closed-loop run at the concurrency you mean to operate at) or from
``--requests-per-s`` and ``--tokens-per-s`` (which override the file's). Then, per 1M requests:

    compute  = price_per_hour / (requests_per_s * utilization * 3600) * 1e6
    storage  = stored_kb_per_request * 1e6 / 1e6 GB * retention_months * storage_price_per_gb_month
    network  = egress_kb_per_request * 1e6 / 1e6 GB * egress_price_per_gb
    database = db_price_per_hour / (fleet_replicas * requests_per_s * utilization * 3600) * 1e6

and per 1M output tokens the same with tokens/s for compute and divided by the tokens per request for the rest
(KB and GB are decimal: 1e3 and 1e9 bytes). ``--replicas-utilization`` is the fraction of the measured throughput
the replicas serve on average (autoscalers keep headroom; ops/autoscale_sim.py prints it for a simulated day).

Defaults, all assumptions to replace with your own prices (AWS us-east-1 on-demand list prices as remembered at
the time of writing, not fetched): compute $0.0832/h (EC2 t3.large, 2 vCPU, one replica per instance);
utilization 0.5; storage 2 KB kept per request (usage rows, audit log, request logs) for 12 months at $0.023 per
GB-month (S3 Standard); egress 16 KB per request (a streamed completion of ~64 SSE chunks with headers) at $0.09
per GB (data transfer out to the internet, first 10 TB); database $0.072/h (RDS for PostgreSQL db.t3.medium,
single-AZ) shared by 3 replicas (prod's minReplicaCount).

The reference design's $165 per 1M (compute $120, storage $15, network $20, database $10) is printed beside both
columns, with the ratios ours / reference.

    python ops/cost_model.py results/c4/results.json
    python ops/cost_model.py --requests-per-s 3.2 --tokens-per-s 205 --price-per-hour 0.17 --json

Exit status: 0; 2 on bad input (a missing or bad results.json, no throughput, bad arguments), with a one-line
message on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

__all__ = ["REFERENCE", "CostError", "Costs", "Inputs", "costs", "main"]

REFERENCE = {"compute": 120.0, "storage": 15.0, "network": 20.0, "database": 10.0}  # $ per 1M, total $165
COMPONENTS = ("compute", "storage", "network", "database")


class CostError(Exception):
    """Bad input: the message is the one line printed (exit status 2)."""


@dataclass(frozen=True, slots=True)
class Inputs:
    requests_per_s: float  # one replica, measured
    tokens_per_s: float  # output tokens/s, one replica, measured
    price_per_hour: float = 0.0832
    utilization: float = 0.5
    stored_kb_per_request: float = 2.0
    retention_months: float = 12.0
    storage_price_per_gb_month: float = 0.023
    egress_kb_per_request: float = 16.0
    egress_price_per_gb: float = 0.09
    db_price_per_hour: float = 0.072
    fleet_replicas: float = 3.0

    @property
    def tokens_per_request(self) -> float:
        return self.tokens_per_s / self.requests_per_s


@dataclass(frozen=True, slots=True)
class Costs:
    per_1m_requests: dict[str, float]
    per_1m_tokens: dict[str, float]


def costs(i: Inputs) -> Costs:
    """Each component's $ per 1M requests and per 1M output tokens, and their totals (key ``total``)."""
    served_per_hour = i.requests_per_s * i.utilization * 3600
    per_request = {
        "compute": i.price_per_hour / served_per_hour,
        "storage": i.stored_kb_per_request * 1e3 / 1e9 * i.retention_months * i.storage_price_per_gb_month,
        "network": i.egress_kb_per_request * 1e3 / 1e9 * i.egress_price_per_gb,
        "database": i.db_price_per_hour / (i.fleet_replicas * served_per_hour),
    }
    requests = {k: v * 1e6 for k, v in per_request.items()}
    tokens = {k: v / i.tokens_per_request for k, v in requests.items()}
    # the same as the above for compute, from tokens/s directly (no rounding through tokens per request)
    tokens["compute"] = i.price_per_hour / (i.tokens_per_s * i.utilization * 3600) * 1e6
    requests["total"] = sum(requests[k] for k in COMPONENTS)
    tokens["total"] = sum(tokens[k] for k in COMPONENTS)
    return Costs(requests, tokens)


def _throughput_from(path: Path) -> tuple[float, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CostError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CostError(f"{path}: not valid JSON: {exc}") from None
    summary = data.get("summary") if isinstance(data, dict) else None
    if not isinstance(summary, dict):
        raise CostError(f"{path}: not a loadtest results.json (no summary)")
    rps, tps = summary.get("throughput_rps"), summary.get("output_tokens_per_s")
    if not isinstance(rps, int | float) or not isinstance(tps, int | float):
        raise CostError(f"{path}: the summary has no throughput_rps and output_tokens_per_s")
    return float(rps), float(tps)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr (not the usage too), exit status 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="cost_model.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Inputs(1, 1)
    p.add_argument("results", nargs="?", type=Path, help="a loadtest results.json")
    p.add_argument("--requests-per-s", type=float, help="one replica's requests/s (overrides the file's)")
    p.add_argument("--tokens-per-s", type=float, help="one replica's output tokens/s (overrides the file's)")
    p.add_argument("--price-per-hour", type=float, default=d.price_per_hour, help="$ per replica-hour")
    p.add_argument(
        "--replicas-utilization", type=float, default=d.utilization, help="served / measured throughput, 0..1"
    )
    p.add_argument("--stored-kb-per-request", type=float, default=d.stored_kb_per_request)
    p.add_argument("--retention-months", type=float, default=d.retention_months)
    p.add_argument("--storage-price-per-gb-month", type=float, default=d.storage_price_per_gb_month)
    p.add_argument("--egress-kb-per-request", type=float, default=d.egress_kb_per_request)
    p.add_argument("--egress-price-per-gb", type=float, default=d.egress_price_per_gb)
    p.add_argument("--db-price-per-hour", type=float, default=d.db_price_per_hour)
    p.add_argument("--fleet-replicas", type=float, default=d.fleet_replicas, help="replicas sharing the database")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    return p.parse_args(argv)


def inputs_from(args: argparse.Namespace) -> Inputs:
    """The model's inputs from the command line.

    Raises:
        CostError: no throughput, a bad number, a utilization outside (0, 1].
    """
    rps = tps = None
    if args.results is not None:
        rps, tps = _throughput_from(args.results)
    rps = args.requests_per_s if args.requests_per_s is not None else rps
    tps = args.tokens_per_s if args.tokens_per_s is not None else tps
    if rps is None or tps is None:
        raise CostError("give a results.json or both --requests-per-s and --tokens-per-s")
    values = {
        "requests_per_s": rps,
        "tokens_per_s": tps,
        "price_per_hour": args.price_per_hour,
        "utilization": args.replicas_utilization,
        "stored_kb_per_request": args.stored_kb_per_request,
        "retention_months": args.retention_months,
        "storage_price_per_gb_month": args.storage_price_per_gb_month,
        "egress_kb_per_request": args.egress_kb_per_request,
        "egress_price_per_gb": args.egress_price_per_gb,
        "db_price_per_hour": args.db_price_per_hour,
        "fleet_replicas": args.fleet_replicas,
    }
    for name, value in values.items():
        if not math.isfinite(value) or value < 0:
            raise CostError(f"{name.replace('_', '-')}: must be a finite number >= 0, not {value:g}")
    for name in ("requests_per_s", "tokens_per_s", "fleet_replicas"):
        if not values[name] > 0:
            raise CostError(f"{name.replace('_', '-')} must be positive (no throughput, no cost per request)")
    if not 0 < args.replicas_utilization <= 1:
        raise CostError("--replicas-utilization must be above 0 and at most 1")
    return Inputs(**values)


def table(i: Inputs, c: Costs) -> str:
    lines = [
        f"throughput per replica: {i.requests_per_s:.3f} req/s, {i.tokens_per_s:.1f} output tokens/s"
        f" ({i.tokens_per_request:.1f} tokens/request), utilization {i.utilization:g}, ${i.price_per_hour:g}/h",
        "",
        f"{'$ per 1M':<10}{'requests':>12}{'out tokens':>12}{'reference':>11}{'req/ref':>10}{'tok/ref':>10}",
    ]
    reference = {**REFERENCE, "total": sum(REFERENCE.values())}
    for k in (*COMPONENTS, "total"):
        r, t, ref = c.per_1m_requests[k], c.per_1m_tokens[k], reference[k]
        lines.append(f"{k:<10}{r:>12.4f}{t:>12.4f}{ref:>11.2f}{r / ref:>10.4f}{t / ref:>10.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        i = inputs_from(args)
    except CostError as err:
        print(f"cost_model.py: error: {err}", file=sys.stderr)
        return 2
    c = costs(i)
    if args.json:
        doc = {"inputs": asdict(i), **asdict(c), "reference_per_1m": {**REFERENCE, "total": sum(REFERENCE.values())}}
        print(json.dumps(doc, indent=1))
    else:
        print(table(i, c))
    return 0


if __name__ == "__main__":
    sys.exit(main())
