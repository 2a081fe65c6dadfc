"""Reference implementation (plain numpy) of the forward pass's other ops: norms, RoPE, attention, gated units
and the dense (float, q8, q6) products.

:mod:`kernels_cython.reference` defines the ternary products; this module defines everything else the forward
pass computes, for the compiled engine ops (:mod:`bitnet_actor.engine._ops`, ``engine_simd.h``), the OpenCL
kernels (:mod:`kernels_opencl`, ``kernels_opencl/cl/*.cl``) and the engine's numpy fallback
(:mod:`bitnet_actor.engine.ops`, which calls these functions).  It imports numpy only.

Float ops are defined by their exact value rounded once to float32: the functions compute in float64 and round
at the end.  Fast implementations sum in float32 in some order (and the compiled softmax and SiLU use an exp
within about 1 ulp of the C library's), so they are compared with a tolerance relative to the norm.  Integer
parts (the q8 / q6 activation codes and products) are exact, and the float32 steps after them are spelled out
in the order the kernels follow, so those results are compared bit for bit.

Dense weight layouts
====================

* ``"f32"`` / ``"f16"``: the values, (N, K).  ``"bf16"``: uint16 (N, K), the high half of a float32.
* ``"q8"``: int8 (N, Kp), ``Kp`` a multiple of 64 (columns ``K ..`` zero), and float32 row scales (N,):
  ``W[n, k] = data[n, k] * scales[n]``.
* ``"q6"``: uint8 (N, Kp / 64 * 52): per 64 weights one 52-byte group: ``lo[32]`` (weight ``j``: low nibble of
  ``lo[j]``; weight ``j + 32``: its high nibble), ``hi[16]`` (weight ``j + 16 i``: bits ``2i, 2i + 1`` of
  ``hi[j]``), ``d[4]`` (the 0..127 scale of weights ``16 i .. 16 i + 15``); code ``u = lo | hi << 4`` and
  ``W[n, k] = scales[n] * d * (u - 32)``.

The q8 and q6 products quantize the activations first (:func:`quantize_rows_q8_ref`): per row ``xs = max|x| /
127`` (1 for an all-zero row) and ``xq = clip(rint(x * (1 / xs)), -127, 127)`` in float32; then ``acc`` is the
exact integer sum of ``xq * wq`` (``wq = d * (u - 32)`` for q6) and ``y = float32(acc) * xs[m] * scales[n]``,
multiplied left to right in float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "DENSE_KINDS",
    "Q6_GROUP",
    "add_rmsnorm_ref",
    "attention_ref",
    "bf16_to_f32_ref",
    "dense_matmul_q6_ref",
    "dense_matmul_q8_ref",
    "dense_matmul_ref",
    "dense_rows_f32_ref",
    "glu_ref",
    "q6_unpack_ref",
    "quantize_rows_q8_ref",
    "rmsnorm_ref",
    "rope_ref",
]

DENSE_KINDS = ("f32", "f16", "bf16")
Q6_GROUP = 52  # bytes per 64 q6 weights
_CHUNK = 2048  # rows of a weight matrix converted at a time (bounds the float64 copies; no effect on results)


# ------------------------------------------------------------------------------------------ row ops


def rmsnorm_ref(x: npt.NDArray[np.float32], w: npt.NDArray[np.float32], eps: float) -> npt.NDArray[np.float32]:
    """RMSNorm of each row: ``w * (x / sqrt(mean(x^2) + eps))`` (transformers' LlamaRMSNorm / BitNet's).

    Args:
        x: float32 (M, K).
        w: float32 (K,).
        eps: added to the mean square.

    Returns:
        float32 (M, K), a new array.
    """
    x64 = np.asarray(x, dtype=np.float64)  # (M, K)
    inv = 1.0 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + float(eps))  # (M, 1)
    y: npt.NDArray[np.float64] = np.asarray(w, dtype=np.float64) * (x64 * inv)  # (M, K)
    return y.astype(np.float32)


def add_rmsnorm_ref(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.float32], w: npt.NDArray[np.float32], eps: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The fused residual add and norm: ``s = x + y`` (float32, the residual stream), then ``rmsnorm_ref(s)``.

    Args:
        x: float32 (M, K).
        y: float32 (M, K).
        w: float32 (K,).
        eps: epsilon.

    Returns:
        ``(s, rmsnorm_ref(s, w, eps))``, both float32 (M, K) and new.
    """
    s = (np.asarray(x, dtype=np.float32) + np.asarray(y, dtype=np.float32)).astype(np.float32)  # one rounding
    return s, rmsnorm_ref(s, w, eps)


