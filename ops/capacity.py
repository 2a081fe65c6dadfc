"""Replicas needed for a target output throughput under a p95 latency bound, from a measured per-replica curve.

The curve is throughput (output tokens/s) and p95 latency against concurrency on ONE replica, from either:

- ``results.json`` files of closed-loop ``ops/loadtest.py`` runs (``--concurrency N``) at several
  concurrencies, one point per file (p95 of end-to-end latency by default; ``--latency ttft`` or ``itl`` for
  the others), or
- a CSV with the header ``concurrency,tokens_per_s,p95_ms``, one point per row.

Between measured concurrencies both throughput and p95 are interpolated linearly. The operating point is the
highest-throughput point of that piecewise-linear curve whose p95 is within ``--p95-ms`` (a measured point, or
where a segment crosses the bound). Then

    replicas = ceil(target_tokens_per_s / (throughput_at_point * (1 - headroom)))

(the headroom keeps each replica below its measured best, for bursts and a replica lost).

    python ops/capacity.py results/c*/results.json --target-tokens-per-s 5000 --p95-ms 2000
    python ops/capacity.py curve.csv --target-tokens-per-s 5000 --p95-ms 2000 --headroom 0.3

Exit status: 0 with the answer; 1 when the bound is met at no point of the curve; 2 on bad input (a missing or
unreadable file, a file that is not a closed-loop results.json or the CSV above, no points, two points at one
concurrency, bad arguments), with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CapacityError", "Choice", "Point", "choose", "load_points", "main", "replicas_needed"]


class CapacityError(Exception):
    """Bad input: the message is the one line printed; ``code`` the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Point:
    concurrency: float
    tokens_per_s: float
    p95_ms: float
    source: str = ""


@dataclass(frozen=True, slots=True)
class Choice:
    point: Point
    interpolated: bool  # between two measured points, where the segment crosses the bound
    at_edge: bool  # the last measured point: the curve may go higher beyond what was measured


