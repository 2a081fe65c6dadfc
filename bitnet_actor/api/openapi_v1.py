"""The OpenAPI description of the OpenAI-compatible inference API (``/v1/*``), merged into the one document.

Request bodies are built from the field sets the handlers check (:data:`~bitnet_actor.api.inference.CHAT_FIELDS`
and friends), so the document lists exactly what a request may carry; a test keeps them equal.  Responses
follow OpenAI's objects; streaming responses are ``text/event-stream`` of the same chunks, ending with
``data: [DONE]``.  ``/v1/responses`` is a websocket (OpenAI's Responses API websocket mode): described as the
GET that upgrades, with its events in the description.
"""

from __future__ import annotations

from typing import Any

from bitnet_actor.api.inference import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    DETOKENIZE_FIELDS,
    TOKENIZE_FIELDS,
    UNSUPPORTED_FIELDS,
)

__all__ = ["FIELD_SCHEMAS", "V1_PATHS", "V1_SCHEMAS", "request_schema"]

_S: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer"}
_NUM: dict[str, Any] = {"type": "number"}
_BOOL: dict[str, Any] = {"type": "boolean"}
_MESSAGE = {
    "type": "object",
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
        "content": {
            "oneOf": [
                _S,
                {"type": "array", "items": {"type": "object", "properties": {"type": _S, "text": _S}}},
            ]
        },
        "name": _S,
    },
    "required": ["role", "content"],
}

FIELD_SCHEMAS: dict[str, dict[str, Any]] = {
    "model": {**_S, "description": "a model id from GET /v1/models"},
    "prompt": {**_S, "description": "the text to continue"},
    "messages": {"type": "array", "items": _MESSAGE, "description": "rendered with the model's chat template"},
    "max_tokens": {**_INT, "minimum": 1, "description": "most tokens to generate (completions: default 16)"},
    "max_completion_tokens": {**_INT, "minimum": 1, "description": "chat: most tokens to generate"},
    "temperature": {**_NUM, "minimum": 0, "maximum": 2, "default": 1, "description": "0: greedy"},
    "top_p": {**_NUM, "exclusiveMinimum": 0, "maximum": 1, "default": 1},
    "top_k": {**_INT, "minimum": -1, "default": 0, "description": "0 or -1: off"},
    "min_p": {**_NUM, "minimum": 0, "maximum": 1, "default": 0},
    "presence_penalty": {**_NUM, "minimum": -2, "maximum": 2, "default": 0},
    "frequency_penalty": {**_NUM, "minimum": -2, "maximum": 2, "default": 0},
    "repetition_penalty": {**_NUM, "minimum": 0.01, "maximum": 10, "default": 1},
    "seed": {**_INT, "description": "makes sampling reproducible"},
    "stop": {"oneOf": [_S, {"type": "array", "items": _S, "maxItems": 4}], "description": "stop strings"},
    "n": {**_INT, "minimum": 1, "maximum": 8, "default": 1, "description": "choices per request"},
    "logprobs": {
        "oneOf": [_BOOL, {**_INT, "minimum": 0, "maximum": 5}],
        "description": "chat: boolean; completions: number of top log-probabilities (0..5)",
    },
    "top_logprobs": {**_INT, "minimum": 0, "maximum": 20, "description": "chat: with logprobs: true"},
    "logit_bias": {
        "type": "object",
        "additionalProperties": {**_NUM, "minimum": -100, "maximum": 100},
        "description": "token id -> bias added to its logit",
    },
    "user": {**_S, "description": "the end user's id, recorded with the usage"},
    "stream": {**_BOOL, "default": False, "description": "server-sent events (text/event-stream)"},
    "stream_options": {
        "type": "object",
        "properties": {"include_usage": _BOOL},
        "description": "include_usage: a last chunk with the usage and no choices",
    },
    "ignore_eos": {**_BOOL, "default": False, "description": "keep generating past end-of-sequence tokens"},
    "metadata": {"type": "object", "description": "accepted for compatibility, not stored"},
    "store": {**_BOOL, "description": "accepted for compatibility; nothing is stored"},
    "service_tier": {**_S, "description": "accepted for compatibility; ignored"},
    "response_format": {
        "type": "object",
        "properties": {"type": {"type": "string", "enum": ["text"]}},
        "description": "only text; json_object / json_schema are refused with a 400",
    },
    "reasoning_effort": {**_S, "description": "accepted for compatibility; ignored"},
    "add_special_tokens": {**_BOOL, "default": True, "description": "tokenize: add BOS and the like"},
    "tokens": {"type": "array", "items": _INT, "description": "token ids"},
}


