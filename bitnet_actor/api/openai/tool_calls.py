"""Tool calls on chat completions: how the tools reach the prompt, how calls are read back out of the
output, and the grammars that force them.

The prompt. A chat template that renders ``tools`` itself (it names the variable; transformers passes the
same list) gets them and the conversation as it is, with the ``arguments`` of earlier calls as objects (what
templates iterate over). A template that knows nothing of tools gets them described in a system message,
with the convention to call them: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the Hermes
convention most open tool-calling models are trained on); earlier calls are written in that form and tool
results go back as user turns in ``<tool_response>`` tags, so any template renders them.

The output. Two conventions, picked from the template: ``hermes`` (the template writes ``<tool_call>``, or
we described the tools ourselves) reads every ``<tool_call>...</tool_call>`` block as one call, the text
around them as content; ``json`` (a template that renders tools without that tag, as Llama 3.1's) reads an
output that is a JSON object ``{"name", "parameters" | "arguments"}``, or a list of them, as the calls. A
block that does not parse, or names a function not in ``tools``, stays content. Streamed, content goes out as
it comes, except text that may open a call, which waits until it is clear; each call goes out whole when
its block closes.

``tool_choice``: ``none`` renders the tools but reads no calls; ``auto`` reads what the model writes;
``required`` and a named function constrain decoding (:mod:`bitnet_actor.engine.constraints`) to one call
(or, for ``required`` with ``parallel_tool_calls``, one to eight) in the template's convention, so a call
always comes out.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from bitnet_actor.engine.constraints import lark_grammar

if TYPE_CHECKING:
    from bitnet_actor.api.openai.chat_fields import Tool
    from bitnet_actor.engine.constraints import Grammar

__all__ = ["ToolCall", "ToolCallReader", "ToolPlan", "plan_tools", "read_tool_calls"]

Style = Literal["hermes", "json"]
OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_NATIVE = re.compile(r"\btools\b")
MAX_PARALLEL_CALLS = 8
"""The most calls a constrained (``required``) response makes."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made: OpenAI's ``tool_calls`` entry."""

    id: str
    name: str
    arguments: str  # a JSON text

    def as_dict(self, index: int | None = None) -> dict[str, Any]:
        """OpenAI's wire shape (with ``index`` in a streamed delta)."""
        out: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return {"index": index, **out} if index is not None else out


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How one chat request uses tools.

    Attributes:
        tools: the functions.
        choice: ``none``, ``auto``, ``required`` or ``function:NAME``.
        parallel: more than one call allowed.
        style: the output convention (see the module docstring).
        native: the chat template renders the tools itself.
    """

    tools: tuple[Tool, ...]
    choice: str
    parallel: bool
    style: Style
    native: bool

    @property
    def reads_calls(self) -> bool:
        """Whether the output is read for calls."""
        return self.choice != "none"

    @property
    def named(self) -> str | None:
        """The function a named tool_choice forces, or None."""
        return self.choice.removeprefix("function:") if self.choice.startswith("function:") else None

    @property
    def variant(self) -> str:
        """What of this plan changes a response beyond the prompt (for the response cache key)."""
        return f"tools:{self.choice}:{self.style}:{int(self.parallel)}"

    def finish_reason(self, calls: list[ToolCall], reason: str | None) -> str | None:
        """OpenAI's finish reason: ``tool_calls`` when calls came out (``stop`` for a named choice)."""
        if calls and reason == "stop" and self.named is None:
            return "tool_calls"
        return reason

    def grammar(self) -> Grammar | None:
        """The grammar a ``required`` or named choice constrains decoding to (None otherwise)."""
        if self.choice in ("none", "auto"):
            return None
        tools = [t for t in self.tools if self.named is None or t.name == self.named]
        key = "arguments" if self.style == "hermes" else "parameters"
        items = [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, key: t.parameters or {"type": "object"}},
                "required": ["name", key],
                "additionalProperties": False,
            }
            for t in tools
        ]
        one: dict[str, Any] = items[0] if len(items) == 1 else {"anyOf": items}
        compact = {"x-guidance": {"whitespace_flexible": False}}
        parallel = self.parallel and self.named is None  # a named choice is one call, as OpenAI's
        if self.style == "hermes":
            call = json.dumps({**one, **compact})
            more = f' ("\\n" call)~0..{MAX_PARALLEL_CALLS - 1}' if parallel else ""
            source = f'start: call{more}\ncall: "{OPEN}\\n" %json {call} "\\n{CLOSE}"\n'
        elif parallel:
            array = {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_PARALLEL_CALLS, **compact}
            source = "start: %json " + json.dumps(array)
        else:
            source = "start: %json " + json.dumps({**one, **compact})
        return lark_grammar(source, "tool_calls")


def plan_tools(tools: tuple[Tool, ...], choice: str | None, parallel: bool, template: str) -> ToolPlan:
    """The plan of a request's tools under the chat ``template`` it will be rendered with.

    Raises:
        ValueError: a named choice that is not one of ``tools`` (the caller makes it a 400).
    """
    choice = choice or "auto"
    plan_named = choice.removeprefix("function:") if choice.startswith("function:") else None
    if plan_named is not None and all(t.name != plan_named for t in tools):
        raise ValueError(f"tool_choice names {plan_named!r}, which is not in tools")
    native = bool(_NATIVE.search(template))
    style: Style = "hermes" if OPEN in template or not native else "json"
    return ToolPlan(tools, choice, parallel, style, native)


