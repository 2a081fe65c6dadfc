"""Weights of the forward pass: ternary and dense linear layers, the embedding / output matrix.

* :class:`Linear` wraps either a ternary :class:`kernels_cython.TernaryMatrix` (activations quantized to int8
  per row, exact int32 product, rescaled; the fast kernels when built, else the numpy reference) or a dense
  :class:`DenseMatrix` (``modules_to_not_convert``), with an optional bias and an optional input RMSNorm
  (``quantization_config.use_rms_norm``).
* :class:`DenseMatrix` keeps a float matrix as stored (float32, float16 or bfloat16, often a memory map: no
  copy) or quantized for the optional quantized output layer: int8 with one float32 scale per row ("q8"), or
  6-bit with a 0..127 scale per 16 weights and a float32 scale per row ("q6", like llama.cpp's Q6_K).  Its
  :meth:`~DenseMatrix.matmul` converts to float32 on the fly, so ``x @ W.T`` equals the float32 product of
  the stored values up to summation order.

:func:`fuse_rows` stacks ternary matrices that read the same input (Q/K/V, gate/up) into one matrix with
per-row scales: the activations are quantized once and the fast kernel runs once, with results identical
to the separate products (each output is ``float32(acc) / s * scale_of_its_row`` either way).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bitnet_actor.engine import ops
from kernels_cython import reference as kref
from kernels_cython import reference_dense as dref

if TYPE_CHECKING:
    import numpy.typing as npt

    from kernels_cython.reference import TernaryMatrix

__all__ = ["DenseMatrix", "Linear", "fuse_rows"]

_CHUNK_ROWS = 4096


class DenseMatrix:
    """A float matrix (N, K) kept as stored, or quantized (int8 or 6-bit) with per-row scales.

    Attributes:
        kind: ``"f32"``, ``"f16"``, ``"bf16"`` (uint16 storage), ``"q8"`` (int8 + scales) or ``"q6"``.
        data: the stored array (N, K); for ``"q8"`` (N, Kp) with K zero-padded to a multiple of 64; for ``"q6"``
            uint8 (N, Kp / 64 * 52): per 64 weights, 32 bytes of low nibbles, 16 of high 2-bit fields and four
            0..127 scales of 16 weights each (``bitnet_actor/engine/engine_simd.h`` has the layout).
        scales: float32 (N,) for ``"q8"`` and ``"q6"``, else None.
        offsets: int64 (N,) for ``"q6"``: ``128 * sum_k d_k * q_k`` of each row (the SIMD kernels' correction
            for reading the activations as unsigned bytes), else None.
        cols: K.
    """

    __slots__ = ("cols", "data", "kind", "offsets", "scales")

    # the most columns of a q6 matrix: the SIMD kernels' int32 lanes hold K <= 16384
    Q6_MAX_COLS = 16384

    def __init__(
        self,
        kind: str,
        data: npt.NDArray[Any],
        scales: npt.NDArray[np.float32] | None = None,
        cols: int | None = None,
        offsets: npt.NDArray[np.int64] | None = None,
    ) -> None:
        """Wrap a stored matrix.

        Args:
            kind: see the class attributes.
            data: (N, K) of the matching dtype ((N, Kp) for ``"q8"``, (N, Kp / 64 * 52) for ``"q6"``).
            scales: float32 (N,) for ``"q8"`` and ``"q6"``.
            cols: K for ``"q8"`` and ``"q6"`` (default: all columns; required for ``"q6"``).
            offsets: int64 (N,) for ``"q6"``.
        """
        expected = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16, "q8": np.int8, "q6": np.uint8}[kind]
        if data.dtype != expected or data.ndim != 2:
            raise ValueError(f"DenseMatrix {kind} needs a 2-D {np.dtype(expected).name} array, got {data.dtype}")
        if kind in ("q8", "q6") and (scales is None or scales.dtype != np.float32 or scales.shape != (data.shape[0],)):
            raise ValueError(f"DenseMatrix {kind} needs float32 scales (N,)")
        if kind == "q6":
            if offsets is None or offsets.dtype != np.int64 or offsets.shape != (data.shape[0],):
                raise ValueError("DenseMatrix q6 needs int64 offsets (N,)")
            if cols is None or data.shape[1] % 52 or not 0 < cols <= data.shape[1] // 52 * 64:
                raise ValueError("DenseMatrix q6 needs cols and 52 bytes per 64 columns")
            if cols > self.Q6_MAX_COLS or not data.flags.c_contiguous:
                raise ValueError(f"DenseMatrix q6 needs C-contiguous data of at most {self.Q6_MAX_COLS} columns")
            # the SIMD kernels' int32 lanes hold block scales up to 127 (the offsets are trusted: they come from
            # quantize_q6 with the data)
            if data.size and int(data.reshape(data.shape[0], -1, 52)[:, :, 48:].max()) > 127:
                raise ValueError("DenseMatrix q6 block scales must be 0..127")
        self.kind = kind
        self.data = data
        self.scales = scales
        self.offsets = offsets
        self.cols = int(data.shape[1]) if cols is None else cols

    @classmethod
    def quantize_q8(cls, m: DenseMatrix) -> DenseMatrix:
        """Quantize to int8 per row: ``scale = max|row| / 127``, ``q = round(row / scale)``.

        Args:
            m: a float matrix.

        Returns:
            The int8 matrix.
        """
        n, k = m.shape
        q = np.zeros((n, -(-k // 64) * 64), dtype=np.int8)
        scales = np.empty(n, dtype=np.float32)
        for r0 in range(0, n, _CHUNK_ROWS):
            rows = m.rows_f32(r0, min(n, r0 + _CHUNK_ROWS))  # (r, K)
            amax = np.abs(rows).max(axis=1)
            sc = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
            q[r0 : r0 + rows.shape[0], :k] = np.clip(np.rint(rows / sc[:, None]), -127, 127).astype(np.int8)
            scales[r0 : r0 + rows.shape[0]] = sc
        return cls("q8", q, scales, k)

    @classmethod
    def quantize_q6(cls, m: DenseMatrix) -> DenseMatrix:
        """Quantize to 6 bits with a 0..127 scale per 16 weights and a float32 scale per row (as llama.cpp's
        Q6_K, whose super-block scale is per 256 weights): for each 16 weights the ideal step is
        ``max|w| / 31``; the row scale is the largest step / 127, each block's scale its step in those units
        (rounded), and ``q = round(w / (row scale * block scale))`` in -31..31.

        Args:
            m: a float matrix with at most :data:`Q6_MAX_COLS` columns.

        Returns:
            The q6 matrix (6.5 bits per weight, plus 12 bytes per row).

        Raises:
            ValueError: more than :data:`Q6_MAX_COLS` columns.
        """
        n, k = m.shape
        if k > cls.Q6_MAX_COLS:
            raise ValueError(f"q6 takes at most {cls.Q6_MAX_COLS} columns, got {k}")
        kp = -(-k // 64) * 64
        g = kp // 64
        data = np.empty((n, g * 52), dtype=np.uint8)
        scales = np.empty(n, dtype=np.float32)
        offsets = np.empty(n, dtype=np.int64)
        for r0 in range(0, n, _CHUNK_ROWS):
            rows = np.zeros((min(n, r0 + _CHUNK_ROWS) - r0, kp), dtype=np.float32)
            rows[:, :k] = m.rows_f32(r0, r0 + rows.shape[0])
            r = rows.shape[0]
            blocks = rows.reshape(r, kp // 16, 16)
            step = np.abs(blocks).max(axis=2) / np.float32(31)  # (r, Kp/16)
            top = step.max(axis=1)
            sc = np.where(top > 0, top / np.float32(127), np.float32(1)).astype(np.float32)
            d = np.clip(np.rint(step / sc[:, None]), 0, 127).astype(np.uint8)  # (r, Kp/16)
            eff = sc[:, None] * d.astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                q = np.where(eff[:, :, None] > 0, np.rint(blocks / eff[:, :, None]), 0)
            q = np.clip(q, -31, 31).astype(np.int8).reshape(r, g, 64)
            u = (q + 32).astype(np.uint8)
            lo = (u[:, :, :32] & 15) | ((u[:, :, 32:] & 15) << 4)
            hi = u >> 4
            hb = hi[:, :, 0:16] | (hi[:, :, 16:32] << 2) | (hi[:, :, 32:48] << 4) | (hi[:, :, 48:64] << 6)
            data[r0 : r0 + r] = np.concatenate([lo, hb, d.reshape(r, g, 4)], axis=2).reshape(r, g * 52)
            scales[r0 : r0 + r] = sc
            qd = q.reshape(r, kp // 16, 16).astype(np.int64).sum(axis=2) * d.astype(np.int64)
            offsets[r0 : r0 + r] = 128 * qd.sum(axis=1)
        return cls("q6", data, scales, k, offsets)

    def q6_codes(self, r0: int, r1: int) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.uint8]]:
        """Rows ``[r0, r1)`` of a q6 matrix unpacked: codes int8 (r, Kp) in -31..31 and block scales uint8
        (r, Kp / 16) (the layout: :func:`kernels_cython.reference_dense.q6_unpack_ref`)."""
        return dref.q6_unpack_ref(self.data[r0:r1])

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, K)``."""
        return (int(self.data.shape[0]), self.cols)

    @property
    def nbytes(self) -> int:
        """Stored bytes (scales and offsets included)."""
        n = int(self.data.nbytes) + (int(self.scales.nbytes) if self.scales is not None else 0)
        return n + (int(self.offsets.nbytes) if self.offsets is not None else 0)

    def rows_f32(self, r0: int, r1: int) -> npt.NDArray[np.float32]:
        """Rows ``[r0, r1)`` as a new float32 array.

        Args:
            r0: first row.
            r1: end row.

        Returns:
            float32 (r1 - r0, K).
        """
        d = self.data[r0:r1]
        if self.kind == "f32":
            return np.array(d, dtype=np.float32)
        if self.kind == "f16":
            return d.astype(np.float32)
        if self.kind == "bf16":
            return dref.bf16_to_f32_ref(d)
        assert self.scales is not None
        if self.kind == "q6":
            codes, blk = self.q6_codes(r0, r1)
            w = codes.astype(np.float32) * np.repeat(blk, 16, axis=1).astype(np.float32)
            return np.ascontiguousarray(w[:, : self.cols] * self.scales[r0:r1, None])
        return d[:, : self.cols].astype(np.float32) * self.scales[r0:r1, None]

    def gather(self, ids: npt.NDArray[np.int64], out: npt.NDArray[np.float32]) -> None:
        """Rows ``ids`` as float32 into ``out`` (embedding lookup).

        Args:
            ids: int64 (M,), in range.
            out: float32 (M, K).
        """
        d = self.data[ids]
        if self.kind == "f32":
            out[...] = d
        elif self.kind == "f16":
            out[...] = d.astype(np.float32)
        elif self.kind == "bf16":
            out[...] = dref.bf16_to_f32_ref(d)
        elif self.kind == "q6":
            for i, r in enumerate(ids.tolist()):
                out[i] = self.rows_f32(r, r + 1)[0]
        else:
            assert self.scales is not None
            out[...] = d[:, : self.cols].astype(np.float32) * self.scales[ids, None]

    def matmul(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``x @ W.T`` in float32.

        Args:
            x: float32 (M, K), C-contiguous.

        Returns:
            float32 (M, N).
        """
        return ops.dense_matmul(x, self)


class Linear:
    """A linear layer: ternary or dense weights, optional bias, optional input RMSNorm.

    Attributes:
        ternary: the ternary weights, or None.
        dense: the dense weights, or None.
        bias: float32 (N,) or None.
        pre_norm: float32 (K,) RMSNorm weight applied to the input first, or None.
        pre_norm_eps: its epsilon.
    """

    __slots__ = ("bias", "dense", "pre_norm", "pre_norm_eps", "ternary")

    def __init__(
        self,
        *,
        ternary: TernaryMatrix | None = None,
        dense: DenseMatrix | None = None,
        bias: npt.NDArray[np.float32] | None = None,
        pre_norm: npt.NDArray[np.float32] | None = None,
        pre_norm_eps: float = 1e-6,
    ) -> None:
        """Build a layer from exactly one of ``ternary`` / ``dense``."""
        if (ternary is None) == (dense is None):
            raise ValueError("Linear needs exactly one of ternary or dense weights")
        self.ternary = ternary
        self.dense = dense
        self.bias = bias
        self.pre_norm = pre_norm
        self.pre_norm_eps = pre_norm_eps

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, K)``."""
        if self.ternary is not None:
            return self.ternary.shape
        assert self.dense is not None
        return self.dense.shape

    @property
    def nbytes(self) -> int:
        """Bytes read per forward (weights, scales, bias)."""
        n = 0
        if self.ternary is not None:
            sc = self.ternary.scale
            n = self.ternary.nbytes + (int(sc.nbytes) if isinstance(sc, np.ndarray) else 4)
        elif self.dense is not None:
            n = self.dense.nbytes
        if self.bias is not None:
            n += int(self.bias.nbytes)
        return n

    def __call__(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Apply the layer.

        Args:
            x: float32 (M, K), C-contiguous.

        Returns:
            float32 (M, N).
        """
        if self.pre_norm is not None:
            x = ops.rmsnorm(x, self.pre_norm, self.pre_norm_eps)
        if self.ternary is not None:
            y = ops.ternary_linear(x, self.ternary)
        else:
            assert self.dense is not None
            y = self.dense.matmul(x)
        if self.bias is not None:
            y += self.bias
        return y


def fuse_rows(layers: list[Linear]) -> Linear | None:
    """Stack ternary layers that read the same input into one (per-row scales).

    Args:
        layers: the layers, in output order.

    Returns:
        The fused layer, or None when they cannot be fused (dense, input norms, per-block scales).
    """
    mats = []
    for lin in layers:
        if lin.ternary is None or lin.pre_norm is not None:
            return None
        w = lin.ternary
        if isinstance(w.scale, np.ndarray) and w.row_scale is None:
            return None
        mats.append(w)
    k = mats[0].shape[1]
    if any(m.shape[1] != k for m in mats):
        return None
    packed = np.concatenate([m.packed for m in mats], axis=0)  # (sum N, Kp / 4)
    rows = []
    for m in mats:
        rs = m.row_scale if m.row_scale is not None else np.full(m.shape[0], m.scale, dtype=np.float32)
        rows.append(rs)
    row_scale = np.concatenate(rows).astype(np.float32)  # (sum N,)
    kb = packed.shape[1] // 64
    scales = np.ascontiguousarray(np.repeat(row_scale[:, None], kb, axis=1))  # (sum N, Kb)
    fused = kref.TernaryMatrix(np.ascontiguousarray(packed), k, scales)
    biases = [lin.bias for lin in layers]
    bias = None
    if any(b is not None for b in biases):
        bias = np.concatenate(
            [b if b is not None else np.zeros(lin.shape[0], np.float32) for b, lin in zip(biases, layers, strict=True)]
        ).astype(np.float32)
    return Linear(ternary=fused, bias=bias)
