"""Writing GGUF files of a tiny HF checkpoint.

TQ1_0 / TQ2_0 files (and F32/F16/BF16/Q8_0/Q6_K non-ternary tensors) are written with the ``gguf`` package's
own ``GGUFWriter``; I2_S, which ``gguf`` cannot name (type 36), with the engine's small writer
(:func:`bitnet_actor.engine.gguf_io.write_gguf`).  Ternary tensors come from the checkpoint's packed weights
through :mod:`kernels_cython`'s converters; llama-architecture files get llama.cpp's Q/K row permutation.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from bitnet_actor.engine.config import ModelConfig
from bitnet_actor.engine.tensors import SafetensorsFile, to_float32
from kernels_cython import reference as kref

if TYPE_CHECKING:
    from pathlib import Path

_HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.attn_sub_norm": "attn_sub_norm",
    "mlp.ffn_sub_norm": "ffn_sub_norm",
}


def _permute(m: np.ndarray, n_head: int) -> np.ndarray:
    n = m.shape[0]
    return m.reshape(n_head, 2, n // n_head // 2, *m.shape[1:]).swapaxes(1, 2).reshape(m.shape)


def gguf_tensors(
    ckpt: Path, ternary: str, dense: str
) -> tuple[dict[str, Any], dict[str, tuple[str, tuple[int, ...], np.ndarray]]]:
    """Metadata and tensors of a GGUF version of an HF checkpoint with packed ternary weights."""
    cfg = ModelConfig.from_hf(json.loads((ckpt / "config.json").read_text()), "config.json")
    st = SafetensorsFile(ckpt / "model.safetensors")
    quant = cfg.quant
    assert quant is not None
    out: dict[str, tuple[str, tuple[int, ...], np.ndarray]] = {}
    for name, t in st.tensors.items():
        if name.endswith(".weight_scale"):
            continue
        if name == "model.embed_tokens.weight" or name == "lm_head.weight":
            gname = "token_embd.weight" if name.startswith("model.") else "output.weight"
            out[gname] = _dense(to_float32(t), dense)
            continue
        if name == "model.norm.weight":
            out["output_norm.weight"] = ("F32", t.shape, to_float32(t))
            continue
        parts = name.split(".")
        layer, rest = int(parts[2]), ".".join(parts[3:-1])
        gname = f"blk.{layer}.{_HF_TO_GGUF[rest]}.weight"
        if t.dtype != "U8":
            out[gname] = ("F32", t.shape, to_float32(t))
            continue
        ws = float(to_float32(st.tensors[name[: -len(".weight")] + ".weight_scale"])[0])
        scale = ws if quant.linear_class == "autobitlinear" else 1.0 / ws
        n = t.shape[0] * 4
        w = kref.from_hf_packed(np.ascontiguousarray(t.data), scale, n)
        if cfg.family == "llama" and rest in ("self_attn.q_proj", "self_attn.k_proj"):
            heads = cfg.num_heads if rest.endswith("q_proj") else cfg.num_kv_heads
            w = kref.TernaryMatrix.from_codes(_permute(w.to_codes(), heads), scale)
        raw = {"TQ2_0": kref.to_tq2_0, "TQ1_0": kref.to_tq1_0, "I2_S": kref.to_i2_s}[ternary](w)
        out[gname] = (ternary, w.shape, raw)
    return cfg.to_gguf_metadata(), out


def _dense(x: np.ndarray, kind: str) -> tuple[str, tuple[int, ...], np.ndarray]:
    import gguf

    if kind == "F32":
        return ("F32", x.shape, x.astype(np.float32))
    if kind == "F16":
        return ("F16", x.shape, x.astype(np.float16))
    if kind == "BF16":
        return ("BF16", x.shape, (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16))
    if kind == "Q6_K":
        return ("Q6_K", x.shape, quantize_q6_k(x))
    q = gguf.quants.quantize(x.astype(np.float32), getattr(gguf.GGMLQuantizationType, kind))
    return (kind, x.shape, q.reshape(-1))


def write_with_gguf_package(
    path: Path, meta: dict[str, Any], tensors: dict[str, tuple[str, tuple[int, ...], np.ndarray]]
) -> Path:
    """Write with ``gguf.GGUFWriter`` (every type but I2_S)."""
    import gguf

    arch = meta["general.architecture"]
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in meta.items():
        if key == "general.architecture":
            continue
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_float32(key, float(value))
    for name, (tname, shape, data) in tensors.items():
        qtype = getattr(gguf.GGMLQuantizationType, tname)
        if tname in ("F32", "F16"):
            w.add_tensor(name, data)
        else:
            rows = np.ascontiguousarray(data).view(np.uint8).reshape(shape[0], -1)
            w.add_tensor(name, rows, raw_shape=rows.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """A simple (not error-optimal) Q6_K quantizer: ``gguf.quants`` has only the dequantizer."""
    b = x.astype(np.float32).reshape(-1, 256)
    nb = b.shape[0]
    sub = b.reshape(nb, 16, 16)
    s = np.abs(sub).max(axis=2) / 31.0  # (nb, 16)
    d = (s.max(axis=1) / 127.0).astype(np.float16).astype(np.float32)  # (nb,)
    dsafe = np.where(d > 0, d, 1.0)
    sc = np.clip(np.rint(s / dsafe[:, None]), -128, 127).astype(np.int8)  # (nb, 16)
    step = d[:, None] * sc.astype(np.float32)  # (nb, 16)
    q = np.clip(np.rint(sub / np.where(step > 0, step, 1.0)[:, :, None]), -32, 31).astype(np.int16) + 32
    q = q.reshape(nb, 2, 4, 32).astype(np.uint8)  # (nb, half, quarter, l)
    ql = np.empty((nb, 2, 64), dtype=np.uint8)
    ql[:, :, :32] = (q[:, :, 0] & 0xF) | ((q[:, :, 2] & 0xF) << 4)
    ql[:, :, 32:] = (q[:, :, 1] & 0xF) | ((q[:, :, 3] & 0xF) << 4)
    qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)
    out = np.empty((nb, 210), dtype=np.uint8)
    out[:, :128] = ql.reshape(nb, 128)
    out[:, 128:192] = qh.reshape(nb, 64)
    out[:, 192:208] = sc.view(np.uint8)
    out[:, 208:210] = d.astype(np.float16).reshape(nb, 1).view(np.uint8)
    return out.reshape(-1)
