"""The compiled dense products (output layer, dense layers) on every path the CPU runs, against their numpy
definitions in :mod:`kernels_cython.reference_dense`: the q8 and q6 ones equal them exactly; the float ones match
within float32 summation error and give a row the same bits alone and in a batch."""

from __future__ import annotations

import numpy as np
import pytest

from bitnet_actor.engine.layers import DenseMatrix
from kernels_cython import reference_dense as dref

_ops = pytest.importorskip("bitnet_actor.engine._ops", reason="the compiled engine ops are not built")


def _q8(rng: np.random.Generator, n: int, k: int) -> DenseMatrix:
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 3.0, size=(n, 1))).astype(np.float32)
    return DenseMatrix.quantize_q8(DenseMatrix("f32", w))


@pytest.mark.parametrize("path", [None, "portable", "avx2", "avx512"])  # None: the default, the fastest
@pytest.mark.parametrize(
    ("m", "n", "k"), [(1, 1, 1), (1, 7, 100), (1, 130, 2560), (2, 33, 64), (3, 9, 1000), (5, 64, 300)]
)
def test_q8_product_equals_reference(path: str | None, m: int, n: int, k: int) -> None:
    if path is not None and path not in _ops.DENSE_PATHS:
        pytest.skip(f"this CPU cannot run the {path} path")
    rng = np.random.default_rng(m * 1000 + n + k)
    w = _q8(rng, n, k)
    x = (rng.standard_normal((m, k)) * 4).astype(np.float32)
    got = _ops.dense_matmul(x, w.data, "q8", w.scales, path=path)
    np.testing.assert_array_equal(got, dref.dense_matmul_q8_ref(x, w.data, w.scales, w.cols))


@pytest.mark.parametrize("path", ["portable", "avx2", "avx512"])
def test_q8_product_extremes(path: str) -> None:
    # every product at +-127 * 127 over a long row: the int32 sums (and the VNNI path's +128 offset) stay exact
    if path not in _ops.DENSE_PATHS:
        pytest.skip(f"this CPU cannot run the {path} path")
    k = 20_000
    rows = np.stack([np.full(k, 1.0), np.full(k, -1.0), np.where(np.arange(k) % 2 == 0, 1.0, -1.0)]).astype(np.float32)
    w = DenseMatrix.quantize_q8(DenseMatrix("f32", rows))
    for x in (np.full((1, k), -2.0, dtype=np.float32), np.full((2, k), 3.0, dtype=np.float32)):
        got = _ops.dense_matmul(x, w.data, "q8", w.scales, path=path)
        np.testing.assert_array_equal(got, dref.dense_matmul_q8_ref(x, w.data, w.scales, w.cols))


def test_q8_path_checked() -> None:
    w = _q8(np.random.default_rng(0), 3, 64)
    with pytest.raises(ValueError, match="path must be one of"):
        _ops.dense_matmul(np.ones((1, 64), dtype=np.float32), w.data, "q8", w.scales, path="sse9")


def _stored(kind: str, w: np.ndarray) -> np.ndarray:
    if kind == "f32":
        return w
    if kind == "f16":
        return w.astype(np.float16)
    return (w.view(np.uint32) >> 16).astype(np.uint16)  # bf16: the high half


def _as_f64(kind: str, data: np.ndarray) -> np.ndarray:
    if kind == "bf16":
        return (data.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return data.astype(np.float64)


@pytest.mark.parametrize("path", [None, "portable", "avx2", "avx512"])
@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
@pytest.mark.parametrize(("n", "k"), [(1, 1), (7, 100), (130, 2560), (33, 47), (64, 1000), (5, 3001)])
def test_float_products(path: str | None, kind: str, n: int, k: int) -> None:
    if path is not None and path not in _ops.DENSE_PATHS:
        pytest.skip(f"this CPU cannot run the {path} path")
    rng = np.random.default_rng(n * 7 + k)
    data = _stored(kind, rng.standard_normal((n, k)).astype(np.float32))
    x = rng.standard_normal((3, k)).astype(np.float32)
    got = _ops.dense_matmul(x, data, kind, None, path=path)
    expect = dref.dense_matmul_ref(x, data, kind).astype(np.float64)
    # float32 summation error grows like sqrt(k) * eps * sum|x w| for random data (8x margin, which also covers
    # the reference's own rounding to float32); one product left out or counted twice would be ~sum|x w| / k
    scale = np.abs(x).astype(np.float64) @ np.abs(_as_f64(kind, data)).T
    assert (np.abs(got - expect) <= 8 * np.sqrt(k) * 2.0**-24 * scale + 1e-30).all()
    for m in range(3):  # a row alone gives the same bits as inside the batch
        np.testing.assert_array_equal(
            _ops.dense_matmul(x[m : m + 1].copy(), data, kind, None, path=path), got[m : m + 1]
        )


# ---------------------------------------------------------------------------------------------------------- q6


def _q6(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, DenseMatrix]:
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 3.0, size=(n, 1))).astype(np.float32)
    return w, DenseMatrix.quantize_q6(DenseMatrix("f32", w))


