"""The source side of :mod:`bitnet_actor.engine.convert`: a model opened as the loader opens it, its tensor
plan, and the output byte counter (hashing, progress, cancellation)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from bitnet_actor.engine.config import ModelConfig
from bitnet_actor.engine.errors import ConversionCancelled, CorruptModelError, ModelLoadError
from bitnet_actor.engine.gguf_io import GGUFFile, dequantize
from bitnet_actor.engine.loader import (
    _dense,
    _float_vector,
    _HFLoader,
    gguf_ternary,
    hf_keeps_dense,
    hf_ternary,
    unpermute_rows,
)
from bitnet_actor.engine.tensors import to_float32

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy.typing as npt

    from bitnet_actor.engine.tensors import RawTensor
    from kernels_cython.reference import TernaryMatrix

__all__ = ["Item", "Output", "Source"]


@dataclass(frozen=True)
class Item:
    """One source tensor to convert: ``kind`` is ``linear`` (ternary), ``dense`` (2-D float) or ``vector``."""

    hf: str
    gguf: str
    kind: str
    shape: tuple[int, ...]
    heads: int = 0  # llama family Q/K: heads of llama.cpp's row permutation


class Source:
    def __init__(self, path: Path) -> None:
        path = Path(path)
        if path.is_dir() and not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) != 1:
                raise ModelLoadError(f"{path}: no config.json (HF model) and not exactly one .gguf file")
            path = ggufs[0]
        self.path = path
        self.keep: list[Any] = []
        if path.is_dir():
            self.kind = "hf"
            loader = _HFLoader(path, None)
            raw = loader._json("config.json", True) or {}
            self.hf_config = raw
            self.cfg = ModelConfig.from_hf(
                raw, str(path / "config.json"), loader._json("generation_config.json", False)
            )
            self.tensors, self.keep = loader._open_tensors()
            self.tied = self.cfg.tie_word_embeddings or "lm_head.weight" not in self.tensors
        elif path.is_file():
            with path.open("rb") as fh:
                magic = fh.read(4)
            if magic != b"GGUF":
                raise ModelLoadError(f"{path}: not a GGUF file and not a directory with config.json")
            self.kind = "gguf"
            self.g = GGUFFile(path)
            self.tensors = self.g.tensors
            emb = self._get("token_embd.weight")
            if len(emb.shape) != 2:
                raise CorruptModelError(f"{emb.where()}: expected 2 dimensions, found {emb.shape}")
            self.tied = "output.weight" not in self.tensors
            self.cfg = ModelConfig.from_gguf(self.g.metadata, str(path), emb.shape[0], self.tied)
        else:
            raise ModelLoadError(f"{path}: no such file or directory")

    def _get(self, name: str) -> RawTensor:
        t = self.tensors.get(name)
        if t is None:
            raise CorruptModelError(f"{self.path}: tensor {name!r} is missing")
        return t

    def raw(self, item: Item) -> RawTensor:
        return self._get(item.hf if self.kind == "hf" else item.gguf)

    def plan(self) -> list[Item]:
        """The tensors of the model, in the loader's order (HF names and GGUF names)."""
        cfg = self.cfg
        h, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
        qd, kvd = cfg.num_heads * hd, cfg.num_kv_heads * hd
        llama = cfg.family == "llama"
        items = [Item("model.embed_tokens.weight", "token_embd.weight", "dense", (cfg.vocab_size, h))]
        one = cfg.family == "bitnet-1bitllm"
        sub_a = "self_attn.inner_attn_ln" if one else "self_attn.attn_sub_norm"
        sub_f = "mlp.ffn_layernorm" if one else "mlp.ffn_sub_norm"
        q = cfg.quant
        for i in range(cfg.num_layers):
            p, g = f"model.layers.{i}.", f"blk.{i}."
            linears = [
                ("self_attn.q_proj", "attn_q", qd, h, cfg.num_heads if llama else 0, cfg.attention_bias),
                ("self_attn.k_proj", "attn_k", kvd, h, cfg.num_kv_heads if llama else 0, cfg.attention_bias),
                ("self_attn.v_proj", "attn_v", kvd, h, 0, cfg.attention_bias),
                ("self_attn.o_proj", "attn_output", h, qd, 0, cfg.attention_bias),
                ("mlp.gate_proj", "ffn_gate", f, h, 0, cfg.mlp_bias),
                ("mlp.up_proj", "ffn_up", f, h, 0, cfg.mlp_bias),
                ("mlp.down_proj", "ffn_down", h, f, 0, cfg.mlp_bias),
            ]
            for hf_name, g_name, n, k, heads, bias in linears:
                module = p + hf_name
                dense = self.kind == "hf" and hf_keeps_dense(module, q)
                items.append(
                    Item(module + ".weight", g + g_name + ".weight", "dense" if dense else "linear", (n, k), heads)
                )
                if bias:
                    items.append(Item(module + ".bias", g + g_name + ".bias", "vector", (n,)))
                if q is not None and q.use_rms_norm and not dense:
                    items.append(Item(module + ".rms_norm.weight", g + g_name + ".rms_norm.weight", "vector", (k,)))
            items.append(Item(p + "input_layernorm.weight", g + "attn_norm.weight", "vector", (h,)))
            if cfg.sub_norms:
                items.append(Item(p + sub_a + ".weight", g + "attn_sub_norm.weight", "vector", (qd,)))
            items.append(Item(p + "post_attention_layernorm.weight", g + "ffn_norm.weight", "vector", (h,)))
            if cfg.sub_norms:
                items.append(Item(p + sub_f + ".weight", g + "ffn_sub_norm.weight", "vector", (f,)))
        items.append(Item("model.norm.weight", "output_norm.weight", "vector", (h,)))
        if not self.tied:
            items.append(Item("lm_head.weight", "output.weight", "dense", (cfg.vocab_size, h)))
        return items

    def ternary(self, item: Item) -> tuple[TernaryMatrix, np.float32 | None]:
        """The matrix in HF row order, and the exact ``bitlinear`` ``weight_scale`` for it when known."""
        t = self.raw(item)
        n, k = item.shape
        if self.kind == "hf":
            module = item.hf[: -len(".weight")]
            scale_t = self.tensors.get(module + ".weight_scale")
            w, _, reciprocal = hf_ternary(t, scale_t, self.cfg.quant, n, k)
            return w, reciprocal
        w = gguf_ternary(t, n, k)
        return (unpermute_rows(w, item.heads) if item.heads else w), None

    def floats(self, item: Item) -> npt.NDArray[np.float32]:
        t = self.raw(item)
        if item.kind == "vector":
            return _float_vector(t, item.shape[0])
        _dense(t, (item.shape[0], item.shape[1]))  # the loader's checks
        return dequantize(t) if self.kind == "gguf" else to_float32(t)


class Output:
    """Output bytes: hashed as written, counted for progress, checked for cancellation."""

    def __init__(
        self,
        total_items: int,
        total_bytes: int,
        progress: Callable[[int, int, int, int], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.items, self.total_items = 0, total_items
        self.bytes, self.total_bytes = 0, total_bytes
        self.progress = progress
        self.should_stop = should_stop
        self.hash: Any = None
        self.fh: BinaryIO | None = None
        self.report()

    def write(self, data: Any) -> None:
        view = np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
        assert self.fh is not None
        self.fh.write(view)
        self.hash.update(view)
        self.bytes += len(view)

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise ConversionCancelled("conversion cancelled")

    def report(self) -> None:
        if self.progress is not None:
            self.progress(self.items, self.total_items, min(self.bytes, self.total_bytes), self.total_bytes)

    def done_item(self) -> None:
        self.items += 1
        self.report()
