"""The state of one generation while it streams or collects, and what it records when it ends."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from actors.scheduler import Failed, Finished, Token
from bitnet_actor.services.billing.ledger import UsageEvent
from bitnet_actor.tracing import epoch_ns

if TYPE_CHECKING:
    import contextlib

    from opentelemetry.context import Context

    from actors.model_cache import Lease
    from bitnet_actor.api.auth import OrgAccess
    from bitnet_actor.api.openai.admission import Plan
    from bitnet_actor.handles import Handles
    from bitnet_actor.services.ratelimit import Decision

__all__ = ["Choice", "Run"]

log = logging.getLogger(__name__)

_RECORD_GRACE_S = 10
_TOKENS_PER_EVENT = 16  # a decode event on the trace per this many tokens


@dataclass(slots=True)
class Choice:
    """One choice's text, tokens and end."""

    text: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[tuple[tuple[int, float], ...]] = field(default_factory=list)
    finish_reason: str | None = None
    error: Failed | None = None


@dataclass(slots=True)
class Run:
    """One admitted generation: its plan, lease, reply channel and what it has produced so far.

    ``resources`` holds the lease and the organization's admission; :meth:`record` gives them back (once),
    settles the rate-limit ``decision`` with the tokens really used and hands the usage event to the meter.
    The handles travel with it: an SSE body is sent outside the request's app context.
    """

    plan: Plan
    lease: Lease
    access: OrgAccess
    recv: trio.MemoryReceiveChannel[Any]
    id: str
    created: int
    handles: Handles
    resources: contextlib.AsyncExitStack
    decision: Decision | None = None
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    last_token_at: float | None = None
    choices: dict[int, Choice] = field(default_factory=dict)
    completion_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens the prefix cache supplied, summed over the choices (from their ``Finished`` events)."""
    queue_s: float = 0.0
    recorded: bool = False
    span: Span | None = None
    """The generation's span when tracing is on (see :meth:`trace`)."""
    cached: dict[str, Any] | None = None
    """A response cache hit: the stored body (nothing generates; see :meth:`replay`)."""
    cache_key: str | None = None
    """A response cache miss: where to keep the response once it completed without error."""
    cache_ttl_s: int | None = None

    def replay(self, body: dict[str, Any]) -> None:
        """Make this run a response cache hit answered with ``body``: its choices and usage are the stored
        ones (what :meth:`record` meters)."""
        self.cached = body
        for index, stored in enumerate(body["choices"]):
            text = (stored.get("message") or {}).get("content") if self.plan.chat else stored.get("text")
            self.choice(index).text.append(text or "")
            self.choices[index].finish_reason = stored.get("finish_reason")
        self.completion_tokens = int((body.get("usage") or {}).get("completion_tokens") or 0)

    def trace(self, context: Context | None) -> None:
        """Start the generation's span (GenAI semantic conventions) under ``context`` (the request's span;
        None: a root span, as for a websocket's responses). Its queue, prefill and decode children are
        written by :meth:`record` from the times the run saw."""
        tracing = self.handles.tracing
        if not tracing.enabled:
            return
        operation = "chat" if self.plan.chat else "text_completion"
        params = self.plan.params
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": "bitnet-actor",
            "gen_ai.request.model": self.plan.model,
            "gen_ai.request.max_tokens": params.get("max_tokens") or 0,
            "gen_ai.request.choice.count": self.plan.n,
            "gen_ai.response.id": self.id,
            "gen_ai.response.model": self.lease.name,
            "gen_ai.usage.input_tokens": len(self.plan.prompt_ids) * self.plan.n,
            "bitnet.org_id": str(self.access.org_id),
        }
        for name in ("temperature", "top_p", "top_k", "seed"):
            if params.get(name) is not None:
                attributes[f"gen_ai.request.{name}"] = params[name]
        self.span = tracing.tracer.start_span(
            f"{operation} {self.plan.model}", context=context, attributes=attributes, start_time=epoch_ns(self.started)
        )

    def choice(self, index: int) -> Choice:
        """The choice ``index`` (created on first use)."""
        return self.choices.setdefault(index, Choice())

    def observe(self, event: Any) -> None:
        """Count an event from the scheduler (token timings, queue wait)."""
        metrics = self.handles.metrics
        now = time.perf_counter()
        if isinstance(event, Token) and event.token_id >= 0:
            if self.first_token_at is None:
                self.first_token_at = now
                metrics.ttft.labels(self.plan.model).observe(now - self.started)
            elif self.last_token_at is not None:
                metrics.itl.labels(self.plan.model).observe(now - self.last_token_at)
            self.last_token_at = now
            self.completion_tokens += 1
            if self.span is not None and self.completion_tokens % _TOKENS_PER_EVENT == 0:
                self.span.add_event("gen_ai.decode.tokens", {"tokens": self.completion_tokens})
        elif isinstance(event, Finished):
            self.queue_s = max(self.queue_s, event.queue_s)
            self.cached_tokens += event.cached_tokens

    def usage(self) -> dict[str, Any]:
        """OpenAI's usage object: ``prompt_tokens_details.cached_tokens`` counts the prompt tokens the prefix
        cache supplied (a response cache hit reports its whole prompt as cached)."""
        prompt = len(self.plan.prompt_ids) * self.plan.n
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": prompt if self.cached is not None else self.cached_tokens},
        }

    async def record(self, outcome: str, *, endpoint: str | None = None) -> None:
        """Give back the lease, admission and unused reservation, count metrics and meter the usage: once,
        whatever happened (shielded, with a grace period: the client may be gone)."""
        if self.recorded:
            return
        self.recorded = True
        with trio.move_on_after(_RECORD_GRACE_S, shield=True):
            await self.resources.aclose()
            metrics = self.handles.metrics
            model = self.plan.model
            elapsed = time.perf_counter() - self.started
            metrics.e2e.labels(model).observe(elapsed)
            if self.cached is None:  # a cache hit processed and generated nothing
                metrics.queue_wait.labels(model).observe(self.queue_s)
                metrics.prompt_tokens.labels(model).inc(len(self.plan.prompt_ids) * self.plan.n)
                metrics.generation_tokens.labels(model).inc(self.completion_tokens)
            for choice in self.choices.values() or [Choice(finish_reason=outcome)]:
                metrics.finished.labels(model, choice.finish_reason or outcome).inc()
            usage = self.usage()
            if self.decision is not None:
                # Off the response path: the settler task does it (this replica's next admission after it).
                await self.handles.limits.settle(self.decision, used_tokens=usage["total_tokens"], wait=False)
            first = self.choices.get(0)
            finish = (first.finish_reason or (first.error.code if first.error else None)) if first else None
            key = self.access.principal.key
            event = UsageEvent(
                request_id=self.id,
                org_id=self.access.org_id,
                api_key_id=key.key_id if key else None,
                user_id=self.access.principal.user_id,
                model=model,
                endpoint=endpoint or ("chat" if self.plan.chat else "completions"),
                input_tokens=usage["prompt_tokens"],
                output_tokens=usage["completion_tokens"],
                latency_ms=int(elapsed * 1000),
                ttft_ms=int((self.first_token_at - self.started) * 1000) if self.first_token_at is not None else None,
                finish_reason=finish,
                outcome=outcome,
                # As the usage reports them: a response cache hit (metered as the plan prices its tokens, marked as
                # served from the cache) counts its whole prompt, a generation the prefix cache's tokens.
                cached_tokens=usage["prompt_tokens_details"]["cached_tokens"],
                request_data=(
                    {**self.plan.request_data, "response_cache": "hit"}
                    if self.cached is not None
                    else self.plan.request_data
                ),
            )
            self.handles.meter.record(event)
            if self.span is not None:
                self._end_span(outcome, finish, elapsed)

    def _end_span(self, outcome: str, finish: str | None, elapsed: float) -> None:
        """Write the queue / prefill / decode children from the recorded times and end the generation's span."""
        span = self.span
        assert span is not None
        self.span = None
        tracer = self.handles.tracing.tracer
        context = trace.set_span_in_context(span)
        now = time.perf_counter()
        admitted = min(self.started + self.queue_s, now)
        first = self.first_token_at if self.first_token_at is not None else now
        last = self.last_token_at if self.last_token_at is not None else first
        for name, start, end in (("queue_wait", self.started, admitted), ("prefill", admitted, max(first, admitted))):
            tracer.start_span(name, context=context, start_time=epoch_ns(start)).end(end_time=epoch_ns(end))
        if self.first_token_at is not None:
            decode = tracer.start_span(
                "decode", context=context, start_time=epoch_ns(first), attributes={"tokens": self.completion_tokens}
            )
            decode.end(end_time=epoch_ns(last))
        span.add_event("stream.end", {"outcome": outcome})
        span.set_attribute("gen_ai.usage.output_tokens", self.completion_tokens)
        span.set_attribute(
            "gen_ai.response.finish_reasons", [c.finish_reason or outcome for c in self.choices.values()]
        )
        span.set_attribute("bitnet.latency_ms", round(elapsed * 1000, 3))
        if self.first_token_at is not None:
            span.set_attribute("bitnet.ttft_ms", round((self.first_token_at - self.started) * 1000, 3))
        if outcome not in ("completed", "cancelled") or finish in ("error", "timeout"):
            span.set_status(Status(StatusCode.ERROR, finish or outcome))
        span.end()
