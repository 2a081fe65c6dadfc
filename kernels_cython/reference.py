"""Reference implementation (plain numpy) of the ternary kernels and checkpoint converters.

This module defines the layout, dtypes, rounding and packing that the fast kernels in
:mod:`kernels_cython` (and the OpenCL kernels of a later issue) must reproduce bit for bit.  It imports
numpy only, so it works where the Cython extension was never built.

Why one module of ~740 lines: it is the specification of the packed ternary format, and every converter
(HF packed, GGUF I2_S / TQ1_0 / TQ2_0) and product here is defined in terms of the same layout section
below; split apart, a reader would check a converter against a layout described in another file. The
non-ternary ops' references live in :mod:`kernels_cython.reference_dense`.

Internal layout of :class:`TernaryMatrix`
=========================================

A ternary matrix ``W`` of shape ``(N, K)`` (``N`` = out_features, ``K`` = in_features) holds weights
``w[n, k]`` in ``{-1, 0, +1}`` and a scale, so that the real-valued weight is ``w * scale``.

* **Codes.**  Each weight is stored as the 2-bit unsigned code ``c = w + 1`` in ``{0, 1, 2}``; the bit
  pattern ``3`` never occurs.
* **Padding.**  ``K`` is padded to ``Kp = ceil(K / 256) * 256``; padded weights have code ``1`` (``w = 0``).
* **Rows.**  ``packed`` is a C-contiguous ``uint8`` array of shape ``(N, Kp // 4)``: row ``n`` holds the
  ``Kp`` codes of output row ``n`` in ``Kp // 4`` bytes (a multiple of 64).  The array's base address is
  64-byte aligned, so every row starts on a cache line.
* **Chunks of 128.**  Inside a row, byte ``j`` belongs to chunk ``c = j // 32`` and position
  ``m = j % 32``; its bits ``[2*l, 2*l + 1]`` (``l = 0..3``, from the least significant) hold the code of
  weight ``k = 128*c + 32*l + m``.  So one 32-byte load unpacks, by a shift of ``2*l`` and a mask of
  ``0x03``, into the 32 codes of 32 *consecutive* weights ``128*c + 32*l .. +31``, which line up with 32
  consecutive int8 activations.
* **Blocks of 256.**  Two chunks (64 bytes) form a 256-weight block; per block the bytes are exactly the
  ``qs`` bytes of a GGUF ``TQ2_0`` block (without its fp16 ``d``), so TQ2_0 converts by copying bytes.
* **Scale.**  ``scale`` is either one float32 for the whole tensor (BitNet b1.58 absmean, the common case)
  or, for formats with one scale per 256 weights whose values differ, a float32 array of shape
  ``(N, Kp // 256)`` with the scale of each block.  Per-block scales that are all equal collapse to one.

The scale convention is *multiplicative*: ``W_real ~= codes * scale`` where ``scale = mean|W|``.
HF transformers' ``BitLinear`` (``linear_class="bitlinear"``) stores ``weight_scale = 1 / scale`` and
divides; ``autobitlinear`` stores the scale itself.  The converters here take and return ``scale`` (the
multiplier); a caller reading an HF ``bitlinear`` checkpoint passes ``1 / weight_scale``.

Activations
===========

:func:`quantize_activations` follows HF transformers' BitNet ``activation_quant`` and computes in float32
with torch's rounding order: ``amax = max(max|x|, 1e-5)``, ``recip = float32(1) / amax``,
``s = recip * float32(127)`` (two roundings, as torch's ``127 / t`` is ``t.reciprocal() * 127``),
``xq = clamp(round_half_even(x * s), -128, 127)``.  The returned scale is ``s`` (``x ~= xq / s``).

:func:`ternary_linear` computes ``acc = xq @ w.T`` exactly in int32 and returns
``float32(acc) / s[m] * scale`` (float32, divide first, then multiply; one rounding each).  For per-block
scales see :func:`ternary_linear`.

Checkpoint formats
==================

* **HF packed** (:func:`from_hf_packed` / :func:`to_hf_packed`): ``uint8 (ceil(N/4), K)``;
  ``W[i*R + p, k] = ((P[p, k] >> 2*i) & 3) - 1`` with ``R = ceil(N/4)``.  Rows ``>= N`` are padding with
  zero bits, as HF's ``pack_weights`` writes them.
* **GGUF TQ2_0** (:func:`from_tq2_0` / :func:`to_tq2_0`): blocks of 256 weights along ``K``
  (``K % 256 == 0``), 66 bytes each: ``qs[64]`` then fp16 ``d``.  In 32-byte group ``g`` (two per
  block), byte ``m``, shift ``2*l`` holds code ``w + 1`` of weight ``128*g + 32*l + m``.
* **GGUF TQ1_0** (:func:`from_tq1_0` / :func:`to_tq1_0`): blocks of 256, 54 bytes: ``qs[48]``, ``qh[4]``,
  fp16 ``d``.  Base-3 packing of codes ``w + 1``: ``qs[0:32]`` byte ``j`` holds weights ``32*t + j``
  (``t = 0..4``), ``qs[32:48]`` byte ``j`` holds weights ``160 + 16*t + j`` (``t = 0..4``), ``qh`` byte ``j``
  holds weights ``240 + 4*t + j`` (``t = 0..3``), with trit ``t`` weighted ``3**(4 - t)``.  A byte stores
  ``ceil(v * 256 / 243)`` of the base-3 value ``v``; trit ``t`` is ``((byte * 3**t) % 256 * 3) >> 8``.
* **I2_S** (:func:`from_i2_s` / :func:`to_i2_s`, microsoft/BitNet ggml type 36, x86 layout): the tensor,
  flattened row-major, is cut into blocks of 128 weights; block ``b`` takes 32 bytes, byte ``b*32 + m``
  holds code ``w + 1`` of weight ``128*b + 32*g + m`` at bit shift ``6 - 2*g`` (``g = 0..3``: the first
  group in the top bits).  After ``N*K/4`` code bytes comes a 32-byte tail whose first 4 bytes are the
  float32 scale (little endian) and whose other 28 bytes are zero.  microsoft/BitNet's ``quantize_i2_s``
  stores ``max|W|``, which for an already ternarized tensor is the absmean scale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "BLOCK",
    "CHUNK",
    "TernaryMatrix",
    "from_hf_packed",
    "from_i2_s",
    "from_tq1_0",
    "from_tq2_0",
    "quantize_activations",
    "ternary_linear",
    "ternary_matmul_int32",
    "to_hf_packed",
    "to_i2_s",
    "to_tq1_0",
    "to_tq2_0",
]

BLOCK = 256
"""Weights per block: ``K`` is padded to a multiple of this; per-block scales cover this many weights."""
CHUNK = 128
"""Weights per 32-byte chunk of the packed layout."""
_ALIGN = 64
_TQ2_BYTES = 66
_TQ1_BYTES = 54
_I2S_GROUP = 128
_I2S_TAIL = 32


# ----------------------------------------------------------------------------------------------------------
# input validation (shared with the fast kernels)


def check_float_matrix(x: Any, name: str = "x") -> npt.NDArray[np.float32]:
    """Check that ``x`` is a finite, C-contiguous float32 matrix.

    Args:
        x: the candidate array, float32 (M, K).
        name: the argument's name for error messages.

    Returns:
        ``x`` itself (no copy).

    Raises:
        TypeError: ``x`` is not a numpy array or not float32.
        ValueError: ``x`` is not 2-D, has no columns, is not C-contiguous or holds NaN/inf.
    """
    check_matrix(x, np.float32, name)
    if x.size and not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x  # type: ignore[no-any-return]


def check_matrix(x: Any, dtype: type[np.generic], name: str) -> None:
    """Check type, dtype, rank and contiguity of a matrix argument.

    Args:
        x: the candidate array (M, K).
        dtype: the required numpy scalar type.
        name: the argument's name for error messages.

    Raises:
        TypeError: ``x`` is not a numpy array or has the wrong dtype.
        ValueError: ``x`` is not 2-D, has no columns or is not C-contiguous.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (M, K), got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")


