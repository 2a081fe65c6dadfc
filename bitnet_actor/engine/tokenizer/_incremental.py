"""Streaming detokenization: :class:`IncrementalDecoder` turns generated ids into text one id at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tokenizers import Tokenizer as Backend

__all__ = ["IncrementalDecoder"]

_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDecoder:
    """Turns generated ids into text one id at a time, never emitting an incomplete UTF-8 character.

    Each :meth:`push` decodes a short window of recent ids (so that leading-space rules and byte sequences
    see their context) and returns only the text that is final: it holds back while the decoded text ends in
    U+FFFD (a character whose bytes are still arriving) and, for byte-fallback vocabularies, while the last id
    is a ``<0xNN>`` byte token (a later byte can still change how the run decodes). :meth:`flush` returns the
    rest at the end of the stream, so ``"".join(pushes) + flush() == tokenizer.decode(ids)``.

    Attributes:
        text: everything emitted so far.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        skip_special_tokens: bool,
        hold_ids: frozenset[int],
        special_ids: frozenset[int] = frozenset(),
    ) -> None:
        """Create a decoder; use :meth:`Tokenizer.incremental_decoder` rather than this."""
        self._backend = backend
        self._skip = skip_special_tokens
        self._hold_ids = hold_ids
        # Skipped special tokens vanish before decoding, so they do not end a run of byte tokens.
        self._transparent_ids = special_ids if skip_special_tokens else frozenset()
        self._in_byte_run = False
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids before this have been emitted
        self._prefix_text = ""  # decode(ids[prefix:read])
        self._chunks: list[str] = []
        self._flushed = False

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return "".join(self._chunks)

    @property
    def ids(self) -> list[int]:
        """The ids pushed so far (a copy)."""
        return list(self._ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=self._skip)

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text it completes (often ``""`` while a character is pending)."""
        if self._flushed:
            raise RuntimeError("push() after flush()")
        self._ids.append(int(token_id))
        if token_id not in self._transparent_ids:
            self._in_byte_run = token_id in self._hold_ids
        if self._in_byte_run:
            return ""
        new_text = self._decode(self._ids[self._prefix :])
        if (
            len(new_text) <= len(self._prefix_text)
            or new_text.endswith(_REPLACEMENT_CHAR)
            or not new_text.startswith(self._prefix_text)
        ):
            return ""
        out = new_text[len(self._prefix_text) :]
        self._prefix, self._read = self._read, len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix : self._read])
        self._chunks.append(out)
        return out

    def flush(self) -> str:
        """End the stream: return what is still held back (may include U+FFFD if it ended mid-character)."""
        if self._flushed:
            return ""
        self._flushed = True
        emitted = self.text
        full = self._decode(self._ids)
        if full.startswith(emitted):
            out = full[len(emitted) :]
        else:  # cannot happen with the decoders tokenizers ships; keep the window's view
            window = self._decode(self._ids[self._prefix :])
            out = window[len(self._prefix_text) :] if window.startswith(self._prefix_text) else ""
        if out:
            self._chunks.append(out)
        return out
