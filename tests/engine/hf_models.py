"""Tiny random checkpoints written by HF transformers itself, and the oracle that runs them.

Shapes are deliberately odd (hidden 96 with K not a multiple of 256, FFN 200, vocab 301, 6 query heads over
2 KV heads) and tiny, so the whole suite stays fast.  Ternary weights are drawn as codes with a scale that is
exact in float16 (so GGUF's fp16 block scales carry it exactly), packed with HF's layout, and saved next to a
``quantization_config``; "online" checkpoints keep bf16 masters that both sides ternarize.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

from kernels_cython import reference as kref

if TYPE_CHECKING:
    from pathlib import Path

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

SIZES: dict[str, Any] = {
    "vocab_size": 301,
    "hidden_size": 96,
    "intermediate_size": 200,
    "num_hidden_layers": 2,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "max_position_embeddings": 160,
    "rms_norm_eps": 1e-5,
}


def _module_of(name: str) -> str | None:
    for lin in LINEARS:
        if name.endswith(f"{lin}.weight"):
            return name[: -len(".weight")]
    return None


def make_checkpoint(
    root: Path,
    *,
    arch: str = "bitnet",
    linear_class: str = "autobitlinear",
    mode: str = "offline",
    tie: bool = True,
    seed: int = 0,
    modules_to_not_convert: list[str] | None = None,
    sizes: dict[str, Any] | None = None,
) -> Path:
    """Write a tiny random checkpoint with transformers' own classes.

    Args:
        root: the directory to create.
        arch: ``"bitnet"`` (BitNetForCausalLM) or ``"llama"`` (LlamaForCausalLM + bitnet quantization).
        linear_class: ``"bitlinear"`` or ``"autobitlinear"``.
        mode: ``"offline"`` (packed uint8 + weight_scale) or ``"online"`` (bf16 masters).
        tie: tie the output layer to the embedding.
        seed: the random seed.
        modules_to_not_convert: modules that stay dense.
        sizes: overrides of :data:`SIZES`.

    Returns:
        ``root``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import BitNetConfig, BitNetForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dims = {**SIZES, **(sizes or {})}
    if arch == "bitnet":
        cfg: Any = BitNetConfig(**dims, tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None)
        model: Any = BitNetForCausalLM(cfg)
    else:
        cfg = LlamaConfig(**dims, tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None)
        model = LlamaForCausalLM(cfg)
    cfg.architectures = [type(model).__name__]
    sd = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    # livelier weights than the default init, so logits are far from ties
    # (bf16-exact, hence also f16-exact: GGUF F16/BF16 copies of it are lossless)
    sd["model.embed_tokens.weight"] = torch.randn_like(sd["model.embed_tokens.weight"]).bfloat16().float()
    for k in sd:
        if k.endswith("norm.weight") or "layernorm" in k:
            sd[k] = 1.0 + 0.1 * torch.randn_like(sd[k])
    if not tie:
        sd["lm_head.weight"] = (0.5 * torch.randn_like(sd["lm_head.weight"])).bfloat16().float()
    elif "lm_head.weight" in sd:
        del sd["lm_head.weight"]
    skip = set(modules_to_not_convert or [])
    out: dict[str, Any] = {}
    for name, t in sd.items():
        mod = _module_of(name)
        if mod is None or any(mod.endswith(s) or mod == s for s in skip):
            out[name] = t.to(torch.bfloat16) if mode == "online" else t
            continue
        n, k = t.shape
        if mode == "online":
            out[name] = (0.05 * torch.randn(n, k)).to(torch.bfloat16)
            continue
        codes = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
        scale = float(np.float16(rng.uniform(0.02, 0.08)))
        packed, _ = kref.to_hf_packed(kref.TernaryMatrix.from_codes(codes, scale))
        out[name] = torch.from_numpy(packed)
        ws = scale if linear_class == "autobitlinear" else 1.0 / scale
        out[mod + ".weight_scale"] = torch.tensor([ws], dtype=torch.float32)
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(root / "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(str(root))
    cj = json.loads((root / "config.json").read_text())
    qc: dict[str, Any] = {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": mode}
    if modules_to_not_convert is not None:
        qc["modules_to_not_convert"] = modules_to_not_convert
    cj["quantization_config"] = qc
    (root / "config.json").write_text(json.dumps(cj, indent=2))
    return root


def load_oracle(root: Path) -> Any:
    """Load a checkpoint in transformers (float32, eager attention)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(root), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


def oracle_logits(model: Any, ids: list[int]) -> np.ndarray:
    """transformers' logits for a prompt (T, vocab) float32."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=False)
    return out.logits[0].float().numpy()


def oracle_greedy(model: Any, ids: list[int], n: int) -> list[int]:
    """transformers' greedy continuation of ``n`` tokens (no stop tokens)."""
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    return [int(t) for t in out[0, len(ids) :]]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Relative Frobenius norm of the difference."""
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))
