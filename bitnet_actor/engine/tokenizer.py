"""Tokenizers, chat templates and streaming detokenization.

A :class:`Tokenizer` wraps a ``tokenizers.Tokenizer`` (the Rust "fast" tokenizer that ``tokenizer.json``
describes) and adds what a server needs around it: the special tokens and end-of-sequence ids from the model's
configuration, chat templates rendered the way transformers renders them, and an :class:`IncrementalDecoder`
that turns a stream of generated ids into text without ever emitting half a UTF-8 character.

Two sources:

* :meth:`Tokenizer.from_hf_dir` -- a Hugging Face directory: ``tokenizer.json`` (required),
  ``tokenizer_config.json``, ``special_tokens_map.json``, ``generation_config.json``, ``config.json`` and the
  chat template files (``chat_template.jinja``, ``chat_template.json``,
  ``additional_chat_templates/*.jinja``).
* :meth:`Tokenizer.from_gguf_metadata` -- the vocabulary a GGUF file carries, rebuilt as a ``tokenizers``
  object: ``"gpt2"`` files become a byte-level BPE with the file's merges and the pre-tokenizer regex that
  ``tokenizer.ggml.pre`` names; ``"llama"`` (SentencePiece) files become a BPE whose merges are recovered from
  the token scores (SentencePiece BPE merges the pair whose result has the best score, which is what llama.cpp
  does and what transformers' converter does), with byte fallback and the ``"▁"`` space prefix.

Chat templates run in jinja2's immutable sandbox with the settings, filters and globals transformers uses
(``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, ``tojson`` without ASCII escaping, ``raise_exception``,
``strftime_now``, the ``{% generation %}`` tag), and see the same variables: ``messages``, ``tools``,
``documents``, ``add_generation_prompt``, the named special tokens (``bos_token``, ``eos_token``, ...) and any
extra keyword arguments.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal, overload

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from bitnet_actor.errors import BitnetError

__all__ = [
    "GGUF_TOKEN_TYPES",
    "IncrementalDecoder",
    "Tokenizer",
    "TokenizerError",
    "render_chat_template",
]

log = logging.getLogger(__name__)

# GGUF ``tokenizer.ggml.token_type`` values (llama.cpp's llama_token_type).
GGUF_TOKEN_TYPES: Mapping[str, int] = {
    "normal": 1,
    "unknown": 2,
    "control": 3,
    "user_defined": 4,
    "unused": 5,
    "byte": 6,
}
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# The named special tokens transformers passes to chat templates (``special_tokens_map``), in its order.
_SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

_BYTE_TOKEN_RE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_REPLACEMENT_CHAR = "\ufffd"

# Pre-tokenizer regexes by ``tokenizer.ggml.pre`` name (as in each vocabulary's published tokenizer.json).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GGUF_PRE_SPLITS: Mapping[str, str] = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx", "pixtral", "falcon-h1"),
        _LLAMA3_SPLIT,
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT),
    **dict.fromkeys(("gpt-4o", "llama4"), _GPT4O_SPLIT),
}
# Pre-tokenizers whose vocabularies match a whole pre-token before applying merges (Llama 3 style).
_IGNORE_MERGES_PRE = frozenset(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe"))
_GPT2_PRE = frozenset(("default", "gpt2", "gpt-2"))

# Control tokens that end a turn in common chat formats; a GGUF that lists one as a control token stops on it
# (llama.cpp treats these as end-of-generation tokens too).
_END_OF_TURN_TOKENS = frozenset(
    (
        "<|eot_id|>",
        "<|eom_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<|return|>",
        "<|call|>",
    )
)


class TokenizerError(BitnetError):
    """A tokenizer or chat template could not be loaded or applied; the message names the file or field."""


# ----------------------------------------------------------------------------------------------------------
# Chat templates
# ----------------------------------------------------------------------------------------------------------


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body (transformers marks assistant text so)."""

    tags: ClassVar[set[str]] = {"generation"}  # type: ignore[misc]

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        """Parse the tag into a call block that renders the body unchanged."""
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Callable[[], str]) -> str:
        return caller()


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore-prefixed attributes (no reaching for interpreter internals)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        super().__init__(attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        super().__setitem__(name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}"
            )


