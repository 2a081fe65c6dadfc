"""The building blocks of the OpenAI-compatible request bodies: a :class:`Field` is one body field's JSON
schema and its parser in one object (see :mod:`bitnet_actor.api.openai.protocol` for the request types made
of them, and :mod:`bitnet_actor.api.openai.chat_fields` for messages, response formats and tools).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bitnet_actor.api.errors import ApiError

__all__ = [
    "Anything",
    "Boolean",
    "Field",
    "Integer",
    "LogitBias",
    "Number",
    "Prompt",
    "ResponseInput",
    "Stop",
    "StreamOptions",
    "String",
    "TokenIds",
    "bad",
]

_MISSING = object()


def bad(message: str, param: str, code: str = "invalid_value") -> ApiError:
    """A 400 naming the field at fault."""
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Field:
    """One body field: its schema and its parser. Subclasses define ``_check`` and ``_schema``.

    Attributes:
        name: the JSON key.
        description: for the OpenAPI document.
        default: the value when the field is absent or null.
    """

    name: str
    description: str = ""
    default: Any = None

    def parse(self, body: dict[str, Any]) -> Any:
        """The field's checked value in ``body`` (``default`` when absent or null).

        Raises:
            ApiError: 400 naming the field.
        """
        value = body.get(self.name, _MISSING)
        if value is _MISSING or value is None:
            return self.default
        return self._check(value)

    def nullable(self) -> bool:
        """Whether ``null`` is accepted (meaning: the default), as OpenAI accepts it for optional fields."""
        return True

    def schema(self) -> dict[str, Any]:
        """The field's JSON schema."""
        out = self._schema()
        if self.nullable():
            if isinstance(out.get("type"), str):
                out["type"] = [out["type"], "null"]
            elif "oneOf" in out:
                out["oneOf"] = [*out["oneOf"], {"type": "null"}]
        if self.description:
            out["description"] = self.description
        if self.default is not None and not isinstance(self.default, (list, dict, tuple)):
            out["default"] = self.default
        return out

    def _check(self, value: Any) -> Any:
        return value

    def _schema(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Number(Field):
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_exclusive``)."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_exclusive: bool = False

    def _check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad(f"{self.name} must be a number", self.name, "invalid_type")
        if not self.lo <= value <= self.hi:
            raise bad(f"{self.name} must be between {self.lo:g} and {self.hi:g}", self.name)
        if self.lo_exclusive and value == self.lo:
            raise bad(f"{self.name} must be greater than {self.lo:g}", self.name)
        return float(value)

    def _schema(self) -> dict[str, Any]:
        lo_key = "exclusiveMinimum" if self.lo_exclusive else "minimum"
        return {"type": "number", lo_key: self.lo, "maximum": self.hi}


@dataclass(frozen=True)
class Integer(Field):
    """An integer in ``[lo, hi]`` (JSON booleans are not integers here)."""

    lo: int = -(2**63)
    hi: int = 2**63 - 1

    def _check(self, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():  # 16.0 is an integer in JSON Schema too
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"{self.name} must be an integer", self.name, "invalid_type")
        if not self.lo <= value <= self.hi:
            raise bad(f"{self.name} must be between {self.lo} and {self.hi}", self.name)
        return value

    def _schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.lo, "maximum": self.hi}


@dataclass(frozen=True)
class Boolean(Field):
    """``true`` or ``false``."""

    def _check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise bad(f"{self.name} must be a boolean", self.name, "invalid_type")
        return value

    def _schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class String(Field):
    """A string of at most ``max_length`` characters (non-empty with ``required``)."""

    max_length: int = 1 << 20
    required: bool = False
    required_message: str = ""

    def nullable(self) -> bool:
        """A required string is never null."""
        return not self.required

    def parse(self, body: dict[str, Any]) -> Any:
        """As :meth:`Field.parse`; a required string that is absent, empty or not a string is a 400."""
        if self.required:
            value = body.get(self.name)
            if not isinstance(value, str) or not value:
                message = self.required_message or f"{self.name} is required"
                raise bad(message, self.name, "missing_required_parameter")
        return super().parse(body)

    def _check(self, value: Any) -> str:
        if not isinstance(value, str) or len(value) > self.max_length:
            raise bad(f"{self.name} must be a string of at most {self.max_length} characters", self.name)
        return value

    def _schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string", "maxLength": self.max_length}
        if self.required:
            out["minLength"] = 1
        return out