def check_weights(w: Any, k: int) -> TernaryMatrix:
    """Check that ``w`` is a :class:`TernaryMatrix` with ``k`` columns.

    Args:
        w: the candidate weights.
        k: the activations' number of columns.

    Returns:
        ``w``.

    Raises:
        TypeError: ``w`` is not a TernaryMatrix.
        ValueError: the inner dimensions differ.
    """
    if not isinstance(w, TernaryMatrix):
        raise TypeError(f"w must be a TernaryMatrix, got {type(w).__name__}")
    if w.shape[1] != k:
        raise ValueError(f"inner dimensions differ: x has K={k} columns, w has shape {w.shape}")
    return w


def padded_k(k: int) -> int:
    """Return ``K`` rounded up to a multiple of :data:`BLOCK`.

    Args:
        k: the number of columns (>= 1).

    Returns:
        ``Kp``.
    """
    return -(-k // BLOCK) * BLOCK


def aligned_empty(shape: tuple[int, ...], dtype: type[np.generic]) -> npt.NDArray[Any]:
    """Allocate an uninitialized C-contiguous array whose base address is 64-byte aligned.

    Args:
        shape: the array's shape.
        dtype: its numpy scalar type.

    Returns:
        The array.
    """
    itemsize = np.dtype(dtype).itemsize
    nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)  # (nbytes + 64,)
    offset = (-raw.ctypes.data) % _ALIGN
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