def rope_ref(
    x: npt.NDArray[np.float32], cos: npt.NDArray[np.float32], sin: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """NeoX rotary embedding (transformers' ``rotate_half``): the halves ``a = x[..., :D/2]``, ``b = x[..., D/2:]``
    become ``a cos - b sin`` and ``b cos + a sin``.

    Args:
        x: float32 (M, H, D), rows of heads.
        cos: float32 (M, D // 2), the cosines of each row's position.
        sin: float32 (M, D // 2).

    Returns:
        float32 (M, H, D), a new array.
    """
    half = x.shape[2] // 2
    a = np.asarray(x[:, :, :half], dtype=np.float64)  # (M, H, D/2)
    b = np.asarray(x[:, :, half:], dtype=np.float64)  # (M, H, D/2)
    c = np.asarray(cos, dtype=np.float64)[:, None, :]  # (M, 1, D/2)
    s = np.asarray(sin, dtype=np.float64)[:, None, :]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=2).astype(np.float32)


def attention_ref(
    q: npt.NDArray[np.float32], k: npt.NDArray[Any], v: npt.NDArray[Any], start: int
) -> npt.NDArray[np.float32]:
    """Causal grouped-query softmax attention of ``n`` new rows over a cache.

    Row ``i`` is at position ``start + i`` and attends to cache positions ``0 .. start + i``; query head ``h``
    reads KV head ``h // (H / Hkv)``; scores are scaled by ``D ** -0.5``.

    Args:
        q: float32 (n, H, D), the new rows' queries (RoPE applied).
        k: float (Hkv, >= start + n, D), the key cache (the new rows' keys written), float32 or float16.
        v: float (Hkv, >= start + n, D), the value cache.
        start: position of the first new row.

    Returns:
        float32 (n, H * D).
    """
    n, nh, d = q.shape
    nkv = k.shape[0]
    group = nh // nkv
    t = start + n
    q64 = np.asarray(q, dtype=np.float64)
    kh = np.repeat(np.asarray(k[:, :t], dtype=np.float64), group, axis=0)  # (H, t, D)
    vh = np.repeat(np.asarray(v[:, :t], dtype=np.float64), group, axis=0)  # (H, t, D)
    scores = np.einsum("nhd,htd->nht", q64, kh) * d**-0.5  # (n, H, t)
    future = np.arange(t)[None, :] > np.arange(start, t)[:, None]  # (n, t): keys after the row's position
    scores[np.broadcast_to(future[:, None, :], scores.shape)] = -np.inf
    p = np.exp(scores - scores.max(axis=2, keepdims=True))
    p /= p.sum(axis=2, keepdims=True)
    o: npt.NDArray[np.float64] = np.einsum("nht,htd->nhd", p, vh)  # (n, H, D)
    return o.reshape(n, nh * d).astype(np.float32)


def glu_ref(gu: npt.NDArray[np.float32], act: str) -> npt.NDArray[np.float32]:
    """Gated unit ``act(gate) * up`` of a fused gate/up product: ``relu2(g) = max(g, 0)^2`` (BitNet) or
    ``silu(g) = g / (1 + exp(-g))`` (Llama).

    Args:
        gu: float32 (M, 2F): the gate in the first F columns, up in the last F.
        act: ``"relu2"`` or ``"silu"``.

    Returns:
        float32 (M, F), a new array.

    Raises:
        ValueError: another ``act``.
    """
    f = gu.shape[1] // 2
    g = np.asarray(gu[:, :f], dtype=np.float64)  # (M, F)
    u = np.asarray(gu[:, f:], dtype=np.float64)  # (M, F)
    if act == "relu2":
        a = np.square(np.maximum(g, 0.0))
    elif act == "silu":
        with np.errstate(over="ignore"):  # exp(-g) = inf for g < -709: silu -> -0, as the limit
            a = g / (1.0 + np.exp(-g))
    else:
        raise ValueError(f"act must be 'relu2' or 'silu', got {act!r}")
    return (a * u).astype(np.float32)


# ------------------------------------------------------------------------------------------ dense products


