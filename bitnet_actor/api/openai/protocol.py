"""The OpenAI-compatible request bodies, defined once: each field's JSON schema and its parser in one object.

A :class:`Field` knows its name, its JSON schema (what ``/api/v1/openapi.json`` publishes) and how to read
and check its value from a body (the 400 that names it when the value is wrong). A :class:`RequestType` is a
set of fields plus the required ones; its :meth:`~RequestType.check` refuses unknown and unsupported fields
and its :meth:`~RequestType.schema` is the request body's schema. So the document and the validation cannot
drift: both come from the definitions below (``tests/api/test_openai_protocol.py`` runs a JSON-schema
validator over bodies the parsers accept and refuse, to keep them agreeing).

Checks that need the model (token ids inside the vocabulary, the context length, the chat template) are the
endpoints' (:mod:`bitnet_actor.api.openai.admission`); everything here is model-independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bitnet_actor.api.errors import ApiError

__all__ = [
    "CHAT",
    "COMPLETION",
    "DETOKENIZE",
    "RESPONSE_CREATE",
    "TOKENIZE",
    "UNSUPPORTED",
    "Field",
    "RequestType",
    "bad",
]

UNSUPPORTED: dict[str, str] = {
    "tools": "tools are not supported",
    "tool_choice": "tools are not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "parallel_tool_calls": "tools are not supported",
    "echo": "echo is not supported",
    "best_of": "best_of is not supported; use n",
    "suffix": "suffix is not supported",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
}
"""OpenAI fields refused with a 400 naming them (``unsupported_parameter``), never silently ignored."""

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


@dataclass(frozen=True)
class RequestType:
    """A request body: its fields and which are required."""

    name: str
    fields: tuple[Field, ...]
    required: tuple[str, ...] = ()
    by_name: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})

    @property
    def names(self) -> frozenset[str]:
        """The accepted field names."""
        return frozenset(self.by_name)

    def check(self, body: dict[str, Any]) -> None:
        """Refuse unsupported fields (``unsupported_parameter``), unknown ones (``unknown_parameter``) and bad
        values of the fields present, before anything is looked up or loaded.

        Raises:
            ApiError: 400 naming the first such field.
        """
        for name in body:
            if name in UNSUPPORTED:
                raise bad(UNSUPPORTED[name], name, "unsupported_parameter")
            if name not in self.by_name:
                raise bad(f"unknown parameter {name!r}", name, "unknown_parameter")
        for name in body:
            self.by_name[name].parse(body)

    def parse(self, body: dict[str, Any], name: str) -> Any:
        """The checked value of field ``name``."""
        return self.by_name[name].parse(body)

    def schema(self) -> dict[str, Any]:
        """The body's JSON schema (exactly these fields; unknown ones are refused)."""
        return {
            "type": "object",
            "properties": {f.name: f.schema() for f in sorted(self.fields, key=lambda f: f.name)},
            "required": list(self.required),
            "additionalProperties": False,
            "description": "unknown fields are refused (400 unknown_parameter); "
            + ", ".join(sorted(UNSUPPORTED))
            + " are refused (400 unsupported_parameter)",
        }


MODEL = String("model", "a model id from GET /v1/models", max_length=256, required=True)
_SAMPLING: tuple[Field, ...] = (
    MODEL,
    Number("temperature", "0: greedy", default=1.0, lo=0, hi=2),
    Number("top_p", default=1.0, lo=0, hi=1, lo_exclusive=True),
    Integer("top_k", "0 or -1: off", default=0, lo=-1, hi=1_000_000),
    Number("min_p", default=0.0, lo=0, hi=1),
    Number("presence_penalty", default=0.0, lo=-2, hi=2),
    Number("frequency_penalty", default=0.0, lo=-2, hi=2),
    Number("repetition_penalty", default=1.0, lo=0.01, hi=10),
    Integer("seed", "makes sampling reproducible (choice i of n uses seed + i)"),
    Stop("stop", "stop strings", default=()),
    LogitBias("logit_bias", "token id -> bias added to its logit", default={}),
    String("user", "the end user's id, recorded with the usage", max_length=256),
    Boolean("ignore_eos", "keep generating past end-of-sequence tokens", default=False),
    Anything("metadata", "accepted for compatibility, not stored"),
    Anything("store", "accepted for compatibility; nothing is stored", json_type="boolean"),
    Anything("service_tier", "accepted for compatibility; ignored", json_type="string"),
)
_STREAMING: tuple[Field, ...] = (
    Integer("n", "choices per request", default=1, lo=1, hi=8),
    Boolean("stream", "server-sent events (text/event-stream)", default=False),
    StreamOptions("stream_options", "include_usage: a last chunk with the usage and no choices"),
)
MAX_TOKENS_LIMIT = 1_000_000

COMPLETION = RequestType(
    "completion",
    (
        *_SAMPLING,
        *_STREAMING,
        Prompt("prompt", "the text to continue, or its token ids"),
        Integer("max_tokens", "most tokens to generate (default 16)", default=16, lo=1, hi=MAX_TOKENS_LIMIT),
        Integer("logprobs", "log-probabilities of the top tokens (0..5)", lo=0, hi=5),
        ResponseFormat("response_format", "only text; json_object / json_schema are refused with a 400"),
    ),
    required=("model", "prompt"),
)
CHAT = RequestType(
    "chat",
    (
        *_SAMPLING,
        *_STREAMING,
        Messages("messages", "rendered with the model's chat template"),
        Integer("max_tokens", "most tokens to generate (default: the rest of the context)", lo=1, hi=MAX_TOKENS_LIMIT),
        Integer("max_completion_tokens", "most tokens to generate (wins over max_tokens)", lo=1, hi=MAX_TOKENS_LIMIT),
        Boolean("logprobs", "return the chosen tokens' log-probabilities", default=False),
        Integer("top_logprobs", "with logprobs: true, the most likely alternatives per token", default=0, lo=0, hi=20),
        ResponseFormat("response_format", "only text; json_object / json_schema are refused with a 400"),
        Anything("reasoning_effort", "accepted for compatibility; ignored", json_type="string"),
    ),
    required=("model", "messages"),
)
TOKENIZE = RequestType(
    "tokenize",
    (
        MODEL,
        Prompt("prompt", "the text to tokenize", text_only=True),
        Messages("messages", "chat messages, tokenized through the template"),
        Boolean("add_special_tokens", "add BOS and the like", default=True),
    ),
    required=("model",),
)
DETOKENIZE = RequestType("detokenize", (MODEL, TokenIds("tokens", "token ids")), required=("model", "tokens"))
RESPONSE_CREATE = RequestType(
    "response.create",
    (
        *_SAMPLING,
        Anything("type", "response.create", json_type="string"),
        ResponseInput("input", "text, or a list of chat messages"),
        Integer("max_output_tokens", "most tokens to generate", lo=1, hi=MAX_TOKENS_LIMIT),
        String("instructions", "a system message put before input messages"),
        ResponseFormat("response_format", "only text; json_object / json_schema are refused with a 400"),
    ),
    required=("type", "model", "input"),
)
"""A websocket ``response.create`` message (``/v1/responses``)."""
