"""ops/cost_model.py: the cost arithmetic on round numbers with known answers, a loadtest results.json as input
(and flags overriding it), the table beside the reference design's $165 per 1M with its ratios, and one-line errors
with exit status 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ops import cost_model, loadtest
from ops.cost_model import Inputs
from tests.ops._tools import REPO


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "ops" / "cost_model.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_costs_known_answers() -> None:
    # 2 req/s at half utilization: 3600 requests an hour for $0.36, so $100 per 1M requests.
    c = cost_model.costs(Inputs(requests_per_s=2, tokens_per_s=100, price_per_hour=0.36, utilization=0.5))
    r, t = c.per_1m_requests, c.per_1m_tokens
    assert r["compute"] == pytest.approx(100)
    assert r["storage"] == pytest.approx(2 * 12 * 0.023)  # 2 KB * 1M = 2 GB, kept 12 months
    assert r["network"] == pytest.approx(16 * 0.09)  # 16 GB out
    assert r["database"] == pytest.approx(0.072 / (3 * 3600) * 1e6)  # one database for 3 replicas
    assert r["total"] == pytest.approx(sum(r[k] for k in cost_model.COMPONENTS))
    # 50 tokens a request: every component costs a 50th per 1M tokens.
    assert t["compute"] == pytest.approx(2.0) and t["network"] == pytest.approx(16 * 0.09 / 50)
    assert t["total"] == pytest.approx(r["total"] / 50)
    # twice the utilization halves compute and database, leaves storage and network
    busier = cost_model.costs(Inputs(requests_per_s=2, tokens_per_s=100, price_per_hour=0.36, utilization=1))
    assert busier.per_1m_requests["compute"] == pytest.approx(50)
    assert busier.per_1m_requests["database"] == pytest.approx(r["database"] / 2)
    assert busier.per_1m_requests["storage"] == pytest.approx(r["storage"])
    assert sum(cost_model.REFERENCE.values()) == 165


def _results(path: Path, requests: int, tokens_each: int, elapsed: float) -> Path:
    records = [
        loadtest.Record(index=i, start_s=0.0, status=200, outcome="ok", ttft_s=0.1, e2e_s=0.5, chunks=tokens_each,
                        output_tokens=tokens_each)
        for i in range(requests)
    ]  # fmt: skip
    data = {"config": {"mode": "closed", "concurrency": 4}, "summary": loadtest.summarize(records, elapsed)}
    path.write_text(json.dumps(data))
    return path


def _rows(stdout: str) -> dict[str, list[float]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("$ per 1M"))
    return {line.split()[0]: [float(x) for x in line.split()[1:]] for line in lines[start + 1 :]}


def test_cli_on_results_json(tmp_path: Path) -> None:
    results = _results(tmp_path / "results.json", 40, 50, 20.0)  # 2 req/s, 100 tokens/s
    out = _run(results, "--price-per-hour", "0.36", "--replicas-utilization", "0.5")
    assert out.returncode == 0, out.stderr
    assert "2.000 req/s, 100.0 output tokens/s (50.0 tokens/request)" in out.stdout
    rows = _rows(out.stdout)
    assert list(rows) == ["compute", "storage", "network", "database", "total"]
    assert rows["compute"][:3] == [100.0, 2.0, 120.0]  # per 1M requests, per 1M tokens, the reference
    assert rows["compute"][3] == pytest.approx(100 / 120, abs=1e-4)
    assert rows["total"][2] == 165.0
    assert rows["total"][3] == pytest.approx(rows["total"][0] / 165, abs=1e-4)
    # Flags override the file's throughput: twice the requests/s, half the compute per request.
    faster = _rows(_run(results, "--price-per-hour", "0.36", "--requests-per-s", "4").stdout)
    assert faster["compute"][0] == 50.0 and faster["compute"][1] == 2.0
    doc = json.loads(_run(results, "--json").stdout)
    assert doc["inputs"]["requests_per_s"] == 2 and doc["reference_per_1m"]["total"] == 165
    assert doc["per_1m_requests"]["total"] == pytest.approx(
        sum(doc["per_1m_requests"][k] for k in rows if k != "total")
    )


def test_cli_from_flags_only() -> None:
    out = _run(
        "--requests-per-s", "1", "--tokens-per-s", "64", "--price-per-hour", "3.6", "--replicas-utilization", "1"
    )
    assert out.returncode == 0, out.stderr
    assert _rows(out.stdout)["compute"][:2] == [1000.0, 15.625]  # 3600 requests for $3.6; 230400 tokens
    assert "--replicas-utilization" in _run("--help").stdout


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, (), "cannot read"),
        ("{nope", (), "not valid JSON"),
        ('{"a": 1}', (), "not a loadtest results.json"),
        ('{"summary": {}}', (), "no throughput_rps and output_tokens_per_s"),
        ("", ("--replicas-utilization", "1.5"), "--replicas-utilization must be above 0 and at most 1"),
        ("", ("--replicas-utilization", "0"), "--replicas-utilization must be above 0"),
        ("", ("--price-per-hour", "-1"), "price-per-hour: must be a finite number >= 0"),
        ("", ("--requests-per-s", "0"), "requests-per-s must be positive"),
        ("", ("--egress-kb-per-request", "x"), "invalid float value: 'x'"),
    ],
)
def test_cli_bad_input(tmp_path: Path, content: str | None, args: tuple[str, ...], message: str) -> None:
    path = tmp_path / "results.json"
    if content == "":
        _results(path, 10, 10, 10.0)
    elif content is not None:
        path.write_text(content)
    out = _run(path, *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr


def test_cli_needs_throughput() -> None:
    out = _run("--requests-per-s", "3")
    assert out.returncode == 2 and "give a results.json or both" in out.stderr
