"""Chat request fields: messages (with tool calls and tool results), ``response_format`` (structured output)
and ``tools`` / ``tool_choice``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bitnet_actor.api.openai.fields import Field, bad

__all__ = ["Messages", "ResponseFormat"]


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


@dataclass(frozen=True)
class ResponseFormat(Field):
    """Only ``{"type": "text"}``; structured output is refused (``unsupported_parameter``)."""

    def _check(self, value: Any) -> str:
        kind = value.get("type") if isinstance(value, dict) else None
        if kind not in (None, "text"):
            raise bad("only response_format {'type': 'text'} is supported", self.name, "unsupported_parameter")
        return "text"

    def _schema(self) -> dict[str, Any]:
        return {"type": "object", "properties": {"type": {"type": "string", "enum": ["text"]}}}
