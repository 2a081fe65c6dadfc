"""The OpenCL kernels against the numpy reference, on every OpenCL device found.

Integer paths are compared exactly (int8 activations and scales bit for bit, int32 products), the
per-row-scaled linear layer bit for bit too (the kernel divides then multiplies with correctly rounded
float32 division, as the reference does), and so is the q8 dense product on such devices; float ops against
:mod:`kernels_cython.reference_dense` row by row by relative norm (:mod:`tests.numerics`).
"""

from __future__ import annotations

import numpy as np
import pytest

import kernels_opencl
from bitnet_actor.engine.layers import DenseMatrix
from kernels_cython import reference as ref
from kernels_cython import reference_dense as dref
from kernels_opencl import ops as clops
from tests.numerics import EPS32, assert_rows_close, mixed_rows, sum_tol

SHAPES = [  # (M, N, K): N = 1, M = 1, K not a multiple of any block, M past the row tile (8)
    (1, 1, 1),
    (1, 7, 300),
    (3, 64, 256),
    (9, 33, 1000),
    (17, 128, 2560),
    (64, 5, 129),
    (257, 3, 64),
]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)), 1e-30))


def _codes(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.integers(-1, 2, (n, k)).astype(np.int8)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
def test_int_paths_equal_the_reference(cl_ctx: kernels_opencl.Context, m: int, n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, k)) * rng.uniform(0.01, 50)).astype(np.float32)
    x[0, : min(k, 3)] = 0  # some exact zeros
    w = ref.TernaryMatrix.from_codes(_codes(rng, n, k), np.float32(rng.uniform(0.1, 2)))
    xq, s = kernels_opencl.quantize_activations(x, cl_ctx)
    rq, rs = ref.quantize_activations(x)
    np.testing.assert_array_equal(kernels_opencl.ternary_matmul_int32(rq, w, cl_ctx), ref.ternary_matmul_int32(rq, w))
    if not cl_ctx.exact_divide:  # 1 / amax may be 1 ulp off: int8 codes within one step, outputs close
        assert np.abs(xq.astype(np.int16) - rq).max() <= 1
        assert rel(kernels_opencl.ternary_linear(x, w, cl_ctx), ref.ternary_linear(x, w)) < 2e-2
        return
    np.testing.assert_array_equal(xq, rq)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(kernels_opencl.ternary_linear(x, w, cl_ctx), ref.ternary_linear(x, w))


def test_extreme_activations_are_exact(cl_ctx: kernels_opencl.Context) -> None:
    rng = np.random.default_rng(5)
    k = 515
    x = np.zeros((4, k), np.float32)  # row 0: all zero (scale clamps at 1e-5)
    x[1] = 3e38 * np.sign(rng.standard_normal(k))  # huge
    x[2] = rng.standard_normal(k) * 1e-30  # tiny
    x[3, 7] = -1.0  # a single -1: quantizes to -127
    w = ref.TernaryMatrix.from_codes(np.ones((9, k), np.int8), 0.5)
    xq, s = kernels_opencl.quantize_activations(x, cl_ctx)
    rq, rs = ref.quantize_activations(x)
    np.testing.assert_array_equal(xq, rq)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(kernels_opencl.ternary_matmul_int32(rq, w, cl_ctx), ref.ternary_matmul_int32(rq, w))


