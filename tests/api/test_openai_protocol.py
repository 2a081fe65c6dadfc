"""The request protocol's parsers and its published JSON schemas agree on what a body may be.

Each body below is judged twice: by the server's own checks (``RequestType.check`` and every field's parser,
the code that answers 400) and by a real JSON Schema validator over the schema the OpenAPI document publishes.
A disagreement means the document lies about the API (or the API about the document).
"""

from __future__ import annotations

from typing import Any

import pytest

from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.openai import protocol
from bitnet_actor.api.openai.protocol import CHAT, COMPLETION, DETOKENIZE, TOKENIZE, RequestType

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with openapi-spec-validator (test extra)")

M = {"model": "m"}
COMPLETIONS = [
    {**M, "prompt": "hi"},
    {**M, "prompt": [1, 2, 3]},
    {**M, "prompt": ["hi"]},
    {**M, "prompt": [[4, 5]]},
    {**M, "prompt": []},
    {**M, "prompt": [-1]},
    {**M, "prompt": 7},
    {**M, "prompt": ["a", "b"]},
    {"prompt": "no model"},
    {"model": "", "prompt": "empty model"},
    {**M, "prompt": "x", "temperature": 0},
    {**M, "prompt": "x", "temperature": 2.5},
    {**M, "prompt": "x", "temperature": "hot"},
    {**M, "prompt": "x", "temperature": True},
    {**M, "prompt": "x", "top_p": 0},
    {**M, "prompt": "x", "top_p": 0.5},
    {**M, "prompt": "x", "top_k": -1},
    {**M, "prompt": "x", "top_k": -2},
    {**M, "prompt": "x", "top_k": 3.5},
    {**M, "prompt": "x", "max_tokens": 16.0},
    {**M, "prompt": "x", "max_tokens": 0},
    {**M, "prompt": "x", "max_tokens": None},
    {**M, "prompt": "x", "n": 9},
    {**M, "prompt": "x", "n": 2},
    {**M, "prompt": "x", "seed": 2**63},
    {**M, "prompt": "x", "stop": "\n"},
    {**M, "prompt": "x", "stop": ["a", "b", "c", "d"]},
    {**M, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]},
    {**M, "prompt": "x", "stop": [""]},
    {**M, "prompt": "x", "stop": [1]},
    {**M, "prompt": "x", "logit_bias": {"5": 10}},
    {**M, "prompt": "x", "logit_bias": {"5": 101}},
    {**M, "prompt": "x", "logit_bias": {"-1": 1}},
    {**M, "prompt": "x", "logit_bias": {"five": 1}},
    {**M, "prompt": "x", "logit_bias": []},
    {**M, "prompt": "x", "logprobs": 5},
    {**M, "prompt": "x", "logprobs": 6},
    {**M, "prompt": "x", "stream": True, "stream_options": {"include_usage": True}},
    {**M, "prompt": "x", "stream_options": {"other": True}},
    {**M, "prompt": "x", "stream_options": {"include_usage": "yes"}},
    {**M, "prompt": "x", "stream": "yes"},
    {**M, "prompt": "x", "user": "u" * 256},
    {**M, "prompt": "x", "user": "u" * 257},
    {**M, "prompt": "x", "ignore_eos": 1},
    {**M, "prompt": "x", "metadata": {"a": "b"}},
    {**M, "prompt": "x", "metadata": "a"},
    {**M, "prompt": "x", "store": False},
    {**M, "prompt": "x", "service_tier": 3},
    {**M, "prompt": "x", "no_such_field": 1},
    {**M, "prompt": "x", "tools": []},
    {**M, "prompt": "x", "echo": True},
    {**M, "prompt": "x", "messages": []},
]
CHATS = [
    {**M, "messages": [{"role": "user", "content": "hi"}]},
    {**M, "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]},
    {**M, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    {**M, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
    {**M, "messages": [{"role": "tool", "content": "x"}]},
    {**M, "messages": [{"role": "user", "content": "hi", "tool_calls": []}]},
    {**M, "messages": [{"role": "user"}]},
    {**M, "messages": [{"role": "user", "content": 5}]},
    {**M, "messages": ["hi"]},
    {**M, "messages": []},
    {**M, "messages": "hi"},
    {**M},
    {**M, "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 20},
    {**M, "messages": [{"role": "user", "content": "x"}], "logprobs": 3},
    {**M, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 21},
    {**M, "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "text"}},
    {**M, "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
    {**M, "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 4},
    {**M, "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "low"},
    {**M, "messages": [{"role": "user", "content": "x"}], "prompt": "x"},
]
TOKENIZES = [
    {**M, "prompt": "hi"},
    {**M, "prompt": "hi", "add_special_tokens": False},
    {**M, "prompt": "hi", "add_special_tokens": "no"},
    {**M, "messages": [{"role": "user", "content": "hi"}]},
    {**M, "prompt": [1]},
    {**M, "tokens": [1]},
]
DETOKENIZES = [{**M, "tokens": [1, 2]}, {**M, "tokens": []}, {**M, "tokens": [-1]}, {**M, "tokens": "1"}, {**M}]


def server_accepts(kind: RequestType, body: dict[str, Any]) -> bool:
    """What the server's checks say (the model-independent ones: these never load a model)."""
    try:
        kind.check(body)
        for field in kind.fields:
            if field.name in body or field.name in kind.required:
                field.parse(body)
    except ApiError as exc:
        if exc.status != 400 or not exc.param:
            raise AssertionError(f"a refusal must be a 400 naming the field: {exc}") from exc
        return False
    return True


def tokenize_accepts(body: dict[str, Any]) -> bool:
    # tokenize takes a prompt or messages; the server parses the one present (the schema requires neither).
    try:
        TOKENIZE.check(body)
        TOKENIZE.parse(body, "model")
        TOKENIZE.parse(body, "messages" if "messages" in body else "prompt")
        TOKENIZE.parse(body, "add_special_tokens")
    except ApiError:
        return False
    return True


@pytest.mark.parametrize(
    ("kind", "body"),
    [(COMPLETION, b) for b in COMPLETIONS] + [(CHAT, b) for b in CHATS] + [(DETOKENIZE, b) for b in DETOKENIZES],
    ids=lambda v: getattr(v, "name", None) or str(v)[:60],
)
def test_the_schema_and_the_parsers_agree(kind: RequestType, body: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(kind.schema())
    assert validator.is_valid(body) == server_accepts(kind, body), list(validator.iter_errors(body))


@pytest.mark.parametrize("body", TOKENIZES, ids=lambda v: str(v)[:60])
def test_tokenize_schema_and_parser_agree(body: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(TOKENIZE.schema())
    assert validator.is_valid(body) == tokenize_accepts(body), list(validator.iter_errors(body))


def test_the_samples_cover_both_verdicts_for_each_kind() -> None:
    for kind, bodies in [(COMPLETION, COMPLETIONS), (CHAT, CHATS), (DETOKENIZE, DETOKENIZES)]:
        verdicts = {server_accepts(kind, b) for b in bodies}
        assert verdicts == {True, False}, kind.name


def test_every_schema_is_valid_json_schema() -> None:
    for kind in (COMPLETION, CHAT, TOKENIZE, DETOKENIZE, protocol.RESPONSE_CREATE):
        jsonschema.Draft202012Validator.check_schema(kind.schema())
