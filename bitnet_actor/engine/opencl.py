"""The forward pass on an OpenCL device (``load_model(path, device="opencl")``).

At load every weight the forward pass reads goes to the device once, in the layout it has on the host
(ternary codes as :mod:`kernels_cython` packs them with per-row or per-block scales, dense matrices as
stored: f32, f16, bf16 or int8), with the RoPE tables and the norms.  KV caches live on the device, one
pair of buffers per sequence.  A step uploads the new tokens' embedding rows and positions and downloads
the logits of the rows that need them; nothing else crosses the bus.

The math is :mod:`bitnet_actor.engine.ops`'s: int8 activations bit for bit, int32 products exact, float
ops (norms, RoPE, attention, activations) within float summation-order differences of the CPU path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kernels_opencl import ops as clops
from kernels_opencl.device import OpenCLError
from kernels_opencl.ops import DeviceDenseMatrix, DeviceTernaryMatrix

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy.typing as npt

    from bitnet_actor.engine.layers import DenseMatrix, Linear
    from bitnet_actor.engine.loader import ModelWeights
    from kernels_opencl.device import Context

__all__ = ["OpenCLRunner"]


class _DevLinear:
    """A linear layer on the device."""

    __slots__ = ("bias", "dense", "eps", "n", "pre_norm", "ternary")

    def __init__(self, ctx: Context, lin: Linear) -> None:
        self.n = lin.shape[0]
        self.ternary = DeviceTernaryMatrix(ctx, lin.ternary) if lin.ternary is not None else None
        self.dense = _dense(ctx, lin.dense) if lin.dense is not None else None
        self.bias = ctx.to_device(lin.bias) if lin.bias is not None else None
        self.pre_norm = ctx.to_device(lin.pre_norm) if lin.pre_norm is not None else None
        self.eps = lin.pre_norm_eps

    @property
    def nbytes(self) -> int:
        m = self.ternary if self.ternary is not None else self.dense
        assert m is not None
        return m.nbytes


class _DevLayer:
    __slots__ = ("attn_norm", "attn_sub_norm", "down", "ffn_norm", "ffn_sub_norm", "gate_up", "o", "qkv")

    def __init__(self, ctx: Context, layer: Any) -> None:
        self.attn_norm = ctx.to_device(layer.attn_norm)
        self.qkv = [_DevLinear(ctx, lin) for lin in layer.qkv]
        self.o = _DevLinear(ctx, layer.o)
        self.attn_sub_norm = ctx.to_device(layer.attn_sub_norm) if layer.attn_sub_norm is not None else None
        self.ffn_norm = ctx.to_device(layer.ffn_norm)
        self.gate_up = [_DevLinear(ctx, lin) for lin in layer.gate_up]
        self.down = _DevLinear(ctx, layer.down)
        self.ffn_sub_norm = ctx.to_device(layer.ffn_sub_norm) if layer.ffn_sub_norm is not None else None


def _dense(ctx: Context, m: DenseMatrix) -> DeviceDenseMatrix:
    return DeviceDenseMatrix(ctx, m.kind, m.data, m.scales, m.cols)


class OpenCLRunner:
    """Device weights, per-sequence device KV caches and the batched forward pass.

    Not thread-safe: the model's lock serializes :meth:`forward` (kernel arguments are shared; the context is the
    model's own, so no other thread launches on it).  :meth:`new_cache` may run beside a forward.
    """

    def __init__(
        self,
        weights: ModelWeights,
        ctx: Context,
        cos: npt.NDArray[np.float32],
        sin: npt.NDArray[np.float32],
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Upload the weights.

        Args:
            weights: the loaded model.
            ctx: the device.
            cos: float32 (context, D/2) RoPE table.
            sin: float32 (context, D/2).
            progress: called as ``progress(done, total)`` per uploaded layer.
        """
        cfg = weights.config
        self.ctx = ctx
        self.config = cfg
        total = len(weights.layers) + 1
        self.layers: list[_DevLayer] = []
        for i, layer in enumerate(weights.layers):
            self.layers.append(_DevLayer(ctx, layer))
            if progress is not None:
                progress(i + 1, total)
        self.final_norm = ctx.to_device(weights.final_norm)
        self.cos = ctx.to_device(cos)
        self.sin = ctx.to_device(sin)
        self._heads: dict[int, DeviceDenseMatrix] = {}
        self.head = self.set_head(weights.lm_head)
        if progress is not None:
            progress(total, total)
        self._bufs: dict[str, tuple[Any, int]] = {}
        self.att_rows = 64
        """Query rows per attention launch: its score scratch is rows x heads x context floats, so a long prompt
        is attended in chunks (each row's result does not depend on the chunking)."""
        h, d = cfg.hidden_size, cfg.head_dim
        self._qkv_n = (cfg.num_heads + 2 * cfg.num_kv_heads) * d
        self._attn_n = cfg.num_heads * d
        self._ffn = sum(lin.n for lin in self.layers[0].gate_up) // 2 if self.layers else 0
        self._max_kp = max([-(-k // 256) * 256 for k in (h, self._attn_n, max(self._ffn, 1))] + [self.head.padded_k])

    # ------------------------------------------------------------------------------------------- state

    def set_head(self, m: DenseMatrix) -> DeviceDenseMatrix:
        """Use ``m`` as the output matrix (uploaded once per distinct matrix).

        Returns:
            Its device copy.
        """
        dev = self._heads.get(id(m))
        if dev is None:
            dev = _dense(self.ctx, m)
            self._heads[id(m)] = dev
        self.head = dev
        return dev

    @property
    def nbytes(self) -> int:
        """Device bytes of the weights (every layer, norms excluded, and each uploaded output matrix)."""
        n = sum(h.nbytes for h in self._heads.values())
        for layer in self.layers:
            n += sum(lin.nbytes for lin in (*layer.qkv, layer.o, *layer.gate_up, layer.down))
        return n

    def new_cache(self, capacity: int) -> tuple[Any, Any, int]:
        """Device key and value caches for one sequence of ``capacity`` tokens.

        Returns:
            ``(keys, values, bytes of both)``.

        Raises:
            MemoryError: the device cannot hold them (more than one allocation may hold, or out of memory).
        """
        cfg = self.config
        n = cfg.num_layers * cfg.num_kv_heads * capacity * cfg.head_dim * 4
        try:
            # touched now (on the context's own fill queue, so a running step is not waited for): a lazily
            # allocating driver fails here, not mid-step
            return self.ctx.empty(n, touch=True), self.ctx.empty(n, touch=True), 2 * n
        except OpenCLError as exc:
            raise MemoryError(f"the KV cache of {capacity} tokens does not fit on the device: {exc}") from exc

    def new_kv_block(self, tokens: int) -> Any:
        """A device buffer for the keys (or the values) of ``tokens`` positions: (layers, Hkv, tokens, D) float32.

        Raises:
            MemoryError: the device cannot hold it.
        """
        cfg = self.config
        try:
            return self.ctx.empty(cfg.num_layers * cfg.num_kv_heads * tokens * cfg.head_dim * 4)
        except OpenCLError as exc:
            raise MemoryError(f"a KV block of {tokens} tokens does not fit on the device: {exc}") from exc

    def copy_kv(self, src: Any, src_cap: int, src_p0: int, dst: Any, dst_cap: int, dst_p0: int, tokens: int) -> None:
        """Queue a copy of positions ``src_p0 ..`` of a (layers, Hkv, src_cap, D) float32 cache buffer to positions
        ``dst_p0 ..`` of a (layers, Hkv, dst_cap, D) one, ``tokens`` positions of every layer and KV head: one
        rectangular copy (rows: layer x head; the queue is in order, so it runs between the steps around it)."""
        cfg = self.config
        rows, row = cfg.num_layers * cfg.num_kv_heads, cfg.head_dim * 4  # bytes of one position of one head
        with self.ctx.lock:
            self.ctx.cl.enqueue_copy(
                self.ctx.queue, dst, src,
                src_origin=(src_p0 * row, 0, 0), dst_origin=(dst_p0 * row, 0, 0), region=(tokens * row, rows, 1),
                src_pitches=(src_cap * row, src_cap * row * rows), dst_pitches=(dst_cap * row, dst_cap * row * rows),
            )  # fmt: skip

    def _buf(self, name: str, nbytes: int) -> Any:
        """A scratch buffer of at least ``nbytes``, kept between steps and grown when too small."""
        cur = self._bufs.get(name)
        if cur is None or cur[1] < nbytes:
            cur = (self.ctx.empty(max(nbytes, 64)), max(nbytes, 64))
            self._bufs[name] = cur
        return cur[0]

    # ------------------------------------------------------------------------------------------- forward

    def _linears(self, lins: list[_DevLinear], x: Any, m: int, k: int, out: Any, ldo: int) -> None:
        """Run layers that read the same input ``x`` (m, k), writing their outputs side by side in ``out``."""
        ctx = self.ctx
        quantized: tuple[Any, Any] | None = None
        col = 0
        for lin in lins:
            src = x
            if lin.pre_norm is not None:
                src = self._buf("prenorm", 4 * m * k)
                clops.enqueue_rmsnorm(ctx, x, k, m, k, lin.pre_norm, lin.eps, src)
            if lin.ternary is not None:
                w = lin.ternary
                if lin.pre_norm is not None or quantized is None:
                    xq, s = self._buf("xq", m * self._max_kp), self._buf("xs", 4 * m)
                    clops.enqueue_quantize(ctx, src, k, m, k, w.padded_k, xq, s)
                    quantized = None if lin.pre_norm is not None else (xq, s)
                else:
                    xq, s = quantized
                clops.enqueue_ternary_linear(ctx, xq, s, m, w, out, ldo, col)
            else:
                assert lin.dense is not None
                quantized = None  # the q8 scratch shares the buffers
                scratch = (self._buf("xq", m * self._max_kp), self._buf("xs", 4 * m))
                clops.enqueue_dense(ctx, src, m, lin.dense, out, ldo, col, scratch)
            if lin.bias is not None:
                clops.enqueue_bias_add(ctx, out, ldo, col, m, lin.n, lin.bias)
            col += lin.n

    def forward(
        self,
        x_host: npt.NDArray[np.float32],
        positions: npt.NDArray[np.int64],
        caches: list[tuple[Any, Any, int]],
        bounds: npt.NDArray[np.int64],
        starts: npt.NDArray[np.int64],
        rows: list[int] | None,
    ) -> npt.NDArray[np.float32]:
        """One forward over the rows of several sequences.

        Args:
            x_host: float32 (M, hidden), the embedding rows.
            positions: int64 (M,), each row's position.
            caches: per sequence ``(keys, values, capacity)``.
            bounds: int64 (S + 1,): sequence ``s`` owns rows ``bounds[s] .. bounds[s+1]``.
            starts: int64 (S,): position of each sequence's first row.
            rows: the rows whose logits are wanted, or None for all.

        Returns:
            float32 (len(rows) or M, vocab).
        """
        ctx = self.ctx
        cfg = self.config
        m, hdim = x_host.shape
        nh, nkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        heads = (nh, nkv, hd)
        eps = cfg.rms_norm_eps
        f = self._ffn
        x = self._buf("x", 4 * m * hdim)
        h = self._buf("h", 4 * m * hdim)
        qkv = self._buf("qkv", 4 * m * self._qkv_n)
        attn = self._buf("attn", 4 * m * self._attn_n)
        y = self._buf("y", 4 * m * hdim)
        gu = self._buf("gu", 4 * m * 2 * f)
        act = self._buf("act", 4 * m * max(f, 1))
        pos = self._buf("pos", 4 * m)
        ctx.write(x, np.ascontiguousarray(x_host, dtype=np.float32))
        ctx.write(pos, positions.astype(np.int32))
        span = [(int(bounds[s]), int(bounds[s + 1]) - int(bounds[s]), int(starts[s])) for s in range(len(caches))]
        # attention scores of at most att_rows query rows at a time: the scratch stays linear in the context
        att_scratch = self._buf("att", 4 * max(min(n, self.att_rows) * nh * (p + n) for _, n, p in span))
        layers = self.layers
        clops.enqueue_rmsnorm(ctx, x, hdim, m, hdim, layers[0].attn_norm, eps, h)
        for li, layer in enumerate(layers):
            self._linears(layer.qkv, h, m, hdim, qkv, self._qkv_n)
            clops.enqueue_rope(ctx, qkv, self._qkv_n, m, nh + nkv, hd, pos, self.cos, self.sin)
            for (r0, n, p0), (kc, vc, cap) in zip(span, caches, strict=True):
                clops.enqueue_kv_store(ctx, qkv, self._qkv_n, r0, n, heads, kc, vc, li, cap, p0)
                for c0 in range(0, n, self.att_rows):
                    c = min(self.att_rows, n - c0)
                    clops.enqueue_attention(
                        ctx, qkv, self._qkv_n, r0 + c0, c, heads, kc, vc, li, cap, p0 + c0, attn, self._attn_n,
                        att_scratch,
                    )  # fmt: skip
            if layer.attn_sub_norm is not None:
                clops.enqueue_rmsnorm(ctx, attn, self._attn_n, m, self._attn_n, layer.attn_sub_norm, eps, attn)
            self._linears([layer.o], attn, m, self._attn_n, y, hdim)
            clops.enqueue_add_rmsnorm(ctx, x, y, m, hdim, layer.ffn_norm, eps, h)
            self._linears(layer.gate_up, h, m, hdim, gu, 2 * f)
            clops.enqueue_glu(ctx, gu, m, f, act, cfg.hidden_act)
            if layer.ffn_sub_norm is not None:
                clops.enqueue_rmsnorm(ctx, act, f, m, f, layer.ffn_sub_norm, eps, act)
            self._linears([layer.down], act, m, f, y, hdim)
            if li + 1 < len(layers):
                clops.enqueue_add_rmsnorm(ctx, x, y, m, hdim, layers[li + 1].attn_norm, eps, h)
            else:
                clops.enqueue_residual_add(ctx, x, y, m * hdim)
        src, ms = x, m
        if rows is not None:
            ms = len(rows)
            if ms == 0:
                return np.empty((0, cfg.vocab_size), dtype=np.float32)
            idx = self._buf("rows", 4 * ms)
            ctx.write(idx, np.asarray(rows, dtype=np.int32))
            src = self._buf("sel", 4 * ms * hdim)
            clops.enqueue_gather_rows(ctx, x, hdim, idx, ms, src)
        hn = self._buf("hn", 4 * ms * hdim)
        clops.enqueue_rmsnorm(ctx, src, hdim, ms, hdim, self.final_norm, eps, hn)
        logits = self._buf("logits", 4 * ms * cfg.vocab_size)
        scratch = (self._buf("xq", ms * self._max_kp), self._buf("xs", 4 * ms))
        clops.enqueue_dense(ctx, hn, ms, self.head, logits, cfg.vocab_size, 0, scratch)
        return ctx.read(logits, np.empty((ms, cfg.vocab_size), dtype=np.float32))
