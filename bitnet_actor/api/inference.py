"""The OpenAI-compatible inference API: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``,
``/v1/tokenize``, ``/v1/detokenize``.

Authentication is an API key with the ``inference`` scope (or an organization-bound access token of a
member whose role allows inference). Every parameter is checked: unknown or unsupported ones (tools,
non-text ``response_format``, ``echo``, ...) are 400s naming the parameter, never silently ignored.

Streaming is SSE exactly as OpenAI sends it: ``data: {json}\\n\\n`` chunks, ``data: [DONE]\\n\\n`` at the end;
``stream_options.include_usage`` adds a last chunk with the usage and no choices. Usage is recorded for every
request (``inference_requests`` and ``usage_records``), whatever the client asked for and however it ended.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, Response, jsonify

from actors.model_cache import Lease, ModelCapacityError, ModelLoadFailedError, UnknownModelError
from actors.scheduler import Failed, Finished, GenerationRequest, Token
from bitnet_actor.api.auth import OrgAccess, authenticate, system
from bitnet_actor.api.errors import ApiError, json_body
from bitnet_actor.services import tenancy

if TYPE_CHECKING:
    from actors.model_cache import ModelCache
    from actors.tenant import TenantState
    from bitnet_actor.engine import Model, SamplingParams
    from bitnet_actor.system import System

__all__ = ["blueprint"]

log = logging.getLogger(__name__)

blueprint = Blueprint("inference", __name__)

_REPLY_SLACK = 64  # events per request the client may lag behind before it counts as not reading
_MAX_N = 8
_UNSUPPORTED = {
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
COMMON_FIELDS = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "seed",
    "stop",
    "n",
    "logprobs",
    "logit_bias",
    "user",
    "stream",
    "stream_options",
    "ignore_eos",
    "metadata",
    "store",
    "service_tier",
}
_COMPLETION_ONLY = {"prompt"}
_CHAT_ONLY = {"messages", "max_completion_tokens", "top_logprobs", "response_format", "reasoning_effort"}
COMPLETION_FIELDS = COMMON_FIELDS | _COMPLETION_ONLY
"""Body fields ``/v1/completions`` accepts (the OpenAPI document is checked against these sets)."""
CHAT_FIELDS = COMMON_FIELDS | _CHAT_ONLY
"""Body fields ``/v1/chat/completions`` accepts."""
TOKENIZE_FIELDS = {"model", "prompt", "messages", "add_special_tokens"}
DETOKENIZE_FIELDS = {"model", "tokens"}
UNSUPPORTED_FIELDS = frozenset(_UNSUPPORTED)
"""OpenAI fields refused with a 400 naming them (``unsupported_parameter``)."""


def _bad(message: str, param: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


async def _access() -> OrgAccess:
    principal = await authenticate()
    assert principal is not None
    from bitnet_actor.api.auth import _check

    if principal.key is not None:
        _check("inference", scopes=principal.key.scopes)
        return OrgAccess(principal, principal.key.org_id, None)
    if principal.token_org is None or principal.user_id is None:
        raise ApiError(403, "inference needs an API key (or an access token bound to an organization)")
    role = await tenancy.membership_role(system().stores.db, principal.token_org, principal.user_id)
    if role is None:
        raise ApiError(401, "the access token's organization no longer includes this user")
    _check("inference", role=role)
    return OrgAccess(principal, principal.token_org, role)


def _cache() -> ModelCache:
    cache = system().models
    if cache is None:
        raise ApiError(503, "no models are served by this server")
    return cache


# ---------------------------------------------------------------- parameters


def _number(body: dict[str, Any], name: str, lo: float, hi: float, default: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"{name} must be a number", name, "invalid_type")
    if not lo <= value <= hi:
        raise _bad(f"{name} must be between {lo:g} and {hi:g}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, lo: int, hi: int, default: int | None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer", name, "invalid_type")
    if not lo <= value <= hi:
        raise _bad(f"{name} must be between {lo} and {hi}", name)
    return value


@dataclass(slots=True)
class _Plan:
    """A parsed request."""

    model: str
    prompt_ids: list[int]
    params: dict[str, Any]
    n: int
    stream: bool
    include_usage: bool
    logprobs: int | None
    chat: bool
    request_data: dict[str, Any] = field(default_factory=dict)


def check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    for name, value in body.items():
        if name in _UNSUPPORTED:
            raise _bad(_UNSUPPORTED[name], name, "unsupported_parameter")
        if name == "response_format":
            kind = value.get("type") if isinstance(value, dict) else None
            if kind not in (None, "text"):
                raise _bad("only response_format {'type': 'text'} is supported", name, "unsupported_parameter")
        elif name not in allowed:
            raise _bad(f"unknown parameter {name!r}", name, "unknown_parameter")


def _sampling(body: dict[str, Any], *, chat: bool, model: Model) -> tuple[dict[str, Any], int | None]:
    max_name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    default_max = None if chat else 16
    max_tokens = _integer(body, max_name, 1, 1_000_000, default_max)
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stops = tuple(stop)
    else:
        raise _bad("stop must be a string or a list of at most 4 strings", "stop")
    if any(not s for s in stops):
        raise _bad("stop strings must not be empty", "stop")
    bias_raw = body.get("logit_bias") or {}
    if not isinstance(bias_raw, dict):
        raise _bad("logit_bias must be an object of token id -> bias", "logit_bias")
    bias: dict[int, float] = {}
    for key, value in bias_raw.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise _bad(f"logit_bias key {key!r} is not a token id", "logit_bias") from None
        if not 0 <= token < model.vocab_size:
            raise _bad(f"logit_bias token {token} is outside the vocabulary", "logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise _bad("logit_bias values must be numbers between -100 and 100", "logit_bias")
        bias[token] = float(value)
    if chat:
        want_logprobs = body.get("logprobs", False)
        if not isinstance(want_logprobs, bool):
            raise _bad("logprobs must be a boolean", "logprobs", "invalid_type")
        top = _integer(body, "top_logprobs", 0, 20, 0) or 0
        if top and not want_logprobs:
            raise _bad("top_logprobs needs logprobs: true", "top_logprobs")
        logprobs = top if want_logprobs else None
    else:
        logprobs = _integer(body, "logprobs", 0, 5, None)
    params: dict[str, Any] = {
        "temperature": _number(body, "temperature", 0, 2, 1.0),
        "top_p": _number(body, "top_p", 0, 1, 1.0),
        "top_k": int(_number(body, "top_k", -1, 1_000_000, 0)),
        "min_p": _number(body, "min_p", 0, 1, 0.0),
        "presence_penalty": _number(body, "presence_penalty", -2, 2, 0.0),
        "frequency_penalty": _number(body, "frequency_penalty", -2, 2, 0.0),
        "repetition_penalty": _number(body, "repetition_penalty", 0.01, 10, 1.0),
        "seed": _integer(body, "seed", -(2**63), 2**63 - 1, None),
        "stop": stops,
        "logit_bias": bias,
        "logprobs": logprobs is not None,
        "top_logprobs": logprobs or 0,
        "ignore_eos": bool(body.get("ignore_eos", False)),
        "max_tokens": max_tokens,
    }
    if params["top_p"] == 0:
        raise _bad("top_p must be greater than 0", "top_p")
    if params["top_k"] < 0:
        params["top_k"] = 0
    return params, logprobs


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"{where} must be an object", where)
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise _bad(f"{where}.role must be system, developer, user or assistant", f"{where}.role")
        for key in message:
            if key not in ("role", "content", "name"):
                raise _bad(f"{where}.{key} is not supported", f"{where}.{key}", "unsupported_parameter")
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise _bad(f"{where}.content: only text parts are supported", f"{where}.content")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise _bad(f"{where}.content must be a string", f"{where}.content")
        out.append({"role": role, "content": content})
    return out


def _prompt_ids(body: dict[str, Any], model: Model) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids: list[int] = model.tokenizer.encode(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = list(prompt)
        if any(not 0 <= t < model.vocab_size for t in ids):
            raise _bad("prompt token ids must be inside the vocabulary", "prompt")
    else:
        raise _bad("prompt must be a string, or a list of token ids (one prompt per request)", "prompt")
    if not ids:
        raise _bad("the prompt is empty", "prompt")
    return ids


async def plan_request(body: dict[str, Any], *, chat: bool, lease: Lease) -> _Plan:
    model = lease.model
    if chat:
        messages = _messages(body)
        prompt_ids = list(model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    else:
        prompt_ids = _prompt_ids(body, model)
    params, logprobs = _sampling(body, chat=chat, model=model)
    room = model.context_length - len(prompt_ids)
    if room < 1:
        raise _bad(
            f"the prompt has {len(prompt_ids)} tokens; the model's context is {model.context_length}",
            "messages" if chat else "prompt",
            "context_length_exceeded",
        )
    if params["max_tokens"] is None:
        params["max_tokens"] = room
    elif len(prompt_ids) + params["max_tokens"] > model.context_length:
        name = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
        raise _bad(
            f"the prompt ({len(prompt_ids)} tokens) plus {name} ({params['max_tokens']}) exceeds the "
            f"model's context of {model.context_length} tokens",
            name,
            "context_length_exceeded",
        )
    n = _integer(body, "n", 1, _MAX_N, 1) or 1
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be a boolean", "stream", "invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"}:
        raise _bad("stream_options supports only include_usage", "stream_options")
    if options and not stream:
        raise _bad("stream_options needs stream: true", "stream_options")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise _bad("user must be a string of at most 256 characters", "user")
    request_data = {k: v for k, v in params.items() if k not in ("stop", "logit_bias")}
    request_data.update(n=n, stream=stream, prompt_tokens=len(prompt_ids), user=user)
    return _Plan(
        lease.name, prompt_ids, params, n, stream, bool(options.get("include_usage")), logprobs, chat, request_data
    )


# ---------------------------------------------------------------- running


def _sampling_params(plan: _Plan, index: int) -> SamplingParams:
    from bitnet_actor.engine import SamplingParams

    values = dict(plan.params)
    if values["seed"] is not None:
        values["seed"] = values["seed"] + index  # n choices from one seed: reproducible and different
    try:
        return SamplingParams(**values)
    except ValueError as exc:
        raise _bad(str(exc), "params") from None


def submit_plan(plan: _Plan, lease: Lease, access: OrgAccess, tenant: TenantState) -> trio.MemoryReceiveChannel[Any]:
    send, recv = trio.open_memory_channel[Any](_REPLY_SLACK * plan.n)
    settings = system().settings
    deadline = trio.current_time() + settings.request_timeout
    plan_weight, max_running = tenant.limits
    submitted: list[GenerationRequest] = []
    try:
        for index in range(plan.n):
            request = GenerationRequest(
                org_id=access.org_id,
                prompt_ids=plan.prompt_ids,
                params=_sampling_params(plan, index),
                reply=send.clone(),
                deadline=deadline,
                weight=plan_weight,
                max_running=max_running,
                index=index,
            )
            lease.scheduler.submit_nowait(request)
            submitted.append(request)
    except trio.WouldBlock:
        for request in submitted:
            request.reply.close()
        recv.close()
        send.close()
        raise ApiError(
            429,
            "the server is busy: too many requests are waiting for this model; retry shortly",
            code="rate_limit_exceeded",
            headers={"Retry-After": "2"},
        ) from None
    send.close()
    return recv


@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[tuple[tuple[int, float], ...]] = field(default_factory=list)
    finish_reason: str | None = None
    error: Failed | None = None


@dataclass(slots=True)
class Run:
    """The state of one API request while it streams or collects."""

    plan: _Plan
    lease: Lease
    access: OrgAccess
    recv: trio.MemoryReceiveChannel[Any]
    id: str
    created: int
    sys: System  # the body of a stream is sent outside the app context: keep the handles
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    last_token_at: float | None = None
    choices: dict[int, _Choice] = field(default_factory=dict)
    completion_tokens: int = 0
    queue_s: float = 0.0
    recorded: bool = False

    def choice(self, index: int) -> _Choice:
        return self.choices.setdefault(index, _Choice())

    def observe(self, event: Any) -> None:
        metrics = self.sys.metrics
        now = time.perf_counter()
        if isinstance(event, Token) and event.token_id >= 0:
            if self.first_token_at is None:
                self.first_token_at = now
                metrics.ttft.labels(self.plan.model).observe(now - self.started)
            elif self.last_token_at is not None:
                metrics.itl.labels(self.plan.model).observe(now - self.last_token_at)
            self.last_token_at = now
            self.completion_tokens += 1
        elif isinstance(event, Finished):
            self.queue_s = max(self.queue_s, event.queue_s)

    def usage(self) -> dict[str, int]:
        prompt = len(self.plan.prompt_ids) * self.plan.n
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt + self.completion_tokens,
        }

    async def record(self, outcome: str) -> None:
        """Metrics and the usage ledger; once, whatever happened (shielded: the client may be gone)."""
        if self.recorded:
            return
        self.recorded = True
        assert self.sys.models is not None
        self.sys.models.release(self.lease)
        metrics = self.sys.metrics
        elapsed = time.perf_counter() - self.started
        metrics.e2e.labels(self.plan.model).observe(elapsed)
        metrics.queue_wait.labels(self.plan.model).observe(self.queue_s)
        metrics.prompt_tokens.labels(self.plan.model).inc(len(self.plan.prompt_ids) * self.plan.n)
        metrics.generation_tokens.labels(self.plan.model).inc(self.completion_tokens)
        for choice in self.choices.values() or [_Choice(finish_reason=outcome)]:
            metrics.finished.labels(self.plan.model, choice.finish_reason or outcome).inc()
        usage = self.usage()
        with trio.move_on_after(10, shield=True):
            try:
                await _record_usage(self, usage, outcome, int(elapsed * 1000))
            except Exception:
                log.exception("could not record usage of request %s", self.id)


async def _record_usage(run: Run, usage: dict[str, int], outcome: str, latency_ms: int) -> None:
    db = run.sys.stores.db
    now = datetime.now(UTC)
    reasons = {str(i): c.finish_reason or (c.error.code if c.error else outcome) for i, c in run.choices.items()}
    async with db.transaction(org_id=run.access.org_id) as tx:
        model_id = await tx.fetchval(
            "SELECT id FROM models WHERE name = $1 AND (org_id IS NULL OR org_id = $2)"
            " ORDER BY org_id NULLS LAST LIMIT 1",
            run.plan.model,
            run.access.org_id,
        )
        await tx.execute(
            "INSERT INTO inference_requests (id, org_id, model_id, request_data, response_data, latency_ms, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            uuid.uuid4(),
            run.access.org_id,
            model_id,
            {
                **run.plan.request_data,
                "endpoint": "chat" if run.plan.chat else "completions",
                "request_id": run.id,
                "api_key_id": str(run.access.principal.key.key_id) if run.access.principal.key else None,
            },
            {"usage": usage, "finish_reasons": reasons, "outcome": outcome},
            latency_ms,
            now,
        )
        await tx.execute(
            "INSERT INTO usage_records (org_id, operation_count, billing_period) VALUES ($1, $2, $3)",
            run.access.org_id,
            usage["total_tokens"],
            now.date().replace(day=1),
        )


async def _start(chat: bool) -> Run:
    access = await _access()
    body = await json_body(max_bytes=4 * 1024 * 1024)
    check_fields(body, CHAT_FIELDS if chat else COMPLETION_FIELDS)
    lease = await acquire_lease(_cache(), body)
    try:
        plan = await plan_request(body, chat=chat, lease=lease)
        tenants = system().tenants
        assert tenants is not None
        recv = submit_plan(plan, lease, access, await tenants.get(access.org_id))
    except BaseException:
        _cache().release(lease)
        raise
    prefix = "chatcmpl" if chat else "cmpl"
    return Run(plan, lease, access, recv, f"{prefix}-{uuid.uuid4().hex}", int(time.time()), system())


# ---------------------------------------------------------------- responses


def _piece(model: Model, token_id: int) -> str:
    return str(model.tokenizer.decode([token_id], skip_special_tokens=False))


def _chat_logprobs(model: Model, token_id: int, logprob: float | None, top: Any) -> dict[str, Any]:
    text = _piece(model, token_id)
    entry: dict[str, Any] = {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    entry["top_logprobs"] = [
        {"token": (t := _piece(model, tid)), "logprob": lp, "bytes": list(t.encode())} for tid, lp in (top or ())
    ]
    return entry


def _completion_logprobs(model: Model, choice: _Choice) -> dict[str, Any]:
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


async def _collect(run: Run) -> Response:
    outcome = "completed"
    try:
        async with run.recv:
            async for event in run.recv:
                run.observe(event)
                choice = run.choice(event.index)
                if isinstance(event, Token):
                    choice.text.append(event.text)
                    if event.token_id >= 0:
                        choice.tokens.append(event.token_id)
                        if event.logprob is not None:
                            choice.logprobs.append(event.logprob)
                            choice.top.append(event.top_logprobs or ())
                elif isinstance(event, Finished):
                    choice.finish_reason = event.reason
                elif isinstance(event, Failed):
                    choice.error = event
    except BaseException:
        outcome = "cancelled"
        raise
    finally:
        await run.record(outcome)  # noqa: ASYNC102  # record() shields its database write, with a timeout
    failures = [c.error for c in run.choices.values() if c.error is not None]
    if failures:
        _raise_failure(failures[0])
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
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs,
                    "finish_reason": c.finish_reason,
                }
            )
        else:
            logprobs = _completion_logprobs(model, c) if run.plan.logprobs is not None else None
            choices.append({"index": index, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason})
    body = {
        "id": run.id,
        "object": "chat.completion" if run.plan.chat else "text_completion",
        "created": run.created,
        "model": run.plan.model,
        "choices": choices,
        "usage": run.usage(),
        "system_fingerprint": None,
    }
    return jsonify(body)


def _raise_failure(failure: Failed) -> None:
    if failure.code == "timeout":
        raise ApiError(503, failure.message, code="timeout", headers={"Retry-After": "5"})
    if failure.code == "invalid":
        raise ApiError(400, failure.message)
    raise ApiError(503, failure.message, code=failure.code, headers={"Retry-After": "5"})


class _SseStream:
    """The SSE body: an async iterator (not a generator) so closing it never runs code inside a cancel scope
    it doesn't own; Quart calls ``aclose`` when the stream ends or the client goes away."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.pending: list[bytes] = []
        self.done = False
        self.outcome = "cancelled"
        self.sent_role: set[int] = set()

    def __aiter__(self) -> _SseStream:
        return self

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        run = self.run
        obj = {
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
        return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"

    def _choice(self, index: int, text: str | None, finish: str | None, logprobs: Any = None) -> dict[str, Any]:
        if self.run.plan.chat:
            delta: dict[str, Any] = {}
            if index not in self.sent_role:
                self.sent_role.add(index)
                delta["role"] = "assistant"
                delta["content"] = text or ""
            elif text is not None:
                delta["content"] = text
            return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}

    async def __anext__(self) -> bytes:
        run = self.run
        while not self.pending:
            if self.done:
                raise StopAsyncIteration
            try:
                event = await run.recv.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                self.done = True
                failed = [c.error for c in run.choices.values() if c.error is not None]
                if failed:
                    err = {"message": failed[0].message, "type": "server_error", "param": None, "code": failed[0].code}
                    self.pending.append(b"data: " + json.dumps({"error": err}).encode() + b"\n\n")
                    self.outcome = "failed"
                else:
                    self.outcome = "completed"
                    if run.plan.include_usage:
                        self.pending.append(self._chunk([], usage=run.usage()))
                self.pending.append(b"data: [DONE]\n\n")
                await run.record(self.outcome)
                break
            run.observe(event)
            choice = run.choice(event.index)
            if isinstance(event, Token):
                logprobs: dict[str, Any] | None = None
                if event.token_id >= 0 and event.logprob is not None and run.plan.logprobs is not None:
                    model = run.lease.model
                    if run.plan.chat:
                        logprobs = {
                            "content": [_chat_logprobs(model, event.token_id, event.logprob, event.top_logprobs)]
                        }
                    else:
                        piece = _piece(model, event.token_id)
                        logprobs = {
                            "tokens": [piece],
                            "token_logprobs": [event.logprob],
                            "top_logprobs": [{_piece(model, t): lp for t, lp in (event.top_logprobs or ())}],
                            "text_offset": [sum(len(x) for x in choice.text)],
                        }
                choice.text.append(event.text)
                if event.text or logprobs is not None or (run.plan.chat and event.index not in self.sent_role):
                    self.pending.append(self._chunk([self._choice(event.index, event.text, None, logprobs)]))
            elif isinstance(event, Finished):
                choice.finish_reason = event.reason
                self.pending.append(
                    self._chunk([self._choice(event.index, "" if not run.plan.chat else None, event.reason)])
                )
            elif isinstance(event, Failed):
                choice.error = event
        return self.pending.pop(0)

    async def aclose(self) -> None:
        """End the stream: close our end (the scheduler frees the slots) and record usage."""
        self.run.recv.close()
        with trio.CancelScope(shield=True):
            await self.run.record(self.outcome if self.done else "cancelled")


