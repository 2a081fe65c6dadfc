"""``load_model``: weights, tokenizer and threads in one call."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitnet_actor.engine import ops
from bitnet_actor.engine.errors import ModelLoadError
from bitnet_actor.engine.loader import load_weights
from bitnet_actor.engine.model import Model

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["load_model", "load_tokenizer"]


def load_model(
    path: str | Path,
    *,
    device: str = "cpu",
    output: str = "exact",
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Model:
    """Load a model from an HF directory or a GGUF file.

    Args:
        path: the directory or file.
        device: only ``"cpu"``.
        output: ``"exact"`` or ``"q8"`` output layer.
        threads: kernel threads (default: the kernels' default, ``$BITNET_THREADS`` or all cores).
        progress: called as ``progress(done, total)`` while tensors load.

    Returns:
        The model, with its tokenizer when one is found (HF ``tokenizer.json`` or GGUF metadata).

    Raises:
        ValueError: a device other than "cpu", or a bad ``output``.
        ModelLoadError: see :mod:`bitnet_actor.engine.errors`.
    """
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' (the only device this engine supports), got {device!r}")
    if threads is not None:
        ops.set_num_threads(threads)
    weights = load_weights(Path(path), progress)
    tokenizer = load_tokenizer(weights.tokenizer_source)
    return Model(weights, tokenizer, output=output)


def load_tokenizer(source: tuple[str, Any]) -> Any | None:
    """The tokenizer of a model, or None when there is none.

    Args:
        source: ``("hf", directory)`` or ``("gguf", metadata)``.

    Returns:
        A :class:`~bitnet_actor.engine.tokenizer.Tokenizer`, or None.

    Raises:
        ModelLoadError: tokenizer files exist but cannot be read.
    """
    kind, where = source
    if kind == "hf":
        root = Path(where)
        if not (root / "tokenizer.json").is_file() and not (root / "tokenizer.model").is_file():
            return None
    elif kind != "gguf" or "tokenizer.ggml.tokens" not in where:
        return None
    try:
        from bitnet_actor.engine.tokenizer import Tokenizer
    except ImportError:
        return None
    try:
        if kind == "hf":
            return Tokenizer.from_hf_dir(Path(where))
        return Tokenizer.from_gguf_metadata(where)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"{where if kind == 'hf' else 'GGUF metadata'}: cannot load the tokenizer ({exc})"
        ) from exc
