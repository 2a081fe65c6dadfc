"""The forward pass of :class:`~bitnet_actor.engine.model.Model`: embeddings, the decoder layers (the compiled
loop of :func:`build_stack` when every layer is a plain ternary product, else one op at a time; the two give
the same bits) and the output rows asked for; on OpenCL the device runner does it all.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from bitnet_actor.engine import ops

if TYPE_CHECKING:
    import numpy.typing as npt

    from bitnet_actor.engine.layers import Linear
    from bitnet_actor.engine.loader import ModelWeights
    from bitnet_actor.engine.model import Model
    from bitnet_actor.engine.sequence import Sequence

__all__ = ["build_stack", "forward", "layers_per_op"]

log = logging.getLogger(__name__)


def _apply1(lin: Linear, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """One linear layer; plain ternary layers go straight to the kernel."""
    if lin.ternary is not None and lin.bias is None and lin.pre_norm is None:
        return ops.ternary_linear(x, lin.ternary)
    return lin(x)


def _apply(lins: list[Linear], x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A fused layer, or separate layers concatenated along the output."""
    if len(lins) == 1:
        return _apply1(lins[0], x)
    return np.concatenate([_apply1(lin, x) for lin in lins], axis=1)


def build_stack(weights: ModelWeights) -> Any | None:
    """The compiled layer loop, when every linear layer is one plain ternary product (q/k/v and gate/up
    fused; no bias, input norm, dense layer or per-block scales) and the compiled code is built."""
    cfg = weights.config
    specs = []
    for layer in weights.layers:
        if len(layer.qkv) != 1 or len(layer.gate_up) != 1:
            return None
        lins = (layer.qkv[0], layer.o, layer.gate_up[0], layer.down)
        for lin in lins:
            t = lin.ternary
            if t is None or lin.bias is not None or lin.pre_norm is not None:
                return None
            if t.row_scale is None and not isinstance(t.scale, float):
                return None
        specs.append(
            (
                layer.attn_norm,
                lins[0].ternary,
                layer.attn_sub_norm,
                lins[1].ternary,
                layer.ffn_norm,
                lins[2].ternary,
                lins[3].ternary,
                layer.ffn_sub_norm,
            )
        )
    heads = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    try:
        return ops.layer_stack(specs, heads, cfg.hidden_act == "relu2", cfg.rms_norm_eps)
    except ValueError as exc:  # a layout the loop does not take (e.g. a norm stored in another dtype)
        log.debug("per-op forward: %s", exc)
        return None


def forward(
    model: Model,
    seqs: list[Sequence],
    feeds: list[npt.NDArray[np.int64]],
    want: list[bool],
    *,
    all_rows: bool,
) -> npt.NDArray[np.float32]:
    cfg = model.config
    w = model.weights
    ids = np.concatenate(feeds) if len(feeds) > 1 else feeds[0]
    m = len(ids)
    starts = np.fromiter((s.pos for s in seqs), dtype=np.int64, count=len(seqs))
    lens = np.fromiter((len(f) for f in feeds), dtype=np.int64, count=len(feeds))
    bounds = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lens, out=bounds[1:])
    positions = np.repeat(starts - bounds[:-1], lens) + np.arange(m)
    cos = model._cos[positions]  # (M, D/2)
    sin = model._sin[positions]
    x = np.empty((m, cfg.hidden_size), dtype=np.float32)
    w.embed.gather(ids, x)
    if model._runner is not None:
        caches = [(s.k_cache, s.v_cache, s.capacity) for s in seqs]
        if any(k is None or v is None for k, v, _ in caches):
            raise ValueError("a released sequence cannot run")
        wanted = None if all_rows else [int(bounds[i + 1]) - 1 for i, wnt in enumerate(want) if wnt]
        return model._runner.forward(x, positions, caches, bounds, starts, wanted)
    kcs = [s.k_cache for s in seqs if s.k_cache is not None]
    vcs = [s.v_cache for s in seqs if s.v_cache is not None]
    if len(kcs) != len(seqs) or len(vcs) != len(seqs):
        raise ValueError("a released sequence cannot run")
    if model._stack is not None:
        ops.run_layers(model._stack, x, cos, sin, kcs, vcs, bounds, starts, model.op_times)
    else:
        layers_per_op(model, x, cos, sin, kcs, vcs, bounds, starts)
    if all_rows:
        sel = x
    else:
        rows = [int(bounds[i + 1]) - 1 for i, wnt in enumerate(want) if wnt]
        if not rows:
            return np.empty((0, cfg.vocab_size), dtype=np.float32)
        sel = np.ascontiguousarray(x[rows])
    hn = ops.rmsnorm(sel, w.final_norm, cfg.rms_norm_eps)
    return model._head.matmul(hn)


def layers_per_op(
    model: Model,
    x: npt.NDArray[np.float32],
    cos: npt.NDArray[np.float32],
    sin: npt.NDArray[np.float32],
    kcs: list[Any],
    vcs: list[Any],
    bounds: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
) -> None:
    """The decoder layers one op at a time (any layer kind); the compiled loop gives the same bits."""
    cfg = model.config
    heads = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    eps = cfg.rms_norm_eps
    act = cfg.hidden_act
    attn = np.empty((x.shape[0], cfg.num_heads * cfg.head_dim), dtype=np.float32)
    layers = model.weights.layers
    h = ops.rmsnorm(x, layers[0].attn_norm, eps)
    for li, layer in enumerate(layers):
        qkv = _apply(layer.qkv, h)
        ops.attn_block(
            qkv,
            heads,
            cos,
            sin,
            [c[li] for c in kcs],
            [c[li] for c in vcs],
            bounds,
            starts,
            attn,
            layer.attn_sub_norm,
            eps,
        )
        h = ops.add_rmsnorm(x, _apply1(layer.o, attn), layer.ffn_norm, eps)
        gu = _apply(layer.gate_up, h)
        a = ops.glu_norm(gu, act, layer.ffn_sub_norm, eps)
        down = _apply1(layer.down, a)
        if li + 1 < len(layers):
            h = ops.add_rmsnorm(x, down, layers[li + 1].attn_norm, eps)
        else:
            x += down
