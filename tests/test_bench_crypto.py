"""ops/bench_crypto.py runs small: its correctness checks pass before it times anything, and it prints its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_crypto_quick() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITNET_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    out = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "bench_crypto.py"), "--quick", "--size-mib", "8", "--repeats", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(a) correctness" in out.stdout and ": ok" in out.stdout
    for measure in (
        "(b) encrypt",
        "(b) decrypt",
        "(c) store put (fsynced), encrypted",
        "(c) store read + SHA-256, encrypted",
    ):
        assert measure in out.stdout, out.stdout
    assert "(d) ranged 4 KiB reads" in out.stdout
