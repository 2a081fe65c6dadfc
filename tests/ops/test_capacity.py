"""ops/capacity.py: the operating point on a synthetic curve with a known answer (measured or interpolated), the
replica count, loadtest results.json inputs, and its exit codes and one-line messages on bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ops import capacity, loadtest
from ops.capacity import CapacityError, Point

ROOT = Path(__file__).resolve().parents[2]
CURVE = "concurrency,tokens_per_s,p95_ms\n1,100,200\n2,180,300\n4,300,600\n8,400,1400\n"


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "ops" / "capacity.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _points(*rows: tuple[float, float, float]) -> list[Point]:
    return [Point(c, t, p) for c, t, p in rows]


def test_interpolates_where_the_curve_crosses_the_bound() -> None:
    points = _points((1, 100, 200), (2, 180, 300), (4, 300, 600), (8, 400, 1400))
    choice = capacity.choose(points, 1000)
    # p95 crosses 1000 halfway from 4 (600 ms) to 8 (1400 ms): throughput halfway from 300 to 400.
    assert choice.interpolated and not choice.at_edge
    assert math.isclose(choice.point.concurrency, 6) and math.isclose(choice.point.tokens_per_s, 350)
    # A falling p95 is crossed too: met from 2 on, the best point is the last one (at the edge of the data).
    falling = capacity.choose(_points((1, 100, 900), (3, 200, 1100), (5, 260, 950)), 1000)
    assert falling.at_edge and falling.point.tokens_per_s == 260
    # Throughput that falls past its peak: the peak wins even though higher concurrencies meet the bound.
    peak = capacity.choose(_points((1, 100, 100), (4, 400, 300), (8, 350, 500)), 1000)
    assert (peak.point.concurrency, peak.interpolated, peak.at_edge) == (4, False, False)


def test_a_measured_point_on_the_bound_is_taken_as_measured() -> None:
    points = _points((1, 100, 200), (2, 180, 300), (4, 300, 600), (8, 400, 1400))
    choice = capacity.choose(points, 600)
    assert (choice.point.concurrency, choice.point.tokens_per_s, choice.interpolated) == (4, 300, False)


def test_bound_never_met() -> None:
    with pytest.raises(CapacityError, match=r"never met.*lowest measured p95 is 200 ms") as err:
        capacity.choose(_points((1, 100, 200), (2, 180, 300)), 150)
    assert err.value.code == 1


def test_replicas_needed() -> None:
    assert capacity.replicas_needed(1000, 350, 0.2) == 4  # 1000 / 280 = 3.57
    assert capacity.replicas_needed(960, 300, 0.2) == 4  # exactly 4
    assert capacity.replicas_needed(961, 300, 0.2) == 5
    assert 21 / (0.7 * (1 - 0)) > 30 and capacity.replicas_needed(21, 0.7, 0) == 30  # float noise is not a replica
    assert capacity.replicas_needed(1, 1000, 0.5) == 1


def test_cli_on_a_csv_curve(tmp_path: Path) -> None:
    csv = tmp_path / "curve.csv"
    csv.write_text(CURVE)
    out = _run(csv, "--target-tokens-per-s", "1000", "--p95-ms", "1000")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[:3] for line in lines[1:5]] == [
        ["1", "100.0", "200.0"], ["2", "180.0", "300.0"], ["4", "300.0", "600.0"], ["8", "400.0", "1400.0"]
    ]  # fmt: skip
    assert [line.split()[-1] for line in lines[1:5]] == ["yes", "yes", "yes", "no"]
    assert "operating point: concurrency 6.00 per replica (interpolated between 4 and 8), 350.0 tokens/s" in out.stdout
    assert "replicas: 4 = ceil(1000 / (350.0 * (1 - 0.2)))" in out.stdout
    # Less headroom, fewer replicas: 1000 / (350 * 0.9) = 3.17.
    assert "replicas: 4 " in _run(csv, "--target-tokens-per-s", "1000", "--p95-ms", "1000", "--headroom", "0.1").stdout
    assert "replicas: 3 " in _run(csv, "--target-tokens-per-s", "1000", "--p95-ms", "1000", "--headroom", "0").stdout
    edge = _run(csv, "--target-tokens-per-s", "1000", "--p95-ms", "5000")
    assert edge.returncode == 0 and "replicas: 4 " in edge.stdout and "measure higher" in edge.stdout


def _results(path: Path, concurrency: int | None, e2e_s: float, tokens: int, elapsed: float) -> Path:
    """A results.json as loadtest writes it: every request took ``e2e_s`` (so that is the p95)."""
    records = [
        loadtest.Record(index=i, start_s=0.0, status=200, outcome="ok", ttft_s=e2e_s / 4, e2e_s=e2e_s,
                        chunks=1, output_tokens=tokens // 10)
        for i in range(10)
    ]  # fmt: skip
    data: dict[str, Any] = {
        "config": {"mode": "closed" if concurrency else "open", "concurrency": concurrency},
        "summary": loadtest.summarize(records, elapsed),
    }
    path.write_text(json.dumps(data))
    return path


def test_cli_on_loadtest_results(tmp_path: Path) -> None:
    files = [
        _results(tmp_path / "c4.json", 4, 0.6, 3000, 10.0),  # 300 tokens/s, p95 600 ms
        _results(tmp_path / "c1.json", 1, 0.2, 1000, 10.0),
        _results(tmp_path / "c8.json", 8, 1.4, 4000, 10.0),
    ]
    out = _run(*files, "--target-tokens-per-s", "1000", "--p95-ms", "1000")
    assert out.returncode == 0, out.stderr
    assert "concurrency 6.00 per replica (interpolated between 4 and 8), 350.0 tokens/s" in out.stdout
    # p95 of TTFT instead (a quarter of e2e): 8 meets 1000 ms, at the edge.
    out = _run(*files, "--target-tokens-per-s", "1000", "--p95-ms", "1000", "--latency", "ttft")
    assert "concurrency 8.00 per replica (measured), 400.0 tokens/s" in out.stdout and "measure higher" in out.stdout
    # Mixed with a CSV.
    csv = tmp_path / "more.csv"
    csv.write_text("concurrency,tokens_per_s,p95_ms\n16,500,1800\n")
    assert _run(*files, csv, "--target-tokens-per-s", "1", "--p95-ms", "1000").returncode == 0


@pytest.mark.parametrize(
    ("make", "extra", "code", "message"),
    [
        (None, (), 2, "cannot read: No such file or directory"),
        ("concurrency,tokens_per_s,p95_ms\n", (), 2, "no points"),
        ("", (), 2, "no points"),
        ("c,t,p\n1,2,3\n", (), 2, "header must be concurrency,tokens_per_s,p95_ms"),
        ("concurrency,tokens_per_s,p95_ms\n1,fast,3\n", (), 2, "not a number: 'fast'"),
        ("concurrency,tokens_per_s,p95_ms\n1,2\n", (), 2, "expected 3 fields"),
        ("concurrency,tokens_per_s,p95_ms\n1,2,3\n1,4,5\n", (), 2, "two points at concurrency 1"),
        ("{not json", (), 2, "not valid JSON"),
        ('{"a": 1}', (), 2, "not a loadtest results.json"),
        (CURVE, ("--headroom", "1"), 2, "--headroom must be at least 0 and below 1"),
        (CURVE, ("--p95-ms", "150"), 1, "p95 bound of 150 ms is never met"),
    ],
)
def test_cli_bad_input(tmp_path: Path, make: str | None, extra: tuple[str, ...], code: int, message: str) -> None:
    path = tmp_path / "in.csv"
    if make is not None:
        path.write_text(make)
    args = ["--target-tokens-per-s", "1000", "--p95-ms", "1000", *extra]
    out = _run(path, *args)
    assert out.returncode == code, out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr


def test_cli_refuses_open_loop_and_empty_runs(tmp_path: Path) -> None:
    out = _run(_results(tmp_path / "open.json", None, 0.5, 100, 1.0), "--target-tokens-per-s", "1", "--p95-ms", "9")
    assert out.returncode == 2 and "not a closed-loop run" in out.stderr
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"config": {"mode": "closed", "concurrency": 2}, "summary": loadtest.summarize([], 1)}))
    out = _run(empty, "--target-tokens-per-s", "1", "--p95-ms", "9")
    assert out.returncode == 2 and "no successful requests" in out.stderr
    assert _run("--p95-ms", "9").returncode == 2  # argparse: no file, no target
    assert "--target-tokens-per-s" in _run("--help").stdout
