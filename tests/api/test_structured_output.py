"""Structured output through the official ``openai`` client against a real server: json_schema and
json_object on chat (plain and streamed) and completions, the websocket's text.format, and 400s that name
unsupported schema features."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api.served import Served, serve
from tests.api.test_openai_api import client, events_until_done, in_thread, ws_session

openai = pytest.importorskip("openai", reason="the openai client is a test dependency")
pydantic = pytest.importorskip("pydantic", reason="the openai client's parse helper uses pydantic")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the outputs")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
MESSAGES = [{"role": "user", "content": "Describe a person."}]


@pytest.fixture
async def served(aio_loop: object, pg_dsn: str, redis_url: str, model_dir: Path) -> AsyncIterator[Served]:
    data_dir = Path(tempfile.mkdtemp(prefix="bitnet-data-"))
    try:
        async with serve(pg_dsn, redis_url, data_dir, {"tiny": model_dir}) as s:
            yield s
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_chat_json_schema_plain_streamed_and_parsed(served: Served) -> None:
    class Person(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        name: str = pydantic.Field(max_length=12)
        age: int = pydantic.Field(ge=0, le=120)

    def go():
        with client(served) as c:
            outs = [
                c.chat.completions.create(
                    model="tiny", messages=MESSAGES, response_format=FORMAT, temperature=1.0, seed=s, max_tokens=150
                )
                for s in range(4)
            ]
            stream = c.chat.completions.create(
                model="tiny", messages=MESSAGES, response_format=FORMAT, temperature=0, max_tokens=150, stream=True
            )
            streamed = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
            parsed = c.chat.completions.parse(
                model="tiny", messages=MESSAGES, response_format=Person, temperature=0.8, seed=3, max_tokens=150
            )
            return outs, streamed, parsed

    outs, streamed, parsed = await in_thread(go)
    for out in outs:
        assert out.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(out.choices[0].message.content), PERSON)
    jsonschema.validate(json.loads(streamed), PERSON)
    person = parsed.choices[0].message.parsed
    assert isinstance(person, Person) and 0 <= person.age <= 120


async def test_json_object_and_completions(served: Served) -> None:
    schema = {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 4}

    def go():
        with client(served) as c:
            obj = c.chat.completions.create(
                model="tiny",
                messages=MESSAGES,
                response_format={"type": "json_object"},
                temperature=0,
                max_tokens=200,
            )
            fmt = {"type": "json_schema", "json_schema": {"name": "flags", "schema": schema}}
            comp = c.completions.create(
                model="tiny", prompt="Flags:", max_tokens=60, temperature=0, extra_body={"response_format": fmt}
            )
            return obj, comp

    obj, comp = await in_thread(go)
    content = obj.choices[0].message.content
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:
        assert content.startswith("{")
    flags = json.loads(comp.choices[0].text)
    assert 1 <= len(flags) <= 4 and all(isinstance(f, bool) for f in flags)


async def test_unsupported_and_bad_schemas_are_400s_naming_them(served: Served) -> None:
    cases = {
        "not": {"type": "object", "not": {"required": ["a"]}},
        "uniqueItems": {"type": "array", "uniqueItems": True},
        "made-up": {"type": "string", "format": "made-up"},
    }

    def go():
        errors = {}
        with client(served) as c:
            for named, schema in cases.items():
                fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
                try:
                    c.chat.completions.create(model="tiny", messages=MESSAGES, response_format=fmt, max_tokens=4)
                except openai.BadRequestError as exc:
                    errors[named] = exc
            for name, fmt in {
                "no_name": {"type": "json_schema", "json_schema": {"schema": {}}},
                "bad_type": {"type": "xml"},
                "schema_not_object": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}},
            }.items():
                try:
                    c.chat.completions.create(model="tiny", messages=MESSAGES, response_format=fmt, max_tokens=4)
                except openai.BadRequestError as exc:
                    errors[name] = exc
        return errors

    errors = await in_thread(go)
    for named in cases:
        body = errors[named].body
        assert named in body["message"], body
        assert body["param"] == "response_format.json_schema.schema"
        assert body["code"] == "invalid_json_schema"
    assert errors["no_name"].body["param"] == "response_format.json_schema.name"
    assert errors["bad_type"].body["param"] == "response_format.type"
    assert errors["schema_not_object"].body["param"] == "response_format.json_schema.schema"


async def test_websocket_text_format(served: Served) -> None:
    def script(ws):
        ws.send(
            json.dumps(
                {
                    "type": "response.create",
                    "model": "tiny",
                    "input": [{"role": "user", "content": "Describe a person."}],
                    "max_output_tokens": 150,
                    "temperature": 0,
                    "text": {"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}},
                }
            )
        )
        ok = events_until_done(ws)
        ws.send(
            json.dumps(
                {
                    "type": "response.create",
                    "model": "tiny",
                    "input": "x",
                    "text": {"format": {"type": "json_schema", "name": "x", "schema": {"not": {}}}},
                }
            )
        )
        refused = events_until_done(ws)
        return ok, refused

    ok, refused = await in_thread(lambda: ws_session(served, script))
    assert ok[-1]["type"] == "response.completed"
    text = ok[-1]["response"]["output"][0]["content"][0]["text"]
    jsonschema.validate(json.loads(text), PERSON)
    assert refused[-1]["type"] == "error"
    assert "not" in refused[-1]["error"]["message"]
