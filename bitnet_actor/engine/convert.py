"""Converting a loadable model to a ternary packed HF directory or a GGUF file (TQ1_0, TQ2_0, I2_S).

``convert_model(src, dst, fmt)`` reads the source the way the loader does (the same readers:
:func:`~bitnet_actor.engine.loader.hf_ternary` quantizes float masters with the loader's absmean
:func:`~bitnet_actor.engine.loader.ternarize`, so a converted model is the model the engine runs when it loads
the masters itself) and writes, tensor by tensor through memory maps (one tensor in memory at a time):

* ``"hf-ternary"`` (HF source only): ``model.safetensors`` (or shards with an index) with each ternary linear
  as HF's packed uint8 ``(ceil(N/4), K)`` plus a float32 ``weight_scale`` of shape ``(1,)``, everything else
  copied as stored; ``config.json`` with an offline ``bitlinear`` bitnet ``quantization_config`` (whose
  ``weight_scale`` is the reciprocal of the multiplier: the ``inv`` of the absmean quantization, or the
  source's own ``bitlinear`` scale, so that the loader's ``1 / weight_scale`` gives back the multiplier bit for
  bit; for an ``autobitlinear`` source the nearest such reciprocal); tokenizer files and
  ``generation_config.json`` copied.
* ``"tq1_0"``, ``"tq2_0"``, ``"i2_s"``: a GGUF with the ternary linears in that type (llama-family Q/K rows
  permuted as llama.cpp does), embeddings and output as F16 (``dense="f32"`` for F32), norms as F32, the
  architecture's metadata and the tokenizer's (:func:`~bitnet_actor.engine.tokenizer.gguf_tokenizer_metadata`
  for an HF source; a GGUF source's metadata is kept).  TQ1_0/TQ2_0 store fp16 block scales (the scale is
  rounded to fp16), I2_S one float32 scale.

The output is written under a hidden temporary name beside ``dst`` and renamed at the end: an error, a
``should_stop()`` that returns True (:class:`ConversionCancelled`) or an exception raised by ``progress``
leaves nothing at ``dst`` and removes the temporary.  ``progress(tensors_done, tensors_total, bytes_done,
bytes_total)`` is called once before the first tensor and after each (bytes are output bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from bitnet_actor.engine.config import ModelConfig
from bitnet_actor.engine.errors import ConversionCancelled, CorruptModelError, ModelLoadError, UnsupportedModelError
from bitnet_actor.engine.gguf_io import GGUFFile, dequantize, gguf_header, tensor_nbytes
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
from kernels_cython import reference as kref

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import numpy.typing as npt

    from bitnet_actor.engine.tensors import RawTensor
    from kernels_cython.reference import TernaryMatrix

__all__ = ["FORMATS", "ConversionResult", "convert_model"]

FORMATS = ("hf-ternary", "tq1_0", "tq2_0", "i2_s")
"""The targets of :func:`convert_model`."""

_GGUF_TYPE = {"tq1_0": "TQ1_0", "tq2_0": "TQ2_0", "i2_s": "I2_S"}
_ENCODE: dict[str, Callable[[TernaryMatrix], npt.NDArray[np.uint8]]] = {
    "TQ1_0": kref.to_tq1_0,
    "TQ2_0": kref.to_tq2_0,
    "I2_S": kref.to_i2_s,
}
_TOKENIZER_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
_SHARD_BYTES = 5 * 2**30


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_model` wrote.

    Attributes:
        path: the output (a directory for ``hf-ternary``, a file for GGUF).
        format: the target format.
        sha256: file name (relative to ``path`` for a directory, the file's name for GGUF) -> hex digest.
        parameter_count: the model's parameters.
        nbytes: bytes written (all files).
        source_sha256: the source's digest, when the caller gave one.
    """

    path: Path
    format: str
    sha256: Mapping[str, str]
    parameter_count: int
    nbytes: int
    source_sha256: str | None = None


@dataclass(frozen=True)
class _Item:
    """One source tensor to convert: ``kind`` is ``linear`` (ternary), ``dense`` (2-D float) or ``vector``."""

    hf: str
    gguf: str
    kind: str
    shape: tuple[int, ...]
    heads: int = 0  # llama family Q/K: heads of llama.cpp's row permutation


