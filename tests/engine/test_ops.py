"""The engine's non-ternary ops against their numpy definitions in :mod:`kernels_cython.reference_dense`.

The compiled ops (:mod:`bitnet_actor.engine._ops`) are called directly and compared with the reference, not
with the dispatchers of :mod:`bitnet_actor.engine.ops` (which run the compiled code when it is built).  Float
results are compared row by row by relative norm (:mod:`tests.numerics`).  The dispatchers' numpy fallback is the
reference itself, checked bit for bit with the compiled ops switched off.  The dense products are in
:mod:`tests.engine.test_dense_ops`.
"""

from __future__ import annotations

import numpy as np
import pytest

from bitnet_actor.engine import ops
from bitnet_actor.engine.layers import DenseMatrix
from kernels_cython import reference_dense as dref
from tests.numerics import EPS32, assert_rows_close, mixed_rows, sum_tol

_ops = pytest.importorskip("bitnet_actor.engine._ops", reason="the compiled engine ops are not built")


# ---------------------------------------------------------------------------------------------------- row ops


@pytest.mark.parametrize("eps", [1e-5, 1e-6])
@pytest.mark.parametrize(("m", "k"), [(1, 1), (3, 7), (5, 100), (17, 2560), (4, 3001)])
def test_rmsnorm_matches_reference(m: int, k: int, eps: float) -> None:
    rng = np.random.default_rng(m * 100 + k)
    x = mixed_rows(rng, m, k)
    w = rng.uniform(0.5, 1.5, k).astype(np.float32)
    assert_rows_close(_ops.rmsnorm(x, w, eps), dref.rmsnorm_ref(x, w, eps), sum_tol(k))


@pytest.mark.parametrize(("m", "k"), [(1, 1), (3, 33), (9, 2560)])
def test_add_rmsnorm_matches_reference(m: int, k: int) -> None:
    rng = np.random.default_rng(k)
    x, y = mixed_rows(rng, m, k), mixed_rows(rng, m, k)
    w = rng.uniform(0.5, 1.5, k).astype(np.float32)
    want_sum, want = dref.add_rmsnorm_ref(x, y, w, 1e-5)
    got = _ops.add_rmsnorm(x, y, w, 1e-5)  # x updated in place
    np.testing.assert_array_equal(x, want_sum)  # one float32 add: exact
    assert_rows_close(got, want, sum_tol(k))


