"""The OpenAPI description of the OpenAI-compatible inference API (``/v1/*``), merged into the one document.

Request bodies are the protocol's own schemas (:mod:`bitnet_actor.api.openai.protocol`: each field's schema
and parser are one object), so the document lists exactly what a request may carry and how it is checked.
Responses follow OpenAI's objects; streaming responses are ``text/event-stream`` of the same chunks, ending
with ``data: [DONE]``.  ``/v1/responses`` is a websocket (OpenAI's Responses API websocket mode): described
as the GET that upgrades, with its events in the description.
"""

from __future__ import annotations

from typing import Any

from bitnet_actor.api.openai.protocol import CHAT, COMPLETION, DETOKENIZE, TOKENIZE, RequestType

__all__ = ["V1_PATHS", "V1_SCHEMAS"]

_S: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer"}
_BOOL: dict[str, Any] = {"type": "boolean"}


def _body(kind: RequestType) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": kind.schema()}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_USAGE = {
    "type": "object",
    "properties": {
        "prompt_tokens": _INT,
        "completion_tokens": _INT,
        "total_tokens": _INT,
        "prompt_tokens_details": {
            "type": "object",
            "properties": {"cached_tokens": _INT},
            "description": "cached_tokens: prompt tokens taken from the prefix cache (or the response cache)",
        },
    },
}
_LOGPROBS = {"type": ["object", "null"], "description": "as OpenAI's: tokens, token_logprobs, top_logprobs"}

_TOOL_CALL = {
    "type": "object",
    "properties": {
        "index": {**_INT, "description": "streamed deltas only"},
        "id": _S,
        "type": {"const": "function"},
        "function": {"type": "object", "properties": {"name": _S, "arguments": {**_S, "description": "JSON text"}}},
    },
}
_MESSAGE_OUT = {
    "type": "object",
    "properties": {
        "role": _S,
        "content": {"type": ["string", "null"], "description": "null when the message is only tool calls"},
        "tool_calls": {"type": "array", "items": _TOOL_CALL},
    },
}


def _completion_schema(kind: dict[str, Any], choice: dict[str, Any]) -> dict[str, Any]:
    """A completion object (or its streamed chunk): ``kind`` for ``object``, ``choice``'s own fields."""
    choice_props = {"index": _INT, **choice, "finish_reason": {"enum": ["stop", "length", "tool_calls", None]}}
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


def _generation(summary: str, kind: RequestType, result: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": _body(kind),
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
    "/v1/completions": _generation("Text completion", COMPLETION, "Completion"),
    "/v1/chat/completions": _generation(
        "Chat completion (messages through the model's chat template)", CHAT, "ChatCompletion"
    ),
    "/v1/tokenize": {
        "post": {
            "summary": "Token ids of a prompt, or of chat messages through the template",
            "requestBody": _body(TOKENIZE),
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
            "requestBody": _body(DETOKENIZE),
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