class _TemplateDict:
    """``dict`` inside templates: builds plain dicts, exposes nothing else of the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, keys: Iterable[Any], value: Any = None) -> dict[Any, Any]:
        """Same as ``dict.fromkeys``."""
        return dict.fromkeys(keys, value)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Unlike jinja2's own filter: no HTML escaping, non-ASCII kept, indent/separators/sort_keys exposed.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)  # local time, as transformers gives templates


@lru_cache(maxsize=64)
def _compile_template(source: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(source)


def _plain(value: Any) -> Any:
    """Rebuild ``value`` from plain JSON-like types; anything else becomes ``"<TypeName>"`` (transformers)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and type(value).__module__ == "numpy":
        return _plain(item())
    return f"<{type(value).__name__}>"


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TokenizerError(f"chat message {i} must be a mapping, got {type(message).__name__}")
        # Keys whose value is None are dropped (APIs send content=None; templates expect the key absent).
        msg: dict[str, Any] = {k: _plain(v) for k, v in message.items() if v is not None}
        reasoning = next((msg[k] for k in _REASONING_FIELDS if msg.get(k) is not None), None)
        if reasoning is not None:
            msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
        out.append(msg)
    return out


_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "

# Private-use markers around control tokens found in user-supplied strings (the ones transformers uses).
_MARK_START, _MARK_END = "\U000f0000", "\U000f0001"


def _control_token_re(control_tokens: Iterable[str]) -> re.Pattern[str]:
    longest_first = sorted(set(control_tokens), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, longest_first)) or "(?!)")


def _mark_control_tokens(value: Any, pattern: re.Pattern[str]) -> Any:
    """Wrap control tokens in user strings with markers (dict keys are left alone); drop forged markers."""
    if isinstance(value, str):
        value = value.replace(_MARK_START, "").replace(_MARK_END, "")
        return pattern.sub(lambda m: f"{_MARK_START}{m.group(0)}{_MARK_END}", value)
    if isinstance(value, Mapping):
        return {k: _mark_control_tokens(v, pattern) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mark_control_tokens(v, pattern) for v in value]
    return value


