"""Device matrices and the ops that run on them.

Two levels:

* **numpy level**, the public names of :mod:`kernels_cython` with an optional ``ctx``
  (default :func:`~kernels_opencl.device.default_context`): :func:`quantize_activations`,
  :func:`ternary_matmul_int32`, :func:`ternary_linear`.  They copy activations in and results out; the
  weights go in as a :class:`DeviceTernaryMatrix` (uploaded once) or a
  :class:`kernels_cython.reference.TernaryMatrix` (uploaded for this call).  Same arguments, same checks,
  same results as the reference: the int8 activations and the int32 products bit for bit, ``ternary_linear``
  bit for bit with one scale per row (float division and multiply in the reference's order), within float
  tolerance with per-block scales.
* **buffer level** (``enqueue_*``): launches on device buffers with no host copies, for the engine's
  forward pass.  Launches go to the context's in-order queue and return at once.

Launches set arguments on kernels shared per context: the numpy-level functions hold ``ctx.lock`` around theirs,
and callers of the buffer-level ones must too when several threads share a context.

The weight layout on the device is :mod:`kernels_cython.reference`'s, byte for byte: each row's
``Kp / 4`` code bytes (a multiple of 64), read as 32-bit words.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels_cython import reference as kref
from kernels_opencl.device import MT, Context, default_context

__all__ = [
    "DeviceDenseMatrix",
    "DeviceTernaryMatrix",
    "enqueue_add_rmsnorm",
    "enqueue_attention",
    "enqueue_bias_add",
    "enqueue_dense",
    "enqueue_gather_rows",
    "enqueue_glu",
    "enqueue_kv_store",
    "enqueue_quantize",
    "enqueue_residual_add",
    "enqueue_rmsnorm",
    "enqueue_rope",
    "enqueue_ternary_linear",
    "enqueue_ternary_matmul",
    "quantize_activations",
    "ternary_linear",
    "ternary_matmul_int32",
]

# Preferred work-group sizes; Context.work_group caps them by what the device and kernel allow.
_WG_ROW_GPU, _WG_ROW_CPU = 256, 16
_WG_MAT_GPU, _WG_MAT_CPU = 32, 1
_WG_ATT_GPU, _WG_ATT_CPU = 64, 8


def _i(v: int) -> np.int32:
    return np.int32(v)


def _f(v: float) -> np.float32:
    return np.float32(v)


def _row_wg(ctx: Context, name: str) -> int:
    return ctx.work_group(name, _WG_ROW_GPU if ctx.is_gpu else _WG_ROW_CPU)


def _mat_wg(ctx: Context, name: str) -> int:
    return ctx.work_group(name, _WG_MAT_GPU if ctx.is_gpu else _WG_MAT_CPU)


def _local(ctx: Context, n: int) -> Any:
    return ctx.cl.LocalMemory(4 * n)


class DeviceTernaryMatrix:
    """A :class:`~kernels_cython.reference.TernaryMatrix` uploaded to a device.

    Attributes:
        ctx: the context.
        shape: ``(N, K)``.
        padded_k: ``Kp``.
        packed: the code bytes (N, Kp / 4) on the device.
        scales: float32 (N,) per-row scales, or (N, Kp / 256) per-block scales when they vary within rows.
        block_scaled: whether ``scales`` is per block.
        nbytes: device bytes (codes and scales).
    """

    __slots__ = ("block_scaled", "ctx", "nbytes", "packed", "padded_k", "scales", "shape")

    def __init__(self, ctx: Context, w: kref.TernaryMatrix) -> None:
        """Upload ``w``.

        Args:
            ctx: the context.
            w: the matrix.
        """
        if not isinstance(w, kref.TernaryMatrix):
            raise TypeError(f"w must be a TernaryMatrix, got {type(w).__name__}")
        n = w.shape[0]
        self.ctx = ctx
        self.shape = w.shape
        self.padded_k = w.padded_k
        self.packed = ctx.to_device(w.packed)
        sc = w.scale
        if not isinstance(sc, np.ndarray):
            host = np.full(n, sc, dtype=np.float32)  # (N,)
            self.block_scaled = False
        elif w.row_scale is not None:
            host = w.row_scale
            self.block_scaled = False
        else:
            host = sc  # (N, Kb)
            self.block_scaled = True
        self.scales = ctx.to_device(host)
        self.nbytes = int(w.packed.nbytes + host.nbytes)


class DeviceDenseMatrix:
    """A dense float matrix (N, K) on a device, kept as stored: f32, f16, bf16 (uint16) or q8 (int8 per row).

    Attributes:
        ctx: the context.
        kind: ``"f32"``, ``"f16"``, ``"bf16"`` or ``"q8"``.
        shape: ``(N, K)``.
        padded_k: row length of ``data`` in elements (``K``; for q8 a multiple of 64).
        data: the weights on the device.
        scales: float32 (N,) for q8, else None.
        nbytes: device bytes.
    """

    __slots__ = ("ctx", "data", "kind", "nbytes", "padded_k", "scales", "shape")

    def __init__(
        self,
        ctx: Context,
        kind: str,
        data: np.ndarray[Any, Any],
        scales: np.ndarray[Any, Any] | None = None,
        cols: int | None = None,
    ) -> None:
        """Upload a stored matrix (row by row blocks, so a memory-mapped file is never read whole).

        Args:
            ctx: the context.
            kind: see the attributes.
            data: (N, K) float32 / float16 / uint16, or int8 (N, Kp) for q8.
            scales: float32 (N,) for q8.
            cols: K for q8.
        """
        expected = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16, "q8": np.int8}
        if kind not in expected or data.dtype != expected[kind] or data.ndim != 2:
            raise ValueError(f"a {kind} matrix needs a 2-D array of the matching dtype, got {data.dtype}")
        if kind == "q8" and (scales is None or scales.shape != (data.shape[0],) or data.shape[1] % 16):
            raise ValueError("a q8 matrix needs float32 scales (N,) and a row length that is a multiple of 16")
        n, kp = int(data.shape[0]), int(data.shape[1])
        self.ctx = ctx
        self.kind = kind
        self.shape = (n, int(cols) if cols is not None else kp)
        self.padded_k = kp
        self.data = ctx.empty(data.nbytes)  # refuses more than the device's largest allocation, naming both
        step = max(1, (64 << 20) // max(1, data.itemsize * kp))  # about 64 MiB per copy
        for r0 in range(0, n, step):
            part = np.ascontiguousarray(data[r0 : r0 + step])
            ctx.cl.enqueue_copy(ctx.queue, self.data, part, dst_offset=r0 * kp * data.itemsize, is_blocking=True)
        self.scales = ctx.to_device(np.ascontiguousarray(scales, dtype=np.float32)) if scales is not None else None
        self.nbytes = int(data.nbytes) + (n * 4 if scales is not None else 0)


# ------------------------------------------------------------------------------------------ buffer level


def enqueue_quantize(ctx: Context, x: Any, ldx: int, m: int, k: int, kp: int, xq: Any, s: Any) -> None:
    """Quantize ``m`` rows of ``x`` (row stride ``ldx`` floats, ``k`` columns) into ``xq`` (m, kp) and ``s`` (m,)."""
    name = "quantize_rows_f32_i8"
    wg = _row_wg(ctx, name)
    ctx.kernel(name)(ctx.queue, (m * wg,), (wg,), x, _i(ldx), _i(k), _i(kp), xq, s, _local(ctx, wg))


def enqueue_quantize_q8(ctx: Context, x: Any, m: int, k: int, kp: int, xq: Any, xs: Any) -> None:
    """Symmetric int8 quantization of ``m`` rows (the q8 output layer's activations)."""
    name = "quantize_rows_q8_f32_i8"
    wg = _row_wg(ctx, name)
    ctx.kernel(name)(ctx.queue, (m * wg,), (wg,), x, _i(k), _i(k), _i(kp), xq, xs, _local(ctx, wg))


def _launch_matrix(ctx: Context, name: str, n: int, m: int, *args: Any) -> None:
    """Launch a matrix kernel: one work-group per output row and tile of MT activation rows, ending in
    ``(out, ldo, col, local reduction scratch)`` after ``args``."""
    wg = _mat_wg(ctx, name)
    ctx.kernel(name)(ctx.queue, (n * wg, -(-m // MT)), (wg, 1), *args, _local(ctx, wg))


def enqueue_ternary_matmul(
    ctx: Context, xq: Any, m: int, w: DeviceTernaryMatrix, out: Any, ldo: int, col: int = 0
) -> None:
    """``out[:m, col:col+N] = xq @ codes.T`` exactly in int32."""
    kp = w.padded_k
    _launch_matrix(
        ctx, "ternary_matmul_i8_i32", w.shape[0], m, w.packed, _i(kp // 64), xq, _i(kp), _i(m), out, _i(ldo), _i(col)
    )


def enqueue_ternary_linear(
    ctx: Context, xq: Any, s: Any, m: int, w: DeviceTernaryMatrix, out: Any, ldo: int, col: int = 0
) -> None:
    """``out[:m, col:col+N]`` = the rescaled ternary product of quantized activations (``xq``, ``s``)."""
    name = "ternary_linear_blockscaled_i8_f32" if w.block_scaled else "ternary_linear_i8_f32"
    kp = w.padded_k
    _launch_matrix(
        ctx, name, w.shape[0], m, w.packed, _i(kp // 64), xq, _i(kp), _i(m), s, w.scales, out, _i(ldo), _i(col)
    )


def enqueue_dense(
    ctx: Context,
    x: Any,
    m: int,
    w: DeviceDenseMatrix,
    out: Any,
    ldo: int,
    col: int = 0,
    scratch: tuple[Any, Any] | None = None,
) -> None:
    """``out[:m, col:col+N] = x @ W.T`` for float activations ``x`` (m, K).

    Args:
        ctx: the context.
        x: float32 (m, K) on the device.
        m: rows.
        w: the matrix.
        out: float32 output.
        ldo: its row stride.
        col: first output column.
        scratch: for q8: int8 (m, Kp) and float32 (m,) buffers for the quantized activations.
    """
    n, k = w.shape
    if w.kind != "q8":
        _launch_matrix(ctx, f"dense_matmul_{w.kind}_f32", n, m, w.data, _i(k), x, _i(m), out, _i(ldo), _i(col))
        return
    if scratch is None:
        raise ValueError("a q8 product needs scratch buffers")
    xq, xs = scratch
    enqueue_quantize_q8(ctx, x, m, k, w.padded_k, xq, xs)
    _launch_matrix(
        ctx, "dense_matmul_q8_i8_f32", n, m, w.data, _i(w.padded_k), xq, xs, w.scales, _i(m), out, _i(ldo), _i(col)
    )


def enqueue_rmsnorm(
    ctx: Context, x: Any, ldx: int, m: int, k: int, w: Any, eps: float, out: Any, ldo: int | None = None
) -> None:
    """``out = rmsnorm(x) * w`` row by row (``out`` may be ``x``)."""
    name = "rmsnorm_f32"
    wg = _row_wg(ctx, name)
    ctx.kernel(name)(
        ctx.queue, (m * wg,), (wg,), x, _i(ldx), _i(k), w, _f(eps), out, _i(k if ldo is None else ldo), _local(ctx, wg)
    )


def enqueue_add_rmsnorm(ctx: Context, x: Any, y: Any, m: int, k: int, w: Any, eps: float, out: Any) -> None:
    """``x += y``; ``out = rmsnorm(x) * w`` (rows of ``k`` floats, contiguous)."""
    name = "add_rmsnorm_f32"
    wg = _row_wg(ctx, name)
    ctx.kernel(name)(ctx.queue, (m * wg,), (wg,), x, y, _i(k), w, _f(eps), out, _local(ctx, wg))


def enqueue_residual_add(ctx: Context, x: Any, y: Any, n: int) -> None:
    """``x[:n] += y[:n]``."""
    ctx.kernel("residual_add_f32")(ctx.queue, (-(-n // 64) * 64,), None, x, y, _i(n))


def enqueue_bias_add(ctx: Context, out: Any, ldo: int, col: int, m: int, n: int, b: Any) -> None:
    """``out[:m, col:col+n] += b``."""
    ctx.kernel("bias_add_f32")(ctx.queue, (n, m), None, out, _i(ldo), _i(col), _i(n), b)


def enqueue_rope(ctx: Context, qkv: Any, ld: int, m: int, heads: int, d: int, pos: Any, cos: Any, sin: Any) -> None:
    """NeoX RoPE in place on the first ``heads`` heads of ``m`` rows; ``pos`` int32 (m,), tables (ctx, d/2)."""
    ctx.kernel("rope_neox_f32")(ctx.queue, (d // 2, heads, m), None, qkv, _i(ld), _i(d), pos, cos, sin)


def enqueue_kv_store(
    ctx: Context,
    qkv: Any,
    ld: int,
    row0: int,
    n: int,
    heads: tuple[int, int, int],
    kc: Any,
    vc: Any,
    layer: int,
    cap: int,
    p0: int,
) -> None:
    """Write ``n`` rows' keys and values (after RoPE) into a sequence's cache: layer ``layer``, positions ``p0 ..``."""
    nh, nkv, d = heads
    ctx.kernel("kv_store_f32")(
        ctx.queue, (d, nkv, n), None, qkv, _i(ld), _i(row0), _i(nh), _i(d), kc, vc, _i(layer), _i(cap), _i(p0)
    )


def enqueue_attention(
    ctx: Context,
    qkv: Any,
    ld: int,
    row0: int,
    n: int,
    heads: tuple[int, int, int],
    kc: Any,
    vc: Any,
    layer: int,
    cap: int,
    start: int,
    out: Any,
    ldo: int,
    scratch: Any,
) -> None:
    """Causal attention of ``n`` rows of one sequence (rows ``row0 ..`` of ``qkv``, at positions ``start ..``) over
    layer ``layer`` of its cache; ``scratch`` holds n * H * (start + n) floats (callers chunk long prompts)."""
    nh, nkv, d = heads
    name = "attention_f32"
    wg = ctx.work_group(name, _WG_ATT_GPU if ctx.is_gpu else _WG_ATT_CPU)
    ctx.kernel(name)(
        ctx.queue,
        (n * wg, nh),
        (wg, 1),
        qkv,
        _i(ld),
        _i(row0),
        _i(nh),
        _i(nkv),
        _i(d),
        kc,
        vc,
        _i(layer),
        _i(cap),
        _i(start),
        _f(float(np.float32(d) ** np.float32(-0.5))),
        out,
        _i(ldo),
        scratch,
        _i(start + n),
        _local(ctx, wg),
    )


def enqueue_glu(ctx: Context, gu: Any, m: int, f: int, out: Any, act: str) -> None:
    """``out (m, f) = act(gate) * up`` of a fused (m, 2f) product; ``act`` is ``"relu2"`` or ``"silu"``."""
    name = "glu_relu2_f32" if act == "relu2" else "glu_silu_f32"
    ctx.kernel(name)(ctx.queue, (f, m), None, gu, _i(f), out)


def enqueue_gather_rows(ctx: Context, x: Any, k: int, rows: Any, n: int, out: Any) -> None:
    """``out[i] = x[rows[i]]`` for ``n`` rows of ``k`` floats; ``rows`` int32 on the device."""
    ctx.kernel("gather_rows_f32")(ctx.queue, (k, n), None, x, _i(k), rows, out)


# ------------------------------------------------------------------------------------------ numpy level


def _ctx(ctx: Context | None) -> Context:
    return ctx if ctx is not None else default_context()


def _device_matrix(ctx: Context, w: Any) -> DeviceTernaryMatrix:
    if isinstance(w, DeviceTernaryMatrix):
        if w.ctx is not ctx:
            raise ValueError("the weights were uploaded to another OpenCL context")
        return w
    return DeviceTernaryMatrix(ctx, w)


def _check_weights(w: Any, k: int) -> None:
    if isinstance(w, DeviceTernaryMatrix):
        if w.shape[1] != k:
            raise ValueError(f"inner dimensions differ: x has K={k} columns, w has shape {w.shape}")
        return
    kref.check_weights(w, k)


def quantize_activations(x: Any, ctx: Context | None = None) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Per-row absmax quantization to int8 on the device (as :func:`kernels_cython.reference.quantize_activations`).

    Args:
        x: float32 (M, K), finite, C-contiguous.
        ctx: the context (default: the process's).

    Returns:
        ``(xq int8 (M, K), s float32 (M,))``.
    """
    kref.check_float_matrix(x)
    c = _ctx(ctx)
    m, k = x.shape
    if m == 0:
        return np.empty((0, k), np.int8), np.empty(0, np.float32)
    with c.lock:
        xb = c.to_device(x)
        xq = c.empty(m * k)
        s = c.empty(4 * m)
        enqueue_quantize(c, xb, k, m, k, k, xq, s)
        out_q = c.read(xq, np.empty((m, k), np.int8))
        out_s = c.read(s, np.empty(m, np.float32))
    return out_q, out_s


def ternary_matmul_int32(xq: Any, w: Any, ctx: Context | None = None) -> np.ndarray[Any, Any]:
    """Exact int32 product ``xq @ codes.T`` on the device.

    Args:
        xq: int8 (M, K), C-contiguous.
        w: a :class:`kernels_cython.reference.TernaryMatrix` or a :class:`DeviceTernaryMatrix` (N, K).
        ctx: the context (default: ``w``'s, else the process's).

    Returns:
        int32 (M, N).
    """
    kref.check_matrix(xq, np.int8, "xq")
    _check_weights(w, xq.shape[1])
    c = w.ctx if isinstance(w, DeviceTernaryMatrix) and ctx is None else _ctx(ctx)
    dw = _device_matrix(c, w)
    m, k = xq.shape
    n = dw.shape[0]
    if m == 0:
        return np.empty((0, n), np.int32)
    padded = np.zeros((m, dw.padded_k), np.int8)  # (M, Kp)
    padded[:, :k] = xq
    with c.lock:
        xb = c.to_device(padded)
        out = c.empty(4 * m * n)
        enqueue_ternary_matmul(c, xb, m, dw, out, n)
        return c.read(out, np.empty((m, n), np.int32))


def ternary_linear(x: Any, w: Any, ctx: Context | None = None) -> np.ndarray[Any, Any]:
    """Quantize, exact ternary product and rescale on the device (as :func:`kernels_cython.reference.ternary_linear`).

    Args:
        x: float32 (M, K), finite, C-contiguous.
        w: a :class:`kernels_cython.reference.TernaryMatrix` or a :class:`DeviceTernaryMatrix` (N, K).
        ctx: the context (default: ``w``'s, else the process's).

    Returns:
        float32 (M, N).
    """
    kref.check_float_matrix(x)
    _check_weights(w, x.shape[1])
    c = w.ctx if isinstance(w, DeviceTernaryMatrix) and ctx is None else _ctx(ctx)
    dw = _device_matrix(c, w)
    m, k = x.shape
    n = dw.shape[0]
    if m == 0:
        return np.empty((0, n), np.float32)
    with c.lock:
        xb = c.to_device(x)
        xq = c.empty(m * dw.padded_k)
        s = c.empty(4 * m)
        enqueue_quantize(c, xb, k, m, k, dw.padded_k, xq, s)
        out = c.empty(4 * m * n)
        enqueue_ternary_linear(c, xq, s, m, dw, out, n)
        return c.read(out, np.empty((m, n), np.float32))
