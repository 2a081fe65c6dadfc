"""The inference queue of one model: bounded admission, fairness across tenants, continuous batching.

The ``Scheduler`` actor owns one loaded model's running batch. Requests arrive through ``submit_nowait``
(``trio.WouldBlock`` when ``max_queue`` requests already wait: the HTTP edge answers 429 with Retry-After),
wait in per-tenant queues, and are admitted round-robin (a tenant's plan weight is how many of its requests
join per round), so one tenant's flood never starves another's; each tenant also has a cap on running
sequences, and no tenant may take the last free slot of the batch, so another tenant's request always finds
a slot at the next step. At every step boundary new sequences join the batch (continuous batching) up to ``max_batch``;
long prompts are prefilled ``prefill_chunk`` tokens per step so they don't stall the others' decoding.

When the model's prefix cache is on (``Model.set_prefix_cache``), each sequence reuses the cached prompt blocks
of its scope: its organization's by default (``prefix_scope="org"``: one tenant can never find another's
prompt in the cache, not even by timing), or the whole platform's (``"platform"``, an operator's opt-in for
shared system prompts); ``"off"`` uses none. ``Finished.cached_tokens`` says how many prompt tokens came
from the cache.

Each step runs in a worker thread (the kernels release the GIL). Results go to each request's caller-owned
reply channel with ``send_nowait``: a caller that went away (closed receive end) or stopped reading (full
channel) gets its sequence cancelled and its slot freed before the next step. Deadlines are checked at every
step.

Restart policy: none; it is not supervised. A step that raises fails the requests of that batch (their
callers see ``Failed``, code ``internal``) and the loop goes on with the next step; the model cache that owns
this actor starts it with the model's load and stops it (``close``) with its eviction.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import trio

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.engine import Model, SamplingParams, Sequence, StepOutput
    from bitnet_actor.engine.prefix_cache import PrefixCacheStatistics

__all__ = ["PREFIX_SCOPES", "Failed", "Finished", "GenerationRequest", "Scheduler", "SchedulerStatistics", "Token"]

log = logging.getLogger(__name__)

PREFIX_SCOPES = ("org", "platform", "off")
"""Who shares cached prompt blocks: one organization, the whole platform, or nobody."""
_PLATFORM_SALT = b"\0platform"  # never an organization's salt (16 bytes of its id)


@dataclass(frozen=True, slots=True)
class Token:
    """One generated token and its text delta (``token_id`` -1: text only)."""

    index: int
    token_id: int
    text: str
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """The request is done."""

    index: int
    reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    queue_s: float
    cached_tokens: int = 0  # prompt tokens whose keys and values came from the prefix cache


@dataclass(frozen=True, slots=True)
class Failed:
    """The request could not finish; ``code`` is machine-readable."""

    index: int
    message: str
    code: Literal["timeout", "overloaded", "internal", "cancelled", "invalid"]


Event = Token | Finished | Failed


@dataclass(frozen=True, eq=False, slots=True, kw_only=True)
class GenerationRequest:
    """One sequence to generate (a message: frozen). ``reply`` is created and owned by the caller (bounded)."""

    org_id: UUID
    prompt_ids: list[int]
    params: SamplingParams
    reply: trio.MemorySendChannel[Event]
    deadline: float = float("inf")  # trio.current_time() by which it must finish
    weight: int = 1  # requests admitted per round for this tenant
    max_running: int = 1_000_000  # the tenant's cap on running sequences
    index: int = 0  # the choice this sequence is (requests with n > 1 share one reply channel, cloned)
    submitted_at: float = field(default_factory=time.monotonic)


@dataclass(eq=False, slots=True)
class _Live:
    """The scheduler's own state of an admitted request (the request itself is a frozen message)."""

    request: GenerationRequest
    sequence: Sequence | None
    admitted_at: float
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    """A snapshot for metrics."""

    running: int
    waiting: int
    steps: int
    tokens: int
    rejected: int
    cancelled: int
    kv_bytes: int
    prefix_cache: PrefixCacheStatistics | None = None  # None: the model's prefix cache is off


