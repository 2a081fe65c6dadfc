"""Writing a GGUF file (:func:`write_gguf_file`) for :mod:`bitnet_actor.engine.convert`."""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from bitnet_actor.engine.errors import UnsupportedModelError
from bitnet_actor.engine.gguf_io import gguf_header, tensor_nbytes
from kernels_cython import reference as kref

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import numpy.typing as npt

    from bitnet_actor.engine._convert_source import Output, Source
    from kernels_cython.reference import TernaryMatrix

__all__ = ["write_gguf_file"]

_GGUF_TYPE = {"tq1_0": "TQ1_0", "tq2_0": "TQ2_0", "i2_s": "I2_S"}
_ENCODE: dict[str, Callable[[TernaryMatrix], npt.NDArray[np.uint8]]] = {
    "TQ1_0": kref.to_tq1_0,
    "TQ2_0": kref.to_tq2_0,
    "I2_S": kref.to_i2_s,
}


def _gguf_metadata(src: Source, fmt: str) -> dict[str, Any]:
    if src.kind == "gguf":
        # general.file_type would name the source's tensor type
        return {k: v for k, v in src.g.metadata.items() if k not in ("general.alignment", "general.file_type")}
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


def write_gguf_file(
    src: Source, tmp: Path, fmt: str, dense: str, out_cb: Callable[[int, int], Output]
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
