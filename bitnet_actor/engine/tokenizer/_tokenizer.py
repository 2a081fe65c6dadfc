"""The :class:`Tokenizer` class: encode/decode, special tokens, chat templates and streaming decode.

Loading lives in :mod:`._hf_loader` and :mod:`._gguf_loader`, chat templates in :mod:`._chat_template`,
streaming detokenization in :mod:`._incremental`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from tokenizers import Tokenizer as Backend
from tokenizers import models

from bitnet_actor.engine.tokenizer._chat_template import (
    _MARK_END,
    _MARK_START,
    _control_token_re,
    _template_literal_text,
    render_chat_template,
)
from bitnet_actor.engine.tokenizer._common import _BYTE_TOKEN_RE, _SPECIAL_TOKEN_NAMES, TokenizerError
from bitnet_actor.engine.tokenizer._gguf_loader import read_gguf_metadata
from bitnet_actor.engine.tokenizer._hf_loader import read_hf_dir
from bitnet_actor.engine.tokenizer._incremental import IncrementalDecoder

if TYPE_CHECKING:
    from pathlib import Path

    from bitnet_actor.engine.tokenizer._common import TokenizerParts

__all__ = ["Tokenizer"]


def _json_types(node: Any) -> Iterable[str]:
    """Every ``"type"`` value in a tokenizer.json component tree."""
    if isinstance(node, Mapping):
        t = node.get("type")
        if isinstance(t, str):
            yield t
        for v in node.values():
            yield from _json_types(v)
    elif isinstance(node, list):
        for v in node:
            yield from _json_types(v)


class Tokenizer:
    """A model's tokenizer: encode/decode, special tokens, chat templates, streaming decode.

    Attributes:
        backend: the ``tokenizers.Tokenizer`` doing the work.
        bos_token, eos_token, unk_token, pad_token: the named special tokens (strings) or None.
        bos_token_id, eos_token_id, unk_token_id, pad_token_id: their ids, or None.
        eos_token_ids: every id that ends generation (EOS, end-of-turn tokens, generation_config's list).
        special_ids: ids of special tokens (what ``decode(..., skip_special_tokens=True)`` drops).
        vocab_size: one past the largest id the tokenizer knows (base vocabulary plus added tokens).
        add_bos_token: whether ``encode(..., add_special_tokens=True)`` starts with BOS.
        add_eos_token: whether ``encode(..., add_special_tokens=True)`` ends with EOS.
        chat_templates: template name -> Jinja source; a single template is named ``"default"``.
        source: where the tokenizer came from, for messages.
        notes: things worth knowing about how it was built (fallbacks taken).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        special_tokens: Mapping[str, str | None] | None = None,
        extra_eos_ids: Iterable[int] = (),
        chat_templates: Mapping[str, str] | None = None,
        source: str = "tokenizer",
        notes: Iterable[str] = (),
    ) -> None:
        """Wrap a ready ``tokenizers.Tokenizer``; prefer :meth:`from_hf_dir` and :meth:`from_gguf_metadata`.

        Args:
            backend: the tokenizer, with its post-processor already adding BOS/EOS as the model wants.
            special_tokens: ``bos_token``, ``eos_token``, ``unk_token``, ``pad_token`` (and ``sep_token``,
                ``cls_token``, ``mask_token``) as strings.
            extra_eos_ids: more ids that end generation.
            chat_templates: template name -> Jinja source.
            source: where the tokenizer came from, for messages.
            notes: remarks about how it was built.
        """
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        self.source = source
        self.notes: tuple[str, ...] = tuple(notes)
        tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None and k in _SPECIAL_TOKEN_NAMES}
        self._special_tokens_map: dict[str, str] = {k: tokens[k] for k in _SPECIAL_TOKEN_NAMES if k in tokens}
        self.bos_token: str | None = tokens.get("bos_token")
        self.eos_token: str | None = tokens.get("eos_token")
        self.unk_token: str | None = tokens.get("unk_token")
        self.pad_token: str | None = tokens.get("pad_token")
        self.bos_token_id = self._id_of(self.bos_token)
        self.eos_token_id = self._id_of(self.eos_token)
        self.unk_token_id = self._id_of(self.unk_token)
        self.pad_token_id = self._id_of(self.pad_token)
        added = backend.get_added_tokens_decoder()
        self.special_ids: frozenset[int] = frozenset(i for i, tok in added.items() if tok.special)
        self.vocab_size: int = max(
            [backend.get_vocab_size(with_added_tokens=False), *(i + 1 for i in added)], default=0
        )
        eos = {self.eos_token_id} if self.eos_token_id is not None else set()
        eos.update(int(i) for i in extra_eos_ids)
        self.eos_token_ids: frozenset[int] = frozenset(eos)
        self.chat_templates: dict[str, str] = dict(chat_templates or {})
        probe_plain, probe = _bos_eos_probe(backend, self.special_ids)
        self.add_bos_token: bool = (
            self.bos_token_id is not None
            and len(probe) > len(probe_plain)
            and probe[0] == self.bos_token_id
            and probe_plain[:1] != [self.bos_token_id]
        )
        self.add_eos_token: bool = (
            self.eos_token_id is not None
            and len(probe) > len(probe_plain)
            and probe[-1] == self.eos_token_id
            and probe_plain[-1:] != [self.eos_token_id]
        )
        self._hold_ids = self._byte_fallback_ids()

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size})"

    def _id_of(self, token: str | None) -> int | None:
        if token is None:
            return None
        i = self.backend.token_to_id(token)
        return int(i) if i is not None else None

    def _byte_fallback_ids(self) -> frozenset[int]:
        """Ids of ``<0xNN>`` tokens when the decoder joins byte runs (ByteFallback); else empty."""
        decoder = self.backend.decoder
        if decoder is None:
            return frozenset()
        probe = Backend(models.BPE())  # serializing just the decoder, not the whole vocabulary
        probe.decoder = decoder
        if "ByteFallback" not in set(_json_types(json.loads(probe.to_str()).get("decoder"))):
            return frozenset()
        vocab = self.backend.get_vocab(with_added_tokens=False)
        return frozenset(i for tok, i in vocab.items() if _BYTE_TOKEN_RE.fullmatch(tok))

    # -- loading ---------------------------------------------------------------------------------------------

    @classmethod
    def _from_parts(cls, parts: TokenizerParts) -> Tokenizer:
        return cls(
            parts.backend,
            special_tokens=parts.special_tokens,
            extra_eos_ids=parts.extra_eos_ids,
            chat_templates=parts.chat_templates,
            source=parts.source,
            notes=parts.notes,
        )

    @classmethod
    def from_hf_dir(cls, path: Path | str) -> Tokenizer:
        """Load a Hugging Face tokenizer directory.

        Reads ``tokenizer.json`` (required; its post-processor decides BOS/EOS, as in transformers 5) and, when
        present, ``tokenizer_config.json`` (special tokens, ``added_tokens_decoder``, ``chat_template``),
        ``special_tokens_map.json``, ``chat_template.jinja``, ``chat_template.json``,
        ``additional_chat_templates/*.jinja``, and ``generation_config.json`` / ``config.json`` for extra
        end-of-sequence ids. The pipeline in ``tokenizer.json`` is used as written.

        Args:
            path: the directory.

        Returns:
            The tokenizer.

        Raises:
            TokenizerError: a file is missing, unreadable or malformed.
        """
        return cls._from_parts(read_hf_dir(path))

    @classmethod
    def from_gguf_metadata(cls, fields: Mapping[str, Any]) -> Tokenizer:
        """Build the tokenizer a GGUF file describes.

        Args:
            fields: GGUF metadata, key -> plain Python value (str, int, float, bool or lists of them). Read:
                ``tokenizer.ggml.model`` (``"gpt2"`` or ``"llama"``), ``.tokens``, ``.token_type``,
                ``.merges``, ``.scores``, ``.pre``, ``.bos_token_id``, ``.eos_token_id``, ``.eot_token_id``,
                ``.eom_token_id``, ``.unknown_token_id``, ``.padding_token_id``, ``.add_bos_token``,
                ``.add_eos_token``, ``.add_space_prefix``, ``tokenizer.chat_template`` (and named
                ``tokenizer.chat_template.NAME``).

        Returns:
            The tokenizer.

        Raises:
            TokenizerError: a required field is missing or malformed, or the tokenizer model is not supported.
        """
        return cls._from_parts(read_gguf_metadata(fields))

    # -- encoding and decoding -------------------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids for ``text``; special tokens written in the text encode as themselves.

        Args:
            text: the text.
            add_special_tokens: add BOS/EOS as the model's configuration asks.

        Returns:
            The ids.
        """
        try:
            return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)
        except Exception as exc:  # the tokenizers library raises plain Exceptions
            raise TokenizerError(f"cannot encode the text: {exc}") from None

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text for ``ids``.

        Args:
            ids: token ids.
            skip_special_tokens: drop special tokens (BOS, EOS, control tokens) from the text.

        Returns:
            The text; byte sequences that are not valid UTF-8 become U+FFFD.
        """
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def encode_plain(self, text: str) -> list[int]:
        """Ids for ``text`` as ordinary text: added tokens (special or not) are not matched, no BOS/EOS.

        A control token's spelling in ``text`` comes out as the pieces of that spelling, never as the token.
        """
        backend = self.backend
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        splits = [text]
        if backend.pre_tokenizer is not None:
            splits = [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
        try:
            return [int(token.id) for piece in splits for token in backend.model.tokenize(piece)]
        except Exception as exc:  # the tokenizers library raises plain Exceptions
            raise TokenizerError(f"cannot encode the text: {exc}") from None

    def control_tokens(self, chat_template: str | None = None) -> tuple[str, ...]:
        """The tokens chat sanitization treats as control tokens for a template.

        Every special added token, plus the non-special added tokens that the template's literal text names
        (whitespace-only tokens excepted), as transformers infers them.
        """
        added = self.backend.get_added_tokens_decoder()
        literal = _template_literal_text(self.get_chat_template(chat_template)) if added else ""
        return tuple(
            tok.content
            for _, tok in sorted(added.items())
            if tok.special or (tok.content in literal and not tok.content.isspace())
        )

    def _encode_marked(self, chat: str, control_tokens: Sequence[str]) -> list[int]:
        """Encode a chat rendered from marked inputs: marked control tokens as text, the rest normally."""
        token_re = _control_token_re(control_tokens)
        markers = re.compile(f"{_MARK_START}({token_re.pattern}){_MARK_END}|[{_MARK_START}{_MARK_END}]")
        pieces = markers.split(chat)  # text, marked token (or None for a lone marker), text, ...
        newline = self.encode("\n", add_special_tokens=False)
        ids = self.encode(pieces[0], add_special_tokens=False)
        for i, piece in enumerate(pieces[1:], start=1):
            if not piece:
                continue
            as_text = i % 2 == 1

            def encode(text: str, *, as_text: bool = as_text) -> list[int]:
                return self.encode_plain(text) if as_text else self.encode(text, add_special_tokens=False)

            # After a newline, so SentencePiece adds no prefix space at the "start" of this piece; then the
            # newline's ids are taken off again.
            piece_ids = encode("\n" + piece)
            piece_ids = piece_ids[len(newline) :] if piece_ids[: len(newline)] == newline else encode(piece)
            if as_text and self.token_to_id(piece) in piece_ids:
                raise TokenizerError(f"cannot sanitize {piece!r}: the tokenizer produces it from plain text")
            ids += piece_ids
        return ids

    def token_to_id(self, tok: str) -> int | None:
        """The id of a token spelled as in the vocabulary, or None."""
        i = self.backend.token_to_id(tok)
        return int(i) if i is not None else None

    def id_to_token(self, i: int) -> str | None:
        """The vocabulary spelling of id ``i``, or None."""
        return self.backend.id_to_token(int(i))

    def incremental_decoder(self, *, skip_special_tokens: bool = True) -> IncrementalDecoder:
        """A fresh :class:`IncrementalDecoder` for one generated sequence."""
        return IncrementalDecoder(
            self.backend,
            skip_special_tokens=skip_special_tokens,
            hold_ids=self._hold_ids,
            special_ids=self.special_ids,
        )

    # -- chat ------------------------------------------------------------------------------------------------

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens that are set, as templates see them."""
        return dict(self._special_tokens_map)

    @property
    def chat_template(self) -> str | None:
        """The default chat template, or None."""
        if "default" in self.chat_templates:
            return self.chat_templates["default"]
        if len(self.chat_templates) == 1:
            return next(iter(self.chat_templates.values()))
        return None

    def get_chat_template(
        self, chat_template: str | None = None, tools: Sequence[Mapping[str, Any]] | None = None
    ) -> str:
        """Pick a template: a name or source given, else ``tool_use`` when tools are given, else the default.

        Raises:
            TokenizerError: no template fits.
        """
        if chat_template is not None:
            return self.chat_templates.get(chat_template, chat_template)
        if tools is not None and "tool_use" in self.chat_templates:
            return self.chat_templates["tool_use"]
        template = self.chat_template
        if template is None:
            if self.chat_templates:
                raise TokenizerError(
                    f"{self.source}: several chat templates and no default; name one of {sorted(self.chat_templates)}"
                )
            raise TokenizerError(f"{self.source}: the model has no chat template")
        return template

    @overload
    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = ...,
        tokenize: Literal[False] = ...,
        continue_final_message: bool = ...,
        sanitize_control_tokens: bool = ...,
        chat_template: str | None = ...,
        tools: Sequence[Mapping[str, Any]] | None = ...,
        documents: Sequence[Mapping[str, Any]] | None = ...,
        **kwargs: Any,
    ) -> str: ...

    @overload
    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = ...,
        tokenize: Literal[True],
        continue_final_message: bool = ...,
        sanitize_control_tokens: bool = ...,
        chat_template: str | None = ...,
        tools: Sequence[Mapping[str, Any]] | None = ...,
        documents: Sequence[Mapping[str, Any]] | None = ...,
        **kwargs: Any,
    ) -> list[int]: ...

    @overload
    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = ...,
        tokenize: bool,
        continue_final_message: bool = ...,
        sanitize_control_tokens: bool = ...,
        chat_template: str | None = ...,
        tools: Sequence[Mapping[str, Any]] | None = ...,
        documents: Sequence[Mapping[str, Any]] | None = ...,
        **kwargs: Any,
    ) -> str | list[int]: ...

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        continue_final_message: bool = False,
        sanitize_control_tokens: bool = False,
        chat_template: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render a conversation with the model's chat template (as transformers does).

        Args:
            messages: the conversation: mappings with ``role`` and ``content`` (and what the template reads).
            add_generation_prompt: open an assistant turn at the end.
            tokenize: return ids (the text encoded without adding BOS/EOS: templates write those).
            continue_final_message: leave the last message open so generation continues it.
            sanitize_control_tokens: encode control tokens that appear in messages, tools, documents or
                ``kwargs`` as ordinary text, so only the tokens the template itself writes are control tokens
                (user text cannot forge ``<|eot_id|>``). Needs ``tokenize=True``. As transformers.
            chat_template: a template name or Jinja source instead of the model's default.
            tools: tool JSON schemas for templates that support tools.
            documents: documents for templates that support retrieval.
            **kwargs: further template variables (they override the special tokens of the same name).

        Returns:
            The rendered text, or its ids when ``tokenize`` is set.

        Raises:
            TokenizerError: no template, a template syntax error, or the template failed (``raise_exception``
                and rendering errors carry the template's message).
        """
        template = self.get_chat_template(chat_template, tools)
        if sanitize_control_tokens and not tokenize:
            raise TokenizerError("sanitize_control_tokens needs tokenize=True")
        control = self.control_tokens(template) if sanitize_control_tokens else None
        origin = (
            "chat template"
            if chat_template is not None and chat_template not in self.chat_templates
            else (f"{self.source}: chat template")
        )
        text = render_chat_template(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tools=tools,
            documents=documents,
            special_tokens=self._special_tokens_map,
            origin=origin,
            control_tokens=control,
            **kwargs,
        )
        if control is not None:
            return self._encode_marked(text, control)
        if tokenize:
            return self.encode(text, add_special_tokens=False)
        return text


def _bos_eos_probe(backend: Backend, special_ids: frozenset[int]) -> tuple[list[int], list[int]]:
    """Ids of one probe text without and with special tokens, which tell whether the post-processor adds
    BOS and EOS.

    The text must be one the vocabulary covers: a WordLevel model without an unknown token cannot encode a
    word it lacks, so after "a" the probe tries the spelling of the vocabulary's own first ordinary tokens,
    then the empty text (which every model encodes, though it cannot tell BOS from EOS when they are one).
    """
    vocab = backend.get_vocab(with_added_tokens=False)
    candidates = ["a", "the"]
    for i in sorted(vocab.values())[:64]:
        if i in special_ids:
            continue
        text = backend.decode([i], skip_special_tokens=True)
        if text.strip():
            candidates.append(text.strip())
    for text in [*candidates, ""]:
        try:
            plain = list(backend.encode(text, add_special_tokens=False).ids)
            full = list(backend.encode(text, add_special_tokens=True).ids)
        except Exception:  # the vocabulary does not cover it: try the next text
            continue
        if plain or not text:
            return plain, full
    return [], []
