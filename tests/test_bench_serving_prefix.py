"""ops/bench_serving.py --workload shared-prefix runs small on a tiny model: its correctness checks (the same
greedy text with the prefix cache off and on, the cached tokens each server reports) pass before it times
anything, and it prints its table and ratio; its prompts share exactly the prefix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops import bench_serving_prefix

ROOT = Path(__file__).resolve().parents[1]


def test_prompts_share_the_prefix_and_hits_are_its_full_blocks() -> None:
    prompts = bench_serving_prefix.prompts(1000, 64, 3, 128256)
    assert [len(p) for p in prompts] == [1064] * 3
    assert prompts[0][:1000] == prompts[1][:1000] == prompts[2][:1000]
    assert len({tuple(p[1000:]) for p in prompts}) == 3
    assert bench_serving_prefix.expected_hit(1000, 1064) == 992  # 62 blocks of 16; block 62 holds a turn's tokens
    assert bench_serving_prefix.expected_hit(64, 64) == 48  # a whole-prompt prefix still leaves a token to compute


@pytest.mark.slow
def test_shared_prefix_workload_quick(tmp_path: Path) -> None:
    pytest.importorskip("safetensors", reason="the benchmark writes its random model with safetensors")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITNET_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    args = ["--spawn", "--shape", "tiny", "--workload", "shared-prefix", "--model-cache", str(tmp_path)]
    args += ["--prefix-len", "100", "--turn-len", "20", "--repeats", "2", "--output-len", "4"]
    out = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "bench_serving.py"), *args],
        env=env, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "correctness (off): ok" in out.stdout and "correctness (org): ok" in out.stdout
    assert "| off | 2 | 0 |" in out.stdout and "| on (hits) | 2 | 96 |" in out.stdout
    assert "TTFT with the prefix cache off / on (hits):" in out.stdout
