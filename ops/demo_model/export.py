"""Export: transformers' offline packed BitNet checkpoint (packed with :mod:`kernels_cython.reference`), its
``config.json`` and ``generation_config.json``, and the exported weights read back for checking.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING

import numpy as np
import torch

from demo_model.tokenizer import BOS, EOS, EOT, tokenizer_config
from kernels_cython.reference import TernaryMatrix, from_hf_packed, to_hf_packed

if TYPE_CHECKING:
    from pathlib import Path

    from tokenizers import Tokenizer

    from demo_model.network import DemoBitNet, FusedBitLinear, ModelArgs

__all__ = [
    "OUTPUT_FILES",
    "QUANTIZATION_CONFIG",
    "export",
    "hf_config",
    "hf_state_dict",
    "load_exported",
    "pack_ternary",
    "ternarize",
    "unpack_ternary",
]

QUANTIZATION_CONFIG = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}


OUTPUT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
)


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary codes (N, K) in {-1, 0, 1} into uint8 (ceil(N/4), K), transformers' ``pack_weights`` layout.

    The project's packer (:func:`kernels_cython.reference.to_hf_packed`) does the work; padding rows get zero bits.
    """
    packed, _ = to_hf_packed(TernaryMatrix.from_codes(codes.numpy().astype(np.int8)))
    return torch.from_numpy(packed)


def unpack_ternary(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary` (float32 codes (n, K)), by :func:`kernels_cython.reference.from_hf_packed`."""
    return torch.from_numpy(from_hf_packed(packed.numpy(), 1.0, n).to_codes()).float()


def ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, inv) of latent weights with the arithmetic of :class:`_WeightQuant`: ``W ~ codes / inv``."""
    inv = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * inv).round().clamp(-1, 1), inv


# fused module attribute -> the transformers modules it holds, in order
_LINEARS = {
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o_proj": ("self_attn.o_proj",),
    "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
    "down_proj": ("mlp.down_proj",),
}
_NORMS = {
    "input_layernorm": "input_layernorm",
    "attn_sub_norm": "self_attn.attn_sub_norm",
    "post_attention_layernorm": "post_attention_layernorm",
    "ffn_sub_norm": "mlp.ffn_sub_norm",
}


def hf_state_dict(model: DemoBitNet) -> dict[str, torch.Tensor]:
    """The checkpoint in transformers' offline packed BitNet layout.

    ``linear_class: bitlinear``: ``weight`` holds the packed codes and ``weight_scale`` the reciprocal of the
    absmean scale (transformers divides by it), float32.  Embeddings and norms are bfloat16.
    """
    bf16 = torch.bfloat16
    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.embed_tokens.weight.detach().to(bf16)}
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        for attr, names in _LINEARS.items():
            for name, w in zip(names, getattr(layer, attr).parts, strict=True):
                codes, inv = ternarize(w.detach().float())
                sd[p + name + ".weight"] = pack_ternary(codes)
                sd[p + name + ".weight_scale"] = inv.reshape(1).float()
        for attr, name in _NORMS.items():
            sd[p + name + ".weight"] = getattr(layer, attr).weight.detach().to(bf16)
    sd["model.norm.weight"] = model.norm.weight.detach().to(bf16)
    return {k: v.contiguous() for k, v in sd.items()}


def load_exported(model: DemoBitNet, sd: dict[str, torch.Tensor]) -> DemoBitNet:
    """A copy of ``model`` computing with exactly the exported values: bf16-rounded embeddings and norms, and
    fixed ``codes / weight_scale`` linear weights unpacked from the checkpoint."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.embed_tokens.weight.copy_(sd["model.embed_tokens.weight"].float())
        m.norm.weight.copy_(sd["model.norm.weight"].float())
        for i, layer in enumerate(m.layers):
            p = f"model.layers.{i}."
            for attr, name in _NORMS.items():
                getattr(layer, attr).weight.copy_(sd[p + name + ".weight"].float())
            for attr, names in _LINEARS.items():
                fused: FusedBitLinear = getattr(layer, attr)
                weights = [
                    unpack_ternary(sd[p + name + ".weight"], w.shape[0]) / sd[p + name + ".weight_scale"].float()
                    for name, w in zip(names, fused.parts, strict=True)
                ]
                fused.fixed = torch.cat(weights, dim=0)
    return m


# PreTrainedConfig's generic fields, meaningless for this model: left out of config.json.
_GENERIC_CONFIG_KEYS = {
    "_name_or_path",
    "chunk_size_feed_forward",
    "id2label",
    "label2id",
    "is_encoder_decoder",
    "output_attentions",
    "output_hidden_states",
    "problem_type",
    "return_dict",
}


def hf_config(a: ModelArgs, tok: Tokenizer) -> dict[str, object]:
    """``config.json`` for transformers' ``BitNetForCausalLM`` with the offline packed quantization config."""
    from transformers import BitNetConfig

    cfg = BitNetConfig(
        vocab_size=a.vocab_size,
        hidden_size=a.hidden_size,
        intermediate_size=a.intermediate_size,
        num_hidden_layers=a.num_hidden_layers,
        num_attention_heads=a.num_attention_heads,
        num_key_value_heads=a.num_key_value_heads,
        hidden_act="relu2",
        max_position_embeddings=a.max_position_embeddings,
        rms_norm_eps=a.rms_norm_eps,
        tie_word_embeddings=True,
        attention_bias=False,
        bos_token_id=tok.token_to_id(BOS),
        eos_token_id=[tok.token_to_id(EOS), tok.token_to_id(EOT)],
        pad_token_id=tok.token_to_id(EOS),
        rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta},
    )
    d = cfg.to_dict()
    d["architectures"] = ["BitNetForCausalLM"]
    d["head_dim"] = a.head_dim
    d["dtype"] = "float32"  # compute dtype for transformers; the tensors themselves are stored smaller
    d["quantization_config"] = dict(QUANTIZATION_CONFIG)
    return {k: d[k] for k in sorted(d) if k not in _GENERIC_CONFIG_KEYS}


def export(model: DemoBitNet, tok: Tokenizer, out: Path, readme: str) -> dict[str, torch.Tensor]:
    """Write the model directory; returns the saved tensors."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:  # only what this script writes: --out may be a directory with other files
        (out / name).unlink(missing_ok=True)
    a = model.a
    sd = hf_state_dict(model)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(a, tok), indent=2) + "\n")
    gen = {
        "bos_token_id": tok.token_to_id(BOS),
        "eos_token_id": [tok.token_to_id(EOS), tok.token_to_id(EOT)],
        "pad_token_id": tok.token_to_id(EOS),
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "max_new_tokens": 128,
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(tok, a.max_position_embeddings), indent=2) + "\n"
    )
    (out / "README.md").write_text(readme)
    return sd
