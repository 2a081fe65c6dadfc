"""Inspecting an uploaded model in a worker process: :func:`inspect_model_files` -> :class:`ModelFacts`.

A model from a customer is loaded once, in full, before it is accepted: in a child process
(:mod:`._inspect_worker`) with a capped address space (``RLIMIT_AS``) and a deadline, so a corrupt or hostile
model (a header that claims a huge tensor or context, a tokenizer that explodes) costs the server nothing but
the child.  The child runs the engine's own inspection (:func:`bitnet_actor.engine.inspection.inspect_model`,
what ``bitnet-actor inspect`` prints): there is no second parser, and a model that inspects will load.

Refusals are :class:`InvalidModelError` (a :class:`~bitnet_actor.services.errors.ValidationError` on the field
``file``; the API answers 400 ``invalid_model``): the loader's own words for a model it rejects, or what the
worker ran into (the memory limit, the deadline, a crash).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

import bitnet_actor
from bitnet_actor.services.errors import ValidationError
from bitnet_actor.services.models.archive import (
    DEFAULT_LIMITS,
    ArchiveLimits,
    detect_format,
    remove_unpacked,
    unpack_model_archive,
)

__all__ = [
    "DEFAULT_INSPECT_LIMITS",
    "FileFacts",
    "InspectLimits",
    "InspectedUpload",
    "InvalidModelError",
    "ModelFacts",
    "Shapes",
    "inspect_model_files",
    "inspect_upload",
]

log = logging.getLogger(__name__)

# One thread everywhere in the child: it inspects, it does not serve, and thread stacks and per-thread malloc
# arenas would count against its address space.
_WORKER_ENV = {
    "BITNET_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "RAYON_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MALLOC_ARENA_MAX": "2",
}


class InvalidModelError(ValidationError):
    """A model was refused on inspection; the message says why.

    Attributes:
        reason: ``"load"`` (the loader refused it: its message), ``"memory"``, ``"timeout"`` or ``"crash"``.
        code: ``"invalid_model"``, the API's error code.
    """

    code = "invalid_model"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, field="file")
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class InspectLimits:
    """What one inspection may use.

    Attributes:
        timeout_s: wall-clock seconds before the worker is killed.
        memory_bytes: the worker's address-space limit; None: ``base_memory_bytes`` plus ``memory_per_byte``
            times the model's size on disk (its files are memory-mapped, then repacked).
        base_memory_bytes: the interpreter, numpy, the tokenizer library and the engine.
        memory_per_byte: address space per byte of model files.
    """

    timeout_s: float = 300.0
    memory_bytes: int | None = None
    base_memory_bytes: int = 1 << 30
    memory_per_byte: float = 4.0

    def memory_for(self, model_bytes: int) -> int:
        """The address-space limit for a model of ``model_bytes`` bytes on disk."""
        if self.memory_bytes is not None:
            return self.memory_bytes
        return self.base_memory_bytes + int(self.memory_per_byte * model_bytes)


DEFAULT_INSPECT_LIMITS = InspectLimits()


@dataclass(frozen=True, slots=True, kw_only=True)
class FileFacts:
    """One file of a model: its name (relative to the model directory), size and SHA-256 (hex)."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Shapes:
    """The model's dimensions."""

    layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelFacts:
    """What an inspected model is (all of it JSON-able with :meth:`to_json`, for the model's metadata).

    Attributes:
        format: ``"safetensors"`` or ``"gguf"``.
        architecture: as the files name it (HF class or GGUF architecture).
        family: ``bitnet-b1.58``, ``bitnet-1bitllm`` or ``llama``.
        parameter_count: parameters (a tied embedding counted once).
        nbytes: bytes of weights the engine holds once loaded.
        file_bytes: bytes of the files.
        tensor_count: stored tensors.
        stored_formats: ``(stored type, tensors, bytes)``, the most bytes first.
        loaded_formats: ``(the engine's format, tensors)``.
        shapes: the dimensions.
        tokenizer_kind: ``"BPE"``, ``"Unigram"``, ``"WordPiece"``, ``"WordLevel"``, or None (no tokenizer).
        tokenizer_vocab_size: the tokenizer's vocabulary, or None.
        context_length: the longest sequence.
        chat_template: whether the tokenizer carries a chat template.
        files: every file, by name.
    """

    format: str
    architecture: str
    family: str
    parameter_count: int
    nbytes: int
    file_bytes: int
    tensor_count: int
    stored_formats: tuple[tuple[str, int, int], ...]
    loaded_formats: tuple[tuple[str, int], ...]
    shapes: Shapes
    tokenizer_kind: str | None
    tokenizer_vocab_size: int | None
    context_length: int
    chat_template: bool
    files: tuple[FileFacts, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelFacts:
        """The facts from :meth:`to_json`'s form."""
        return cls(
            **{
                **data,
                "stored_formats": tuple((str(t), int(c), int(b)) for t, c, b in data["stored_formats"]),
                "loaded_formats": tuple((str(t), int(c)) for t, c in data["loaded_formats"]),
                "shapes": Shapes(**data["shapes"]),
                "files": tuple(FileFacts(**f) for f in data["files"]),
            }
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (lists for tuples)."""
        return {
            "format": self.format,
            "architecture": self.architecture,
            "family": self.family,
            "parameter_count": self.parameter_count,
            "nbytes": self.nbytes,
            "file_bytes": self.file_bytes,
            "tensor_count": self.tensor_count,
            "stored_formats": [list(x) for x in self.stored_formats],
            "loaded_formats": [list(x) for x in self.loaded_formats],
            "shapes": {k: getattr(self.shapes, k) for k in Shapes.__dataclass_fields__},
            "tokenizer_kind": self.tokenizer_kind,
            "tokenizer_vocab_size": self.tokenizer_vocab_size,
            "context_length": self.context_length,
            "chat_template": self.chat_template,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
        }


def _disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _worker_env() -> dict[str, str]:
    env = {**os.environ, **_WORKER_ENV}
    # the child imports this very checkout, whatever its working directory and installed copies
    here = str(Path(bitnet_actor.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


async def inspect_model_files(path: str | Path, *, limits: InspectLimits = DEFAULT_INSPECT_LIMITS) -> ModelFacts:
    """Inspect an HF model directory (an unpacked upload) or a GGUF file in a worker process.

    Cancelling the call kills the worker.

    Args:
        path: the directory or file.
        limits: the worker's deadline and memory.

    Returns:
        The facts.

    Raises:
        InvalidModelError: the loader refused the model (its message, paths relative to the model), or the
            worker ran out of memory, out of time or died.
    """
    path = Path(path)
    model_bytes = await trio.to_thread.run_sync(_disk_bytes, path)
    memory = limits.memory_for(model_bytes)
    cmd = [sys.executable, "-m", "bitnet_actor.services.models._inspect_worker", str(path), str(memory)]
    with trio.move_on_after(limits.timeout_s) as scope:
        proc = await trio.run_process(
            cmd, capture_stdout=True, capture_stderr=True, check=False, env=_worker_env(), stdin=subprocess.DEVNULL
        )
    if scope.cancelled_caught:
        raise InvalidModelError(
            f"the model took longer than {limits.timeout_s:g} s to inspect and was stopped", reason="timeout"
        )
    result: dict[str, Any] | None = None
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    if isinstance(result, dict) and result.get("ok") is True:
        return ModelFacts.from_json(result["facts"])
    if isinstance(result, dict) and result.get("ok") is False:
        kind, message = str(result.get("kind")), str(result.get("message"))
        if kind == "load":
            raise InvalidModelError(message, reason="load")
        if kind == "memory":
            raise InvalidModelError(
                f"the model needs more memory than the {memory:,} bytes its inspection may use", reason="memory"
            )
        raise InvalidModelError(f"the model could not be inspected: {message}", reason="crash")
    tail = proc.stderr.decode("utf-8", "replace").strip()[-2000:]
    log.warning("inspection worker for %s ended with status %s: %s", path, proc.returncode, tail)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise InvalidModelError(
            f"the model's inspection was killed by {name} (within a {memory:,}-byte memory limit)", reason="crash"
        )
    if "MemoryError" in tail:
        raise InvalidModelError(
            f"the model needs more memory than the {memory:,} bytes its inspection may use", reason="memory"
        )
    raise InvalidModelError(
        f"the model could not be inspected (the worker exited with {proc.returncode})", reason="crash"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class InspectedUpload:
    """An upload that inspected: its facts and the model to keep (call :meth:`remove` once it is stored).

    Attributes:
        facts: what the model is.
        path: the GGUF file (the upload itself) or the unpacked model directory.
        unpacked: whether ``path`` is a directory :func:`inspect_upload` made (removed by :meth:`remove`).
    """

    facts: ModelFacts
    path: Path
    unpacked: bool

    def remove(self) -> None:
        """Remove the unpacked directory (nothing for a GGUF file: the upload belongs to the caller)."""
        if self.unpacked:
            remove_unpacked(self.path)


async def inspect_upload(
    upload: str | Path,
    *,
    temp_root: str | Path | None = None,
    archive_limits: ArchiveLimits = DEFAULT_LIMITS,
    limits: InspectLimits = DEFAULT_INSPECT_LIMITS,
) -> InspectedUpload:
    """Recognize an uploaded file, unpack it when it is an archive, and inspect the model in a worker.

    Args:
        upload: the uploaded file on local disk.
        temp_root: where an archive is unpacked (default: the system's temporary directory).
        archive_limits: see :class:`~bitnet_actor.services.models.archive.ArchiveLimits`.
        limits: the inspection's deadline and memory.

    Returns:
        The facts and the model's path; on any failure (or cancellation) nothing is left in ``temp_root``.

    Raises:
        ArchiveError: not a GGUF file or an acceptable model archive.
        InvalidModelError: the model does not inspect.
    """
    upload = Path(upload)
    fmt = await trio.to_thread.run_sync(detect_format, upload)
    if fmt == "gguf":
        return InspectedUpload(facts=await inspect_model_files(upload, limits=limits), path=upload, unpacked=False)
    model = await trio.to_thread.run_sync(
        lambda: unpack_model_archive(upload, temp_root=temp_root, limits=archive_limits)
    )
    try:
        facts = await inspect_model_files(model, limits=limits)
    except BaseException:
        remove_unpacked(model)
        raise
    return InspectedUpload(facts=facts, path=model, unpacked=True)
