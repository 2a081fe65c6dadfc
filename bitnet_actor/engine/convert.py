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

Modules: this one (the API, temporary and rename), :mod:`._convert_source` (the source and its tensor plan),
:mod:`._convert_hf` and :mod:`._convert_gguf` (the two writers).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bitnet_actor.engine._convert_gguf import write_gguf_file
from bitnet_actor.engine._convert_hf import write_hf
from bitnet_actor.engine._convert_source import Output, Source

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["FORMATS", "ConversionResult", "convert_model"]

FORMATS = ("hf-ternary", "tq1_0", "tq2_0", "i2_s")
"""The targets of :func:`convert_model`."""

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
    source = Source(Path(src))
    tmp = dst.parent / f".{dst.name}.converting-{uuid.uuid4().hex[:12]}"

    def make_out(items: int, nbytes: int) -> Output:
        return Output(items, nbytes, progress, should_stop)

    try:
        if fmt == "hf-ternary":
            digests, written = write_hf(source, tmp, make_out, max_shard_bytes)
        else:
            digests, written = write_gguf_file(source, tmp, fmt, dense, make_out)
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
