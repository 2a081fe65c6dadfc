"""Numeric ops of the forward pass, with the fast implementations picked once at import.

Ternary products go to :mod:`kernels_cython`'s compiled kernels when the extension is built, else to
:mod:`kernels_cython.reference` (same results, bit for bit).  The other ops (RMSNorm, RoPE, attention, gated
activations, dense products) go to this package's compiled :mod:`bitnet_actor.engine._ops` when built, else
to the numpy versions here.  Both follow transformers' float32 math: RMSNorm ``w * (x * rsqrt(mean(x^2) +
eps))``, NeoX RoPE ``x * cos + rotate_half(x) * sin``, softmax attention scaled by ``head_dim ** -0.5``,
``relu(g)^2 * u`` / ``silu(g) * u``; they differ from transformers only in float summation order and, in the
compiled softmax and SiLU, an exp that is within about 1 ulp of the C library's.

:data:`FAST_KERNELS` / :data:`FAST_OPS` say which implementations are in use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kernels_cython import reference as _kref

if TYPE_CHECKING:
    import numpy.typing as npt

    from bitnet_actor.engine.layers import DenseMatrix
    from kernels_cython.reference import TernaryMatrix

try:
    import kernels_cython as _kfast

    _kfast.ternary_linear  # noqa: B018  (raises ImportError when the extension is not built)
    FAST_KERNELS = True
except ImportError:  # extension not built
    _kfast = None  # type: ignore[assignment]
    FAST_KERNELS = False

try:
    from bitnet_actor.engine import _ops as _fast

    FAST_OPS = True
except ImportError:  # extension not built
    _fast = None  # type: ignore[assignment]
    FAST_OPS = False

__all__ = [
    "FAST_KERNELS",
    "FAST_OPS",
    "add_rmsnorm",
    "attention",
    "attn_block",
    "dense_matmul",
    "get_num_threads",
    "glu",
    "glu_norm",
    "layer_stack",
    "rmsnorm",
    "rope",
    "run_layers",
    "set_num_threads",
    "ternary_linear",
]

_CHUNK = 2048


def set_num_threads(n: int) -> None:
    """Set the threads the kernels and ops use.

    Args:
        n: threads (>= 1).
    """
    if _kfast is not None:
        _kfast.set_num_threads(n)
    if _fast is not None:
        _fast.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the kernels use (1 without the compiled kernels)."""
    return int(_kfast.get_num_threads()) if _kfast is not None else 1


def ternary_linear(x: npt.NDArray[np.float32], w: TernaryMatrix) -> npt.NDArray[np.float32]:
    """Quantize activations per row, exact ternary product, rescale.

    Args:
        x: float32 (M, K).
        w: ternary (N, K).

    Returns:
        float32 (M, N).
    """
    if _kfast is not None:
        return _kfast.ternary_linear(x, w)
    return _kref.ternary_linear(x, w)


def rmsnorm(x: npt.NDArray[np.float32], w: npt.NDArray[np.float32], eps: float) -> npt.NDArray[np.float32]:
    """RMSNorm of each row.

    Args:
        x: float32 (M, K).
        w: float32 (K,).
        eps: epsilon.

    Returns:
        float32 (M, K), a new array.
    """
    if _fast is not None:
        return _fast.rmsnorm(x, w, eps)
    var = np.mean(np.square(x), axis=1, keepdims=True, dtype=np.float32)  # (M, 1)
    inv = (np.float32(1) / np.sqrt(var + np.float32(eps))).astype(np.float32)
    return (w * (x * inv)).astype(np.float32)


def rope(x: npt.NDArray[np.float32], cos: npt.NDArray[np.float32], sin: npt.NDArray[np.float32]) -> None:
    """NeoX rotary embedding, in place.

    Args:
        x: float32 (M, H, D), rows of heads.
        cos: float32 (M, D // 2) for each row's position.
        sin: float32 (M, D // 2).
    """
    if _fast is not None:
        _fast.rope(x, cos, sin)
        return
    half = x.shape[2] // 2
    x1 = x[:, :, :half].copy()  # (M, H, D/2)
    x2 = x[:, :, half:]  # (M, H, D/2)
    c = cos[:, None, :]
    s = sin[:, None, :]
    x[:, :, :half] = x1 * c - x2 * s
    x[:, :, half:] = x2 * c + x1 * s


