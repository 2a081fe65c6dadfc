"""The OpenCL kernels against the numpy reference, on every OpenCL device found.

Integer paths are compared exactly (int8 activations and scales bit for bit, int32 products), the
per-row-scaled linear layer bit for bit too (the kernel divides then multiplies with correctly rounded
float32 division, as the reference does); float ops by relative norm: <= 1e-6 where only summation order
differs (RMSNorm, dense products, attention: float32 sums of a few hundred terms differ by ~1e-7).
"""

from __future__ import annotations

import numpy as np
import pytest

import kernels_opencl
from bitnet_actor.engine import ops as engine_ops
from bitnet_actor.engine.layers import DenseMatrix
from kernels_cython import reference as ref
from kernels_opencl import ops as clops

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


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16", "q8"])
def test_dense_products(cl_ctx: kernels_opencl.Context, kind: str) -> None:
    rng = np.random.default_rng(6)
    m, n, k = 5, 37, 131
    wf = rng.standard_normal((n, k)).astype(np.float32)
    host = {
        "f32": DenseMatrix("f32", wf),
        "f16": DenseMatrix("f16", wf.astype(np.float16)),
        "bf16": DenseMatrix("bf16", (wf.view(np.uint32) >> 16).astype(np.uint16)),
    }.get(kind) or DenseMatrix.quantize_q8(DenseMatrix("f32", wf))
    x = rng.standard_normal((m, k)).astype(np.float32)
    dev = clops.DeviceDenseMatrix(cl_ctx, host.kind, host.data, host.scales, host.cols)
    xb = cl_ctx.to_device(x)
    out = cl_ctx.empty(4 * m * n)
    scratch = (cl_ctx.empty(m * host.data.shape[1]), cl_ctx.empty(4 * m))
    clops.enqueue_dense(cl_ctx, xb, m, dev, out, n, 0, scratch)
    got = cl_ctx.read(out, np.empty((m, n), np.float32))
    want = engine_ops.dense_matmul(x, host)
    assert rel(got, want) < 1e-6


def test_norms_rope_glu(cl_ctx: kernels_opencl.Context) -> None:
    rng = np.random.default_rng(7)
    m, k = 6, 200
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, k).astype(np.float32)
    xb, yb, wb, out = cl_ctx.to_device(x), cl_ctx.to_device(y), cl_ctx.to_device(w), cl_ctx.empty(4 * m * k)
    clops.enqueue_rmsnorm(cl_ctx, xb, k, m, k, wb, 1e-5, out)
    assert rel(cl_ctx.read(out, np.empty((m, k), np.float32)), engine_ops.rmsnorm(x, w, 1e-5)) < 1e-6
    xr = cl_ctx.empty(4 * m * k)
    cl_ctx.write(xr, x)
    clops.enqueue_add_rmsnorm(cl_ctx, xr, yb, m, k, wb, 1e-5, out)
    x2 = x + y
    assert rel(cl_ctx.read(xr, np.empty((m, k), np.float32)), x2) == 0
    assert rel(cl_ctx.read(out, np.empty((m, k), np.float32)), engine_ops.rmsnorm(x2, w, 1e-5)) < 1e-6
    # RoPE on 3 heads of 16 at positions 5.., tables for 32 positions
    d, heads = 16, 3
    q = rng.standard_normal((m, heads, d)).astype(np.float32)
    ang = np.arange(32, dtype=np.float32)[:, None] * (1e-2 * np.arange(1, d // 2 + 1, dtype=np.float32))[None]
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    pos = np.arange(5, 5 + m, dtype=np.int32)
    qb = cl_ctx.empty(q.nbytes)
    cl_ctx.write(qb, q)
    clops.enqueue_rope(
        cl_ctx, qb, heads * d, m, heads, d, cl_ctx.to_device(pos), cl_ctx.to_device(cos), cl_ctx.to_device(sin)
    )
    want = q.copy()
    engine_ops.rope(want, cos[pos], sin[pos])
    assert rel(cl_ctx.read(qb, np.empty_like(q)), want) < 1e-6
    # gated units
    gu = rng.standard_normal((m, 2 * 50)).astype(np.float32)
    gub, ab = cl_ctx.to_device(gu), cl_ctx.empty(4 * m * 50)
    for act in ("relu2", "silu"):
        clops.enqueue_glu(cl_ctx, gub, m, 50, ab, act)
        assert rel(cl_ctx.read(ab, np.empty((m, 50), np.float32)), engine_ops.glu(gu, act)) < 1e-6


def test_attention_over_a_device_cache(cl_ctx: kernels_opencl.Context) -> None:
    rng = np.random.default_rng(8)
    nh, nkv, d, cap, layers = 4, 2, 16, 40, 2
    start, n = 9, 5  # 9 positions already cached, 5 new rows
    qd = (nh + 2 * nkv) * d
    qkv = rng.standard_normal((n, qd)).astype(np.float32)
    kc = rng.standard_normal((layers, nkv, cap, d)).astype(np.float32)
    vc = rng.standard_normal((layers, nkv, cap, d)).astype(np.float32)
    li = 1
    kb, vb = cl_ctx.empty(kc.nbytes), cl_ctx.empty(vc.nbytes)
    cl_ctx.write(kb, kc)
    cl_ctx.write(vb, vc)
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
    want = np.empty((n, nh * d), np.float32)
    q = np.ascontiguousarray(qkv[:, : nh * d]).reshape(n, nh, d)
    engine_ops.attention(q, kw[li], vw[li], start, want)
    assert rel(got, want) < 1e-6


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