@pytest.mark.parametrize(("m", "h", "d"), [(1, 1, 2), (3, 5, 6), (7, 3, 64), (9, 20, 128)])
def test_rope_matches_reference(m: int, h: int, d: int) -> None:
    rng = np.random.default_rng(m + h + d)
    x = rng.standard_normal((m, h, d)).astype(np.float32)
    ang = rng.uniform(-100, 100, (m, d // 2))
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    want = dref.rope_ref(x, cos, sin)
    got = x.copy()
    _ops.rope(got, cos, sin)
    assert_rows_close(got, want, 4 * EPS32)  # two products and a sum per element


ATTENTION_SHAPES = [
    (0, 1, 1, 1, 2),
    (0, 7, 4, 2, 16),
    (9, 5, 4, 1, 8),
    (30, 1, 6, 3, 64),
    (3, 13, 2, 2, 5),
    (0, 40, 8, 8, 128),
]


@pytest.mark.parametrize(("start", "n", "nh", "nkv", "d"), ATTENTION_SHAPES)
def test_attention_matches_reference(start: int, n: int, nh: int, nkv: int, d: int) -> None:
    rng = np.random.default_rng(start * 7 + n + d)
    cap = start + n + 3  # cache rows past the sequence must not be read
    q = (rng.standard_normal((n, nh, d)) * 2).astype(np.float32)
    k = (rng.standard_normal((nkv, cap, d)) * 2).astype(np.float32)
    v = rng.standard_normal((nkv, cap, d)).astype(np.float32)
    k[:, start + n :] = 1e30  # garbage beyond the sequence: reading it would show
    want = dref.attention_ref(q, k, v, start)
    got = np.empty((n, nh * d), np.float32)
    _ops.attention(q, k, v, start, got)
    assert_rows_close(got, want, sum_tol(d + start + n))


@pytest.mark.parametrize("act", ["relu2", "silu"])
@pytest.mark.parametrize(("m", "f"), [(1, 1), (3, 7), (5, 100), (2, 1000)])
def test_glu_matches_reference(m: int, f: int, act: str) -> None:
    rng = np.random.default_rng(m + f)
    gu = (rng.standard_normal((m, 2 * f)) * 4).astype(np.float32)
    gu[0, 0] = -100.0  # silu's exp(-g) far out of range
    want = dref.glu_ref(gu, act)
    assert_rows_close(_ops.glu(gu, act == "relu2"), want, 8 * EPS32)  # exp within ~1 ulp, a few roundings


@pytest.mark.parametrize("act", ["relu2", "silu"])
def test_glu_norm_matches_reference(act: str) -> None:
    rng = np.random.default_rng(11)
    gu = (rng.standard_normal((4, 2 * 300)) * 3).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 300).astype(np.float32)
    want = dref.rmsnorm_ref(dref.glu_ref(gu, act), w, 1e-5)
    assert_rows_close(_ops.glu_norm(gu, act == "relu2", w, 1e-5), want, sum_tol(300) + 8 * EPS32)
    assert_rows_close(_ops.glu_norm(gu, act == "relu2", None, 1e-5), dref.glu_ref(gu, act), 8 * EPS32)


# ---------------------------------------------------------------------------------------- the numpy fallback


def test_fallback_is_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "_fast", None)
    rng = np.random.default_rng(3)
    x, y = mixed_rows(rng, 3, 40), mixed_rows(rng, 3, 40)
    w = rng.uniform(0.5, 1.5, 40).astype(np.float32)
    np.testing.assert_array_equal(ops.rmsnorm(x, w, 1e-6), dref.rmsnorm_ref(x, w, 1e-6))
    xs, normed = dref.add_rmsnorm_ref(x, y, w, 1e-6)
    np.testing.assert_array_equal(ops.add_rmsnorm(x, y, w, 1e-6), normed)
    np.testing.assert_array_equal(x, xs)
    for act in ("relu2", "silu"):
        np.testing.assert_array_equal(ops.glu(x, act), dref.glu_ref(x, act))
    q = rng.standard_normal((3, 2, 8)).astype(np.float32)
    cos, sin = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    want = dref.rope_ref(q, cos, sin)
    ops.rope(q, cos, sin)
    np.testing.assert_array_equal(q, want)
    kc = rng.standard_normal((1, 9, 8)).astype(np.float32)
    out = np.empty((3, 16), np.float32)
    ops.attention(q, kc, kc, 5, out)
    np.testing.assert_array_equal(out, dref.attention_ref(q, kc, kc, 5))
    wf = rng.standard_normal((5, 40)).astype(np.float32)
    bf16 = (wf.view(np.uint32) >> 16).astype(np.uint16)
    for mat in (DenseMatrix("f32", wf), DenseMatrix("f16", wf.astype(np.float16)), DenseMatrix("bf16", bf16)):
        np.testing.assert_array_equal(ops.dense_matmul(x, mat), dref.dense_matmul_ref(x, mat.data, mat.kind))
    for q8 in (DenseMatrix.quantize_q8(DenseMatrix("f32", wf)), DenseMatrix.quantize_q6(DenseMatrix("f32", wf))):
        assert q8.scales is not None
        ref = dref.dense_matmul_q8_ref if q8.kind == "q8" else dref.dense_matmul_q6_ref
        np.testing.assert_array_equal(ops.dense_matmul(x, q8), ref(x, q8.data, q8.scales, 40))
