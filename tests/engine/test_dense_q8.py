"""The compiled int8 output-layer product equals its numpy definition exactly, on every path the CPU runs."""

from __future__ import annotations

import numpy as np
import pytest

from bitnet_actor.engine import ops
from bitnet_actor.engine.layers import DenseMatrix

_ops = pytest.importorskip("bitnet_actor.engine._ops", reason="the compiled engine ops are not built")


def _q8(rng: np.random.Generator, n: int, k: int) -> DenseMatrix:
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 3.0, size=(n, 1))).astype(np.float32)
    return DenseMatrix.quantize_q8(DenseMatrix("f32", w))


@pytest.mark.parametrize("path", [None, "portable", "avx2", "avx512"])  # None: the default, the fastest
@pytest.mark.parametrize(
    ("m", "n", "k"), [(1, 1, 1), (1, 7, 100), (1, 130, 2560), (2, 33, 64), (3, 9, 1000), (5, 64, 300)]
)
def test_q8_product_equals_reference(path: str | None, m: int, n: int, k: int) -> None:
    if path is not None and path not in _ops.Q8_PATHS:
        pytest.skip(f"this CPU cannot run the {path} path")
    rng = np.random.default_rng(m * 1000 + n + k)
    w = _q8(rng, n, k)
    x = (rng.standard_normal((m, k)) * 4).astype(np.float32)
    got = _ops.dense_matmul(x, w.data, "q8", w.scales, q8_path=path)
    np.testing.assert_array_equal(got, ops._q8_matmul(x, w))


@pytest.mark.parametrize("path", ["portable", "avx2", "avx512"])
def test_q8_product_extremes(path: str) -> None:
    # every product at +-127 * 127 over a long row: the int32 sums (and the VNNI path's +128 offset) stay exact
    if path not in _ops.Q8_PATHS:
        pytest.skip(f"this CPU cannot run the {path} path")
    k = 20_000
    rows = np.stack([np.full(k, 1.0), np.full(k, -1.0), np.where(np.arange(k) % 2 == 0, 1.0, -1.0)]).astype(np.float32)
    w = DenseMatrix.quantize_q8(DenseMatrix("f32", rows))
    for x in (np.full((1, k), -2.0, dtype=np.float32), np.full((2, k), 3.0, dtype=np.float32)):
        got = _ops.dense_matmul(x, w.data, "q8", w.scales, q8_path=path)
        np.testing.assert_array_equal(got, ops._q8_matmul(x, w))


def test_q8_path_checked() -> None:
    w = _q8(np.random.default_rng(0), 3, 64)
    with pytest.raises(ValueError, match="q8_path must be one of"):
        _ops.dense_matmul(np.ones((1, 64), dtype=np.float32), w.data, "q8", w.scales, q8_path="sse9")
