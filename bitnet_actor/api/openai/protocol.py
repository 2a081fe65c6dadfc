"""The OpenAI-compatible request bodies, defined once: each field's JSON schema and its parser in one object.

A :class:`~bitnet_actor.api.openai.fields.Field` knows its name, its JSON schema (what
``/api/v1/openapi.json`` publishes) and how to read and check its value from a body (the 400 that names it
when the value is wrong). A :class:`RequestType` is a set of fields plus the required ones; its
:meth:`~RequestType.check` refuses unknown and unsupported fields and its :meth:`~RequestType.schema` is the
request body's schema. So the document and the validation cannot drift: both come from the definitions
below (``tests/api/test_openai_protocol.py`` runs a JSON-schema validator over bodies the parsers accept and
refuse, to keep them agreeing).

Checks that need the model (token ids inside the vocabulary, the context length, the chat template) are the
endpoints' (:mod:`bitnet_actor.api.openai.admission`); everything here is model-independent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bitnet_actor.api.openai.chat_fields import Messages, ResponseFormat, ResponseText, ToolChoice, Tools
from bitnet_actor.api.openai.fields import (
    Anything,
    Boolean,
    Field,
    Integer,
    LogitBias,
    Number,
    Prompt,
    ResponseInput,
    Stop,
    StreamOptions,
    String,
    TokenIds,
    bad,
)

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
    "functions": "the legacy functions field is not supported; use tools",
    "function_call": "the legacy function_call field is not supported; use tool_choice",
    "echo": "echo is not supported",
    "best_of": "best_of is not supported; use n",
    "suffix": "suffix is not supported",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
}
"""OpenAI fields refused with a 400 naming them (``unsupported_parameter``), never silently ignored."""


@dataclass(frozen=True)
class RequestType:
    """A request body: its fields and which are required."""

    name: str
    fields: tuple[Field, ...]
    required: tuple[str, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)  # more fields refused here, beside UNSUPPORTED
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
            if name in UNSUPPORTED or name in self.refused:
                raise bad(self.refused.get(name) or UNSUPPORTED[name], name, "unsupported_parameter")
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
            + ", ".join(sorted({*UNSUPPORTED, *self.refused}))
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
        ResponseFormat("response_format", "text, or JSON output by constrained decoding: json_object, json_schema"),
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
        ResponseFormat("response_format", "text, or JSON output by constrained decoding: json_object, json_schema"),
        Tools("tools", "functions the model may call"),
        ToolChoice("tool_choice", "none, auto (the default with tools), required, or a named function"),
        Boolean("parallel_tool_calls", "allow more than one call in a response", default=True),
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
        ResponseFormat("response_format", "text, or JSON output by constrained decoding: json_object, json_schema"),
        ResponseText("text", "the Responses API's text.format (the same formats as response_format)"),
    ),
    required=("type", "model", "input"),
    refused=dict.fromkeys(
        ("tools", "tool_choice", "parallel_tool_calls"),
        "tool calls are not supported on the websocket; use /v1/chat/completions",
    ),
)
"""A websocket ``response.create`` message (``/v1/responses``)."""
