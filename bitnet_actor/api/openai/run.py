"""The state of one generation while it streams or collects, and what it records when it ends."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from actors.scheduler import Failed, Finished, Token
from bitnet_actor.services.billing.ledger import UsageEvent

if TYPE_CHECKING:
    import contextlib

    from actors.model_cache import Lease
    from bitnet_actor.api.auth import OrgAccess
    from bitnet_actor.api.openai.admission import Plan
    from bitnet_actor.handles import Handles
    from bitnet_actor.services.ratelimit import Decision

__all__ = ["Choice", "Run"]

log = logging.getLogger(__name__)

_RECORD_GRACE_S = 10


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
    queue_s: float = 0.0
    recorded: bool = False

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
        elif isinstance(event, Finished):
            self.queue_s = max(self.queue_s, event.queue_s)

    def usage(self) -> dict[str, int]:
        """OpenAI's usage object."""
        prompt = len(self.plan.prompt_ids) * self.plan.n
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt + self.completion_tokens,
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
                request_data=self.plan.request_data,
            )
            self.handles.meter.record(event)