@blueprint.post("/v1/completions")
async def completions() -> Response:
    """Text completion."""
    run = await _start(chat=False)
    return await (_stream(run) if run.plan.stream else _collect(run))


@blueprint.post("/v1/chat/completions")
async def chat_completions() -> Response:
    """Chat completion through the model's chat template."""
    run = await _start(chat=True)
    return await (_stream(run) if run.plan.stream else _collect(run))


async def _stream(run: Run) -> Response:
    response = Response(_SseStream(run), content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response


@blueprint.get("/v1/models")
async def list_models() -> Response:
    """The models this organization may use."""
    await _access()
    cache = _cache()
    loaded = set(cache.statistics().loaded)
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "bitnet-actor", "loaded": name in loaded}
        for name in cache.names()
    ]
    return jsonify({"object": "list", "data": data})


@blueprint.post("/v1/tokenize")
async def tokenize() -> Response:
    """Token ids of a prompt (or of chat messages through the template)."""
    await _access()
    body = await json_body(max_bytes=4 * 1024 * 1024)
    check_fields(body, TOKENIZE_FIELDS)
    lease = await acquire_lease(_cache(), body)
    try:
        if "messages" in body:
            ids = list(
                lease.model.tokenizer.apply_chat_template(_messages(body), add_generation_prompt=True, tokenize=True)
            )
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise _bad("prompt must be a string", "prompt")
            add = body.get("add_special_tokens", True)
            if not isinstance(add, bool):
                raise _bad("add_special_tokens must be a boolean", "add_special_tokens", "invalid_type")
            ids = list(lease.model.tokenizer.encode(prompt, add_special_tokens=add))
        return jsonify({"tokens": ids, "count": len(ids), "max_model_len": lease.model.context_length})
    finally:
        _cache().release(lease)


