"""ops/bench_metering.py --quick runs, checks the ledger against what it sent, and prints its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_metering_quick(pg_dsn: str, redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITNET_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    script = str(ROOT / "ops" / "bench_metering.py")
    out = subprocess.run(
        [sys.executable, script, "--quick", "--database-url", pg_dsn, "--redis-url", redis_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(a) ledger = sent" in out.stdout
    assert "(a) a stopped server's ledger = its responses" in out.stdout
    for measure in ("(b) admit + settle p99", "(c) meter batches", "(d) added per request", "(e) rows written"):
        assert measure in out.stdout, out.stdout