def test_per_row_and_per_block_scales(cl_ctx: kernels_opencl.Context) -> None:
    rng = np.random.default_rng(3)
    m, n, k = 11, 40, 700
    codes = _codes(rng, n, k)
    kb = -(-k // 256)
    rows = np.repeat(rng.uniform(0.1, 1, (n, 1)), kb, axis=1).astype(np.float32)
    blocks = rng.uniform(0.1, 1, (n, kb)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w_rows = ref.TernaryMatrix.from_codes(codes, rows)
    assert w_rows.row_scale is not None
    np.testing.assert_array_equal(kernels_opencl.ternary_linear(x, w_rows, cl_ctx), ref.ternary_linear(x, w_rows))
    w_blocks = ref.TernaryMatrix.from_codes(codes, blocks)
    assert w_blocks.row_scale is None
    assert rel(kernels_opencl.ternary_linear(x, w_blocks, cl_ctx), ref.ternary_linear(x, w_blocks)) < 1e-6


def test_device_matrix_is_reused(cl_ctx: kernels_opencl.Context) -> None:
    rng = np.random.default_rng(4)
    w = ref.TernaryMatrix.from_float(rng.standard_normal((30, 260)).astype(np.float32))
    dw = kernels_opencl.DeviceTernaryMatrix(cl_ctx, w)
    assert dw.shape == w.shape
    assert dw.nbytes == w.nbytes + 30 * 4
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((seed + 1, 260)).astype(np.float32)
        np.testing.assert_array_equal(kernels_opencl.ternary_linear(x, dw), ref.ternary_linear(x, w))


# ------------------------------------------------------------------------------------------ the other ops
# against kernels_cython.reference_dense directly (not the engine's dispatchers, which run the compiled ops)


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16", "q8"])
@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (5, 37, 131), (9, 3, 1000), (17, 64, 2560)])
def test_dense_products_match_the_reference(cl_ctx: kernels_opencl.Context, kind: str, m: int, n: int, k: int) -> None:
    rng = np.random.default_rng(m * 100 + n + k)
    wf = (rng.standard_normal((n, k)) * rng.uniform(0.01, 3.0, size=(n, 1))).astype(np.float32)
    host = {
        "f32": DenseMatrix("f32", wf),
        "f16": DenseMatrix("f16", wf.astype(np.float16)),
        "bf16": DenseMatrix("bf16", (wf.view(np.uint32) >> 16).astype(np.uint16)),
    }.get(kind) or DenseMatrix.quantize_q8(DenseMatrix("f32", wf))
    x = (rng.standard_normal((m, k)) * 4).astype(np.float32)
    dev = clops.DeviceDenseMatrix(cl_ctx, host.kind, host.data, host.scales, host.cols)
    out = cl_ctx.empty(4 * m * n)
    scratch = (cl_ctx.empty(m * host.data.shape[1]), cl_ctx.empty(4 * m))
    clops.enqueue_dense(cl_ctx, cl_ctx.to_device(x), m, dev, out, n, 0, scratch)
    got = cl_ctx.read(out, np.empty((m, n), np.float32))
    if kind != "q8":
        assert_rows_close(got, dref.dense_matmul_ref(x, host.data, kind), sum_tol(k))
        return
    assert host.scales is not None
    want = dref.dense_matmul_q8_ref(x, host.data, host.scales, k)
    xq = cl_ctx.read(scratch[0], np.empty((m, host.data.shape[1]), np.int8))
    rq, rs = dref.quantize_rows_q8_ref(x)
    if cl_ctx.exact_divide:  # the int8 codes, the exact sum and the float32 rescale in the reference's order
        np.testing.assert_array_equal(xq[:, :k], rq)
        assert not xq[:, k:].any()
        np.testing.assert_array_equal(cl_ctx.read(scratch[1], np.empty(m, np.float32)), rs)
        np.testing.assert_array_equal(got, want)
    else:  # 1 / xs may be 1 ulp off: codes within one step
        assert np.abs(xq[:, :k].astype(np.int16) - rq).max() <= 1
        assert_rows_close(got, want, 2e-2)


@pytest.mark.parametrize("eps", [1e-5, 1e-6])
@pytest.mark.parametrize(("m", "k"), [(1, 1), (6, 200), (3, 1001), (9, 2560)])
def test_rmsnorm_and_add_rmsnorm_match_the_reference(
    cl_ctx: kernels_opencl.Context, m: int, k: int, eps: float
) -> None:
    rng = np.random.default_rng(m * 10 + k)
    x, y = mixed_rows(rng, m, k), mixed_rows(rng, m, k)
    w = rng.uniform(0.5, 1.5, k).astype(np.float32)
    ld = k + 3  # a row stride past the row: the kernel must not read the gap
    xpad = np.full((m, ld), np.nan, np.float32)
    xpad[:, :k] = x
    out = cl_ctx.empty(4 * m * k)
    wb = cl_ctx.to_device(w)
    clops.enqueue_rmsnorm(cl_ctx, cl_ctx.to_device(xpad), ld, m, k, wb, eps, out)
    assert_rows_close(cl_ctx.read(out, np.empty((m, k), np.float32)), dref.rmsnorm_ref(x, w, eps), sum_tol(k))
    xr = cl_ctx.to_device(x)
    clops.enqueue_add_rmsnorm(cl_ctx, xr, cl_ctx.to_device(y), m, k, wb, eps, out)
    want_sum, want = dref.add_rmsnorm_ref(x, y, w, eps)
    np.testing.assert_array_equal(cl_ctx.read(xr, np.empty((m, k), np.float32)), want_sum)  # one add: exact
    assert_rows_close(cl_ctx.read(out, np.empty((m, k), np.float32)), want, sum_tol(k))