@blueprint.post("/v1/detokenize")
async def detokenize() -> Response:
    """Text of token ids."""
    await _access()
    body = await json_body(max_bytes=4 * 1024 * 1024)
    check_fields(body, DETOKENIZE_FIELDS)
    lease = await acquire_lease(_cache(), body)
    try:
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise _bad("tokens must be a list of token ids", "tokens")
        if any(not 0 <= t < lease.model.vocab_size for t in tokens):
            raise _bad("token ids must be inside the vocabulary", "tokens")
        return jsonify({"prompt": lease.model.tokenizer.decode(tokens, skip_special_tokens=False)})
    finally:
        _cache().release(lease)


async def acquire_lease(cache: ModelCache, body: dict[str, Any]) -> Lease:
    """The loaded model named by ``body["model"]``, with the HTTP form of every way that can fail.

    Raises:
        ApiError: 400 without a model name, 404 for an unknown model, 503 when it cannot be loaded now.
    """
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise _bad("model is required", "model", "missing_required_parameter")
    try:
        return await cache.acquire(name)
    except UnknownModelError:
        raise ApiError(404, f"the model {name!r} does not exist", param="model", code="model_not_found") from None
    except ModelCapacityError as exc:
        raise ApiError(503, str(exc), code="model_capacity", headers={"Retry-After": "30"}) from None
    except ModelLoadFailedError as exc:
        raise ApiError(503, str(exc), code="model_load_failed", headers={"Retry-After": "30"}) from None
