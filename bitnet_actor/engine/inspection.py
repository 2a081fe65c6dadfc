"""``inspect_model``: what a model is, from loading it the way the server will (the ``inspect`` command's path).

The model is loaded in full (:func:`~bitnet_actor.engine.load_model`, CPU), so every check the loader makes
(presence, dtype and shape of each tensor, the configuration, the tokenizer) has run once it returns: a model
that inspects will load.  The stored tensors are listed with :func:`~bitnet_actor.engine.loader.list_tensors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bitnet_actor.engine.loader import list_tensors
from bitnet_actor.engine.loading import load_model

if TYPE_CHECKING:
    from collections.abc import Callable

    from bitnet_actor.engine.config import ModelConfig
    from bitnet_actor.engine.model import ModelInfo

__all__ = ["ModelReport", "inspect_model"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelReport:
    """A loaded model's description.

    Attributes:
        path: what was inspected.
        info: the engine's :class:`~bitnet_actor.engine.ModelInfo` of the loaded model.
        config: its hyper-parameters.
        tensors: ``(name, stored type, shape, bytes)`` per stored tensor, in file order.
        tokenizer_kind: the tokenizer's model (``"BPE"``, ``"Unigram"``, ``"WordPiece"``, ``"WordLevel"``), or
            None when the model has no tokenizer.
        tokenizer_vocab_size: its vocabulary (base plus added tokens), or None.
        chat_template: whether the tokenizer carries a chat template.
    """

    path: str
    info: ModelInfo
    config: ModelConfig
    tensors: tuple[tuple[str, str, tuple[int, ...], int], ...]
    tokenizer_kind: str | None
    tokenizer_vocab_size: int | None
    chat_template: bool

    def stored_formats(self) -> tuple[tuple[str, int, int], ...]:
        """``(stored type, tensors, bytes)`` per type, the most bytes first."""
        agg: dict[str, list[int]] = {}
        for _, dtype, _, nbytes in self.tensors:
            a = agg.setdefault(dtype, [0, 0])
            a[0] += 1
            a[1] += nbytes
        return tuple((k, c, b) for k, (c, b) in sorted(agg.items(), key=lambda kv: (-kv[1][1], kv[0])))


def inspect_model(path: str | Path, *, progress: Callable[[int, int], None] | None = None) -> ModelReport:
    """Load a model (CPU) and describe it.

    Args:
        path: an HF model directory or a GGUF file.
        progress: as for :func:`~bitnet_actor.engine.load_model`.

    Returns:
        The report.

    Raises:
        ModelLoadError: as :func:`~bitnet_actor.engine.load_model` raises it (the loader's own words).
    """
    path = Path(path)
    tensors = tuple(list_tensors(path))
    model = load_model(path, progress=progress)
    kind: str | None = None
    vocab: int | None = None
    chat = False
    if model.has_tokenizer:
        tok = model.tokenizer
        kind = type(tok.backend.model).__name__
        vocab = int(tok.vocab_size)
        chat = bool(tok.chat_templates)
    return ModelReport(
        path=str(path),
        info=model.info,
        config=model.config,
        tensors=tensors,
        tokenizer_kind=kind,
        tokenizer_vocab_size=vocab,
        chat_template=chat,
    )