def bf16_to_f32_ref(data: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    """bfloat16 values (the high 16 bits of a float32, stored as uint16) as float32 (exact)."""
    return (np.asarray(data, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def q6_unpack_ref(data: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.uint8]]:
    """The codes and block scales of q6 rows (layout in the module docstring).

    Args:
        data: uint8 (r, Kp / 64 * 52).

    Returns:
        ``(codes, d)``: int8 (r, Kp) codes ``u - 32`` in -32..31 and uint8 (r, Kp / 16) block scales.
    """
    r = data.shape[0]
    g = data.shape[1] // Q6_GROUP
    grp = np.asarray(data, dtype=np.uint8).reshape(r, g, Q6_GROUP)
    lo, hb, d = grp[:, :, :32], grp[:, :, 32:48], grp[:, :, 48:]
    low = np.concatenate([lo & 15, lo >> 4], axis=2)  # (r, g, 64): weights j and j + 32
    high = np.concatenate([(hb >> s) & 3 for s in (0, 2, 4, 6)], axis=2)  # (r, g, 64): weights j + 16 i
    codes = ((low | (high << 4)).astype(np.int16) - 32).astype(np.int8)
    return codes.reshape(r, g * 64), np.ascontiguousarray(d.reshape(r, g * 4))


def dense_rows_f32_ref(data: npt.NDArray[Any], kind: str) -> npt.NDArray[np.float32]:
    """Stored float rows (``"f32"``, ``"f16"`` or ``"bf16"``) as float32 (exact: every kind widens).

    Args:
        data: (r, K) float32, float16 or uint16.
        kind: the storage kind.

    Returns:
        float32 (r, K), a new array.

    Raises:
        ValueError: an unknown kind or a dtype that does not match it.
    """
    dtype = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}.get(kind)
    if dtype is None or data.dtype != dtype:
        raise ValueError(f"{kind!r} rows need a matching dtype, got {data.dtype}")
    if kind == "bf16":
        return bf16_to_f32_ref(data)
    return np.array(data, dtype=np.float32)


def dense_matmul_ref(x: npt.NDArray[np.float32], data: npt.NDArray[Any], kind: str) -> npt.NDArray[np.float32]:
    """``x @ W.T`` for stored float weights: the exact sum of the float32 products, rounded to float32.

    Args:
        x: float32 (M, K).
        data: (N, K) float32, float16 or uint16 (bf16).
        kind: ``"f32"``, ``"f16"`` or ``"bf16"``.

    Returns:
        float32 (M, N).
    """
    x64 = np.asarray(x, dtype=np.float64)  # (M, K)
    n = data.shape[0]
    out = np.empty((x64.shape[0], n), dtype=np.float32)
    for r0 in range(0, n, _CHUNK):
        r1 = min(n, r0 + _CHUNK)
        w = dense_rows_f32_ref(data[r0:r1], kind).astype(np.float64)  # (r, K)
        out[:, r0:r1] = x64 @ w.T  # a float32 x float32 product is exact in float64; the sum nearly so
    return out


def quantize_rows_q8_ref(x: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Symmetric int8 codes of each row, for the q8 and q6 products.

    ``xs = max|x| / 127`` (1 for an all-zero row), ``xq = clip(rint(x * (1 / xs)), -127, 127)``, every step
    in float32 (rint rounds half to even).

    Args:
        x: float32 (M, K).

    Returns:
        ``(xq, xs)``: int8 (M, K) and float32 (M,).
    """
    x = np.asarray(x, dtype=np.float32)
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)  # (M,)
    xs = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)  # (M,)
    inv = (np.float32(1) / xs).astype(np.float32)  # (M,)
    xq = np.clip(np.rint(x * inv[:, None]), -127, 127).astype(np.int8)  # (M, K)
    return xq, xs


def _rescale(
    acc: npt.NDArray[np.int64], xs: npt.NDArray[np.float32], ws: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """``float32(acc) * xs[m] * ws[n]``, left to right in float32."""
    ax: npt.NDArray[np.float32] = (acc.astype(np.float32) * xs[:, None]).astype(np.float32)  # (M, N)
    return (ax * np.asarray(ws, dtype=np.float32)[None, :]).astype(np.float32)


def dense_matmul_q8_ref(
    x: npt.NDArray[np.float32], data: npt.NDArray[np.int8], scales: npt.NDArray[np.float32], cols: int
) -> npt.NDArray[np.float32]:
    """``x @ W.T`` for q8 weights: int8 activations, exact integer sum, then the two scales.

    Args:
        x: float32 (M, K).
        data: int8 (N, Kp), ``Kp >= K``.
        scales: float32 (N,).
        cols: K.

    Returns:
        float32 (M, N).
    """
    xq, xs = quantize_rows_q8_ref(x)
    acc = xq.astype(np.int64) @ np.asarray(data[:, :cols], dtype=np.int64).T  # (M, N), exact
    return _rescale(acc, xs, scales)


def dense_matmul_q6_ref(
    x: npt.NDArray[np.float32], data: npt.NDArray[np.uint8], scales: npt.NDArray[np.float32], cols: int
) -> npt.NDArray[np.float32]:
    """``x @ W.T`` for q6 weights: int8 activations times the integer weights ``d * (u - 32)``, summed exactly,
    then the two scales.

    Args:
        x: float32 (M, K).
        data: uint8 (N, Kp / 64 * 52), ``Kp >= K``.
        scales: float32 (N,).
        cols: K.

    Returns:
        float32 (M, N).
    """
    xq, xs = quantize_rows_q8_ref(x)
    xq64 = xq.astype(np.int64)  # (M, K)
    n = data.shape[0]
    out = np.empty((xq.shape[0], n), dtype=np.float32)
    for r0 in range(0, n, _CHUNK):
        r1 = min(n, r0 + _CHUNK)
        codes, d = q6_unpack_ref(data[r0:r1])
        w = codes[:, :cols].astype(np.int64) * np.repeat(d, 16, axis=1)[:, :cols].astype(np.int64)  # (r, K)
        out[:, r0:r1] = _rescale(xq64 @ w.T, xs, scales[r0:r1])
    return out