@pytest.mark.parametrize("path", [None, "portable", "avx2", "avx512"])
@pytest.mark.parametrize(
    ("m", "n", "k"), [(1, 1, 1), (1, 7, 100), (1, 130, 2560), (2, 33, 64), (3, 9, 1000), (5, 64, 300)]
)
def test_q6_product_equals_reference(path: str | None, m: int, n: int, k: int) -> None:
    if path is not None and path not in _ops.DENSE_PATHS:
        pytest.skip(f"this CPU cannot run the {path} path")
    rng = np.random.default_rng(m * 1000 + n + k + 1)
    _, w = _q6(rng, n, k)
    x = (rng.standard_normal((m, k)) * 4).astype(np.float32)
    got = _ops.dense_matmul(x, w.data, "q6", w.scales, path=path, offsets=w.offsets)
    np.testing.assert_array_equal(got, dref.dense_matmul_q6_ref(x, w.data, w.scales, w.cols))
    for i in range(m):  # alone == in the batch
        alone = _ops.dense_matmul(x[i : i + 1].copy(), w.data, "q6", w.scales, path=path, offsets=w.offsets)
        np.testing.assert_array_equal(alone, got[i : i + 1])


@pytest.mark.parametrize("path", ["portable", "avx2", "avx512"])
def test_q6_product_extremes(path: str) -> None:
    # the widest row q6 takes, every code at +-31 with block scale 127 and activations at +-127: the int32 lanes
    # (and the SIMD paths' +128 offset) stay exact
    if path not in _ops.DENSE_PATHS:
        pytest.skip(f"this CPU cannot run the {path} path")
    k = DenseMatrix.Q6_MAX_COLS
    rows = np.stack([np.full(k, 1.0), np.full(k, -1.0), np.where(np.arange(k) % 2 == 0, 1.0, -1.0)]).astype(np.float32)
    w = DenseMatrix.quantize_q6(DenseMatrix("f32", rows))
    for x in (np.full((1, k), -2.0, dtype=np.float32), np.full((2, k), 3.0, dtype=np.float32)):
        got = _ops.dense_matmul(x, w.data, "q6", w.scales, path=path, offsets=w.offsets)
        np.testing.assert_array_equal(got, dref.dense_matmul_q6_ref(x, w.data, w.scales, w.cols))
        np.testing.assert_allclose(got, x @ rows.T, rtol=1e-6)


def test_q6_quantization() -> None:
    rng = np.random.default_rng(5)
    w, q = _q6(rng, 50, 300)
    back = q.rows_f32(0, 50)
    # 6 bits with a scale per 16 weights: each weight within half a step of its block's scale
    codes, blk = q.q6_codes(0, 50)
    step = (np.repeat(blk, 16, axis=1)[:, :300] * q.scales[:, None]).astype(np.float64)
    assert (np.abs(back - w) <= 0.5 * step + 1e-6 * np.abs(w).max()).all()
    assert np.abs(codes).max() == 31 and blk.max() == 127
    rel = np.linalg.norm(back - w) / np.linalg.norm(w)
    assert rel < 0.03  # ~2% for Gaussian rows (q8: ~1%)
    assert q.nbytes == 50 * (320 // 64 * 52 + 4 + 8)  # 6.5 bits a weight, a scale and an offset a row
    np.testing.assert_array_equal(q.offsets, 128 * (codes.astype(np.int64) * np.repeat(blk, 16, axis=1)).sum(1))
    ids = np.array([3, 0, 49])
    out = np.empty((3, 300), dtype=np.float32)
    q.gather(ids, out)
    np.testing.assert_array_equal(out, back[ids])
    with pytest.raises(ValueError, match="at most"):
        DenseMatrix.quantize_q6(DenseMatrix("f32", np.ones((1, DenseMatrix.Q6_MAX_COLS + 1), np.float32)))
    zero = DenseMatrix.quantize_q6(DenseMatrix("f32", np.zeros((2, 70), np.float32)))
    assert not zero.rows_f32(0, 2).any()


def test_q6_matrices_are_checked() -> None:
    _, q = _q6(np.random.default_rng(9), 4, 100)
    bad_scale = q.data.copy()
    bad_scale[0, 48] = 200  # a block scale the SIMD lanes do not hold
    with pytest.raises(ValueError, match=r"0\.\.127"):
        DenseMatrix("q6", bad_scale, q.scales, 100, q.offsets)
    with pytest.raises(ValueError, match="C-contiguous"):
        DenseMatrix("q6", np.asfortranarray(q.data), q.scales, 100, q.offsets)
    with pytest.raises(ValueError, match="offsets"):
        DenseMatrix("q6", q.data, q.scales, 100, None)
    with pytest.raises(ValueError, match="bad q6 data"):
        _ops.dense_matmul(np.ones((1, 100), np.float32), q.data[:, :-1], "q6", q.scales, offsets=q.offsets)
