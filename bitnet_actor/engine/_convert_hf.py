"""Writing a ternary packed HF directory (:func:`write_hf`) for :mod:`bitnet_actor.engine.convert`."""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from bitnet_actor.engine.errors import CorruptModelError, UnsupportedModelError
from bitnet_actor.engine.loader import _dense, _float_vector
from bitnet_actor.engine.tensors import to_float32
from kernels_cython import reference as kref

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from bitnet_actor.engine._convert_source import Item, Output, Source
    from bitnet_actor.engine.tensors import RawTensor
    from kernels_cython.reference import TernaryMatrix

__all__ = ["write_hf"]

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


def _hf_target(src: Source, items: list[Item]) -> tuple[list[tuple[str, str, tuple[int, ...], Any]], str]:
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


def write_hf(
    src: Source, tmp: Path, out_cb: Callable[[int, int], Output], max_shard_bytes: int
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


def _check_float(t: RawTensor, item: Item) -> None:
    """The loader's checks of a tensor that is copied as stored."""
    if item.kind == "vector":
        _float_vector(t, item.shape[0])
    else:
        _dense(t, (item.shape[0], item.shape[1]))


def _write_small(path: Path, data: bytes, digests: dict[str, str], key: str | None = None) -> int:
    path.write_bytes(data)
    digests[key or path.name] = hashlib.sha256(data).hexdigest()
    return len(data)
