"""Tool calls through the official ``openai`` client against a real server: required, named and parallel
choices (constrained, so the tiny random model calls for sure), streamed ``tool_calls`` deltas, tool result
messages, a template that renders tools itself (JSON convention), and the 400s."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.served import Served, build_model_dir, serve
from tests.api.test_openai_api import client, in_thread

openai = pytest.importorskip("openai", reason="the openai client is a test dependency")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the arguments")

CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "forecast", "parameters": CITY}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]
ASK = [{"role": "user", "content": "What's the weather in Oslo?"}]
# A Llama-3.1-like template: it renders the tools itself and has no <tool_call> tag (the JSON convention).
JSON_TOOLS_TEMPLATE = (
    "{{ bos_token }}{% if tools %}Tools: {% for t in tools %}{{ t | tojson }}{% endfor %}<|eot_id|>{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}Result: {{ m.content }}"
    "{% elif m.tool_calls %}{% for c in m.tool_calls %}{{ c.function | tojson }}{% endfor %}"
    "{% else %}{{ m.role }}: {{ m.content }}{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.fixture(scope="module")
def model_dir() -> Iterator[Path]:
    """The tiny test model with room for tool descriptions in its context (1,024 tokens)."""
    pytest.importorskip("transformers", reason="transformers builds the test model")
    root = Path(tempfile.mkdtemp(prefix="bitnet-tools-"))
    try:
        yield build_model_dir(root / "tiny", context=1024)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def served(aio_loop: object, pg_dsn: str, redis_url: str, model_dir: Path) -> AsyncIterator[Served]:
    data_dir = Path(tempfile.mkdtemp(prefix="bitnet-data-"))
    native = data_dir / "native"
    shutil.copytree(model_dir, native)
    config = json.loads((native / "tokenizer_config.json").read_text())
    (native / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": JSON_TOOLS_TEMPLATE}))
    try:
        async with serve(pg_dsn, redis_url, data_dir, {"tiny": model_dir, "native": native}) as s:
            yield s
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _check_call(call, schemas: dict[str, dict]) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


SCHEMAS = {"get_weather": CITY, "get_time": {"type": "object", "properties": {}}}


async def test_required_named_and_parallel(served: Served) -> None:
    def go():
        with client(served) as c:
            required = [
                c.chat.completions.create(
                    model="tiny",
                    messages=ASK,
                    tools=TOOLS,
                    tool_choice="required",
                    temperature=1.0,
                    seed=s,
                    max_tokens=120,
                    parallel_tool_calls=False,
                )
                for s in range(3)
            ]
            named = c.chat.completions.create(
                model="tiny",
                messages=ASK,
                tools=TOOLS,
                temperature=0,
                max_tokens=120,
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
            )
            parallel = c.chat.completions.create(
                model="tiny",
                messages=ASK,
                tools=TOOLS,
                tool_choice="required",
                temperature=1.0,
                seed=9,
                max_tokens=200,
            )
            return required, named, parallel

    required, named, parallel = await in_thread(go)
    for out in required:
        choice = out.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.content is None and len(choice.message.tool_calls) == 1
        _check_call(choice.message.tool_calls[0], SCHEMAS)
    call = named.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and named.choices[0].finish_reason == "stop"
    _check_call(call, SCHEMAS)
    assert parallel.choices[0].finish_reason in ("tool_calls", "length")
    if parallel.choices[0].finish_reason == "tool_calls":
        for call in parallel.choices[0].message.tool_calls:
            _check_call(call, SCHEMAS)


async def test_streamed_tool_call_deltas(served: Served) -> None:
    def go():
        with client(served) as c:
            stream = c.chat.completions.create(
                model="tiny",
                messages=ASK,
                tools=TOOLS,
                tool_choice="required",
                parallel_tool_calls=False,
                temperature=0,
                max_tokens=120,
                stream=True,
            )
            chunks = list(stream)
            whole = c.chat.completions.create(
                model="tiny",
                messages=ASK,
                tools=TOOLS,
                tool_choice="required",
                parallel_tool_calls=False,
                temperature=0,
                max_tokens=120,
            )
            return chunks, whole

    chunks, whole = await in_thread(go)
    deltas = [d for ch in chunks for d in (ch.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].index == 0 and deltas[0].id.startswith("call_")
    name = "".join(d.function.name or "" for d in deltas)
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(not (ch.choices[0].delta.content or "").strip() for ch in chunks)
    expected = whole.choices[0].message.tool_calls[0]
    assert (name, json.loads(arguments)) == (expected.function.name, json.loads(expected.function.arguments))


async def test_tool_results_auto_none_and_native_template(served: Served) -> None:
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo","days":1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
    ]

    def go():
        with client(served) as c:
            follow = c.chat.completions.create(
                model="tiny", messages=history, tools=TOOLS, temperature=0, max_tokens=16
            )
            bare = c.chat.completions.create(model="tiny", messages=ASK, temperature=0, max_tokens=16)
            offered = c.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, temperature=0, max_tokens=16)
            none = c.chat.completions.create(
                model="tiny", messages=ASK, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=16
            )
            native = c.chat.completions.create(
                model="native",
                messages=history,
                tools=TOOLS,
                tool_choice="required",
                parallel_tool_calls=False,
                temperature=0,
                max_tokens=120,
            )
            return follow, bare, offered, none, native

    follow, bare, offered, none, native = await in_thread(go)
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # the tools (auto) reach the prompt as a system message; none offers nothing
    assert offered.usage.prompt_tokens > bare.usage.prompt_tokens
    assert none.usage.prompt_tokens == bare.usage.prompt_tokens
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content is not None
    # the native template renders the tools itself and the calls come back in its JSON convention
    assert native.choices[0].message.tool_calls, native.choices[0]
    call = native.choices[0].message.tool_calls[0]
    _check_call(call, SCHEMAS)
    assert native.choices[0].finish_reason == "tool_calls"


async def test_tool_errors(served: Served) -> None:
    cases = {
        "choice_without_tools": {"tool_choice": "required"},
        "unknown_named": {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "bad_name": {"tools": [{"type": "function", "function": {"name": "has space"}}]},
        "duplicate": {"tools": [TOOLS[0], TOOLS[0]]},
        "with_format": {"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
        "unsupported_params": {
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}],
            "tool_choice": "required",
        },
        "bad_tool_message": {"messages": [{"role": "tool", "content": "x"}]},
    }

    def go():
        errors = {}
        with client(served) as c:
            for name, extra in cases.items():
                body = {"model": "tiny", "messages": ASK, "max_tokens": 4, **extra}
                try:
                    c.chat.completions.create(**body)
                except openai.BadRequestError as exc:
                    errors[name] = exc.body
        return errors

    errors = await in_thread(go)
    assert set(errors) == set(cases)
    assert errors["choice_without_tools"]["param"] == "tool_choice"
    assert errors["unknown_named"]["param"] == "tool_choice" and "nope" in errors["unknown_named"]["message"]
    assert errors["bad_name"]["param"] == "tools[0].function.name"
    assert errors["duplicate"]["param"] == "tools[1].function.name"
    assert errors["with_format"]["param"] == "response_format"
    assert errors["unsupported_params"]["param"] == "tools" and "not" in errors["unsupported_params"]["message"]
    assert errors["bad_tool_message"]["param"] == "messages[0].tool_call_id"


async def test_response_cache_replays_tool_calls_and_keys_on_the_choice(served: Served, pg_dsn: str) -> None:
    from tests.api.test_response_cache_served import org

    _, key = await org(pg_dsn, response_cache_ttl_s=600)
    body = {
        "model": "tiny",
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": 120,
    }

    async def post(extra: dict) -> tuple[str, dict]:
        async with httpx.AsyncClient(base_url=served.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as h:
            r = await h.post("/v1/chat/completions", json={**body, **extra})
            assert r.status_code == 200, r.text
            return r.headers["x-bitnet-cache"], r.json()

    first = await post({})
    second = await post({})
    assert (first[0], second[0]) == ("miss", "hit")
    assert (
        second[1]["choices"][0]["message"]["tool_calls"][0]["function"]
        == (first[1]["choices"][0]["message"]["tool_calls"][0]["function"])
    )
    assert second[1]["choices"][0]["finish_reason"] == "tool_calls"
    assert (await post({"tool_choice": "auto"}))[0] == "miss"  # another choice: another entry

    def streamed():
        with client(served, key) as c:
            return list(c.chat.completions.create(**body, stream=True))

    chunks = await in_thread(streamed)  # a hit replayed as a stream
    deltas = [d for ch in chunks for d in (ch.choices[0].delta.tool_calls or [])]
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == json.loads(
        first[1]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    )
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
