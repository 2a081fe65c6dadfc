"""ops/bench_output_layer.py --quick runs its correctness checks (exact output layer vs float64, the quantized
kernels vs their references, the engine vs transformers on the oracle models) and prints its two tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_output_layer_quick() -> None:
    pytest.importorskip("transformers", reason="the benchmark builds the oracle models with transformers")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITNET_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    out = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "bench_output_layer.py"), "--quick"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "cpu: model name" in text
    checks = [line for line in text.splitlines() if line.startswith("correctness:")]
    assert any("exact vs transformers" in line for line in checks), text
    assert sum("exact output layer vs float64" in line for line in checks) >= 4, text  # 2 oracles, demo, 2B head
    quality = text.split("quality vs exact")[1].split("\nspeed (")[0].splitlines()[2:]
    speed = text.split("\nspeed (")[1].splitlines()[2:]
    modes: dict[str, list[str]] = {}
    for line in filter(None, quality):
        m = re.match(r"(.+?)\s+(exact|q8|q6)\s+(\S+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(.+)$", line)
        assert m, line
        modes.setdefault(m.group(1), []).append(m.group(2))
        if m.group(2) == "exact":  # exact against itself: zero error (the table is computed, not copied)
            assert [float(g) for g in m.group(5, 6, 7)] == [0.0, 0.0, 0.0], line
        elif m.group(3) != "-":  # the quantized ones move logits a little, not to noise
            assert 50 < float(m.group(3).rstrip("%")) <= 100, line
            assert 0 < float(m.group(7)) < 0.5, line
    assert {"oracle bitnet-auto-offline", "demo model (real text)"} <= set(modes), modes
    assert all(v == ["exact", "q8", "q6"] for v in modes.values()), modes
    assert any(k.startswith("2B-4T head") for k in modes), modes
    rows = [line for line in speed if line.strip() and not line.startswith("load average")]
    assert [r.split(",")[0] for r in rows][:1] == ["demo model"], rows
    assert any(r.startswith("2B-4T head") and "product alone" in r for r in rows), rows
    for r in rows:
        *_, ex, q8, q6, _, r6 = r.split()
        assert min(float(ex), float(q8), float(q6)) > 0, r
        ratio = float(q6) / float(ex)  # from the rounded figures: close to the printed ratio
        assert abs(float(r6.rstrip("x")) - ratio) <= 0.02 * ratio + 0.01, r