# ----------------------------------------------------------------------------------------------------------
# packing


def _pack_codes(codes: npt.NDArray[np.int8]) -> npt.NDArray[np.uint8]:
    """Pack ternary weights into the internal layout.

    Args:
        codes: int8 (N, K), values in {-1, 0, 1}.

    Returns:
        uint8 (N, Kp // 4), 64-byte aligned.
    """
    n, k = codes.shape
    kp = padded_k(k)
    c = np.ones((n, kp), dtype=np.uint8)  # (N, Kp): codes w + 1, padding 1
    c[:, :k] = codes.astype(np.uint8) + np.uint8(1)
    c4 = c.reshape(n, kp // CHUNK, 4, 32)  # (N, chunks, l, m)
    packed = aligned_empty((n, kp // 4), np.uint8)  # (N, Kp / 4)
    p = packed.reshape(n, kp // CHUNK, 32)  # (N, chunks, m)
    p[...] = c4[:, :, 0] | (c4[:, :, 1] << 2) | (c4[:, :, 2] << 4) | (c4[:, :, 3] << 6)
    return packed


def _unpack_codes(packed: npt.NDArray[np.uint8], k: int) -> npt.NDArray[np.int8]:
    """Unpack the internal layout into ternary weights.

    Args:
        packed: uint8 (N, Kp // 4).
        k: the number of real columns.

    Returns:
        int8 (N, K), values in {-1, 0, 1}.
    """
    n, rb = packed.shape
    p = packed.reshape(n, rb // 32, 1, 32)  # (N, chunks, 1, m)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)  # (1, 1, l, 1)
    c = (p >> shifts) & np.uint8(3)  # (N, chunks, l, m)
    return (c.reshape(n, rb * 4)[:, :k].astype(np.int8) - np.int8(1)).astype(np.int8)


def _scale_array(scale: Any, n: int, kb: int) -> float | npt.NDArray[np.float32]:
    """Normalize a scale argument: one float32, or per-block float32 (N, Kb) collapsed when all equal.

    Args:
        scale: a number, a size-1 array, or an array of shape (N, Kb) (per 256-weight block).
        n: rows of the matrix.
        kb: blocks per row.

    Returns:
        A float (exactly a float32 value) or a float32 array (N, Kb).

    Raises:
        ValueError: wrong shape or a non-finite scale.
    """
    arr = np.asarray(scale, dtype=np.float32)
    if arr.size == 1:
        arr = arr.reshape(())
    elif arr.shape != (n, kb):
        raise ValueError(f"scale must be a number or have shape {(n, kb)} (one per 256 weights), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("scale contains NaN or inf")
    if arr.ndim == 0:
        return float(arr)
    flat = arr.reshape(-1)  # (N * Kb,)
    if (flat == flat[0]).all():
        return float(flat[0])
    return np.ascontiguousarray(arr)


class TernaryMatrix:
    """Packed ternary weights of shape (N, K) with their scale(s); layout in the module docstring.

    Instances are immutable by convention; the packed array is marked read-only.
    """

    __slots__ = ("_k", "_n", "_packed", "_row_scale", "_scale")

    def __init__(self, packed: npt.NDArray[np.uint8], k: int, scale: Any) -> None:
        """Wrap an already packed array (internal layout).

        Args:
            packed: uint8 (N, Kp // 4) in the internal layout; copied if not 64-byte aligned, else shared
                (the matrix keeps a read-only view: the caller must not modify it afterwards).
            k: the number of real columns K (``padded_k(k) == 4 * packed.shape[1]``).
            scale: one scale, or per-block scales (N, Kp // 256).

        Raises:
            TypeError: ``packed`` is not a uint8 array.
            ValueError: shapes disagree, a code is 3 or the scale is invalid.
        """
        check_matrix(packed, np.uint8, "packed")
        n, rb = packed.shape
        if k < 1 or padded_k(k) != 4 * rb:
            raise ValueError(f"packed shape {packed.shape} does not fit K={k} (need {padded_k(max(k, 1)) // 4} bytes)")
        if ((packed & 0x55) & ((packed >> 1) & 0x55)).any():
            raise ValueError("packed contains the invalid 2-bit code 3")
        if packed.ctypes.data % _ALIGN:
            aligned = aligned_empty(packed.shape, np.uint8)
            aligned[...] = packed
            packed = aligned
        packed = packed.view()  # a read-only view; the caller's array keeps its flags
        packed.flags.writeable = False
        self._packed = packed
        self._n = n
        self._k = k
        self._scale = _scale_array(scale, n, rb // 64)
        self._row_scale: npt.NDArray[np.float32] | None = None
        if isinstance(self._scale, np.ndarray) and (self._scale == self._scale[:, :1]).all():
            self._row_scale = np.ascontiguousarray(self._scale[:, 0])

    @classmethod
    def from_codes(cls, codes: Any, scale: Any = 1.0) -> TernaryMatrix:
        """Pack ternary codes.

        Args:
            codes: int8 (N, K) with values in {-1, 0, 1}.
            scale: one scale (multiplier), or per-block scales float32 (N, ceil(K/256)).

        Returns:
            The packed matrix.

        Raises:
            TypeError: ``codes`` is not an int8 array.
            ValueError: wrong rank, empty, or values outside {-1, 0, 1}.
        """
        if not isinstance(codes, np.ndarray):
            raise TypeError(f"codes must be a numpy.ndarray, got {type(codes).__name__}")
        if codes.dtype != np.int8:
            raise TypeError(f"codes must have dtype int8, got {codes.dtype}")
        if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
            raise ValueError(f"codes must be a non-empty 2-D array (N, K), got shape {codes.shape}")
        if codes.size and (np.abs(codes.astype(np.int16)) > 1).any():
            raise ValueError("codes must be in {-1, 0, 1}")
        return cls(_pack_codes(codes), codes.shape[1], scale)

    @classmethod
    def from_float(cls, w: Any) -> TernaryMatrix:
        """Ternarize float weights with BitNet b1.58's absmean scheme (one scale per tensor).

        ``scale = max(mean|W|, 1e-5)`` (mean computed in float64, then rounded to float32),
        ``codes = clamp(round_half_even(W / scale), -1, 1)`` in float32.

        Args:
            w: float32 (N, K).

        Returns:
            The packed matrix with ``scale``.
        """
        check_float_matrix(w, "w")
        if w.shape[0] == 0:
            raise ValueError("w must have at least one row")
        scale = np.float32(max(float(np.abs(w).mean(dtype=np.float64)), 1e-5))
        codes = np.clip(np.rint(w / scale), -1, 1).astype(np.int8)  # (N, K)
        return cls(_pack_codes(codes), w.shape[1], scale)

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, K)``: out_features, in_features."""
        return (self._n, self._k)

    @property
    def packed(self) -> npt.NDArray[np.uint8]:
        """The read-only packed codes, uint8 (N, Kp // 4), 64-byte aligned."""
        return self._packed

    @property
    def padded_k(self) -> int:
        """``Kp``: K rounded up to a multiple of 256."""
        return 4 * int(self._packed.shape[1])

    @property
    def scale(self) -> float | npt.NDArray[np.float32]:
        """One float32 scale (as float), or per-block scales float32 (N, Kp // 256)."""
        return self._scale

    @property
    def row_scale(self) -> npt.NDArray[np.float32] | None:
        """Per-row scales float32 (N,) when per-block scales are constant along each row, else None."""
        return self._row_scale

    @property
    def nbytes(self) -> int:
        """Size of the packed codes in bytes (scales not counted)."""
        return int(self._packed.nbytes)

    def to_codes(self) -> npt.NDArray[np.int8]:
        """Unpack.

        Returns:
            int8 (N, K), values in {-1, 0, 1}.
        """
        return _unpack_codes(self._packed, self._k)

    def block_scales(self) -> npt.NDArray[np.float32]:
        """Per-block scales, broadcast when there is one scale.

        Returns:
            float32 (N, Kp // 256).
        """
        kb = self._packed.shape[1] // 64
        if isinstance(self._scale, np.ndarray):
            return self._scale
        return np.full((self._n, kb), self._scale, dtype=np.float32)

    def __repr__(self) -> str:
        kind = "per-block" if isinstance(self._scale, np.ndarray) else f"{self._scale:.6g}"
        return f"TernaryMatrix(shape={self.shape}, scale={kind}, nbytes={self.nbytes})"


# ----------------------------------------------------------------------------------------------------------
# activations and products


def quantize_activations(x: Any) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Per-row absmax quantization to int8, as HF transformers' BitNet (torch rounding order).

    Args:
        x: float32 (M, K), finite.

    Returns:
        ``(xq, s)``: xq int8 (M, K) and s float32 (M,) with ``x ~= xq / s[:, None]``.
    """
    check_float_matrix(x)
    amax = np.maximum(np.abs(x).max(axis=1), np.float32(1e-5))  # (M,)
    recip = np.float32(1.0) / amax  # (M,)
    s = (recip * np.float32(127.0)).astype(np.float32)  # (M,)
    xq = np.clip(np.rint(x * s[:, None]), -128, 127).astype(np.int8)  # (M, K)
    return xq, s


def ternary_matmul_int32(xq: Any, w: TernaryMatrix) -> npt.NDArray[np.int32]:
    """Exact product of int8 activations with the ternary codes.

    Args:
        xq: int8 (M, K).
        w: ternary (N, K).

    Returns:
        int32 (M, N): ``xq @ codes.T`` (scales ignored).
    """
    check_matrix(xq, np.int8, "xq")
    check_weights(w, xq.shape[1])
    codes = w.to_codes().astype(np.int32)  # (N, K)
    out: npt.NDArray[np.int32] = (xq.astype(np.int32) @ codes.T).astype(np.int32)  # (M, N)
    return out


def ternary_linear(x: Any, w: TernaryMatrix) -> npt.NDArray[np.float32]:
    """Quantize activations, multiply exactly in int32, rescale to float32.

    One scale: ``y = float32(acc) / s[m] * scale``.  Per-row scales: ``scale`` is ``w.row_scale[n]``.
    General per-block scales: with ``acc_b`` the int32 product over block ``b`` (256 weights),
    ``y = sum over b = 0, 1, ... (in order, float32) of float32(acc_b) / s[m] * scale[n, b]``.

    Args:
        x: float32 (M, K), finite.
        w: ternary (N, K).

    Returns:
        float32 (M, N).
    """
    check_float_matrix(x)
    check_weights(w, x.shape[1])
    xq, s = quantize_activations(x)
    return rescale(xq, s, w, ternary_matmul_int32)


def rescale(
    xq: npt.NDArray[np.int8],
    s: npt.NDArray[np.float32],
    w: TernaryMatrix,
    matmul: Any,
) -> npt.NDArray[np.float32]:
    """Apply the output scaling of :func:`ternary_linear` around an int32 matmul.

    Args:
        xq: int8 (M, K).
        s: float32 (M,) activation scales.
        w: ternary (N, K).
        matmul: ``matmul(xq, w) -> int32 (M, N)``.

    Returns:
        float32 (M, N).
    """
    scale = w.scale
    sc = s[:, None]  # (M, 1)
    if not isinstance(scale, np.ndarray):
        acc = matmul(xq, w)  # (M, N)
        return (acc.astype(np.float32) / sc) * np.float32(scale)  # type: ignore[no-any-return]
    if w.row_scale is not None:
        acc = matmul(xq, w)  # (M, N)
        return (acc.astype(np.float32) / sc) * w.row_scale[None, :]  # type: ignore[no-any-return]
    m, k = xq.shape
    y = np.zeros((m, w.shape[0]), dtype=np.float32)  # (M, N)
    for b in range(scale.shape[1]):
        k0, k1 = b * BLOCK, min((b + 1) * BLOCK, k)
        if k0 >= k:
            break
        wb = TernaryMatrix(np.ascontiguousarray(w.packed[:, b * 64 : (b + 1) * 64]), k1 - k0, 1.0)
        xb = np.ascontiguousarray(xq[:, k0:k1])  # (M, <=256)
        acc = matmul(xb, wb)  # (M, N)
        y += (acc.astype(np.float32) / sc) * scale[None, :, b]
    return y


# ----------------------------------------------------------------------------------------------------------
# HF transformers packed uint8


def from_hf_packed(packed: Any, scale: Any, n_out: int | None = None) -> TernaryMatrix:
    """Read HF transformers' packed BitNet weights.

    Args:
        packed: uint8 (ceil(N/4), K); ``W[i*R + p, k] = ((P[p, k] >> 2i) & 3) - 1`` with ``R = P.shape[0]``.
        scale: the multiplier (``W ~= codes * scale``); for HF ``bitlinear`` pass ``1 / weight_scale``.
        n_out: out_features N (default ``4 * R``); rows ``>= N`` are padding and ignored.

    Returns:
        The matrix (N, K).

    Raises:
        TypeError: wrong type or dtype.
        ValueError: wrong shape or a code 3 in a used row.
    """
    check_matrix(packed, np.uint8, "packed")
    r = packed.shape[0]
    n = 4 * r if n_out is None else int(n_out)
    if not (r >= 1 and -(-n // 4) == r):
        raise ValueError(f"n_out={n} does not fit packed shape {packed.shape} (need ceil(N/4) rows)")
    planes = [(packed >> np.uint8(2 * i)) & np.uint8(3) for i in range(4)]  # 4 x (R, K)
    c = np.concatenate(planes, axis=0)[:n]  # (N, K) codes w + 1
    if (c == 3).any():
        raise ValueError("packed contains the invalid 2-bit code 3")
    return TernaryMatrix.from_codes((c.astype(np.int8) - np.int8(1)).astype(np.int8), scale)


def to_hf_packed(w: TernaryMatrix) -> tuple[npt.NDArray[np.uint8], float]:
    """Write HF transformers' packed layout (padding rows get zero bits, as HF writes them).

    Args:
        w: the matrix (N, K) with one scale.

    Returns:
        ``(packed uint8 (ceil(N/4), K), scale)`` with ``scale`` the multiplier.

    Raises:
        ValueError: ``w`` has per-block scales (HF stores one per tensor).
    """
    scale = _single_scale(w, "HF packed")
    n, k = w.shape
    r = -(-n // 4)
    c = np.zeros((4 * r, k), dtype=np.uint8)  # (4R, K), padding rows 0
    c[:n] = (w.to_codes() + np.int8(1)).astype(np.uint8)
    c4 = c.reshape(4, r, k)  # (i, p, k)
    packed = c4[0] | (c4[1] << 2) | (c4[2] << 4) | (c4[3] << 6)  # (R, K)
    return np.ascontiguousarray(packed, dtype=np.uint8), scale


def _single_scale(w: TernaryMatrix, fmt: str) -> float:
    if isinstance(w.scale, np.ndarray):
        raise ValueError(f"{fmt} stores one scale per tensor; this matrix has per-block scales")
    return w.scale


# ----------------------------------------------------------------------------------------------------------
# GGUF TQ2_0 / TQ1_0


def _check_blocks(data: Any, shape: tuple[int, int], block_bytes: int, fmt: str) -> npt.NDArray[np.uint8]:
    if not isinstance(data, np.ndarray):
        raise TypeError(f"{fmt} data must be a numpy.ndarray, got {type(data).__name__}")
    if data.dtype != np.uint8:
        raise TypeError(f"{fmt} data must have dtype uint8, got {data.dtype}")
    n, k = int(shape[0]), int(shape[1])
    if n < 1 or k < 1 or k % BLOCK:
        raise ValueError(f"{fmt} needs N >= 1 and K a positive multiple of {BLOCK}, got shape {(n, k)}")
    nb = n * k // BLOCK
    if data.size != nb * block_bytes:
        raise ValueError(f"{fmt} data for shape {(n, k)} must have {nb * block_bytes} bytes, got {data.size}")
    return np.ascontiguousarray(data).reshape(nb, block_bytes)


def _block_d(w: TernaryMatrix) -> npt.NDArray[np.uint8]:
    d = w.block_scales().astype(np.float16)  # (N, Kb)
    return d.reshape(-1, 1).view(np.uint8)  # (N * Kb, 2)


def from_tq2_0(data: Any, shape: tuple[int, int]) -> TernaryMatrix:
    """Read a GGUF TQ2_0 tensor.

    Args:
        data: uint8 raw tensor bytes, ``N*K/256`` blocks of 66 bytes (any shape, contiguous order).
        shape: ``(N, K)`` in numpy order (GGUF ``ne = [K, N]``), ``K % 256 == 0``.

    Returns:
        The matrix with the blocks' fp16 ``d`` as (possibly collapsed) per-block scales.
    """
    blocks = _check_blocks(data, shape, _TQ2_BYTES, "TQ2_0")  # (N*Kb, 66)
    n, k = shape
    packed = np.ascontiguousarray(blocks[:, :64]).reshape(n, k // 4)  # (N, K/4)
    d = np.ascontiguousarray(blocks[:, 64:]).view(np.float16).astype(np.float32).reshape(n, k // BLOCK)
    return TernaryMatrix(packed, k, d)


def to_tq2_0(w: TernaryMatrix) -> npt.NDArray[np.uint8]:
    """Write a GGUF TQ2_0 tensor (scales rounded to fp16).

    Args:
        w: the matrix (N, K) with ``K % 256 == 0``.

    Returns:
        uint8 (N*K/256 * 66,).
    """
    k = w.shape[1]
    if k % BLOCK:
        raise ValueError(f"TQ2_0 needs K a multiple of {BLOCK}, got K={k}")
    qs = w.packed.reshape(-1, 64)  # (N*Kb, 64)
    return np.concatenate([qs, _block_d(w)], axis=1).reshape(-1)


_POW3 = np.array([81, 27, 9, 3, 1], dtype=np.uint16)


def _tq1_groups(c: npt.NDArray[np.uint8]) -> list[tuple[npt.NDArray[np.uint8], int, int]]:
    """Split codes (nb, 256) into TQ1_0's (codes (nb, trits, width), first weight, trit count) groups."""
    nb = c.shape[0]
    return [
        (c[:, 0:160].reshape(nb, 5, 32), 0, 5),
        (c[:, 160:240].reshape(nb, 5, 16), 160, 5),
        (c[:, 240:256].reshape(nb, 4, 4), 240, 4),
    ]


def from_tq1_0(data: Any, shape: tuple[int, int]) -> TernaryMatrix:
    """Read a GGUF TQ1_0 tensor.

    Args:
        data: uint8 raw tensor bytes, ``N*K/256`` blocks of 54 bytes.
        shape: ``(N, K)``, ``K % 256 == 0``.

    Returns:
        The matrix with the blocks' fp16 ``d`` as (possibly collapsed) per-block scales.  Every byte decodes
        to trits in 0..2; bytes that are not ``ceil(v * 256 / 243)`` of some ``v`` (never written by ggml)
        decode like ggml decodes them but do not round-trip.
    """
    blocks = _check_blocks(data, shape, _TQ1_BYTES, "TQ1_0")  # (nb, 54)
    n, k = shape
    nb = blocks.shape[0]
    codes = np.empty((nb, BLOCK), dtype=np.uint8)  # (nb, 256) codes w + 1
    spans = [(0, 32, 0, 5), (32, 48, 160, 5), (48, 52, 240, 4)]  # byte range, first weight, trits
    for b0, b1, w0, trits in spans:
        q = blocks[:, b0:b1].astype(np.uint16)  # (nb, width)
        width = b1 - b0
        for t in range(trits):
            qt = (q * np.uint16(3**t)) & np.uint16(255)  # (nb, width)
            codes[:, w0 + t * width : w0 + (t + 1) * width] = ((qt * np.uint16(3)) >> np.uint16(8)).astype(np.uint8)
    d = np.ascontiguousarray(blocks[:, 52:54]).view(np.float16).astype(np.float32).reshape(n, k // BLOCK)
    ternary = (codes.astype(np.int8) - np.int8(1)).astype(np.int8).reshape(n, k)  # (N, K)
    return TernaryMatrix.from_codes(ternary, d)


def to_tq1_0(w: TernaryMatrix) -> npt.NDArray[np.uint8]:
    """Write a GGUF TQ1_0 tensor (scales rounded to fp16).

    Args:
        w: the matrix (N, K) with ``K % 256 == 0``.

    Returns:
        uint8 (N*K/256 * 54,).
    """
    k = w.shape[1]
    if k % BLOCK:
        raise ValueError(f"TQ1_0 needs K a multiple of {BLOCK}, got K={k}")
    c = (w.to_codes() + np.int8(1)).astype(np.uint8).reshape(-1, BLOCK)  # (nb, 256)
    parts = []
    for grp, _, trits in _tq1_groups(c):
        v = (grp.astype(np.uint16) * _POW3[:trits].reshape(1, trits, 1)).sum(axis=1, dtype=np.uint16)
        parts.append(((v * np.uint16(256) + np.uint16(242)) // np.uint16(243)).astype(np.uint8))  # (nb, width)
    parts.append(_block_d(w))
    return np.concatenate(parts, axis=1).reshape(-1)


# ----------------------------------------------------------------------------------------------------------
# microsoft/BitNet I2_S


def from_i2_s(data: Any, shape: tuple[int, int]) -> TernaryMatrix:
    """Read a microsoft/BitNet I2_S tensor (x86 layout, blocks of 128).

    Args:
        data: uint8, ``N*K/4`` code bytes then a 32-byte tail starting with the float32 scale.
        shape: ``(N, K)`` with ``N*K % 128 == 0``.

    Returns:
        The matrix with the tail's scale.
    """
    if not isinstance(data, np.ndarray):
        raise TypeError(f"I2_S data must be a numpy.ndarray, got {type(data).__name__}")
    if data.dtype != np.uint8:
        raise TypeError(f"I2_S data must have dtype uint8, got {data.dtype}")
    n, k = int(shape[0]), int(shape[1])
    total = n * k
    if n < 1 or k < 1 or total % _I2S_GROUP:
        raise ValueError(f"I2_S needs N*K a positive multiple of {_I2S_GROUP}, got shape {(n, k)}")
    if data.size != total // 4 + _I2S_TAIL:
        raise ValueError(f"I2_S data for shape {(n, k)} must have {total // 4 + _I2S_TAIL} bytes, got {data.size}")
    flat = np.ascontiguousarray(data).reshape(-1)
    q = flat[: total // 4].reshape(-1, 1, 32)  # (blocks, 1, m)
    shifts = np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 4, 1)  # (1, g, 1)
    c = ((q >> shifts) & np.uint8(3)).reshape(n, k)  # (N, K)
    if (c == 3).any():
        raise ValueError("I2_S data contains the invalid 2-bit code 3")
    scale = np.frombuffer(flat[total // 4 : total // 4 + 4].tobytes(), dtype="<f4")[0]
    return TernaryMatrix.from_codes((c.astype(np.int8) - np.int8(1)).astype(np.int8), scale)


def to_i2_s(w: TernaryMatrix) -> npt.NDArray[np.uint8]:
    """Write a microsoft/BitNet I2_S tensor (x86 layout, blocks of 128).

    Args:
        w: the matrix (N, K) with one scale and ``N*K % 128 == 0``.

    Returns:
        uint8 (N*K/4 + 32,).
    """
    scale = _single_scale(w, "I2_S")
    n, k = w.shape
    if (n * k) % _I2S_GROUP:
        raise ValueError(f"I2_S needs N*K a multiple of {_I2S_GROUP}, got shape {(n, k)}")
    c = (w.to_codes() + np.int8(1)).astype(np.uint8).reshape(-1, 4, 32)  # (blocks, g, m)
    codes = (c[:, 0] << 6) | (c[:, 1] << 4) | (c[:, 2] << 2) | c[:, 3]  # (blocks, 32)
    tail = np.zeros(_I2S_TAIL, dtype=np.uint8)  # (32,)
    tail[:4] = np.frombuffer(np.array([scale], dtype="<f4").tobytes(), dtype=np.uint8)
    return np.concatenate([codes.reshape(-1), tail])
