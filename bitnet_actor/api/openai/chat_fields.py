"""Chat request fields: messages (with tool calls and tool results), ``response_format`` (structured output)
and ``tools`` / ``tool_choice``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bitnet_actor.api.openai.fields import Field, bad
from bitnet_actor.engine.constraints import ConstraintError, Grammar, json_schema_grammar

__all__ = ["Messages", "OutputFormat", "ResponseFormat", "ResponseText"]


@dataclass(frozen=True)
class Messages(Field):
    """Chat messages: system / developer (as system) / user / assistant, text content (a string or text parts)."""

    def nullable(self) -> bool:
        """Never null: the request is about it."""
        return False

    def parse(self, body: dict[str, Any]) -> list[dict[str, str]]:
        """The messages as ``{"role", "content"}`` dicts (a missing or empty list is a 400)."""
        messages = body.get(self.name)
        if not isinstance(messages, list) or not messages:
            raise bad("messages must be a non-empty list", self.name)
        return [self._message(i, m) for i, m in enumerate(messages)]

    def _message(self, i: int, message: Any) -> dict[str, str]:
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(f"{where} must be an object", where)
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise bad(f"{where}.role must be system, developer, user or assistant", f"{where}.role")
        for key in message:
            if key not in ("role", "content", "name"):
                raise bad(f"{where}.{key} is not supported", f"{where}.{key}", "unsupported_parameter")
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad(f"{where}.content: only text parts are supported", f"{where}.content")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise bad(f"{where}.content must be a string", f"{where}.content")
        return {"role": role, "content": content}

    def _schema(self) -> dict[str, Any]:
        text_part = {
            "type": "object",
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
            "required": ["type", "text"],
        }
        message = {
            "type": "object",
            "properties": {
                "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
                "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": text_part}]},
                "name": {"type": "string"},
            },
            "required": ["role", "content"],
            "additionalProperties": False,
        }
        return {"type": "array", "items": message, "minItems": 1}


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


_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