@dataclass(frozen=True)
class Stop(Field):
    """Stop strings: one, or a list of at most four, none empty."""

    def _check(self, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            stops: tuple[str, ...] = (value,)
        elif isinstance(value, list) and all(isinstance(s, str) for s in value) and len(value) <= 4:
            stops = tuple(value)
        else:
            raise bad("stop must be a string or a list of at most 4 strings", self.name)
        if any(not s for s in stops):
            raise bad("stop strings must not be empty", self.name)
        return stops

    def _schema(self) -> dict[str, Any]:
        text = {"type": "string", "minLength": 1}
        return {"oneOf": [text, {"type": "array", "items": text, "maxItems": 4}]}


@dataclass(frozen=True)
class LogitBias(Field):
    """Token id (a decimal string) -> bias in ``[-100, 100]``; the ids are checked against the model later."""

    def _check(self, value: Any) -> dict[int, float]:
        if not isinstance(value, dict):
            raise bad("logit_bias must be an object of token id -> bias", self.name)
        bias: dict[int, float] = {}
        for key, item in value.items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                raise bad(f"logit_bias key {key!r} is not a token id", self.name) from None
            if token < 0:
                raise bad(f"logit_bias token {token} is outside the vocabulary", self.name)
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not -100 <= item <= 100:
                raise bad("logit_bias values must be numbers between -100 and 100", self.name)
            bias[token] = float(item)
        return bias

    def _schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "propertyNames": {"pattern": "^[0-9]+$"},
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        }


@dataclass(frozen=True)
class StreamOptions(Field):
    """``{"include_usage": bool}`` (``include_obfuscation`` accepted and ignored)."""

    def _check(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or set(value) - {"include_usage", "include_obfuscation"}:
            raise bad("stream_options supports only include_usage", self.name)
        for key, item in value.items():
            if not isinstance(item, bool):
                raise bad(f"stream_options.{key} must be a boolean", self.name, "invalid_type")
        return value

    def _schema(self) -> dict[str, Any]:
        flag = {"type": "boolean"}
        return {
            "type": "object",
            "properties": {"include_usage": flag, "include_obfuscation": flag},
            "additionalProperties": False,
        }


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)


@dataclass(frozen=True)
class Prompt(Field):
    """A completion prompt: text, or token ids (one prompt per request; a list of one is unwrapped)."""

    text_only: bool = False

    def nullable(self) -> bool:
        """Never null: the request is about it."""
        return False

    def parse(self, body: dict[str, Any]) -> str | list[int]:
        """The prompt (a missing, empty or malformed one is a 400)."""
        prompt = body.get(self.name)
        if self.text_only:
            if not isinstance(prompt, str):
                raise bad("prompt must be a string", self.name)
            return prompt
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            if any(t < 0 for t in prompt):  # the upper bound is the model's (checked at admission)
                raise bad("prompt token ids must be inside the vocabulary", self.name)
            return list(prompt)
        raise bad("prompt must be a string, or a list of token ids (one prompt per request)", self.name)

    def _schema(self) -> dict[str, Any]:
        if self.text_only:
            return {"type": "string"}
        ids = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
        return {
            "oneOf": [
                {"type": "string"},
                ids,
                {"type": "array", "items": {"oneOf": [{"type": "string"}, ids]}, "minItems": 1, "maxItems": 1},
            ]
        }


@dataclass(frozen=True)
class TokenIds(Field):
    """A list of token ids (checked against the vocabulary later)."""

    def nullable(self) -> bool:
        """Never null: the request is about it."""
        return False

    def parse(self, body: dict[str, Any]) -> list[int]:
        """The ids (missing or malformed: a 400)."""
        tokens = body.get(self.name)
        if not _token_ids(tokens):
            raise bad("tokens must be a list of token ids", self.name)
        return list(tokens or ())

    def _schema(self) -> dict[str, Any]:
        return {"type": "array", "items": {"type": "integer", "minimum": 0}}


@dataclass(frozen=True)
class Anything(Field):
    """Accepted for compatibility with OpenAI's clients and not used; only its JSON type is checked."""

    json_type: str = "object"

    def _check(self, value: Any) -> Any:
        types = {"object": dict, "string": str, "boolean": bool}
        if not isinstance(value, types[self.json_type]):
            raise bad(f"{self.name} must be a JSON {self.json_type}", self.name, "invalid_type")
        return value

    def _schema(self) -> dict[str, Any]:
        return {"type": self.json_type}


@dataclass(frozen=True)
class ResponseInput(Field):
    """The input of a websocket response: text, or chat messages (checked as ``messages``)."""

    def _schema(self) -> dict[str, Any]:
        return {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}