class Scheduler:
    """Serves one model's requests. See the module docstring."""

    def __init__(
        self,
        model: Model,
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        prefill_chunk: int = 128,
        on_step: Any = None,
        prefix_scope: str = "org",
    ) -> None:
        if prefix_scope not in PREFIX_SCOPES:
            raise ValueError(f"prefix_scope must be one of {', '.join(PREFIX_SCOPES)}, not {prefix_scope!r}")
        self.model = model
        self.prefix_scope = prefix_scope
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self._send, self._inbox = trio.open_memory_channel[GenerationRequest](max_queue)  # max_queue: the bound
        self._queues: dict[UUID, deque[GenerationRequest]] = {}
        self._ring: deque[UUID] = deque()
        self._running: list[_Live] = []
        self._waiting = 0
        self._waiting_by_org: dict[UUID, int] = {}
        self._steps = 0
        self._tokens = 0
        self._rejected = 0
        self._cancelled = 0
        self._on_step = on_step  # callback(batch_size, step_seconds) for metrics
        self._wake = trio.Event()
        self._end_all: str | None = None

    @property
    def _tenant_cap(self) -> int:
        # One slot always stays free of any single tenant, so a request of another tenant joins the batch at
        # the next step boundary even while one tenant floods (no preemption needed).
        return max(1, self.max_batch - 1)

    # -- caller side ----------------------------------------------------------------------------------------

    def submit_nowait(self, request: GenerationRequest) -> None:
        """Queue ``request`` or refuse at once.

        Raises:
            trio.WouldBlock: ``max_queue`` requests are already waiting.
            trio.ClosedResourceError: the scheduler is shutting down.
        """
        mine = self._waiting_by_org.get(request.org_id, 0)
        # The last place in the queue, like the last batch slot, is never one tenant's: a flood gets 429s
        # while another tenant's request still gets in.
        if self._waiting >= self.max_queue or mine >= max(1, self.max_queue - 1):
            self._rejected += 1
            raise trio.WouldBlock
        self._send.send_nowait(request)
        self._waiting += 1
        self._waiting_by_org[request.org_id] = mine + 1

    def close(self) -> None:
        """Accept nothing more; the actor finishes what it has, then returns."""
        self._send.close()

    def end_all(self, message: str) -> None:
        """End every running and waiting request at the next step boundary with ``Failed(message,
        "cancelled")`` (a shutdown whose grace period is running out: callers get a clean last event instead
        of a cut connection), and accept nothing more."""
        self._end_all = message
        self._send.close()
        self._wake.set()

    def statistics(self) -> SchedulerStatistics:
        """Running and waiting requests and counters."""
        kv = sum(live.sequence.nbytes for live in self._running if live.sequence is not None)
        prefix = self.model.prefix_cache
        return SchedulerStatistics(
            len(self._running),
            self._waiting,
            self._steps,
            self._tokens,
            self._rejected,
            self._cancelled,
            kv,
            prefix.statistics() if prefix is not None else None,
        )

    def running_requests(self) -> tuple[GenerationRequest, ...]:
        """The requests in the batch now (each holds a sequence and its KV cache)."""
        return tuple(live.request for live in self._running)

    @property
    def busy(self) -> bool:
        """Whether any request is running or waiting."""
        return bool(self._running) or self._waiting > 0

    # -- actor side -----------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until the inbox is closed and drained."""
        task_status.started()
        inbox_open = True
        try:
            await trio.lowlevel.checkpoint()
            while inbox_open or self._running or self._waiting:
                if not self._running and not any(self._queues.values()):
                    if not inbox_open:
                        break
                    try:
                        self._enqueue(await self._inbox.receive())
                    except trio.EndOfChannel:
                        inbox_open = False
                        continue
                while True:
                    try:
                        self._enqueue(self._inbox.receive_nowait())
                    except trio.WouldBlock:
                        break
                    except trio.EndOfChannel:
                        inbox_open = False
                        break
                if self._end_all is not None:
                    self._fail_everything(self._end_all)
                self._drop_gone_and_late()
                self._admit()
                if self._running:
                    await self._step()
                else:
                    await trio.lowlevel.checkpoint()
        finally:
            for live in list(self._running):
                self._end(live, Failed(live.request.index, "the server is shutting down", "cancelled"))
            self._send.close()  # nothing more gets in: callers see ClosedResourceError, not a silent queue
            waiting = [r for q in self._queues.values() for r in q]
            while True:
                try:
                    waiting.append(self._inbox.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            for request in waiting:
                self._fail_waiting(request, Failed(request.index, "the server is shutting down", "cancelled"))

    def _fail_everything(self, message: str) -> None:
        for live in list(self._running):
            self._end(live, Failed(live.request.index, message, "cancelled"))
        for org, queue in list(self._queues.items()):
            for request in queue:
                self._unwait(request)
                self._fail_waiting(request, Failed(request.index, message, "cancelled"))
            self._queues.pop(org, None)
        self._ring.clear()

    def _enqueue(self, request: GenerationRequest) -> None:
        queue = self._queues.get(request.org_id)
        if queue is None:
            queue = self._queues[request.org_id] = deque()
        if not queue and request.org_id not in self._ring:
            self._ring.append(request.org_id)
        queue.append(request)

    def _admit(self) -> None:
        # Round-robin over tenants with queued requests; each gets up to its weight per round.
        stalled = 0
        while len(self._running) < self.max_batch and self._ring and stalled < len(self._ring):
            org = self._ring.popleft()
            queue = self._queues.get(org)
            if not queue:
                continue
            admitted = 0
            running_here = sum(1 for live in self._running if live.request.org_id == org)
            while queue and admitted < max(queue[0].weight, 1) and len(self._running) < self.max_batch:
                if running_here >= min(queue[0].max_running, self._tenant_cap):
                    break
                request = queue.popleft()
                self._unwait(request)
                if self._start(request):
                    admitted += 1
                    running_here += 1
            stalled = 0 if admitted else stalled + 1
            if queue:
                self._ring.append(org)
            else:
                self._queues.pop(org, None)

    def _unwait(self, request: GenerationRequest) -> None:
        self._waiting -= 1
        left = self._waiting_by_org.get(request.org_id, 1) - 1
        if left > 0:
            self._waiting_by_org[request.org_id] = left
        else:
            self._waiting_by_org.pop(request.org_id, None)

    def _start(self, request: GenerationRequest) -> bool:
        try:
            sequence = self.model.new_sequence(request.prompt_ids, request.params, cache_salt=self._salt(request))
        except ValueError as exc:
            self._fail_waiting(request, Failed(request.index, str(exc), "invalid"))
            return False
        except MemoryError as exc:  # its KV cache does not fit now (device memory): the others go on
            message = f"not enough memory for this request now: {exc}"
            self._fail_waiting(request, Failed(request.index, message, "overloaded"))
            return False
        except Exception:  # the model could not start this one: it fails, the others go on
            log.exception("could not start a sequence")
            self._fail_waiting(request, Failed(request.index, "the model failed to start this request", "internal"))
            return False
        self._running.append(_Live(request, sequence, time.monotonic()))
        return True

    def _salt(self, request: GenerationRequest) -> bytes | None:
        if self.prefix_scope == "org":
            return request.org_id.bytes
        return _PLATFORM_SALT if self.prefix_scope == "platform" else None

    def _drop_gone_and_late(self) -> None:
        now = trio.current_time()
        for live in list(self._running):
            if _gone(live.request.reply):
                self._cancelled += 1
                self._end(live, None)
            elif now > live.request.deadline:
                message = "the request did not finish before its deadline"
                self._end(live, Failed(live.request.index, message, "timeout"))
        for org, queue in list(self._queues.items()):
            for request in list(queue):
                if _gone(request.reply) or now > request.deadline:
                    queue.remove(request)
                    self._unwait(request)
                    if _gone(request.reply):
                        self._cancelled += 1
                        self._fail_waiting(request, None)
                    else:
                        message = "the request waited past its deadline"
                        self._fail_waiting(request, Failed(request.index, message, "timeout"))
            if not queue:
                self._queues.pop(org, None)
                if org in self._ring:
                    self._ring.remove(org)

    async def _step(self) -> None:
        batch = list(self._running)
        seqs = [live.sequence for live in batch if live.sequence is not None]
        started = time.perf_counter()
        try:
            outs: list[StepOutput] = await trio.to_thread.run_sync(
                lambda: self.model.step(seqs, prefill_chunk=self.prefill_chunk)
            )
        except Exception:
            log.exception("model step failed; failing the batch")
            for live in batch:
                self._end(live, Failed(live.request.index, "the model failed while generating", "internal"))
            return  # noqa: ASYNC910  # the worker thread call was the checkpoint
        elapsed = time.perf_counter() - started
        self._steps += 1
        if self._on_step is not None:
            self._on_step(len(seqs), elapsed)
        by_seq = {id(live.sequence): live for live in batch}
        for out in outs:
            found = by_seq.get(id(out.sequence))
            if found is None or found not in self._running:
                continue
            live, request = found, found.request
            if out.token_id is not None:
                live.completion_tokens += 1
                self._tokens += 1
                if not self._deliver(live, Token(request.index, out.token_id, out.text, out.logprob, out.top_logprobs)):
                    continue
            elif out.text and not self._deliver(live, Token(request.index, -1, out.text)):
                continue
            if out.finished:
                queue_s = live.admitted_at - request.submitted_at
                reason = out.finish_reason or "stop"
                cached = out.sequence.cached_tokens
                self._end(
                    live,
                    Finished(request.index, reason, len(request.prompt_ids), live.completion_tokens, queue_s, cached),
                )

    def _deliver(self, live: _Live, event: Event) -> bool:
        reply = live.request.reply
        stats = reply.statistics()
        if stats.current_buffer_used >= stats.max_buffer_size - 1:  # keep one slot for the final event
            self._cancelled += 1
            self._end(live, Failed(live.request.index, "the client is not reading its stream", "cancelled"))
            return False
        try:
            reply.send_nowait(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._cancelled += 1
            self._end(live, None)
            return False
        except trio.WouldBlock:  # the client stopped reading: don't let it hold a slot
            self._cancelled += 1
            self._end(live, None)
            return False
        return True

    def _end(self, live: _Live, event: Event | None) -> None:
        if live in self._running:
            self._running.remove(live)
        if live.sequence is not None:
            live.sequence.release()
            live.sequence = None
        self._fail_waiting(live.request, event)

    def _fail_waiting(self, request: GenerationRequest, event: Event | None) -> None:
        """Send ``event`` (if any) as the request's last and close its reply channel."""
        if event is not None:
            # A caller that is gone or not reading gets nothing more.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
                request.reply.send_nowait(event)
        request.reply.close()


def _gone(reply: trio.MemorySendChannel[Any]) -> bool:
    try:
        return reply.statistics().open_receive_channels == 0
    except trio.ClosedResourceError:
        return True
