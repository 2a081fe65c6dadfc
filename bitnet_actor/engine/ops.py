"""Numeric ops of the forward pass, with the fast implementations picked once at import.

Ternary products go to :mod:`kernels_cython`'s compiled kernels when the extension is built, else to
:mod:`kernels_cython.reference` (same results, bit for bit).  The other ops (RMSNorm, RoPE, attention, gated
activations, dense products) go to this package's compiled :mod:`bitnet_actor.engine._ops` when built, else
to their numpy definitions in :mod:`kernels_cython.reference_dense`, which the compiled and OpenCL versions are
tested against.  They follow transformers' math: RMSNorm ``w * (x * rsqrt(mean(x^2) + eps))``, NeoX RoPE
``x * cos + rotate_half(x) * sin``, softmax attention scaled by ``head_dim ** -0.5``, ``relu(g)^2 * u`` /
``silu(g) * u``; the compiled ops differ from the definition only in float32 summation order and, in the
softmax and SiLU, an exp that is within about 1 ulp of the C library's.

:data:`FAST_KERNELS` / :data:`FAST_OPS` say which implementations are in use.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np

from kernels_cython import reference as _kref
from kernels_cython import reference_dense as _dref

if TYPE_CHECKING:
    from collections.abc import Iterator

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
    "numpy_reference",
    "rmsnorm",
    "rope",
    "run_layers",
    "set_num_threads",
    "ternary_linear",
]


@contextlib.contextmanager
def numpy_reference() -> Iterator[None]:
    """Inside the block every op here runs its numpy reference (for checks of the compiled code).

    It switches this module's implementations, so it affects every thread: not for use while serving.
    """
    global _fast, _kfast  # the one switch of the implementations picked at import
    saved = _fast, _kfast
    _fast, _kfast = None, None  # type: ignore[assignment]
    try:
        yield
    finally:
        _fast, _kfast = saved


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
    return _dref.rmsnorm_ref(x, w, eps)


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
    x[...] = _dref.rope_ref(x, cos, sin)


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
    out[...] = _dref.attention_ref(q, k, v, start)


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
    x[...], normed = _dref.add_rmsnorm_ref(x, y, w, eps)
    return normed


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
    return _dref.glu_ref(gu, act)


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
    if m.kind in ("q8", "q6"):
        assert m.scales is not None
        ref = _dref.dense_matmul_q8_ref if m.kind == "q8" else _dref.dense_matmul_q6_ref
        return ref(x, m.data, m.scales, m.cols)
    return _dref.dense_matmul_ref(x, m.data, m.kind)


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


def as_f32(a: Any) -> npt.NDArray[np.float32]:
    """``a`` as a C-contiguous float32 array (no copy when it already is one)."""
    return np.ascontiguousarray(a, dtype=np.float32)