def request_schema(fields: set[str] | frozenset[str], required: list[str]) -> dict[str, Any]:
    """The JSON schema of a request body accepting exactly ``fields``."""
    return {
        "type": "object",
        "properties": {name: FIELD_SCHEMAS[name] for name in sorted(fields)},
        "required": required,
        "additionalProperties": False,
        "description": "unknown fields are refused (400 unknown_parameter); "
        + ", ".join(sorted(UNSUPPORTED_FIELDS))
        + " are refused (400 unsupported_parameter)",
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_USAGE = {
    "type": "object",
    "properties": {"prompt_tokens": _INT, "completion_tokens": _INT, "total_tokens": _INT},
}
_LOGPROBS = {"type": ["object", "null"], "description": "as OpenAI's: tokens, token_logprobs, top_logprobs"}

_MESSAGE_OUT = {"type": "object", "properties": {"role": _S, "content": _S}}


def _completion_schema(kind: dict[str, Any], choice: dict[str, Any]) -> dict[str, Any]:
    """A completion object (or its streamed chunk): ``kind`` for ``object``, ``choice``'s own fields."""
    choice_props = {"index": _INT, **choice, "finish_reason": {"enum": ["stop", "length", None]}}
    return {
        "type": "object",
        "properties": {
            "id": _S,
            "object": kind,
            "created": _INT,
            "model": _S,
            "choices": {"type": "array", "items": {"type": "object", "properties": choice_props}},
            "usage": {"$ref": "#/components/schemas/Usage"},
        },
    }


V1_SCHEMAS: dict[str, Any] = {
    "Usage": _USAGE,
    "Completion": _completion_schema({"const": "text_completion"}, {"text": _S, "logprobs": _LOGPROBS}),
    "ChatCompletion": _completion_schema(
        {"enum": ["chat.completion", "chat.completion.chunk"]},
        {"message": _MESSAGE_OUT, "delta": _MESSAGE_OUT, "logprobs": _LOGPROBS},
    ),
    "Model": {
        "type": "object",
        "properties": {
            "id": _S,
            "object": {"const": "model"},
            "created": _INT,
            "owned_by": _S,
            "loaded": {**_BOOL, "description": "in memory now (else loaded on the first request)"},
        },
    },
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": "#/components/responses/Error"} for code in codes}


_GEN_ERRORS = _errors("400", "401", "403", "404", "429", "503")


def _generation(summary: str, fields: set[str], required: list[str], result: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_schema(fields, required)}},
            },
            "responses": {
                "200": {
                    "description": f"a {result}; with stream: true, server-sent events of its chunks, then "
                    "data: [DONE]",
                    "content": {
                        "application/json": {"schema": _ref(result)},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **_GEN_ERRORS,
            },
        }
    }


V1_PATHS: dict[str, Any] = {
    "/v1/models": {
        "get": {
            "summary": "The models this organization may use",
            "responses": {
                "200": {
                    "description": "a list",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "object": {"const": "list"},
                                    "data": {"type": "array", "items": _ref("Model")},
                                },
                            }
                        }
                    },
                },
                **_errors("401", "403"),
            },
        }
    },
    "/v1/completions": _generation("Text completion", COMPLETION_FIELDS, ["model", "prompt"], "Completion"),
    "/v1/chat/completions": _generation(
        "Chat completion (messages through the model's chat template)",
        CHAT_FIELDS,
        ["model", "messages"],
        "ChatCompletion",
    ),
    "/v1/tokenize": {
        "post": {
            "summary": "Token ids of a prompt, or of chat messages through the template",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_schema(TOKENIZE_FIELDS, ["model"])}},
            },
            "responses": {
                "200": {
                    "description": "the ids",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "tokens": {"type": "array", "items": _INT},
                                    "count": _INT,
                                    "max_model_len": _INT,
                                },
                            }
                        }
                    },
                },
                **_GEN_ERRORS,
            },
        }
    },
    "/v1/detokenize": {
        "post": {
            "summary": "Text of token ids",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_schema(DETOKENIZE_FIELDS, ["model", "tokens"])}},
            },
            "responses": {
                "200": {
                    "description": "the text",
                    "content": {"application/json": {"schema": {"type": "object", "properties": {"prompt": _S}}}},
                },
                **_GEN_ERRORS,
            },
        }
    },
    "/v1/objects/sha256/{digest}": {
        "parameters": [
            {
                "name": "digest",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
            {"name": "expires", "in": "query", "required": True, "schema": _INT},
            {"name": "signature", "in": "query", "required": True, "schema": _S},
        ],
        "get": {
            "summary": "Download an object through a presigned URL (filesystem object store; S3 serves its own)",
            "security": [],
            "responses": {
                "200": {"description": "the object's bytes", "content": {"application/octet-stream": {}}},
                **_errors("403", "404"),
            },
        },
    },
    "/v1/responses": {
        "get": {
            "summary": "WebSocket: streamed responses (OpenAI Responses API websocket mode)",
            "description": "Upgrade to a websocket (bearer key in the Authorization header, or a first message "
            "{type: authenticate, api_key}).  Send {type: response.create, model, input (text or messages), sampling "
            "fields}; receive response.created, response.output_text.delta events, then response.completed "
            "with usage.  {type: response.cancel} cancels the running response (response.cancelled).  Several "
            "responses may follow one another on one socket; errors arrive as {type: error} events.",
            "responses": {"101": {"description": "switching to the websocket protocol"}, **_errors("401")},
        }
    },
}
