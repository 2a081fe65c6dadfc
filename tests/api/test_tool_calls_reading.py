"""Reading tool calls out of model output (whole and streamed in every split), and the prompt's rendering of
tools, calls and results under templates that do and do not know tools."""

from __future__ import annotations

import json
import random

import pytest

from bitnet_actor.api.openai.chat_fields import Tool
from bitnet_actor.api.openai.tool_calls import ToolCallReader, plan_tools, read_tool_calls, template_messages

WEATHER = Tool("get_weather", "the weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}})
TIME = Tool("get_time", None, {})
PLAIN_TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
HERMES_TEMPLATE = (
    "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}{% for m in messages %}...<tool_call>{% endfor %}"
)
JSON_TEMPLATE = "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"


def hermes(choice: str = "auto", parallel: bool = True):  # a template that does not know tools: ours
    return plan_tools((WEATHER, TIME), choice, parallel, PLAIN_TEMPLATE)


def _stream(plan, text: str, rng: random.Random) -> tuple[str | None, list]:
    reader = ToolCallReader(plan)
    pieces = []
    at = 0
    while at < len(text):
        step = rng.randint(1, 7)
        pieces += reader.feed(text[at : at + step])
        at += step
    pieces += reader.finish()
    content = "".join(v for k, v in pieces if k == "content")
    return (content or None), [v for k, v in pieces if k == "call"]


CASES = [
    (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
        None,
        [("get_weather", {"city": "Oslo"})],
    ),
    (
        'Let me check.\n<tool_call>{"name":"get_weather","arguments":{"city":"Rome"}}</tool_call>\n'
        '<tool_call>{"name":"get_time","arguments":{}}</tool_call>',
        "Let me check.",
        [("get_weather", {"city": "Rome"}), ("get_time", {})],
    ),
    ("No tools needed: 2 < 3 and <tool is not a tag.", "No tools needed: 2 < 3 and <tool is not a tag.", []),
    (
        '<tool_call>{"name":"unknown","arguments":{}}</tool_call>',
        '<tool_call>{"name":"unknown","arguments":{}}</tool_call>',
        [],
    ),
    ('<tool_call>{"name":"get_time", "arguments": "{}"}</tool_call>', None, [("get_time", {})]),
    ("<tool_call>{not json}</tool_call> tail", "<tool_call>{not json}</tool_call> tail", []),
    ('<tool_call>{"name":"get_time","arguments":{}}', '<tool_call>{"name":"get_time","arguments":{}}', []),  # cut short
]


@pytest.mark.parametrize(("text", "content", "calls"), CASES)
def test_hermes_whole_and_streamed_agree(text: str, content: str | None, calls: list) -> None:
    plan = hermes()
    got_content, got_calls = read_tool_calls(text, plan)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got_calls] == calls
    assert all(c.id.startswith("call_") for c in got_calls)
    for seed in range(20):
        s_content, s_calls = _stream(plan, text, random.Random(seed))
        assert [(c.name, json.loads(c.arguments)) for c in s_calls] == calls
        if calls:
            assert (s_content or "").strip() == (content or "")
        else:
            assert s_content == content


def test_json_style_reads_whole_outputs_only() -> None:
    plan = plan_tools((WEATHER, TIME), "auto", True, JSON_TEMPLATE)
    assert plan.style == "json" and plan.native
    text = '{"name": "get_weather", "parameters": {"city": "Lima"}}'
    content, calls = read_tool_calls(text, plan)
    assert content is None and json.loads(calls[0].arguments) == {"city": "Lima"}
    content, calls = read_tool_calls(
        '[{"name":"get_time","parameters":{}},{"name":"get_weather","arguments":{}}]', plan
    )
    assert [c.name for c in calls] == ["get_time", "get_weather"]
    assert read_tool_calls('{"answer": 42}', plan) == ('{"answer": 42}', [])
    for seed in range(10):
        s_content, s_calls = _stream(plan, text, random.Random(seed))
        assert s_content is None and [c.name for c in s_calls] == ["get_weather"]
        assert _stream(plan, "Plain words.", random.Random(seed)) == ("Plain words.", [])


def test_none_reads_nothing_and_named_finish_reason() -> None:
    text = '<tool_call>{"name":"get_time","arguments":{}}</tool_call>'
    assert read_tool_calls(text, hermes("none")) == (text, [])
    _, calls = read_tool_calls(text, hermes("function:get_time"))
    assert hermes("function:get_time").finish_reason(calls, "stop") == "stop"
    assert hermes("required").finish_reason(calls, "stop") == "tool_calls"
    assert hermes("auto").finish_reason([], "stop") == "stop"
    with pytest.raises(ValueError, match="nope"):
        plan_tools((WEATHER,), "function:nope", True, PLAIN_TEMPLATE)


def test_template_styles() -> None:
    assert hermes().style == "hermes" and not hermes().native
    native = plan_tools((WEATHER,), "auto", True, HERMES_TEMPLATE)
    assert native.style == "hermes" and native.native


CONVERSATION = [
    {"role": "user", "content": "Weather in Oslo?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]


def test_rendering_for_a_template_without_tools() -> None:
    messages, tools = template_messages(hermes(), CONVERSATION)
    assert tools is None
    assert messages[0]["role"] == "system" and "get_weather" in messages[0]["content"]
    assert "<tool_call>" in messages[0]["content"]
    assert messages[2] == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
    }
    assert messages[3] == {"role": "user", "content": "<tool_response>\nsunny, 21 C\n</tool_response>"}
    quiet, _ = template_messages(hermes("none"), CONVERSATION)
    assert quiet[0]["role"] == "user"  # none: the tools are not offered


def test_rendering_for_a_template_with_tools() -> None:
    plan = plan_tools((WEATHER,), "auto", True, JSON_TEMPLATE)
    messages, tools = template_messages(plan, CONVERSATION)
    assert tools == [WEATHER.as_template_input()]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}  # an object for templates
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C", "name": "get_weather"}