def _number(value: object, what: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CapacityError(f"{what}: not a number: {value!r}") from None
    if not math.isfinite(x) or x < 0:
        raise CapacityError(f"{what}: must be a finite number >= 0, not {value!r}")
    return x


def _from_results(path: Path, data: object, latency: str) -> Point:
    if not isinstance(data, dict) or not isinstance(data.get("summary"), dict) or "config" not in data:
        raise CapacityError(f"{path}: not a loadtest results.json (no config and summary)")
    cfg, summary = data["config"], data["summary"]
    if cfg.get("mode") != "closed" or cfg.get("concurrency") is None:
        raise CapacityError(f"{path}: not a closed-loop run (loadtest --concurrency N); open-loop runs give no curve")
    p95 = (summary.get(f"{latency}_ms") or {}).get("p95")
    if p95 is None:
        raise CapacityError(f"{path}: no successful requests, so no p95 {latency} latency")
    return Point(
        _number(cfg["concurrency"], f"{path}: concurrency"),
        _number(summary.get("output_tokens_per_s"), f"{path}: output_tokens_per_s"),
        _number(p95, f"{path}: p95"),
        str(path),
    )


def _from_csv(path: Path, text: str) -> list[Point]:
    rows = list(csv.reader(line for line in text.splitlines() if line.strip() and not line.startswith("#")))
    if not rows:
        return []
    header = [h.strip() for h in rows[0]]
    if header != ["concurrency", "tokens_per_s", "p95_ms"]:
        raise CapacityError(f"{path}: the CSV header must be concurrency,tokens_per_s,p95_ms, not {','.join(header)}")
    points = []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != 3:
            raise CapacityError(f"{path}:{n}: expected 3 fields, got {len(row)}")
        c, t, p = (_number(v.strip(), f"{path}:{n}") for v in row)
        points.append(Point(c, t, p, f"{path}:{n}"))
    return points


def load_points(paths: list[Path], latency: str = "e2e") -> list[Point]:
    """The curve's points from ``paths`` (results.json files and/or CSVs), sorted by concurrency.

    Raises:
        CapacityError: a missing or unreadable file, an unknown format, no points, a duplicate concurrency.
    """
    points: list[Point] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CapacityError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if text.lstrip().startswith("{"):
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise CapacityError(f"{path}: not valid JSON: {exc}") from None
            points.append(_from_results(path, data, latency))
        else:
            points.extend(_from_csv(path, text))
    if not points:
        raise CapacityError("no points: give closed-loop results.json files or a CSV with rows")
    points.sort(key=lambda p: p.concurrency)
    for a, b in itertools.pairwise(points):
        if a.concurrency == b.concurrency:
            raise CapacityError(f"two points at concurrency {a.concurrency:g} ({a.source}, {b.source})")
    return points


def choose(points: list[Point], p95_bound_ms: float) -> Choice:
    """The highest-throughput point of the piecewise-linear curve (sorted ``points``) with p95 <= the bound.

    Raises:
        CapacityError: (code 1) the bound is met nowhere on the curve.
    """
    candidates: list[Choice] = [
        Choice(p, interpolated=False, at_edge=i == len(points) - 1)
        for i, p in enumerate(points)
        if p.p95_ms <= p95_bound_ms
    ]
    for a, b in itertools.pairwise(points):
        # Where the segment crosses the bound (p95 rising or falling through it), strictly inside.
        if (a.p95_ms - p95_bound_ms) * (b.p95_ms - p95_bound_ms) < 0:
            f = (p95_bound_ms - a.p95_ms) / (b.p95_ms - a.p95_ms)
            point = Point(
                a.concurrency + f * (b.concurrency - a.concurrency),
                a.tokens_per_s + f * (b.tokens_per_s - a.tokens_per_s),
                p95_bound_ms,
                f"between {a.concurrency:g} and {b.concurrency:g}",
            )
            candidates.append(Choice(point, interpolated=True, at_edge=False))
    if not candidates:
        best = min(points, key=lambda p: p.p95_ms)
        raise CapacityError(
            f"the p95 bound of {p95_bound_ms:g} ms is never met: the lowest measured p95 is {best.p95_ms:g} ms"
            f" (at concurrency {best.concurrency:g})",
            code=1,
        )
    # On a tie in throughput the lower concurrency (less latency) wins.
    return max(candidates, key=lambda c: (c.point.tokens_per_s, -c.point.concurrency))


def replicas_needed(target_tokens_per_s: float, tokens_per_s: float, headroom: float) -> int:
    """ceil(target / (tokens_per_s * (1 - headroom))), at least 1; the quotient is rounded to 9 decimals first so
    that float noise (10.000000000000002) does not add a replica."""
    usable = tokens_per_s * (1 - headroom)
    if usable <= 0:
        raise CapacityError("the chosen point has no throughput: no replica count reaches the target", code=1)
    return max(1, math.ceil(round(target_tokens_per_s / usable, 9)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="capacity.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="FILE", help="results.json files and/or CSV files")
    p.add_argument("--target-tokens-per-s", type=float, required=True, help="output tokens/s to serve in all")
    p.add_argument("--p95-ms", type=float, required=True, help="the p95 latency bound, milliseconds")
    p.add_argument(
        "--headroom", type=float, default=0.2, help="fraction of a replica's throughput kept spare (default 0.2)"
    )
    p.add_argument(
        "--latency",
        choices=("e2e", "ttft", "itl"),
        default="e2e",
        help="which latency's p95 to bound, for results.json inputs (default e2e; a CSV's p95_ms is what it is)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if not args.target_tokens_per_s > 0:
            raise CapacityError("--target-tokens-per-s must be positive")
        if not args.p95_ms > 0:
            raise CapacityError("--p95-ms must be positive")
        if not 0 <= args.headroom < 1:
            raise CapacityError("--headroom must be at least 0 and below 1")
        points = load_points(args.inputs, args.latency)
        print(f"{'concurrency':>12}{'tokens/s':>12}{'p95 ms':>12}  meets {args.p95_ms:g} ms")
        for pt in points:
            meets = "yes" if pt.p95_ms <= args.p95_ms else "no"
            print(f"{pt.concurrency:>12g}{pt.tokens_per_s:>12.1f}{pt.p95_ms:>12.1f}  {meets}")
        choice = choose(points, args.p95_ms)
        n = replicas_needed(args.target_tokens_per_s, choice.point.tokens_per_s, args.headroom)
    except CapacityError as err:
        print(f"capacity.py: error: {err}", file=sys.stderr)
        return err.code
    pt = choice.point
    how = f"interpolated {pt.source}" if choice.interpolated else "measured"
    print()
    print(
        f"operating point: concurrency {pt.concurrency:.2f} per replica ({how}),"
        f" {pt.tokens_per_s:.1f} tokens/s, p95 {pt.p95_ms:.1f} ms"
    )
    usable = pt.tokens_per_s * (1 - args.headroom)
    print(
        f"replicas: {n} = ceil({args.target_tokens_per_s:g} / ({pt.tokens_per_s:.1f} * (1 - {args.headroom:g})))"
        f" = ceil({args.target_tokens_per_s / usable:.3f})"
    )
    if choice.at_edge:
        print(
            f"note: the bound is still met at the highest measured concurrency ({pt.concurrency:g}): measure higher"
            " concurrencies, a replica may do more"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
