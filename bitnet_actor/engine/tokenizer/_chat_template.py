"""Chat templates rendered as transformers renders them: the jinja2 sandbox, its filters and globals,
message normalization, and the control-token markers behind ``sanitize_control_tokens``.

Templates run in jinja2's immutable sandbox with the settings, filters and globals transformers uses
(``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, ``tojson`` without ASCII escaping, ``raise_exception``,
``strftime_now``, the ``{% generation %}`` tag).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils

from bitnet_actor.engine.tokenizer._common import TokenizerError

__all__ = ["render_chat_template"]


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
