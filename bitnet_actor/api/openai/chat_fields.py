"""Chat request fields: messages (with tool calls and tool results), ``response_format`` (structured output)
and ``tools`` / ``tool_choice``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bitnet_actor.api.openai.fields import Field, bad
from bitnet_actor.engine.constraints import ConstraintError, Grammar, json_schema_grammar

__all__ = ["Messages", "OutputFormat", "ResponseFormat", "ResponseText", "Tool", "ToolChoice", "Tools"]


_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TOOLS = 128


def _text(where: str, content: Any, *, nullable: bool = False) -> str | None:
    """A message's content: a string or a list of text parts (joined); None when allowed."""
    if content is None and nullable:
        return None
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}: only text parts are supported", where)
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise bad(f"{where} must be a string", where)
    return content


def _tool_calls(where: str, calls: Any) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls`` (OpenAI's shape: ``arguments`` a JSON text)."""
    if not isinstance(calls, list) or not calls:
        raise bad(f"{where} must be a non-empty list", where)
    out = []
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or call.get("type", "function") != "function" or not isinstance(fn, dict):
            raise bad(f"{at} must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}", at)
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise bad(f"{at}.id must be a non-empty string", f"{at}.id")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad(f"{at}.function.name must be a non-empty string", f"{at}.function.name")
        if not isinstance(fn.get("arguments", ""), str):
            raise bad(f"{at}.function.arguments must be a JSON text", f"{at}.function.arguments")
        out.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": fn["name"], "arguments": fn.get("arguments", "")},
            }
        )
    return out


