"""ops/bench_portal_usage.py --quick checks the usage page against the ledger it seeded and prints its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_portal_usage_quick(pg_dsn: str, redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITNET_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    out = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "bench_portal_usage.py"), "--quick", "--database-url", pg_dsn,
         "--redis-url", redis_url],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(a) correctness: the usage CSV = the 20,000 generated events" in out.stdout
    for row in ("baseline: usage API, 30 days", "usage page, 30 days", "usage CSV export", "dashboard"):
        assert row in out.stdout, out.stdout