@lru_cache(maxsize=64)
def _template_literal_text(source: str) -> str:
    """The template's literal text and string constants, joined by NULs (where control tokens are looked for)."""
    ast = _compile_template(source).environment.parse(source)
    literals = {node.data for node in ast.find_all(jinja2.nodes.TemplateData)}
    literals |= {node.value for node in ast.find_all(jinja2.nodes.Const) if isinstance(node.value, str)}
    return "\0".join(sorted(literals))


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    continue_final_message: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    special_tokens: Mapping[str, str] | None = None,
    origin: str = "chat template",
    control_tokens: Iterable[str] | None = None,
    **kwargs: Any,
) -> str:
    """Render a chat template as transformers' ``apply_chat_template(..., tokenize=False)`` does.

    Args:
        template: the Jinja source.
        messages: the conversation; each message a mapping (``role``, ``content``, ...). Keys whose value is
            None are dropped; ``reasoning_content``/``thinking``/``reasoning`` are aliased to each other.
        add_generation_prompt: ask the template to open an assistant turn.
        continue_final_message: render the last message open-ended (no end-of-turn after it), so generation
            continues it; incompatible with ``add_generation_prompt``.
        tools: tool JSON schemas, passed as ``tools``.
        documents: documents for retrieval templates, passed as ``documents``.
        special_tokens: ``bos_token``, ``eos_token``, ... as strings; ``kwargs`` override them.
        origin: where the template came from, for error messages.
        control_tokens: when given, these tokens are wrapped in private-use markers wherever they appear in
            messages, tools, documents and ``kwargs`` (see :meth:`Tokenizer.apply_chat_template`'s
            ``sanitize_control_tokens``); the output then carries the markers.
        **kwargs: further template variables.

    Returns:
        The rendered text.

    Raises:
        TokenizerError: the template has a syntax error, raised an exception (``raise_exception``), failed
            while rendering, or the arguments are inconsistent.
    """
    if not messages:
        raise TokenizerError("cannot apply a chat template to an empty conversation")
    if continue_final_message and add_generation_prompt:
        raise TokenizerError("continue_final_message and add_generation_prompt cannot both be set")
    try:
        compiled = _compile_template(template)
    except jinja2.TemplateSyntaxError as e:
        raise TokenizerError(f"{origin}: syntax error on line {e.lineno}: {e.message}") from e
    chat = _normalize_messages(messages)
    if tools is not None and not all(isinstance(t, Mapping) for t in tools):
        raise TokenizerError("tools must be JSON schemas (mappings)")
    if documents is not None and not all(isinstance(d, Mapping) for d in documents):
        raise TokenizerError("documents must be mappings (with 'title' and 'text')")
    tools_data = _plain(list(tools)) if tools is not None else None
    documents_data = _plain(list(documents)) if documents is not None else None
    extra = _plain(kwargs)
    if control_tokens is not None:
        pattern = _control_token_re(control_tokens)
        chat = _mark_control_tokens(chat, pattern)
        tools_data = _mark_control_tokens(tools_data, pattern)
        documents_data = _mark_control_tokens(documents_data, pattern)
        extra = _mark_control_tokens(extra, pattern)
    final_message = ""
    if continue_final_message:
        content = chat[-1].get("content")
        if not isinstance(content, str):
            raise TokenizerError("continue_final_message needs a final message with string content")
        final_message = content
        chat[-1]["content"] = content + _CONTINUE_TAG
    variables: dict[str, Any] = {**(special_tokens or {}), **extra}
    try:
        rendered = compiled.render(
            messages=chat,
            tools=tools_data,
            documents=documents_data,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.TemplateError as e:
        raise TokenizerError(f"{origin}: {e.message or type(e).__name__}") from e
    except (
        TypeError,
        ValueError,
        KeyError,
        AttributeError,
        IndexError,
        ZeroDivisionError,
        OverflowError,
    ) as e:
        raise TokenizerError(f"{origin}: rendering failed: {type(e).__name__}: {e}") from e
    if continue_final_message:
        tag = _CONTINUE_TAG.strip()
        if final_message.strip() not in rendered or tag not in rendered:
            raise TokenizerError(f"{origin}: continue_final_message: the template dropped the final message")
        loc = rendered.rindex(tag)
        if rendered[loc : loc + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
            rendered = rendered[:loc]
        else:
            rendered = rendered[:loc].rstrip()
    return rendered


# ----------------------------------------------------------------------------------------------------------
# Incremental decoding
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# Loading helpers
# ----------------------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text: {e}") from e
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read: {e.strerror or e}") from e


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from e


def _read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when the file does not exist."""
    if not path.exists():
        return {}
    data = _read_json(path)
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_content(value: Any, where: str) -> str | None:
    """A special-token setting as a string: a string, or a serialized AddedToken ``{"content": ...}``."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    raise TokenizerError(f"{where}: expected a token string or {{'content': ...}}, got {value!r}")


def _id_list(value: Any, where: str) -> list[int]:
    if value is None:
        return []
    if isinstance(value, bool):
        raise TokenizerError(f"{where}: expected a token id or a list of ids, got {value!r}")
    if isinstance(value, int):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise TokenizerError(f"{where}: expected a token id or a list of ids, got {value!r}")


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


def _template_processor(bos: tuple[str, int] | None, eos: tuple[str, int] | None) -> processors.TemplateProcessing:
    """Post-processor adding BOS and/or EOS around each sequence (transformers' ``update_post_processor``)."""
    first = [f"{bos[0]}:0"] if bos else []
    last = [f"{eos[0]}:0"] if eos else []
    single = [*first, "$A:0", *last]
    pair = [*single, *([f"{bos[0]}:1"] if bos else []), "$B:1", *([f"{eos[0]}:1"] if eos else [])]
    special = [t for t in (bos, eos) if t is not None]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE vocabularies are spelled in it)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_BYTE_LEVEL_ALPHABET = frozenset(_bytes_to_unicode().values())


def _spm_merges(tokens: Sequence[str], scores: Sequence[float], mergeable: Sequence[bool]) -> list[tuple[str, str]]:
    """BPE merges that reproduce SentencePiece BPE: every split of a token into two tokens, best score first.

    SentencePiece BPE (and llama.cpp's SPM tokenizer) repeatedly joins the adjacent pair whose concatenation
    is the highest-scoring token; a BPE whose merge ranks follow the scores of the merge results does the
    same. Ties go to the longer left piece, then the longer right piece, then vocabulary order (as in
    transformers' converter).
    """
    ids: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if mergeable[i]:
            ids.setdefault(tok, i)
    found: list[tuple[float, int, int, str, str]] = []
    for i, tok in enumerate(tokens):
        if not mergeable[i] or len(tok) < 2 or ids.get(tok) != i:
            continue
        local = []
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            li, ri = ids.get(left), ids.get(right)
            if li is not None and ri is not None:
                local.append((li, ri, left, right))
        local.sort()
        found.extend((float(scores[i]), len(left), len(right), left, right) for _, _, left, right in local)
    found.sort(key=lambda m: (-m[0], -m[1], -m[2]))  # stable: keeps vocabulary order within ties
    return [(left, right) for _, _, _, left, right in found]


def _gguf_list(fields: Mapping[str, Any], key: str, *, required: bool) -> list[Any] | None:
    value = fields.get(key)
    if value is None:
        if required:
            raise TokenizerError(f"GGUF metadata: missing {key}")
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TokenizerError(f"GGUF metadata: {key} must be an array, got {type(value).__name__}")
    return list(value)


def _gguf_int(fields: Mapping[str, Any], key: str, n_tokens: int) -> int | None:
    value = fields.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenizerError(f"GGUF metadata: {key} must be an integer, got {value!r}")
    if value < 0:  # llama.cpp writes -1 (as uint32 max, or int) for "none"
        return None
    if value >= n_tokens:
        if value >= 2**31:  # 0xFFFFFFFF
            return None
        raise TokenizerError(f"GGUF metadata: {key} = {value} is outside the vocabulary of {n_tokens} tokens")
    return value


def _gguf_bool(fields: Mapping[str, Any], key: str) -> bool | None:
    value = fields.get(key)
    if value is None:
        return None
    if isinstance(value, (bool, int)):
        return bool(value)
    raise TokenizerError(f"GGUF metadata: {key} must be a boolean, got {value!r}")


# ----------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------


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
        probe_plain = backend.encode("a", add_special_tokens=False).ids
        probe = backend.encode("a", add_special_tokens=True).ids
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
        root = Path(path)
        if not root.is_dir():
            raise TokenizerError(f"{root}: not a directory")
        tokenizer_json = root / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise TokenizerError(f"{tokenizer_json}: missing (a Hugging Face tokenizer needs tokenizer.json)")
        text = _read_text(tokenizer_json)
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise TokenizerError(
                f"{tokenizer_json}: malformed JSON: {e.msg} at line {e.lineno} column {e.colno}"
            ) from e
        try:
            backend = Backend.from_str(text)
        except Exception as e:  # the Rust side raises plain Exception
            raise TokenizerError(f"{tokenizer_json}: not a tokenizer the tokenizers library can load: {e}") from e

        config_path = root / "tokenizer_config.json"
        config = _read_json_object(config_path)
        special_map = _read_json_object(root / "special_tokens_map.json")

        notes: list[str] = []
        # Tokens the config declares that tokenizer.json lacks.
        added_decoder = config.get("added_tokens_decoder") or {}
        if not isinstance(added_decoder, Mapping):
            raise TokenizerError(f"{config_path}: added_tokens_decoder must be an object")
        present = {tok.content for tok in backend.get_added_tokens_decoder().values()}
        for key, spec in sorted(added_decoder.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0):
            content = _token_content(spec, f"{config_path}: added_tokens_decoder[{key}]")
            if content is None or content in present or not isinstance(spec, Mapping):
                continue
            backend.add_tokens(
                [
                    AddedToken(
                        content,
                        single_word=bool(spec.get("single_word", False)),
                        lstrip=bool(spec.get("lstrip", False)),
                        rstrip=bool(spec.get("rstrip", False)),
                        normalized=bool(spec.get("normalized", not spec.get("special", False))),
                        special=bool(spec.get("special", False)),
                    )
                ]
            )
            present.add(content)
            if str(backend.token_to_id(content)) != str(key):
                notes.append(f"added token {content!r} got id {backend.token_to_id(content)}, config says {key}")

        special: dict[str, str | None] = {}
        for name in _SPECIAL_TOKEN_NAMES:
            if name in config:
                special[name] = _token_content(config[name], f"{config_path}: {name}")
            elif name in special_map:
                special[name] = _token_content(special_map[name], f"{root / 'special_tokens_map.json'}: {name}")
        extra_special: list[str] = []
        for key in ("extra_special_tokens", "additional_special_tokens"):
            for source, where in ((config, config_path), (special_map, root / "special_tokens_map.json")):
                values = source.get(key)
                if isinstance(values, Mapping):
                    values = list(values.values())
                for v in values or ():
                    content = _token_content(v, f"{where}: {key}")
                    if content is not None:
                        extra_special.append(content)
        # Special tokens not yet in the added vocabulary become special added tokens (as transformers does).
        missing = [t for t in [*special.values(), *extra_special] if t is not None and t not in present]
        for token in dict.fromkeys(missing):
            backend.add_special_tokens([AddedToken(token, special=True, normalized=False)])
            present.add(token)

        # BOS/EOS come from tokenizer.json's post-processor alone: transformers 5 drops add_bos_token and
        # add_eos_token from the config whenever tokenizer.json exists.
        extra_eos: list[int] = []
        for name in ("generation_config.json", "config.json"):
            data = _read_json_object(root / name)
            extra_eos += _id_list(data.get("eos_token_id"), f"{root / name}: eos_token_id")

        return cls(
            backend,
            special_tokens=special,
            extra_eos_ids=extra_eos,
            chat_templates=cls._hf_chat_templates(root, config),
            source=str(root),
            notes=notes,
        )

    @staticmethod
    def _hf_chat_templates(root: Path, config: Mapping[str, Any]) -> dict[str, str]:
        config_path = root / "tokenizer_config.json"
        templates: dict[str, str] = {}
        value = config.get("chat_template")
        if isinstance(value, str):
            templates["default"] = value
        elif isinstance(value, list):
            for item in value:
                if not (
                    isinstance(item, Mapping)
                    and isinstance(item.get("name"), str)
                    and isinstance(item.get("template"), str)
                ):
                    raise TokenizerError(f"{config_path}: chat_template entries need 'name' and 'template'")
                templates[item["name"]] = item["template"]
        elif value is not None:
            raise TokenizerError(f"{config_path}: chat_template must be a string or a list of named templates")
        # Template files override the config (transformers 5 saves templates as files).
        files: dict[str, str] = {}
        json_path = root / "chat_template.json"
        if json_path.is_file():
            data = _read_json_object(json_path)
            template = data.get("chat_template")
            if not isinstance(template, str):
                raise TokenizerError(f"{json_path}: chat_template must be a string")
            files["default"] = template
        jinja_path = root / "chat_template.jinja"
        if jinja_path.is_file():
            files["default"] = _read_text(jinja_path)
        extra_dir = root / "additional_chat_templates"
        if extra_dir.is_dir():
            for f in sorted(extra_dir.glob("*.jinja")):
                files[f.name.removesuffix(".jinja")] = _read_text(f)
        return files or templates

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
        kind = fields.get("tokenizer.ggml.model")
        if kind is None:
            raise TokenizerError("GGUF metadata: missing tokenizer.ggml.model")
        tokens_raw = _gguf_list(fields, "tokenizer.ggml.tokens", required=True)
        assert tokens_raw is not None
        if not all(isinstance(t, str) for t in tokens_raw):
            raise TokenizerError("GGUF metadata: tokenizer.ggml.tokens must be strings")
        tokens: list[str] = list(tokens_raw)
        n = len(tokens)
        if n == 0:
            raise TokenizerError("GGUF metadata: tokenizer.ggml.tokens is empty")
        types_raw = _gguf_list(fields, "tokenizer.ggml.token_type", required=False)
        if types_raw is not None and len(types_raw) != n:
            raise TokenizerError(
                f"GGUF metadata: tokenizer.ggml.token_type has {len(types_raw)} entries for {n} tokens"
            )
        types = [int(t) for t in types_raw] if types_raw is not None else None
        ids = {
            name: _gguf_int(fields, f"tokenizer.ggml.{key}", n)
            for name, key in (
                ("bos", "bos_token_id"),
                ("eos", "eos_token_id"),
                ("eot", "eot_token_id"),
                ("eom", "eom_token_id"),
                ("unk", "unknown_token_id"),
                ("pad", "padding_token_id"),
                ("sep", "seperator_token_id"),
                ("cls", "cls_token_id"),
                ("mask", "mask_token_id"),
            )
        }
        notes: list[str] = []
        if types is None:
            # No types: byte tokens by spelling, the named special tokens as control.
            named = {i for i in ids.values() if i is not None}
            types = [
                _CONTROL if i in named else _BYTE if _BYTE_TOKEN_RE.fullmatch(t) else _NORMAL
                for i, t in enumerate(tokens)
            ]
            notes.append("no tokenizer.ggml.token_type: token types guessed")
        # Duplicate spellings cannot share a vocabulary; give later copies a placeholder spelling.
        seen: set[str] = set()
        for i, tok in enumerate(tokens):
            if tok in seen:
                tokens[i] = f"<dup_token_{i}>"
                notes.append(f"duplicate token {tok!r} at id {i} renamed")
            seen.add(tok)

        if kind == "gpt2":
            backend, add_bos_default = cls._gguf_byte_level(fields, tokens, types, notes)
        elif kind == "llama":
            backend = cls._gguf_sentencepiece(fields, tokens, types, ids["unk"], notes)
            add_bos_default = True
        else:
            raise TokenizerError(
                f"GGUF metadata: tokenizer.ggml.model {kind!r} is not supported (supported: 'gpt2', 'llama')"
            )

        # Control/unknown tokens are special (atomic in text, dropped by skip_special_tokens); user-defined
        # tokens are atomic in text but kept when decoding.
        special_added = [
            AddedToken(t, special=True, normalized=False)
            for t, ty in zip(tokens, types, strict=True)
            if ty in (_CONTROL, _UNKNOWN)
        ]
        user_added = [
            AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types, strict=True)
            if ty == _USER_DEFINED
        ]
        if special_added:
            backend.add_special_tokens(special_added)
        if user_added:
            backend.add_tokens(user_added)

        def token_of(name: str) -> str | None:
            i = ids[name]
            return tokens[i] if i is not None else None

        add_bos = _gguf_bool(fields, "tokenizer.ggml.add_bos_token")
        add_eos = _gguf_bool(fields, "tokenizer.ggml.add_eos_token")
        add_bos = add_bos_default if add_bos is None else add_bos
        bos_id, eos_id = ids["bos"], ids["eos"]
        backend.post_processor = _template_processor(
            (tokens[bos_id], bos_id) if add_bos and bos_id is not None else None,
            (tokens[eos_id], eos_id) if add_eos and eos_id is not None else None,
        )
        extra_eos = [i for i in (ids["eot"], ids["eom"]) if i is not None]
        extra_eos += [
            i
            for i, (t, ty) in enumerate(zip(tokens, types, strict=True))
            if ty == _CONTROL and t in _END_OF_TURN_TOKENS
        ]

        templates: dict[str, str] = {}
        template = fields.get("tokenizer.chat_template")
        if template is not None:
            if not isinstance(template, str):
                raise TokenizerError("GGUF metadata: tokenizer.chat_template must be a string")
            templates["default"] = template
        for key, value in fields.items():
            if key.startswith("tokenizer.chat_template.") and isinstance(value, str):
                templates[key.removeprefix("tokenizer.chat_template.")] = value

        for note in notes:
            log.info("GGUF tokenizer: %s", note)
        return cls(
            backend,
            special_tokens={
                "bos_token": token_of("bos"),
                "eos_token": token_of("eos"),
                "unk_token": token_of("unk"),
                "pad_token": token_of("pad"),
                "sep_token": token_of("sep"),
                "cls_token": token_of("cls"),
                "mask_token": token_of("mask"),
            },
            extra_eos_ids=extra_eos,
            chat_templates=templates,
            source=f"GGUF ({kind})",
            notes=notes,
        )

    @staticmethod
    def _gguf_byte_level(
        fields: Mapping[str, Any], tokens: list[str], types: list[int], notes: list[str]
    ) -> tuple[Backend, bool]:
        merges_raw = _gguf_list(fields, "tokenizer.ggml.merges", required=True)
        assert merges_raw is not None
        merges: list[tuple[str, str]] = []
        for m in merges_raw:
            if not isinstance(m, str) or " " not in m:
                raise TokenizerError(f"GGUF metadata: tokenizer.ggml.merges entry {m!r} is not 'left right'")
            left, right = m.split(" ", 1)
            merges.append((left, right))
        spelling = _bytes_to_unicode()
        vocab: dict[str, int] = {}
        for i, (token, ty) in enumerate(zip(tokens, types, strict=True)):
            if ty in (_NORMAL, _UNUSED, _BYTE) and not set(token) <= _BYTE_LEVEL_ALPHABET:
                # A plain-text spelling of a normal token: respell it in the byte-level alphabet.
                token = "".join(spelling[b] for b in token.encode("utf-8"))
            vocab.setdefault(token, i)
        pre = fields.get("tokenizer.ggml.pre")
        pre_name = pre if isinstance(pre, str) else "default"
        model = models.BPE(vocab=vocab, merges=merges, ignore_merges=pre_name in _IGNORE_MERGES_PRE)
        backend = Backend(model)
        split = _GGUF_PRE_SPLITS.get(pre_name)
        if split is not None:
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(split), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        else:
            if pre_name not in _GPT2_PRE:
                notes.append(f"tokenizer.ggml.pre {pre_name!r} is not known here; using the GPT-2 pre-tokenizer")
                log.warning("GGUF tokenizer.ggml.pre %r is not known; falling back to the GPT-2 regex", pre_name)
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        return backend, pre_name in _IGNORE_MERGES_PRE

    @staticmethod
    def _gguf_sentencepiece(
        fields: Mapping[str, Any], tokens: list[str], types: list[int], unk_id: int | None, notes: list[str]
    ) -> Backend:
        scores_raw = _gguf_list(fields, "tokenizer.ggml.scores", required=False)
        merges_raw = _gguf_list(fields, "tokenizer.ggml.merges", required=False)
        if merges_raw is not None:
            merges = []
            for m in merges_raw:
                if not isinstance(m, str) or " " not in m:
                    raise TokenizerError(f"GGUF metadata: tokenizer.ggml.merges entry {m!r} is not 'left right'")
                left, right = m.split(" ", 1)
                merges.append((left, right))
        else:
            if scores_raw is None:
                raise TokenizerError("GGUF metadata: missing tokenizer.ggml.scores (needed for a 'llama' vocabulary)")
            if len(scores_raw) != len(tokens):
                raise TokenizerError(
                    f"GGUF metadata: tokenizer.ggml.scores has {len(scores_raw)} entries for {len(tokens)} tokens"
                )
            scores = [float(s) for s in scores_raw]
            mergeable = [ty in (_NORMAL, _USER_DEFINED) for ty in types]
            merges = _spm_merges(tokens, scores, mergeable)
        vocab = {t: i for i, t in enumerate(tokens)}
        if unk_id is None:
            unk_id = next((i for i, ty in enumerate(types) if ty == _UNKNOWN), None)
        byte_fallback = any(ty == _BYTE for ty in types)
        model = models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=tokens[unk_id] if unk_id is not None else None,
            fuse_unk=True,
            byte_fallback=byte_fallback,
        )
        backend = Backend(model)
        prefix = _gguf_bool(fields, "tokenizer.ggml.add_space_prefix")
        prefix = True if prefix is None else prefix
        # llama.cpp (and sentencepiece, which encodes each piece of text between special tokens on its own)
        # prefixes every such piece with a space: the "always" scheme.
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="always" if prefix else "never", split=False
        )
        steps: list[decoders.Decoder] = [decoders.Replace("▁", " ")]
        if byte_fallback:
            steps.append(decoders.ByteFallback())
        steps.append(decoders.Fuse())
        if prefix:
            steps.append(decoders.Strip(content=" ", left=1, right=0))
        backend.decoder = decoders.Sequence(steps)
        if not byte_fallback:
            notes.append("no byte tokens: characters outside the vocabulary encode as the unknown token")
        return backend

    # -- encoding and decoding -------------------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids for ``text``; special tokens written in the text encode as themselves.

        Args:
            text: the text.
            add_special_tokens: add BOS/EOS as the model's configuration asks.

        Returns:
            The ids.
        """
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

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
        return [int(token.id) for piece in splits for token in backend.model.tokenize(piece)]

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
