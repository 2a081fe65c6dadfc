"""The inspection worker: ``python -m bitnet_actor.services.models._inspect_worker PATH MEMORY_BYTES``.

Run by :func:`bitnet_actor.services.models.inspect.inspect_model_files` in a child process.  It caps its own
address space (``RLIMIT_AS``) before importing the engine, loads the model with
:func:`bitnet_actor.engine.inspection.inspect_model`, hashes every file and prints one JSON line on stdout:
``{"ok": true, "facts": {...}}`` (:meth:`ModelFacts.to_json`), or ``{"ok": false, "kind": ..., "message": ...}``
with ``kind`` ``"load"`` (the loader's words), ``"memory"`` (the limit was reached) or ``"error"`` (anything
else).  Paths in messages are made relative to the model, so a customer never sees the server's directories.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]

_CHUNK = 1 << 20


def _limit_memory(nbytes: int) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        nbytes = min(nbytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (nbytes, hard))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(path: Path) -> list[dict[str, Any]]:
    if path.is_file():
        return [{"name": path.name, "size": path.stat().st_size, "sha256": _sha256(path)}]
    return [
        {"name": p.relative_to(path).as_posix(), "size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.is_symlink()
    ]


def _facts(path: Path) -> dict[str, Any]:
    from bitnet_actor.engine.inspection import inspect_model

    report = inspect_model(path)
    info, cfg = report.info, report.config
    files = _files(path)
    return {
        "format": info.source_format,
        "architecture": info.architecture,
        "family": info.family,
        "parameter_count": info.parameter_count,
        "nbytes": info.nbytes,
        "file_bytes": sum(f["size"] for f in files),
        "tensor_count": len(report.tensors),
        "stored_formats": [list(x) for x in report.stored_formats()],
        "loaded_formats": [list(x) for x in info.formats],
        "shapes": {
            "layers": cfg.num_layers,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_heads": cfg.num_heads,
            "num_kv_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab_size,
            "tied_embeddings": cfg.tie_word_embeddings,
        },
        "tokenizer_kind": report.tokenizer_kind,
        "tokenizer_vocab_size": report.tokenizer_vocab_size,
        "context_length": info.context_length,
        "chat_template": report.chat_template,
        "files": files,
    }


def _relative(message: str, path: Path) -> str:
    """The message with the model's location removed (``/tmp/x/model/config.json`` -> ``config.json``)."""
    root = str(path)
    if path.is_file():
        return message.replace(root, path.name)
    return message.replace(root + "/", "").replace(root, "the model directory")


def main(argv: list[str] | None = None) -> int:
    """Inspect ``argv[0]`` under a memory limit of ``argv[1]`` bytes; print the result as one JSON line.

    Args:
        argv: ``[path, memory_bytes]`` (default ``sys.argv[1:]``).

    Returns:
        0 when the model inspects, 2 when it is refused.
    """
    args = sys.argv[1:] if argv is None else argv
    path, memory = Path(args[0]), int(args[1])
    if memory > 0:
        _limit_memory(memory)
    try:
        from bitnet_actor.engine.errors import ModelLoadError

        try:
            out: dict[str, Any] = {"ok": True, "facts": _facts(path)}
        except ModelLoadError as exc:
            out = {"ok": False, "kind": "load", "message": _relative(str(exc), path)}
    except MemoryError:
        out = {"ok": False, "kind": "memory", "message": "out of memory"}
    except Exception as exc:  # a model the loader did not foresee: refused, with what happened
        out = {"ok": False, "kind": "error", "message": _relative(f"{type(exc).__name__}: {exc}", path)}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0 if out["ok"] else 2


if __name__ == "__main__":
    sys.exit(main())