def attention(
    q: npt.NDArray[np.float32],
    k: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    start: int,
    out: npt.NDArray[np.float32],
) -> None:
    """Causal grouped-query attention of ``n`` new rows over a cache.

    Row ``i`` (at position ``start + i``) attends to cache positions ``0 .. start + i``.

    Args:
        q: float32 (n, H, D), the new rows' queries (RoPE applied).
        k: float32 (Hkv, >= start + n, D), the key cache (new keys written).
        v: float32 (Hkv, >= start + n, D), the value cache.
        start: position of the first new row.
        out: float32 (n, H * D), written.
    """
    if _fast is not None:
        _fast.attention(q, k, v, start, out)
        return
    n, nh, d = q.shape
    nkv = k.shape[0]
    group = nh // nkv
    t = start + n
    scale = np.float32(d**-0.5)
    o = out.reshape(n, nh, d)
    mask = None
    if n > 1:
        pos = np.arange(start, t)[:, None]  # (n, 1)
        mask = np.arange(t)[None, :] > pos  # (n, t)
    for g in range(nkv):
        kg = k[g, :t]  # (t, D)
        vg = v[g, :t]  # (t, D)
        qg = q[:, g * group : (g + 1) * group, :]  # (n, group, D)
        sc = np.matmul(qg, kg.T) * scale  # (n, group, t)
        if mask is not None:
            sc[np.broadcast_to(mask[:, None, :], sc.shape)] = -np.inf
        sc -= sc.max(axis=2, keepdims=True)
        np.exp(sc, out=sc)
        sc /= sc.sum(axis=2, keepdims=True)
        o[:, g * group : (g + 1) * group, :] = np.matmul(sc, vg)


def add_rmsnorm(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.float32], w: npt.NDArray[np.float32], eps: float
) -> npt.NDArray[np.float32]:
    """``x += y`` in place, then :func:`rmsnorm` of ``x``.

    Args:
        x: float32 (M, K), the residual stream (updated).
        y: float32 (M, K).
        w: float32 (K,).
        eps: epsilon.

    Returns:
        float32 (M, K), a new array.
    """
    if _fast is not None:
        return _fast.add_rmsnorm(x, y, w, eps)
    x += y
    return rmsnorm(x, w, eps)


def glu_norm(
    gu: npt.NDArray[np.float32], act: str, w: npt.NDArray[np.float32] | None, eps: float
) -> npt.NDArray[np.float32]:
    """:func:`glu`, then :func:`rmsnorm` with ``w`` unless it is None (BitNet's ``ffn_sub_norm``)."""
    if _fast is not None:
        return _fast.glu_norm(gu, act == "relu2", w, eps)
    a = glu(gu, act)
    return rmsnorm(a, w, eps) if w is not None else a


def attn_block(
    qkv: npt.NDArray[np.float32],
    heads: tuple[int, int, int],
    cos: npt.NDArray[np.float32],
    sin: npt.NDArray[np.float32],
    kcaches: list[npt.NDArray[np.float32]],
    vcaches: list[npt.NDArray[np.float32]],
    bounds: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
    out: npt.NDArray[np.float32],
    sub_w: npt.NDArray[np.float32] | None = None,
    eps: float = 1e-5,
) -> None:
    """RoPE, KV-cache writes and causal attention for the rows of several sequences, then the sub-norm.

    Args:
        qkv: float32 (M, (H + 2 Hkv) D), the fused q/k/v product (q and k are rotated in place).
        heads: ``(H, Hkv, D)``.
        cos: float32 (M, D/2) per row's position.
        sin: float32 (M, D/2).
        kcaches: per sequence, its layer's key cache (Hkv, cap, D).
        vcaches: per sequence, its layer's value cache.
        bounds: int64 (S + 1,): sequence ``s`` owns rows ``bounds[s] .. bounds[s+1]``.
        starts: int64 (S,): position of each sequence's first row.
        out: float32 (M, H * D), written.
        sub_w: float32 (H * D,): RMSNorm ``out`` in place with it (BitNet's ``attn_sub_norm``), or None.
        eps: its epsilon.
    """
    nh, nkv, hd = heads
    if _fast is not None:
        _fast.attn_block(qkv, nh, nkv, hd, cos, sin, kcaches, vcaches, bounds, starts, out, sub_w, eps)
        return
    m = qkv.shape[0]
    qd, kvd = nh * hd, nkv * hd
    q = np.ascontiguousarray(qkv[:, :qd]).reshape(m, nh, hd)
    k = np.ascontiguousarray(qkv[:, qd : qd + kvd]).reshape(m, nkv, hd)
    v = qkv[:, qd + kvd :].reshape(m, nkv, hd)
    rope(q, cos, sin)
    rope(k, cos, sin)
    for s, (kc, vc) in enumerate(zip(kcaches, vcaches, strict=True)):
        r0, r1, p = int(bounds[s]), int(bounds[s + 1]), int(starts[s])
        kc[:, p : p + r1 - r0] = k[r0:r1].transpose(1, 0, 2)
        vc[:, p : p + r1 - r0] = v[r0:r1].transpose(1, 0, 2)
        attention(q[r0:r1], kc, vc, p, out[r0:r1])
    if sub_w is not None:
        out[...] = rmsnorm(out, sub_w, eps)


def glu(gu: npt.NDArray[np.float32], act: str) -> npt.NDArray[np.float32]:
    """Gated activation ``act(gate) * up`` of a fused (M, 2F) gate/up product.

    Args:
        gu: float32 (M, 2F): gate in the first F columns, up in the last F.
        act: ``"relu2"`` or ``"silu"``.

    Returns:
        float32 (M, F), a new array.
    """
    if _fast is not None:
        return _fast.glu(gu, act == "relu2")
    f = gu.shape[1] // 2
    g = gu[:, :f]
    u = gu[:, f:]
    if act == "relu2":
        r = np.maximum(g, np.float32(0))
        a = r * r
    else:
        a = g / (np.float32(1) + np.exp(-g))
    return np.ascontiguousarray(a * u, dtype=np.float32)