@dataclass(frozen=True)
class Messages(Field):
    """Chat messages: system / developer (as system) / user / assistant (with ``tool_calls``) / tool (a tool's
    result, with ``tool_call_id``), text content (a string or text parts)."""

    def nullable(self) -> bool:
        """Never null: the request is about it."""
        return False

    def parse(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The messages as ``{"role", "content"}`` dicts (plus ``tool_calls`` / ``tool_call_id`` / ``name``
        where given); a missing or empty list is a 400."""
        messages = body.get(self.name)
        if not isinstance(messages, list) or not messages:
            raise bad("messages must be a non-empty list", self.name)
        return [self._message(i, m) for i, m in enumerate(messages)]

    def _message(self, i: int, message: Any) -> dict[str, Any]:
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(f"{where} must be an object", where)
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise bad(f"{where}.role must be system, developer, user, assistant or tool", f"{where}.role")
        allowed = {"role", "content", "name"}
        allowed |= {"tool_calls", "refusal"} if role == "assistant" else {"tool_call_id"} if role == "tool" else set()
        for key in message:
            if key not in allowed:
                raise bad(f"{where}.{key} is not supported", f"{where}.{key}", "unsupported_parameter")
        out: dict[str, Any] = {"role": role}
        calls = message.get("tool_calls")
        if calls is not None:
            out["tool_calls"] = _tool_calls(f"{where}.tool_calls", calls)
        content = _text(f"{where}.content", message.get("content"), nullable=role == "assistant")
        if content is None and "tool_calls" not in out:
            raise bad(f"{where}.content must be a string (or null with tool_calls)", f"{where}.content")
        out["content"] = content
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise bad(f"{where}.tool_call_id must name the call this is the result of", f"{where}.tool_call_id")
            out["tool_call_id"] = call_id
        if isinstance(message.get("name"), str):
            out["name"] = message["name"]
        return out

    def _schema(self) -> dict[str, Any]:
        text_part = {
            "type": "object",
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
            "required": ["type", "text"],
        }
        content = {"oneOf": [{"type": "string"}, {"type": "array", "items": text_part}]}
        call = {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
                    "required": ["name"],
                },
            },
            "required": ["id", "function"],
        }
        plain = {
            "type": "object",
            "properties": {
                "role": {"type": "string", "enum": ["system", "developer", "user"]},
                "content": content,
                "name": {"type": "string"},
            },
            "required": ["role", "content"],
            "additionalProperties": False,
        }
        assistant = {
            "type": "object",
            "properties": {
                "role": {"const": "assistant"},
                "content": {"oneOf": [*content["oneOf"], {"type": "null"}]},
                "name": {"type": "string"},
                "refusal": {"type": ["string", "null"]},
                "tool_calls": {"type": "array", "items": call, "minItems": 1},
            },
            "required": ["role"],
            "additionalProperties": False,
        }
        tool = {
            "type": "object",
            "properties": {
                "role": {"const": "tool"},
                "content": content,
                "tool_call_id": {"type": "string", "minLength": 1},
                "name": {"type": "string"},
            },
            "required": ["role", "content", "tool_call_id"],
            "additionalProperties": False,
        }
        return {"type": "array", "items": {"oneOf": [plain, assistant, tool]}, "minItems": 1}


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """A checked ``response_format`` that constrains the output (``text`` is None, not one of these).

    Attributes:
        type: ``"json_object"`` or ``"json_schema"``.
        name: the schema's name (json_schema).
        grammar: the compiled grammar (model independent; each model checks it against its vocabulary).
    """

    type: str
    name: str | None
    grammar: Grammar


@dataclass(frozen=True)
class ResponseFormat(Field):
    """``{"type": "text"}`` (the default), ``{"type": "json_object"}`` (any JSON object) or
    ``{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}``; the last two
    are enforced by constrained decoding, whatever ``strict`` says (the output always parses)."""

    def _check(self, value: Any) -> OutputFormat | None:
        if not isinstance(value, dict):
            raise bad("response_format must be an object", self.name, "invalid_type")
        kind = value.get("type")
        extra = sorted(set(value) - {"type", "json_schema"})
        if extra:
            raise bad(f"response_format.{extra[0]} is not a known field", f"{self.name}.{extra[0]}")
        if kind == "text":
            return None
        if kind == "json_object":
            return OutputFormat("json_object", None, json_schema_grammar(None))
        if kind != "json_schema":
            raise bad("response_format.type must be text, json_object or json_schema", f"{self.name}.type")
        spec = value.get("json_schema")
        where = f"{self.name}.json_schema"
        if not isinstance(spec, dict):
            raise bad("response_format.json_schema must be an object with name and schema", where)
        for key in spec:
            if key not in ("name", "schema", "strict", "description"):
                raise bad(f"{where}.{key} is not a known field", f"{where}.{key}")
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise bad("json_schema.name must be 1-64 letters, digits, '_' or '-'", f"{where}.name")
        if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
            raise bad("json_schema.strict must be a boolean", f"{where}.strict", "invalid_type")
        if spec.get("description") is not None and not isinstance(spec["description"], str):
            raise bad("json_schema.description must be a string", f"{where}.description", "invalid_type")
        schema = spec.get("schema")
        if schema is not None and not isinstance(schema, dict):
            raise bad("json_schema.schema must be a JSON schema (an object)", f"{where}.schema", "invalid_type")
        try:
            grammar = json_schema_grammar(schema if schema is not None else {})
        except ConstraintError as exc:
            raise bad(str(exc), f"{where}.schema", "invalid_json_schema") from None
        return OutputFormat("json_schema", name, grammar)

    def _schema(self) -> dict[str, Any]:
        json_schema = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "schema": {"type": "object"},
                "strict": {"type": ["boolean", "null"]},
                "description": {"type": ["string", "null"]},
            },
            "required": ["name"],
            "additionalProperties": False,
        }
        return {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
                "json_schema": json_schema,
            },
            "required": ["type"],
            "additionalProperties": False,
        }


@dataclass(frozen=True)
class ResponseText(Field):
    """The Responses API's ``text: {"format": {...}}``: ``{"type": "text"}``, ``{"type": "json_object"}`` or
    ``{"type": "json_schema", "name", "schema", "strict", "description"}`` (the schema's fields flat, as
    that API has them). Parsed into the ``response_format`` of chat completions."""

    def _check(self, value: Any) -> dict[str, Any] | None:
        if not isinstance(value, dict) or set(value) - {"format", "verbosity"}:
            raise bad("text must be an object with format", self.name)
        fmt = value.get("format")
        if fmt is None:
            return None
        if not isinstance(fmt, dict):
            raise bad("text.format must be an object", f"{self.name}.format", "invalid_type")
        if fmt.get("type") != "json_schema":
            return {"type": fmt.get("type")}
        return {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}

    def _schema(self) -> dict[str, Any]:
        fmt = {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
                "name": {"type": "string"},
                "schema": {"type": "object"},
                "strict": {"type": ["boolean", "null"]},
                "description": {"type": ["string", "null"]},
            },
            "required": ["type"],
        }
        return {"type": "object", "properties": {"format": fmt, "verbosity": {}}, "additionalProperties": False}


@dataclass(frozen=True, slots=True)
class Tool:
    """One function the model may call.

    Attributes:
        name: the function's name.
        description: what it does (for the prompt), or None.
        parameters: the JSON schema of its arguments (an object schema; ``{}`` when none was given).
    """

    name: str
    description: str | None
    parameters: dict[str, Any]

    def as_template_input(self) -> dict[str, Any]:
        """The tool as chat templates take it (transformers' shape: OpenAI's ``tools`` entry)."""
        fn: dict[str, Any] = {"name": self.name, "parameters": self.parameters or {"type": "object", "properties": {}}}
        if self.description:
            fn["description"] = self.description
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class Tools(Field):
    """``tools``: up to 128 functions ``{"type": "function", "function": {"name", "description", "parameters",
    "strict"}}`` with distinct names."""

    def _check(self, value: Any) -> tuple[Tool, ...]:
        if not isinstance(value, list) or len(value) > MAX_TOOLS:
            raise bad(f"tools must be a list of at most {MAX_TOOLS} functions", self.name, "invalid_type")
        out: list[Tool] = []
        for i, entry in enumerate(value):
            at = f"{self.name}[{i}]"
            fn = entry.get("function") if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or entry.get("type") != "function" or not isinstance(fn, dict):
                raise bad(f"{at} must be {{'type': 'function', 'function': {{...}}}}", at)
            for key in fn:
                if key not in ("name", "description", "parameters", "strict"):
                    raise bad(f"{at}.function.{key} is not a known field", f"{at}.function.{key}")
            name = fn.get("name")
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise bad("a function name must be 1-64 letters, digits, '_' or '-'", f"{at}.function.name")
            if any(t.name == name for t in out):
                raise bad(f"two tools are named {name!r}", f"{at}.function.name")
            description = fn.get("description")
            if description is not None and not isinstance(description, str):
                raise bad("description must be a string", f"{at}.function.description", "invalid_type")
            params = fn.get("parameters")
            if params is not None and not isinstance(params, dict):
                raise bad("parameters must be a JSON schema (an object)", f"{at}.function.parameters", "invalid_type")
            if fn.get("strict") is not None and not isinstance(fn["strict"], bool):
                raise bad("strict must be a boolean", f"{at}.function.strict", "invalid_type")
            out.append(Tool(name, description, dict(params or {})))
        return tuple(out)

    def _schema(self) -> dict[str, Any]:
        fn = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "description": {"type": ["string", "null"]},
                "parameters": {"type": ["object", "null"]},
                "strict": {"type": ["boolean", "null"]},
            },
            "required": ["name"],
            "additionalProperties": False,
        }
        entry = {
            "type": "object",
            "properties": {"type": {"const": "function"}, "function": fn},
            "required": ["type", "function"],
        }
        return {"type": "array", "items": entry, "maxItems": MAX_TOOLS}


@dataclass(frozen=True)
class ToolChoice(Field):
    """``tool_choice``: ``"none"``, ``"auto"``, ``"required"`` or ``{"type": "function", "function": {"name"}}``
    (parsed to that string, or the function's name prefixed ``"function:"``)."""

    def _check(self, value: Any) -> str:
        if value in ("none", "auto", "required"):
            return str(value)
        fn = value.get("function") if isinstance(value, dict) else None
        if isinstance(value, dict) and value.get("type") == "function" and isinstance(fn, dict):
            name = fn.get("name")
            if isinstance(name, str) and name:
                return f"function:{name}"
        raise bad("tool_choice must be none, auto, required or {'type': 'function', 'function': {'name'}}", self.name)

    def _schema(self) -> dict[str, Any]:
        named = {
            "type": "object",
            "properties": {
                "type": {"const": "function"},
                "function": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
            },
            "required": ["type", "function"],
        }
        return {"oneOf": [{"type": "string", "enum": ["none", "auto", "required"]}, named]}
