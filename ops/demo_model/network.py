"""The model: transformers' ``BitNetForCausalLM`` as a plain torch module, with BitNet b1.58 quantization-aware
training (absmean ternary weights, per-token absmax int8 activations, straight-through estimators).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Sequence


__all__ = ["Block", "DemoBitNet", "FusedBitLinear", "ModelArgs", "RMSNorm", "count_parameters"]


@dataclass
class ModelArgs:
    """Hyper-parameters (the names of transformers' ``BitNetConfig``)."""

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 640
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads


class _WeightQuant(torch.autograd.Function):
    """Absmean ternary weights, as transformers' ``WeightQuant``; the gradient passes straight through."""

    @staticmethod
    def forward(ctx: object, weight: torch.Tensor) -> torch.Tensor:
        scale = 1.0 / weight.abs().mean().clamp(min=1e-5)
        return (weight * scale).round().clamp(-1, 1) / scale

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _ActQuant(torch.autograd.Function):
    """Per-token absmax int8 activations, as transformers' ``ActQuant``; straight-through gradient."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        scale = 127 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
        return (x * scale).round().clamp(-128, 127) / scale

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad


class FusedBitLinear(nn.Module):
    """Several BitNet linear layers reading the same input (q/k/v, gate/up), computed as one matmul.

    Each part keeps its own absmean weight scale, exactly as separate ``AutoBitLinear`` layers; the input's
    int8 quantization is per token and so shared.
    """

    def __init__(self, in_features: int, out_features: Sequence[int]) -> None:
        super().__init__()
        self.parts = nn.ParameterList(nn.Parameter(torch.empty(n, in_features)) for n in out_features)
        self.fixed: torch.Tensor | None = None

    def quantized_weight(self) -> torch.Tensor:
        """The concatenated ternary-times-scale weights (straight-through to the latent ones), or the fixed
        weights set by :func:`load_exported`."""
        if self.fixed is not None:
            return self.fixed
        return torch.cat([_WeightQuant.apply(w) for w in self.parts], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_ActQuant.apply(x), self.quantized_weight())


class RMSNorm(nn.Module):
    """transformers' ``BitNetRMSNorm``."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Block(nn.Module):
    """One ``BitNetDecoderLayer``."""

    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.a = a
        hd, nh, nkv = a.head_dim, a.num_attention_heads, a.num_key_value_heads
        self.input_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.qkv = FusedBitLinear(a.hidden_size, (nh * hd, nkv * hd, nkv * hd))
        self.attn_sub_norm = RMSNorm(nh * hd, a.rms_norm_eps)
        self.o_proj = FusedBitLinear(nh * hd, (a.hidden_size,))
        self.post_attention_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.gate_up = FusedBitLinear(a.hidden_size, (a.intermediate_size, a.intermediate_size))
        self.ffn_sub_norm = RMSNorm(a.intermediate_size, a.rms_norm_eps)
        self.down_proj = FusedBitLinear(a.intermediate_size, (a.hidden_size,))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        a = self.a
        b, t, _ = x.shape
        hd, nh, nkv = a.head_dim, a.num_attention_heads, a.num_key_value_heads
        q, k, v = self.qkv(self.input_layernorm(x)).split((nh * hd, nkv * hd, nkv * hd), dim=-1)
        q = q.view(b, t, nh, hd).transpose(1, 2)
        k = k.view(b, t, nkv, hd).transpose(1, 2)
        v = v.view(b, t, nkv, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if nkv != nh:
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        att = att.transpose(1, 2).reshape(b, t, nh * hd)
        x = x + self.o_proj(self.attn_sub_norm(att))
        gate, up = self.gate_up(self.post_attention_layernorm(x)).chunk(2, dim=-1)
        return x + self.down_proj(self.ffn_sub_norm(F.relu(gate).square() * up))


class DemoBitNet(nn.Module):
    """``BitNetForCausalLM`` with tied embeddings, trained with quantization-aware linear layers."""

    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.a = a
        self.embed_tokens = nn.Embedding(a.vocab_size, a.hidden_size)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.num_hidden_layers))
        self.norm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        inv_freq = 1.0 / (a.rope_theta ** (torch.arange(0, a.head_dim, 2, dtype=torch.float) / a.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def init_weights(self, generator: torch.Generator) -> None:
        """Normal(0, 0.02) embeddings and linear weights, unit norms."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, 0.02, generator=generator)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of token ids (B, T)."""
        t = ids.shape[1]
        freqs = torch.arange(t, dtype=torch.float)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return F.linear(self.norm(x), self.embed_tokens.weight)


def count_parameters(model: DemoBitNet) -> tuple[int, int]:
    """(all parameters, ternary parameters)."""
    total = sum(p.numel() for p in model.parameters())
    ternary = sum(p.numel() for m in model.modules() if isinstance(m, FusedBitLinear) for p in m.parts)
    return total, ternary