def _arguments_object(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def template_messages(plan: ToolPlan | None, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
    """The conversation and the ``tools`` value to render the prompt with (see the module docstring)."""
    if plan is not None and plan.native:
        out = []
        names = {}
        for m in messages:
            m = dict(m)
            if "tool_calls" in m:
                m["tool_calls"] = [
                    {**c, "function": {**c["function"], "arguments": _arguments_object(c["function"]["arguments"])}}
                    for c in m["tool_calls"]
                ]
                names.update({c["id"]: c["function"]["name"] for c in m["tool_calls"]})
            if m["role"] == "tool" and "name" not in m and m["tool_call_id"] in names:
                m["name"] = names[m["tool_call_id"]]
            out.append(m)
        return out, [t.as_template_input() for t in plan.tools]
    out = []
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"})
        elif "tool_calls" in m:
            calls = [
                f"{OPEN}\n"
                + json.dumps(
                    {"name": c["function"]["name"], "arguments": _arguments_object(c["function"]["arguments"])}
                )
                + f"\n{CLOSE}"
                for c in m["tool_calls"]
            ]
            text = "\n".join(([m["content"]] if m.get("content") else []) + calls)
            out.append({"role": "assistant", "content": text})
        else:
            out.append({k: v for k, v in m.items() if k in ("role", "content", "name")})
    if plan is not None and plan.reads_calls:
        described = "\n".join(json.dumps(t.as_template_input(), ensure_ascii=False) for t in plan.tools)
        system = (
            "You can call functions to help with the request. The functions, as JSON schemas:\n<tools>\n"
            f"{described}\n</tools>\nTo call one, answer with a line {OPEN}"
            '{"name": <function name>, "arguments": <arguments object>}'
            f"{CLOSE} per call. Results come back in <tool_response> tags."
        )
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{system}"}
        else:
            out.insert(0, {"role": "system", "content": system})
    return out, None


def _new_id() -> str:
    return "call_" + secrets.token_hex(12)


def _call_from(obj: Any, plan: ToolPlan) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if all(t.name != obj["name"] for t in plan.tools):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON text
        args = _arguments_object(args)
    if not isinstance(args, dict):
        return None
    return ToolCall(_new_id(), obj["name"], json.dumps(args, ensure_ascii=False))


def _json_calls(text: str, plan: ToolPlan) -> list[ToolCall] | None:
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        doc = json.loads(stripped)
    except ValueError:
        return None
    found = [_call_from(d, plan) for d in (doc if isinstance(doc, list) else [doc])]
    if not found or any(c is None for c in found):
        return None
    return [c for c in found if c is not None]


def read_tool_calls(text: str, plan: ToolPlan) -> tuple[str | None, list[ToolCall]]:
    """A whole output's content (None when nothing but calls) and calls."""
    if not plan.reads_calls:
        return text, []
    if plan.style == "json":
        calls = _json_calls(text, plan)
        return (None, calls) if calls else (text, [])
    calls = []
    kept: list[str] = []
    at = 0
    for block in _BLOCK.finditer(text):
        call = _call_from(_arguments_object(block.group(1)), plan)
        if call is None:
            continue
        kept.append(text[at : block.start()])
        at = block.end()
        calls.append(call)
    if not calls:
        return text, []
    kept.append(text[at:])
    content = "".join(kept).strip()
    return (content or None), calls


class ToolCallReader:
    """Reads a streamed output: :meth:`feed` each text delta, :meth:`finish` at the end; both return what can
    go out now, as ``("content", text)`` and ``("call", ToolCall)`` pieces (see the module docstring)."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.calls: list[ToolCall] = []
        self._buf = ""
        self._started = False  # json style: whether the output was seen to start as plain text
        self._held_all = False

    def feed(self, text: str) -> list[tuple[str, Any]]:
        """The pieces ``text`` (appended to what was held) releases."""
        if not self.plan.reads_calls:
            return [("content", text)] if text else []
        self._buf += text
        if self.plan.style == "json":
            return self._feed_json()
        return self._feed_hermes(final=False)

    def finish(self) -> list[tuple[str, Any]]:
        """Everything still held."""
        if not self.plan.reads_calls:
            return []
        if self.plan.style == "json":
            rest, self._buf = self._buf, ""
            calls = _json_calls(rest, self.plan) if self._held_all else None
            if calls:
                self.calls.extend(calls)
                return [("call", c) for c in calls]
            return [("content", rest)] if rest else []
        return self._feed_hermes(final=True)

    def _feed_json(self) -> list[tuple[str, Any]]:
        if not self._started:
            head = self._buf.lstrip()
            if not head:
                return []
            self._started = True
            self._held_all = head[0] in "{["
        if self._held_all:
            return []
        out, self._buf = self._buf, ""
        return [("content", out)]

    def _feed_hermes(self, *, final: bool) -> list[tuple[str, Any]]:
        # Whitespace alone is held: around calls it is not content (the non-streamed reading strips it too).
        pieces: list[tuple[str, Any]] = []
        while self._buf:
            start = self._buf.find(OPEN)
            if start < 0:
                keep = 0 if final else _partial_suffix(self._buf, OPEN)
                text = self._buf[: len(self._buf) - keep]
                if text.strip() or (final and text and not self.calls):
                    pieces.append(("content", text))
                    self._buf = self._buf[len(self._buf) - keep :]
                elif final:
                    self._buf = ""
                break
            if self._buf[:start].strip():
                pieces.append(("content", self._buf[:start]))
            self._buf = self._buf[start:]
            end = self._buf.find(CLOSE)
            if end < 0:
                if final:
                    pieces.append(("content", self._buf))
                    self._buf = ""
                break
            block = self._buf[: end + len(CLOSE)]
            self._buf = self._buf[end + len(CLOSE) :]
            call = _call_from(_arguments_object(block[len(OPEN) : -len(CLOSE)].strip()), self.plan)
            if call is None:
                pieces.append(("content", block))
            else:
                self.calls.append(call)
                pieces.append(("call", call))
        return pieces


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