def dense_matmul(x: npt.NDArray[np.float32], m: DenseMatrix) -> npt.NDArray[np.float32]:
    """``x @ W.T`` with W converted to float32 on the fly.

    Args:
        x: float32 (M, K).
        m: the matrix (N, K).

    Returns:
        float32 (M, N).
    """
    if _fast is not None:
        return _fast.dense_matmul(x, m.data, m.kind, m.scales, None, m.offsets)
    if m.kind == "q8":
        return _q8_matmul(x, m)
    if m.kind == "q6":
        return _q6_matmul(x, m)
    if m.kind == "f32":
        return np.matmul(x, m.data.T)
    n = m.shape[0]
    out = np.empty((x.shape[0], n), dtype=np.float32)
    for r0 in range(0, n, _CHUNK):
        r1 = min(n, r0 + _CHUNK)
        out[:, r0:r1] = x @ m.rows_f32(r0, r1).T
    return out


def _q8_matmul(x: npt.NDArray[np.float32], m: DenseMatrix) -> npt.NDArray[np.float32]:
    """int8 activations (per-row absmax / 127) times the int8 rows, as the compiled op."""
    assert m.scales is not None
    amax = np.abs(x).max(axis=1)
    xs = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)  # (M,)
    xq = np.clip(np.rint(x * (np.float32(1) / xs)[:, None]), -127, 127).astype(np.int32)  # (M, K)
    acc = xq @ m.data[:, : m.cols].astype(np.int32).T  # (M, N) exact
    return (acc.astype(np.float32) * xs[:, None] * m.scales[None, :]).astype(np.float32)


def layer_stack(specs: list[tuple[Any, ...]], heads: tuple[int, int, int], relu2: bool, eps: float) -> Any | None:
    """The compiled layer loop over these layers, or None without the compiled kernels and ops.

    Args:
        specs: per layer ``(attn_norm, qkv, attn_sub_norm, o, ffn_norm, gate_up, down, ffn_sub_norm)`` (see
            :class:`bitnet_actor.engine._ops.LayerStack`).
        heads: ``(H, Hkv, D)``.
        relu2: squared-ReLU gate (else SiLU).
        eps: the RMSNorm epsilon.

    Returns:
        A ``LayerStack`` for :func:`run_layers`, or None.
    """
    if _fast is None or _kfast is None:
        return None
    nh, nkv, hd = heads
    return _fast.LayerStack(specs, nh, nkv, hd, relu2, eps)


def run_layers(
    stack: Any,
    x: npt.NDArray[np.float32],
    cos: npt.NDArray[np.float32],
    sin: npt.NDArray[np.float32],
    kcaches: list[npt.NDArray[Any]],
    vcaches: list[npt.NDArray[Any]],
    bounds: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
    timings: npt.NDArray[np.float64] | None = None,
) -> None:
    """Every decoder layer on the residual stream ``x`` in place, in one compiled call (see :func:`layer_stack`).

    Args:
        stack: from :func:`layer_stack`.
        x: float32 (M, hidden).
        cos: float32 (M, D/2) per row's position.
        sin: float32 (M, D/2).
        kcaches: per sequence, its whole key cache (layers, Hkv, cap, D).
        vcaches: per sequence, its whole value cache.
        bounds: int64 (S + 1,): sequence ``s`` owns rows ``bounds[s] .. bounds[s+1]``.
        starts: int64 (S,): position of each sequence's first row.
        timings: float64 (3,): seconds in the ternary products, attention and other ops are added, or None.
    """
    stack.forward(x, cos, sin, kcaches, vcaches, bounds, starts, timings)


def _q6_matmul(x: npt.NDArray[np.float32], m: DenseMatrix) -> npt.NDArray[np.float32]:
    """int8 activations (per-row absmax / 127) times the q6 rows' integer weights (block scale x code), exact in
    int64, then the scales: the compiled op's definition."""
    assert m.scales is not None
    amax = np.abs(x).max(axis=1)
    xs = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)  # (M,)
    xq = np.clip(np.rint(x * (np.float32(1) / xs)[:, None]), -127, 127).astype(np.int64)  # (M, K)
    n, k = m.shape
    out = np.empty((x.shape[0], n), dtype=np.float32)
    for r0 in range(0, n, _CHUNK):
        r1 = min(n, r0 + _CHUNK)
        codes, blk = m.q6_codes(r0, r1)
        w = codes[:, :k].astype(np.int64) * np.repeat(blk, 16, axis=1)[:, :k].astype(np.int64)  # (r, K)
        acc = xq @ w.T  # (M, r) exact
        out[:, r0:r1] = acc.astype(np.float32) * xs[:, None] * m.scales[None, r0:r1]
    return out


def as_f32(a: Any) -> npt.NDArray[np.float32]:
    """``a`` as a C-contiguous float32 array (no copy when it already is one)."""
    return np.ascontiguousarray(a, dtype=np.float32)