# ----------------------------------------------------------------------------------------------------------
# sources


class _Source:
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

    def raw(self, item: _Item) -> RawTensor:
        return self._get(item.hf if self.kind == "hf" else item.gguf)

    def plan(self) -> list[_Item]:
        """The tensors of the model, in the loader's order (HF names and GGUF names)."""
        cfg = self.cfg
        h, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
        qd, kvd = cfg.num_heads * hd, cfg.num_kv_heads * hd
        llama = cfg.family == "llama"
        items = [_Item("model.embed_tokens.weight", "token_embd.weight", "dense", (cfg.vocab_size, h))]
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
                    _Item(module + ".weight", g + g_name + ".weight", "dense" if dense else "linear", (n, k), heads)
                )
                if bias:
                    items.append(_Item(module + ".bias", g + g_name + ".bias", "vector", (n,)))
                if q is not None and q.use_rms_norm and not dense:
                    items.append(_Item(module + ".rms_norm.weight", g + g_name + ".rms_norm.weight", "vector", (k,)))
            items.append(_Item(p + "input_layernorm.weight", g + "attn_norm.weight", "vector", (h,)))
            if cfg.sub_norms:
                items.append(_Item(p + sub_a + ".weight", g + "attn_sub_norm.weight", "vector", (qd,)))
            items.append(_Item(p + "post_attention_layernorm.weight", g + "ffn_norm.weight", "vector", (h,)))
            if cfg.sub_norms:
                items.append(_Item(p + sub_f + ".weight", g + "ffn_sub_norm.weight", "vector", (f,)))
        items.append(_Item("model.norm.weight", "output_norm.weight", "vector", (h,)))
        if not self.tied:
            items.append(_Item("lm_head.weight", "output.weight", "dense", (cfg.vocab_size, h)))
        return items

    def ternary(self, item: _Item) -> tuple[TernaryMatrix, np.float32 | None]:
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

    def floats(self, item: _Item) -> npt.NDArray[np.float32]:
        t = self.raw(item)
        if item.kind == "vector":
            return _float_vector(t, item.shape[0])
        _dense(t, (item.shape[0], item.shape[1]))  # the loader's checks
        return dequantize(t) if self.kind == "gguf" else to_float32(t)


# ----------------------------------------------------------------------------------------------------------
# writing


class _Out:
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


def _bitlinear_scale(mult: float) -> np.float32:
    """A ``weight_scale`` ``v`` with ``float32(1) / v == mult`` (the loader's reading), when one exists."""
    target = np.float32(mult)
    base = np.float32(1) / target
    cand = [base]
    for direction in (np.float32(np.inf), np.float32(0)):
        v = base
        for _ in range(3):
            v = np.nextafter(v, direction, dtype=np.float32)
            cand.append(v)
    for v in cand:
        if np.float32(1) / v == target:
            return np.float32(v)
    return base