@pytest.mark.parametrize(("m", "heads", "d"), [(1, 1, 2), (6, 3, 16), (5, 7, 6), (4, 4, 128)])
def test_rope_matches_the_reference(cl_ctx: kernels_opencl.Context, m: int, heads: int, d: int) -> None:
    rng = np.random.default_rng(m + heads + d)
    q = rng.standard_normal((m, heads, d)).astype(np.float32)
    ctx_len = 40  # tables for 40 positions; the rows at positions 5 ..
    ang = np.arange(ctx_len)[:, None] * (1e-2 * np.arange(1, d // 2 + 1))[None] + rng.uniform(0, 6, d // 2)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    pos = np.arange(5, 5 + m, dtype=np.int32)
    qb = cl_ctx.to_device(q)
    clops.enqueue_rope(
        cl_ctx, qb, heads * d, m, heads, d, cl_ctx.to_device(pos), cl_ctx.to_device(cos), cl_ctx.to_device(sin)
    )
    assert_rows_close(cl_ctx.read(qb, np.empty_like(q)), dref.rope_ref(q, cos[pos], sin[pos]), 4 * EPS32)


@pytest.mark.parametrize("act", ["relu2", "silu"])
@pytest.mark.parametrize(("m", "f"), [(1, 1), (6, 50), (3, 1001)])
def test_glu_matches_the_reference(cl_ctx: kernels_opencl.Context, act: str, m: int, f: int) -> None:
    rng = np.random.default_rng(m + f)
    gu = (rng.standard_normal((m, 2 * f)) * 4).astype(np.float32)
    out = cl_ctx.empty(4 * m * f)
    clops.enqueue_glu(cl_ctx, cl_ctx.to_device(gu), m, f, out, act)
    # OpenCL's exp is within 3 ulp (full profile), then a divide and two products
    assert_rows_close(cl_ctx.read(out, np.empty((m, f), np.float32)), dref.glu_ref(gu, act), 8 * EPS32)


@pytest.mark.parametrize(
    ("nh", "nkv", "d", "start", "n"), [(1, 1, 2, 0, 1), (4, 2, 16, 9, 5), (6, 3, 5, 0, 7), (8, 1, 64, 30, 3)]
)
def test_attention_over_a_device_cache(
    cl_ctx: kernels_opencl.Context, nh: int, nkv: int, d: int, start: int, n: int
) -> None:
    rng = np.random.default_rng(nh + d + start + n)
    cap, layers, li = start + n + 4, 2, 1  # positions past the sequence hold garbage the kernel must not read
    qd = (nh + 2 * nkv) * d
    qkv = (rng.standard_normal((n, qd)) * 2).astype(np.float32)
    kc = (rng.standard_normal((layers, nkv, cap, d)) * 2).astype(np.float32)
    vc = rng.standard_normal((layers, nkv, cap, d)).astype(np.float32)
    kc[:, :, start + n :] = 1e30
    kb, vb = cl_ctx.to_device(kc), cl_ctx.to_device(vc)
    qb = cl_ctx.to_device(qkv)
    clops.enqueue_kv_store(cl_ctx, qb, qd, 0, n, (nh, nkv, d), kb, vb, li, cap, start)
    out = cl_ctx.empty(4 * n * nh * d)
    scratch = cl_ctx.empty(4 * n * nh * (start + n))
    clops.enqueue_attention(cl_ctx, qb, qd, 0, n, (nh, nkv, d), kb, vb, li, cap, start, out, nh * d, scratch)
    got = cl_ctx.read(out, np.empty((n, nh * d), np.float32))
    kw, vw = kc.copy(), vc.copy()
    kw[li, :, start : start + n] = qkv[:, nh * d : (nh + nkv) * d].reshape(n, nkv, d).transpose(1, 0, 2)
    vw[li, :, start : start + n] = qkv[:, (nh + nkv) * d :].reshape(n, nkv, d).transpose(1, 0, 2)
    np.testing.assert_array_equal(cl_ctx.read(kb, np.empty_like(kc)), kw)
    np.testing.assert_array_equal(cl_ctx.read(vb, np.empty_like(vc)), vw)
    q = qkv[:, : nh * d].reshape(n, nh, d)
    assert_rows_close(got, dref.attention_ref(q, kw[li], vw[li], start), sum_tol(d + start + n))


# ------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_refused(cl_ctx: kernels_opencl.Context) -> None:
    w = ref.TernaryMatrix.from_codes(np.ones((4, 10), np.int8))
    x = np.ones((2, 10), np.float32)
    with pytest.raises(TypeError, match="float32"):
        kernels_opencl.ternary_linear(x.astype(np.float64), w, cl_ctx)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels_opencl.ternary_linear(np.ones((10, 2), np.float32).T, w, cl_ctx)
    with pytest.raises(ValueError, match="NaN or inf"):
        kernels_opencl.ternary_linear(np.full((2, 10), np.nan, np.float32), w, cl_ctx)
    with pytest.raises(ValueError, match="inner dimensions"):
        kernels_opencl.ternary_linear(np.ones((2, 11), np.float32), w, cl_ctx)
    with pytest.raises(TypeError, match="int8"):
        kernels_opencl.ternary_matmul_int32(x, w, cl_ctx)
    with pytest.raises(TypeError, match="TernaryMatrix"):
        kernels_opencl.ternary_linear(x, np.ones((4, 10), np.int8), cl_ctx)
    with pytest.raises(ValueError, match="2-D"):
        kernels_opencl.quantize_activations(np.ones(10, np.float32), cl_ctx)


def test_a_buffer_beyond_the_largest_allocation_is_refused_by_name(cl_ctx: kernels_opencl.Context) -> None:
    limit = int(cl_ctx.device.max_mem_alloc_size)
    with pytest.raises(kernels_opencl.OpenCLError, match=r"MiB is more than .* allocates at once"):
        cl_ctx.empty(limit + 1)
    buf = cl_ctx.empty(1 << 20, touch=True)  # a normal one, zero-filled
    np.testing.assert_array_equal(cl_ctx.read(buf, np.ones(1 << 20, np.uint8)), 0)


def test_threads_sharing_a_context_get_their_own_results(cl_ctx: kernels_opencl.Context) -> None:
    import threading

    rng = np.random.default_rng(9)
    cases = []
    for i in range(4):
        w = ref.TernaryMatrix.from_codes(rng.integers(-1, 2, (20 + 7 * i, 300 + 50 * i)).astype(np.int8), 0.5)
        x = rng.standard_normal((1 + i, 300 + 50 * i)).astype(np.float32)
        cases.append((x, w, ref.ternary_linear(x, w)))
    bad: list[int] = []

    def run(j: int) -> None:
        x, w, want = cases[j]
        for _ in range(30):
            if not np.array_equal(kernels_opencl.ternary_linear(x, w, cl_ctx), want):
                bad.append(j)

    threads = [threading.Thread(target=run, args=(j,)) for j in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []


def test_weights_of_another_context_are_refused(cl_ctx: kernels_opencl.Context) -> None:
    other = kernels_opencl.Context(cl_ctx.info.index)
    dw = kernels_opencl.DeviceTernaryMatrix(other, ref.TernaryMatrix.from_codes(np.ones((4, 10), np.int8)))
    with pytest.raises(ValueError, match="another OpenCL context"):
        kernels_opencl.ternary_linear(np.ones((1, 10), np.float32), dw, cl_ctx)


def test_device_selectors(cl_ctx: kernels_opencl.Context) -> None:
    info = cl_ctx.info
    assert kernels_opencl.Context(info.index).info == info
    assert kernels_opencl.Context(info.name[:6].upper()).info.name == info.name  # fragment, any case
    with pytest.raises(kernels_opencl.OpenCLUnavailableError, match=r"no OpenCL device matches 'no-such-gpu'.*0:0"):
        kernels_opencl.Context("no-such-gpu")
    with pytest.raises(kernels_opencl.OpenCLUnavailableError, match=r"'9:9' does not exist"):
        kernels_opencl.Context("9:9")


def test_a_kernel_that_does_not_compile_names_file_device_and_log(
    cl_ctx: kernels_opencl.Context, tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kernels_opencl import device

    (tmp_path / "common.clh").write_text((device.CL_DIR / "common.clh").read_text())  # type: ignore[operator]
    (tmp_path / "broken_f32.cl").write_text(  # type: ignore[operator]
        "__kernel void broken_f32(__global float *x) { x[0] = undefined_name; }\n"
    )
    monkeypatch.setattr(device, "CL_DIR", tmp_path)
    ctx = kernels_opencl.Context(cl_ctx.info.index)
    with pytest.raises(kernels_opencl.KernelBuildError) as err:
        ctx.kernel("broken_f32")
    msg = str(err.value)
    assert "broken_f32.cl" in msg
    assert cl_ctx.info.name in msg
    assert "undefined_name" in msg  # the compiler's own words


def test_no_platform_is_a_clear_error() -> None:
    import subprocess
    import sys

    code = (
        "import kernels_opencl\n"
        "assert kernels_opencl.list_devices() == []\n"
        "try:\n    kernels_opencl.Context()\n"
        "except kernels_opencl.OpenCLUnavailableError as e:\n    print('ERR', e)\n"
    )
    env = {"OCL_ICD_VENDORS": "/nonexistent", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60)
    assert "ERR no OpenCL platform found" in out.stdout
