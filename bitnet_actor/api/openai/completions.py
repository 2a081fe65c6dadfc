"""``/v1/completions`` and ``/v1/chat/completions``: one response body or SSE chunks, exactly as OpenAI's.

Streaming is SSE: ``data: {json}\\n\\n`` chunks, ``data: [DONE]\\n\\n`` at the end;
``stream_options.include_usage`` adds a last chunk with the usage and no choices. Usage is recorded for every
request, whatever the client asked for and however it ended (:meth:`Run.record`).

A response cache hit (:func:`~bitnet_actor.api.openai.admission.admit`) answers with the stored body under
a new id; streamed, it is replayed as one content chunk and one finish chunk per choice (then the usage
chunk when asked, and ``[DONE]``). A miss to keep is stored once it completed without error, streamed or not.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, Response, jsonify

from actors.scheduler import Failed, Finished, Token
from bitnet_actor.api.auth import handles
from bitnet_actor.api.errors import ApiError, json_body
from bitnet_actor.api.openai.admission import admit, inference_access, new_run_id
from bitnet_actor.api.openai.protocol import CHAT, COMPLETION, RequestType
from bitnet_actor.api.openai.sse import DONE, sse_event, sse_response
from bitnet_actor.api.openai.tool_calls import ToolCallReader, read_tool_calls
from bitnet_actor.services.response_cache import ResponseCache

if TYPE_CHECKING:
    from bitnet_actor.api.openai.run import Choice, Run
    from bitnet_actor.engine import Model

__all__ = ["blueprint"]

blueprint = Blueprint("completions", __name__)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024


async def _start(kind: RequestType, prefix: str) -> Run:
    access = await inference_access()
    body = await json_body(max_bytes=MAX_BODY_BYTES)
    kind.check(body)
    return await admit(handles(), access, kind, body, run_id=new_run_id(prefix), cache=True)


def _piece(model: Model, token_id: int) -> str:
    return str(model.tokenizer.decode([token_id], skip_special_tokens=False))


def _chat_logprobs(model: Model, token_id: int, logprob: float | None, top: Any) -> dict[str, Any]:
    text = _piece(model, token_id)
    entry: dict[str, Any] = {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    entry["top_logprobs"] = [
        {"token": (t := _piece(model, tid)), "logprob": lp, "bytes": list(t.encode())} for tid, lp in (top or ())
    ]
    return entry


def _completion_logprobs(model: Model, choice: Choice) -> dict[str, Any]:
    tokens = [_piece(model, t) for t in choice.tokens]
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": choice.logprobs,
        "top_logprobs": [{_piece(model, tid): lp for tid, lp in top} for top in choice.top],
        "text_offset": offsets,
    }


def _accumulate(run: Run, event: Token) -> Choice:
    """Add a token event to its choice: text, token id and log-probabilities."""
    choice = run.choice(event.index)
    choice.text.append(event.text)
    if event.token_id >= 0:
        choice.tokens.append(event.token_id)
        if event.logprob is not None:
            choice.logprobs.append(event.logprob)
            choice.top.append(event.top_logprobs or ())
    return choice


def _body(run: Run) -> dict[str, Any]:
    """The non-streamed response of a run that ended without error (what the response cache keeps)."""
    model = run.lease.model
    choices = []
    for index in range(run.plan.n):
        c = run.choice(index)
        text = "".join(c.text)
        if run.plan.chat:
            logprobs = (
                {
                    "content": [
                        _chat_logprobs(model, t, lp, top)
                        for t, lp, top in zip(c.tokens, c.logprobs, c.top, strict=False)
                    ]
                }
                if run.plan.logprobs is not None
                else None
            )
            message: dict[str, Any] = {"role": "assistant", "content": text}
            finish = c.finish_reason
            if run.plan.tools is not None:
                content, calls = read_tool_calls(text, run.plan.tools)
                message["content"] = content
                if calls:
                    message["tool_calls"] = [call.as_dict() for call in calls]
                finish = run.plan.tools.finish_reason(calls, finish)
            choices.append({"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish})
        else:
            logprobs = _completion_logprobs(model, c) if run.plan.logprobs is not None else None
            choices.append({"index": index, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason})
    return {
        "id": run.id,
        "object": "chat.completion" if run.plan.chat else "text_completion",
        "created": run.created,
        "model": run.plan.model,
        "choices": choices,
        "usage": run.usage(),
        "system_fingerprint": None,
    }


def _cached_body(run: Run) -> dict[str, Any]:
    """A cache hit's response: the stored body under this request's id, time, model name and usage."""
    assert run.cached is not None
    return {**run.cached, "id": run.id, "created": run.created, "model": run.plan.model, "usage": run.usage()}


async def _keep(run: Run, body: dict[str, Any]) -> None:
    """Keep a completed, error-free response in the response cache when the run is a miss to keep."""
    if run.cache_key is None or run.cache_ttl_s is None:
        return
    if any(c.error is not None or c.finish_reason is None for c in (run.choice(i) for i in range(run.plan.n))):
        return
    await ResponseCache(run.handles.stores.redis).put(run.cache_key, body, run.cache_ttl_s)


async def _collect(run: Run) -> Response:
    if run.cached is not None:
        await run.record("completed")
        return jsonify(_cached_body(run))
    outcome = "completed"
    try:
        async with run.recv:
            async for event in run.recv:
                run.observe(event)
                choice = run.choice(event.index)
                if isinstance(event, Token):
                    _accumulate(run, event)
                elif isinstance(event, Finished):
                    choice.finish_reason = event.reason
                elif isinstance(event, Failed):
                    choice.error = event
    except BaseException:
        outcome = "cancelled"
        raise
    finally:
        await run.record(outcome)  # noqa: ASYNC102  # record() shields its work, with a timeout
    failures = [c.error for c in run.choices.values() if c.error is not None]
    if failures:
        _raise_failure(failures[0])
    body = _body(run)
    await _keep(run, body)
    return jsonify(body)


def _raise_failure(failure: Failed) -> None:
    if failure.code == "timeout":
        raise ApiError(503, failure.message, code="timeout", headers={"Retry-After": "5"})
    if failure.code == "invalid":
        raise ApiError(400, failure.message)
    raise ApiError(503, failure.message, code=failure.code, headers={"Retry-After": "5"})


async def _record_dropped(run: Run) -> None:
    # A system task: an exception here would end the whole trio run, so none may escape.
    try:
        await run.record("cancelled")
    except Exception:
        log.exception("could not record the dropped stream %s", run.id)


class SseStream:
    """The SSE body: an async iterator (not a generator) so closing it never runs code inside a cancel scope
    it doesn't own; Quart calls ``aclose`` when the stream ends or the client goes away.

    A client that goes away after the view returned but before Quart entered the body (its disconnect cancels
    the response start) never gets ``aclose`` called: the body is then dropped unrecorded, and ``__del__``
    closes the reply channel (the scheduler frees the slots) and records the run from a trio system task,
    which gives back the lease and the organization's admission.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.pending: list[bytes] = []
        self.done = False
        self.outcome = "cancelled"
        self.sent_role: set[int] = set()
        self.readers: dict[int, ToolCallReader] = {}

    def __del__(self) -> None:
        run = self.run
        if run.recorded:
            return
        run.recv.close()
        with contextlib.suppress(RuntimeError):  # no trio run any more (interpreter exit): nothing to give back
            # The dropping task's context: it carries the trio-asyncio loop the database calls go through.
            trio.lowlevel.spawn_system_task(_record_dropped, run, context=contextvars.copy_context())

    def __aiter__(self) -> SseStream:
        return self

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        run = self.run
        obj: dict[str, Any] = {
            "id": run.id,
            "object": "chat.completion.chunk" if run.plan.chat else "text_completion",
            "created": run.created,
            "model": run.plan.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if run.plan.include_usage:
            obj["usage"] = None
        obj.update(extra)
        return sse_event(obj)

    def _choice(
        self,
        index: int,
        text: str | None,
        finish: str | None,
        logprobs: Any = None,
        calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        if self.run.plan.chat:
            delta: dict[str, Any] = {}
            if index not in self.sent_role:
                self.sent_role.add(index)
                delta["role"] = "assistant"
                delta["content"] = text or ""
            elif text is not None:
                delta["content"] = text
            if calls:
                delta["tool_calls"] = calls
            return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}

    def _reader(self, index: int) -> ToolCallReader | None:
        tools = self.run.plan.tools
        if tools is None or not tools.reads_calls:
            return None
        found = self.readers.get(index)
        if found is None:
            found = self.readers[index] = ToolCallReader(tools)
        return found

    def _pieces(self, index: int, pieces: list[tuple[str, Any]], logprobs: Any) -> None:
        """Chunks for what a tool-call reader released (logprobs ride on the first)."""
        reader = self.readers[index]
        if not pieces and logprobs is not None:
            self.pending.append(self._chunk([self._choice(index, None, None, logprobs)]))
        for kind, value in pieces:
            if kind == "content":
                self.pending.append(self._chunk([self._choice(index, value, None, logprobs)]))
            else:
                at = reader.calls.index(value)
                self.pending.append(self._chunk([self._choice(index, None, None, logprobs, [value.as_dict(at)])]))
            logprobs = None

    def _replay(self) -> None:
        """A cache hit's events: per choice, its whole text (and log-probabilities) then its finish."""
        run = self.run
        assert run.cached is not None
        for index, stored in enumerate(run.cached["choices"]):
            text = (stored.get("message") or {}).get("content") if run.plan.chat else stored.get("text")
            self.pending.append(self._chunk([self._choice(index, text, None, stored.get("logprobs"))]))
            calls = (stored.get("message") or {}).get("tool_calls") if run.plan.chat else None
            if calls:
                indexed = [{"index": i, **call} for i, call in enumerate(calls)]
                self.pending.append(self._chunk([self._choice(index, None, None, None, indexed)]))
            finish = stored.get("finish_reason")
            self.pending.append(self._chunk([self._choice(index, "" if not run.plan.chat else None, finish)]))
        if run.plan.include_usage:
            self.pending.append(self._chunk([], usage=run.usage()))
        self.pending.append(DONE)

    async def __anext__(self) -> bytes:
        run = self.run
        if run.cached is not None and not self.done:
            self.done = True
            self.outcome = "completed"
            self._replay()
            await run.record(self.outcome)
        while not self.pending:
            if self.done:
                raise StopAsyncIteration
            try:
                got = await run.recv.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                self.done = True
                failed = [c.error for c in run.choices.values() if c.error is not None]
                if failed:
                    err = {"message": failed[0].message, "type": "server_error", "param": None, "code": failed[0].code}
                    self.pending.append(sse_event({"error": err}))
                    self.outcome = "failed"
                else:
                    self.outcome = "completed"
                    if run.plan.include_usage:
                        self.pending.append(self._chunk([], usage=run.usage()))
                self.pending.append(DONE)
                await run.record(self.outcome)
                if self.outcome == "completed":
                    await _keep(run, _body(run))
                break
            run.observe(got)
            choice = run.choice(got.index)
            if isinstance(got, Token):
                logprobs: dict[str, Any] | None = None
                if got.token_id >= 0 and got.logprob is not None and run.plan.logprobs is not None:
                    model = run.lease.model
                    if run.plan.chat:
                        logprobs = {"content": [_chat_logprobs(model, got.token_id, got.logprob, got.top_logprobs)]}
                    else:
                        piece = _piece(model, got.token_id)
                        logprobs = {
                            "tokens": [piece],
                            "token_logprobs": [got.logprob],
                            "top_logprobs": [{_piece(model, t): lp for t, lp in (got.top_logprobs or ())}],
                            "text_offset": [sum(len(x) for x in choice.text)],
                        }
                _accumulate(run, got)
                reader = self._reader(got.index)
                if reader is not None:
                    if got.index not in self.sent_role:
                        self.pending.append(self._chunk([self._choice(got.index, None, None)]))
                    self._pieces(got.index, reader.feed(got.text), logprobs)
                elif got.text or logprobs is not None or (run.plan.chat and got.index not in self.sent_role):
                    self.pending.append(self._chunk([self._choice(got.index, got.text, None, logprobs)]))
            elif isinstance(got, Finished):
                choice.finish_reason = got.reason
                reason: str | None = got.reason
                reader = self._reader(got.index)
                if reader is not None and run.plan.tools is not None:
                    if got.index not in self.sent_role:
                        self.pending.append(self._chunk([self._choice(got.index, None, None)]))
                    self._pieces(got.index, reader.finish(), None)
                    reason = run.plan.tools.finish_reason(reader.calls, reason)
                self.pending.append(self._chunk([self._choice(got.index, "" if not run.plan.chat else None, reason)]))
            elif isinstance(got, Failed):
                choice.error = got
        return self.pending.pop(0)

    async def aclose(self) -> None:
        """End the stream: close our end (the scheduler frees the slots) and record usage."""
        self.run.recv.close()
        with trio.CancelScope(shield=True):
            await self.run.record(self.outcome if self.done else "cancelled")


@blueprint.post("/v1/completions")
async def completions() -> Response:
    """Text completion."""
    run = await _start(COMPLETION, "cmpl")
    return sse_response(SseStream(run)) if run.plan.stream else await _collect(run)


@blueprint.post("/v1/chat/completions")
async def chat_completions() -> Response:
    """Chat completion through the model's chat template."""
    run = await _start(CHAT, "chatcmpl")
    return sse_response(SseStream(run)) if run.plan.stream else await _collect(run)