def _hf_target(src: _Source, items: list[_Item]) -> tuple[list[tuple[str, str, tuple[int, ...], Any]], str]:
    """Output tensors ``(name, dtype, shape, producer)`` and the linear_class of the output."""
    lc = "bitlinear"  # transformers' packed uint8 format is BitLinear's (AutoBitLinear keeps float codes)
    out: list[tuple[str, str, tuple[int, ...], Any]] = []
    for item in items:
        if item.kind == "linear":
            n, k = item.shape
            out.append((item.hf, "U8", (-(-n // 4), k), ("linear", item)))
            out.append((item.hf[: -len(".weight")] + ".weight_scale", "F32", (1,), ("scale", item)))
        else:
            t = src.raw(item)
            dtype = t.dtype if t.dtype in ("F32", "F16", "BF16") else "F32"
            if t.shape != item.shape:
                raise CorruptModelError(f"{t.where()}: expected shape {item.shape}, found {t.shape}")
            out.append((item.hf, dtype, t.shape, ("copy", item)))
    return out, lc


_ST_SIZE = {"U8": 1, "F32": 4, "F16": 2, "BF16": 2}


def _st_header(entries: list[tuple[str, str, tuple[int, ...], Any]]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, _ in entries:
        n = int(np.prod(shape, dtype=np.int64)) * _ST_SIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def _shards(
    entries: list[tuple[str, str, tuple[int, ...], Any]], max_bytes: int
) -> list[list[tuple[str, str, tuple[int, ...], Any]]]:
    shards: list[list[tuple[str, str, tuple[int, ...], Any]]] = [[]]
    size = 0
    for e in entries:
        n = int(np.prod(e[2], dtype=np.int64)) * _ST_SIZE[e[1]]
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += n
    return shards


def _write_hf(
    src: _Source, tmp: Path, out_cb: Callable[[int, int], _Out], max_shard_bytes: int
) -> tuple[dict[str, str], int]:
    if src.kind != "hf":
        raise UnsupportedModelError(
            f"{src.path}: hf-ternary needs an HF model directory as the source (this is a GGUF file)"
        )
    items = src.plan()
    entries, lc = _hf_target(src, items)
    shards = _shards(entries, max_shard_bytes)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    headers = [_st_header(s) for s in shards]
    data_bytes = sum(int(np.prod(e[2], dtype=np.int64)) * _ST_SIZE[e[1]] for e in entries)
    out = out_cb(len(items), data_bytes + sum(len(h) for h in headers))
    digests: dict[str, str] = {}
    pending: dict[str, tuple[TernaryMatrix, np.float32 | None]] = {}
    tmp.mkdir()
    for name, header, shard in zip(names, headers, shards, strict=True):
        out.hash = hashlib.sha256()
        with (tmp / name).open("wb") as fh:
            out.fh = fh
            out.write(np.frombuffer(header, dtype=np.uint8))
            for _tname, dtype, _shape, (what, item) in shard:
                if what == "linear":
                    out.check()
                    w, stored = src.ternary(item)
                    packed, _ = kref.to_hf_packed(w)
                    out.write(packed)
                    pending[item.hf] = (w, stored)
                    del packed
                elif what == "scale":
                    w, reciprocal = pending.pop(item.hf)
                    v = reciprocal if reciprocal is not None else _bitlinear_scale(float(w.scale))
                    out.write(np.array([v], dtype="<f4"))
                    out.done_item()
                else:
                    out.check()
                    t = src.raw(item)
                    _check_float(t, item)
                    out.write(t.data if dtype == t.dtype else to_float32(t))
                    out.done_item()
            fh.flush()
            os.fsync(fh.fileno())
        digests[name] = out.hash.hexdigest()
    written = out.bytes
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": data_bytes},
            "weight_map": {e[0]: name for name, shard in zip(names, shards, strict=True) for e in shard},
        }
        written += _write_small(tmp / "model.safetensors.index.json", json.dumps(index, indent=2).encode(), digests)
    cfg = dict(src.hf_config)
    qc = dict(cfg.get("quantization_config") or {})
    qc.update({"quant_method": "bitnet", "linear_class": lc, "quantization_mode": "offline"})
    cfg["quantization_config"] = qc
    written += _write_small(tmp / "config.json", (json.dumps(cfg, indent=2) + "\n").encode(), digests)
    for fname in _TOKENIZER_FILES:
        p = src.path / fname
        if p.is_file():
            written += _write_small(tmp / fname, p.read_bytes(), digests)
    extra = src.path / "additional_chat_templates"
    if extra.is_dir():
        (tmp / extra.name).mkdir()
        for p in sorted(extra.glob("*.jinja")):
            written += _write_small(tmp / extra.name / p.name, p.read_bytes(), digests, f"{extra.name}/{p.name}")
    return digests, written


def _check_float(t: RawTensor, item: _Item) -> None:
    """The loader's checks of a tensor that is copied as stored."""
    if item.kind == "vector":
        _float_vector(t, item.shape[0])
    else:
        _dense(t, (item.shape[0], item.shape[1]))


def _write_small(path: Path, data: bytes, digests: dict[str, str], key: str | None = None) -> int:
    path.write_bytes(data)
    digests[key or path.name] = hashlib.sha256(data).hexdigest()
    return len(data)


def _gguf_metadata(src: _Source, fmt: str) -> dict[str, Any]:
    if src.kind == "gguf":
        return {k: v for k, v in src.g.metadata.items() if k != "general.alignment"}
    cfg = src.cfg
    meta: dict[str, Any] = {**cfg.to_gguf_metadata(), "general.name": src.path.name, "general.quantization_version": 2}
    arch = meta["general.architecture"]
    rs = cfg.rope_scaling
    if rs:
        kind = rs.get("rope_type", rs.get("type", "default"))
        if kind == "linear":
            meta[f"{arch}.rope.scaling.type"] = "linear"
            meta[f"{arch}.rope.scaling.factor"] = float(rs["factor"])
        elif kind != "default":
            raise UnsupportedModelError(f"{src.path}: RoPE scaling {kind!r} cannot be written to GGUF here")
    if cfg.attention_bias or cfg.mlp_bias or (cfg.quant is not None and cfg.quant.use_rms_norm):
        raise UnsupportedModelError(
            f"{src.path}: linear biases or per-linear RMSNorms (use_rms_norm) have no place in a GGUF file"
        )
    if (src.path / "tokenizer.json").is_file():
        from bitnet_actor.engine.tokenizer import TokenizerError, gguf_tokenizer_metadata

        try:
            meta.update(gguf_tokenizer_metadata(src.path, cfg.vocab_size))
        except TokenizerError as exc:
            raise UnsupportedModelError(f"{src.path}: the tokenizer cannot be written to GGUF: {exc}") from exc
    elif (src.path / "tokenizer.model").is_file():
        raise UnsupportedModelError(f"{src.path}: only tokenizer.json tokenizers can be written to GGUF")
    if "tokenizer.ggml.bos_token_id" not in meta and cfg.bos_token_id is not None and "tokenizer.ggml.model" in meta:
        meta["tokenizer.ggml.bos_token_id"] = cfg.bos_token_id
    if "tokenizer.ggml.eos_token_id" not in meta and cfg.eos_token_ids and "tokenizer.ggml.model" in meta:
        meta["tokenizer.ggml.eos_token_id"] = cfg.eos_token_ids[0]
    return meta


def _write_gguf(
    src: _Source, tmp: Path, fmt: str, dense: str, out_cb: Callable[[int, int], _Out]
) -> tuple[dict[str, str], int]:
    ttype = _GGUF_TYPE[fmt]
    items = src.plan()
    infos: list[tuple[str, str, tuple[int, ...]]] = []
    for item in items:
        if item.kind == "linear":
            n, k = item.shape
            if ttype in ("TQ1_0", "TQ2_0") and k % kref.BLOCK:
                raise UnsupportedModelError(
                    f"{src.path}: {item.hf if src.kind == 'hf' else item.gguf}: {ttype} needs in_features a "
                    f"multiple of {kref.BLOCK}, found {k} (use i2_s)"
                )
            if ttype == "I2_S" and (n * k) % 128:
                raise UnsupportedModelError(f"{src.path}: {item.hf}: I2_S needs N*K a multiple of 128, found {n}x{k}")
            infos.append((item.gguf, ttype, item.shape))
        elif item.kind == "dense" and item.gguf.startswith("blk."):
            raise UnsupportedModelError(
                f"{src.path}: {item.hf} stays dense (modules_to_not_convert): GGUF layers here are all ternary"
            )
        else:
            infos.append((item.gguf, "F32" if item.kind == "vector" or dense == "f32" else "F16", item.shape))
    meta = _gguf_metadata(src, fmt)
    head, _ = gguf_header(meta, infos)
    sizes = [tensor_nbytes(t, s) for _, t, s in infos]
    out = out_cb(len(items), len(head) + sum(n + (-n % 32) for n in sizes))
    out.hash = hashlib.sha256()
    with tmp.open("wb") as fh:
        out.fh = fh
        out.write(np.frombuffer(head, dtype=np.uint8))
        for item, (_, tname, _), nbytes in zip(items, infos, sizes, strict=True):
            out.check()
            if item.kind == "linear":
                w, _stored = src.ternary(item)
                if item.heads:
                    n = w.shape[0]
                    perm = np.arange(n).reshape(item.heads, 2, n // item.heads // 2).swapaxes(1, 2).reshape(-1)
                    w = kref.TernaryMatrix(np.ascontiguousarray(w.packed[perm]), w.shape[1], _rows(w.scale, perm))
                try:
                    data: Any = _ENCODE[tname](w)
                except ValueError as exc:
                    raise UnsupportedModelError(f"{src.path}: {item.gguf}: {exc}") from exc
            else:
                x = src.floats(item)
                data = x.astype(np.float16) if tname == "F16" else x
                if tname == "F16" and not np.isfinite(data).all() and np.isfinite(x).all():
                    raise UnsupportedModelError(f"{src.path}: {item.gguf}: values beyond float16; use dense f32")
            out.write(data)
            out.write(np.zeros(-nbytes % 32, dtype=np.uint8))
            del data
            out.done_item()
        fh.flush()
        os.fsync(fh.fileno())
    return {tmp.name: out.hash.hexdigest()}, out.bytes


def _rows(scale: Any, perm: npt.NDArray[np.int64]) -> Any:
    return np.ascontiguousarray(scale[perm]) if isinstance(scale, np.ndarray) else scale


# ----------------------------------------------------------------------------------------------------------


def convert_model(
    src: str | Path,
    dst: str | Path,
    fmt: str,
    *,
    progress: Callable[[int, int, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    source_sha256: str | None = None,
    dense: str = "f16",
    max_shard_bytes: int = _SHARD_BYTES,
) -> ConversionResult:
    """Convert a model (see the module docstring).

    Args:
        src: an HF directory or a GGUF file, as :func:`~bitnet_actor.engine.load_model` takes.
        dst: the directory (``hf-ternary``) or file (GGUF) to create; must not exist.
        fmt: one of :data:`FORMATS`.
        progress: called as ``progress(tensors_done, tensors_total, bytes_done, bytes_total)``; an exception
            it raises cancels the conversion (and propagates).
        should_stop: polled before each tensor; True cancels.
        source_sha256: the source's digest, copied into the result.
        dense: GGUF type of embeddings and output, ``"f16"`` or ``"f32"``.
        max_shard_bytes: ``hf-ternary`` safetensors shard size.

    Returns:
        The result.

    Raises:
        ValueError: an unknown format or ``dense``.
        FileExistsError: ``dst`` exists.
        FileNotFoundError: ``dst``'s directory does not exist.
        ModelLoadError: the source does not load (the loader's errors), or cannot be written in ``fmt``
            (``UnsupportedModelError``).
        ConversionCancelled: ``should_stop()`` returned True.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (supported: {', '.join(FORMATS)})")
    if dense not in ("f16", "f32"):
        raise ValueError(f"dense must be 'f16' or 'f32', got {dense!r}")
    dst = Path(dst)
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(f"{dst}: already exists")
    if not dst.parent.is_dir():
        raise FileNotFoundError(f"{dst.parent}: no such directory")
    source = _Source(Path(src))
    tmp = dst.parent / f".{dst.name}.converting-{uuid.uuid4().hex[:12]}"

    def make_out(items: int, nbytes: int) -> _Out:
        return _Out(items, nbytes, progress, should_stop)

    try:
        if fmt == "hf-ternary":
            digests, written = _write_hf(source, tmp, make_out, max_shard_bytes)
        else:
            digests, written = _write_gguf(source, tmp, fmt, dense, make_out)
            digests = {dst.name: digests[tmp.name]}
        _publish(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        source.keep.clear()
    return ConversionResult(
        path=dst,
        format=fmt,
        sha256=digests,
        parameter_count=source.cfg.parameter_count(),
        nbytes=written,
        source_sha256=source_sha256,
    )


def _publish(tmp: Path, dst: Path) -> None:
    """Rename ``tmp`` to ``dst`` without replacing anything that appeared there meanwhile."""
    if tmp.is_dir():
        if dst.exists():
            raise FileExistsError(f"{dst}: already exists")
        os.rename(tmp, dst)
        return
    try:
        os.link(tmp, dst)  # fails if dst exists: never clobbers
    except FileExistsError:
        raise FileExistsError(f"{dst}: already exists") from None
    except OSError:
        if dst.exists():
            raise FileExistsError(f"{dst}: already exists") from None
        os.rename(tmp, dst)
        return
    tmp.unlink()


def _remove(tmp: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
