"""ops/bench_registry.py --quick runs its correctness checks (published sha256 = the file's, a completion of
the uploaded model, a converted file that loads and generates) and prints its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_registry_quick() -> None:
    pytest.importorskip("safetensors", reason="the benchmark writes its random model with safetensors")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITNET_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    out = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "bench_registry.py"), "--quick"],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "correctness: published sha256 = file sha256" in out.stderr
    for row in ("upload: streamed POST", "store put, encrypted", "TQ2_0 conversion, with progress", "first token"):
        assert row in out.stdout, out.stdout
