"""The scheduler with a real tiny model: round-robin admission across tenants, the slot and queue place no tenant
may take, deadlines, slow and departed clients, admission limits and shutdown.

Which requests share a step is read in the scheduler's ``on_step`` callback, which runs after each step and
before its tokens are delivered: a request is in the batch while ``Scheduler.running_requests()`` lists it.
Every request generates exactly ``max_tokens`` tokens (``ignore_eos``) and prompts fit one prefill chunk, so a
request admitted at step ``s`` with ``max_tokens = t`` is in steps ``s .. s + t - 1``.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import trio

from actors.scheduler import Failed, Finished, GenerationRequest, Scheduler, Token
from bitnet_actor.engine import Model, SamplingParams
from bitnet_actor.engine.layers import DenseMatrix
from bitnet_actor.engine.synthetic import SHAPES, random_weights

if TYPE_CHECKING:
    from actors.scheduler import Event

A, B, C = (uuid.UUID(int=i) for i in (1, 2, 3))


@pytest.fixture(scope="module")
def model() -> Model:
    cfg = dataclasses.replace(
        SHAPES["2b4t"],
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate_size=96,
        vocab_size=100,
        context_length=64,
    )
    return Model(random_weights(cfg, seed=0))


class Client:
    """One request and its caller side: the reply channel and the events read from it."""

    def __init__(self, org: uuid.UUID, *, max_tokens: int = 3, buffer: int | None = None, **kw: Any) -> None:
        # buffer: by default room for every event, so the client never looks slow
        self.send, self.recv = trio.open_memory_channel["Event"](buffer or max_tokens + 2)
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0)
        self.request = GenerationRequest(org_id=org, prompt_ids=[1, 2, 3], params=params, reply=self.send, **kw)
        self.events: list[Event] = []
        self.done = trio.Event()

    async def read(self) -> None:
        async with self.recv:
            async for event in self.recv:
                self.events.append(event)
        self.done.set()

    def drain(self) -> list[Event]:
        """Whatever the scheduler left in the channel (for a client that never read)."""
        while True:
            try:
                self.events.append(self.recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return self.events

    @property
    def last(self) -> Event:
        return self.events[-1]

    @property
    def tokens(self) -> int:
        return sum(isinstance(e, Token) for e in self.events)


class Steps:
    """The scheduler's ``on_step`` callback: the names of the requests in each step's batch."""

    def __init__(self, clients: dict[str, Client]) -> None:
        self.clients = clients
        self.scheduler: Scheduler | None = None  # set once the scheduler exists
        self.batches: list[frozenset[str]] = []
        self.stepped = trio.Event()  # set after the first step

    def __call__(self, batch_size: int, seconds: float) -> None:
        assert self.scheduler is not None
        batch = {id(r) for r in self.scheduler.running_requests()}
        running = frozenset(n for n, c in self.clients.items() if id(c.request) in batch)
        assert len(running) == batch_size
        self.batches.append(running)
        self.stepped.set()

    def runs(self) -> list[tuple[frozenset[str], int]]:
        """The batches, each with how many steps in a row it ran."""
        out: list[tuple[frozenset[str], int]] = []
        for b in self.batches:
            if out and out[-1][0] == b:
                out[-1] = (b, out[-1][1] + 1)
            else:
                out.append((b, 1))
        return out


async def serve(scheduler: Scheduler, clients: dict[str, Client], *, read: bool = True) -> None:
    """Run the scheduler over the submitted clients until each is answered, then shut it down."""
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        if read:
            async with trio.open_nursery() as readers:
                for c in clients.values():
                    readers.start_soon(c.read)
        scheduler.close()


def submit(scheduler: Scheduler, clients: dict[str, Client]) -> None:
    for c in clients.values():
        scheduler.submit_nowait(c.request)


# ------------------------------------------------------------------------------------------------ fairness


async def test_tenants_are_admitted_round_robin(model: Model) -> None:
    # submitted all at once, A first: FIFO would run A0, A1, A2 together; round-robin takes one of each tenant
    clients = {n: Client(org) for n, org in [("A0", A), ("A1", A), ("A2", A), ("A3", A), ("B0", B), ("B1", B),
                                             ("C0", C)]}  # fmt: skip
    steps = Steps(clients)
    scheduler = Scheduler(model, max_batch=3, max_queue=16, on_step=steps)
    steps.scheduler = scheduler
    submit(scheduler, clients)
    await serve(scheduler, clients)
    assert steps.runs() == [
        (frozenset({"A0", "B0", "C0"}), 3),
        (frozenset({"A1", "B1", "A2"}), 3),  # C has nothing left: A's next turn takes the third slot
        (frozenset({"A3"}), 3),
    ]
    assert all(isinstance(c.last, Finished) and c.tokens == 3 for c in clients.values())
    assert scheduler.statistics().tokens == 21


async def test_a_plan_weight_admits_that_many_per_turn(model: Model) -> None:
    clients = {n: Client(org, weight=w) for n, org, w in [("A0", A, 2), ("A1", A, 2), ("A2", A, 2), ("B0", B, 1),
                                                          ("B1", B, 1)]}  # fmt: skip
    steps = Steps(clients)
    scheduler = Scheduler(model, max_batch=4, max_queue=16, on_step=steps)
    steps.scheduler = scheduler
    submit(scheduler, clients)
    await serve(scheduler, clients)
    # A: 2 per turn, B: 1, then A's turn again (with weight 1 it would be A0, B0, A1, B1)
    assert steps.runs()[:2] == [(frozenset({"A0", "A1", "B0", "A2"}), 3), (frozenset({"B1"}), 3)]


async def test_one_tenant_never_takes_the_last_slot(model: Model) -> None:
    # A floods a batch of 3 with long requests; B's request, submitted after the second step, joins at the next
    # step and finishes long before A's flood does (FIFO or no per-tenant cap would make it wait 50 steps)
    clients = {f"A{i}": Client(A, max_tokens=50) for i in range(4)}
    late = Client(B, max_tokens=2)
    steps = Steps({**clients, "B": late})
    finished: list[str] = []

    def on_step(batch_size: int, seconds: float) -> None:
        steps(batch_size, seconds)
        if len(steps.batches) == 2:
            scheduler.submit_nowait(late.request)

    async def read(name: str, c: Client) -> None:
        await c.read()
        finished.append(name)

    scheduler = Scheduler(model, max_batch=3, max_queue=16, on_step=on_step)

    steps.scheduler = scheduler
    submit(scheduler, clients)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        async with trio.open_nursery() as readers:
            for name, c in {**clients, "B": late}.items():
                readers.start_soon(read, name, c)
        scheduler.close()
    assert steps.batches[:2] == [{"A0", "A1"}] * 2  # A alone: one slot stays free
    assert steps.batches[2:4] == [{"A0", "A1", "B"}] * 2  # B joins at the next step
    assert max(len(b) for b in steps.batches if "B" not in b) == 2
    assert finished[0] == "B"
    assert isinstance(late.last, Finished) and late.tokens == 2


# --------------------------------------------------------------------------------------------- deadlines


async def test_deadlines_fail_running_and_waiting_requests(model: Model, autojump_clock: trio.abc.Clock) -> None:
    now = trio.current_time()
    clients = {
        "A-running": Client(A, max_tokens=40, deadline=now + 5),
        "A-waiting": Client(A, max_tokens=40, deadline=now + 5),  # behind A-running: max_batch 2, one slot each
        "B": Client(B, max_tokens=40),
    }
    steps = Steps(clients)
    scheduler = Scheduler(model, max_batch=2, max_queue=16, on_step=steps)
    steps.scheduler = scheduler
    submit(scheduler, clients)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        async with trio.open_nursery() as readers:
            for c in clients.values():
                readers.start_soon(c.read)
            await trio.sleep(10)  # the deadlines pass: the clock jumps while the first step runs
        scheduler.close()
    running, waiting = clients["A-running"], clients["A-waiting"]
    assert isinstance(running.last, Failed) and running.last.code == "timeout"
    assert running.tokens < 40
    assert isinstance(waiting.last, Failed) and waiting.last.code == "timeout"
    assert waiting.tokens == 0 and "waited" in waiting.last.message
    assert isinstance(clients["B"].last, Finished) and clients["B"].tokens == 40  # the others go on
    assert not any("A-waiting" in b for b in steps.batches)


async def test_a_request_already_late_is_never_run(model: Model, autojump_clock: trio.abc.Clock) -> None:
    late = Client(A, deadline=trio.current_time() - 1)
    scheduler = Scheduler(model, max_batch=2)
    scheduler.submit_nowait(late.request)
    await serve(scheduler, {"late": late})
    assert late.events == [Failed(0, "the request waited past its deadline", "timeout")]
    assert scheduler.statistics().steps == 0


# -------------------------------------------------------------------------------------- clients that go away


async def test_a_client_that_stops_reading_is_cancelled_and_the_others_go_on(model: Model) -> None:
    slow = Client(A, max_tokens=20, buffer=3)  # never read: after 2 tokens only the slot for the last event is left
    fast = Client(B, max_tokens=20)
    scheduler = Scheduler(model, max_batch=3)
    submit(scheduler, {"slow": slow, "fast": fast})
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        await fast.read()
        scheduler.close()
    events = slow.drain()
    assert [type(e) for e in events] == [Token, Token, Failed]
    assert isinstance(events[-1], Failed) and events[-1].code == "cancelled"
    assert isinstance(fast.last, Finished) and fast.tokens == 20
    assert scheduler.statistics().cancelled == 1
    assert slow.request not in scheduler.running_requests()
    assert scheduler.statistics().kv_bytes == 0  # its KV cache was released


async def test_a_client_that_went_away_is_dropped(model: Model) -> None:
    gone = Client(A, max_tokens=20)
    stays = Client(B, max_tokens=5)
    scheduler = Scheduler(model, max_batch=3)
    submit(scheduler, {"gone": gone, "stays": stays})
    gone.recv.close()
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        await stays.read()
        scheduler.close()
    assert isinstance(stays.last, Finished)
    stats = scheduler.statistics()
    assert stats.cancelled == 1
    assert stats.tokens == 5  # none for the departed client
    with pytest.raises(trio.ClosedResourceError):
        gone.send.send_nowait(Finished(0, "stop", 0, 0, 0.0))  # the scheduler closed its end


# ------------------------------------------------------------------------------------------------ admission


async def test_a_full_queue_refuses_at_once(model: Model) -> None:
    scheduler = Scheduler(model, max_batch=2, max_queue=3)
    a = [Client(A) for _ in range(3)]
    b = [Client(B) for _ in range(2)]
    scheduler.submit_nowait(a[0].request)
    scheduler.submit_nowait(a[1].request)
    with pytest.raises(trio.WouldBlock):  # the last place is never one tenant's
        scheduler.submit_nowait(a[2].request)
    scheduler.submit_nowait(b[0].request)
    with pytest.raises(trio.WouldBlock):  # full
        scheduler.submit_nowait(b[1].request)
    stats = scheduler.statistics()
    assert (stats.waiting, stats.rejected, stats.running) == (3, 2, 0)
    assert scheduler.busy
    clients = {"a0": a[0], "a1": a[1], "b0": b[0]}
    await serve(scheduler, clients)
    assert all(isinstance(c.last, Finished) for c in clients.values())
    assert not scheduler.busy
    with pytest.raises(trio.ClosedResourceError):  # closed: nothing more is accepted
        scheduler.submit_nowait(b[1].request)


async def test_an_invalid_request_fails_alone(model: Model) -> None:
    too_long = Client(A, max_tokens=model.context_length)  # the prompt pushes it past the context
    fine = Client(B)
    scheduler = Scheduler(model, max_batch=2)
    submit(scheduler, {"too_long": too_long, "fine": fine})
    await serve(scheduler, {"too_long": too_long, "fine": fine})
    assert isinstance(too_long.last, Failed) and too_long.last.code == "invalid"
    assert isinstance(fine.last, Finished) and fine.tokens == 3


async def test_a_failing_step_fails_its_batch(model: Model) -> None:
    nan = DenseMatrix("bf16", np.full_like(model.weights.embed.data, 0x7FC0))  # bf16 NaN: the forward refuses it
    broken = Model(dataclasses.replace(model.weights, embed=nan))
    clients = {"a": Client(A), "b": Client(B)}
    scheduler = Scheduler(broken, max_batch=2)
    submit(scheduler, clients)
    await serve(scheduler, clients)
    assert all(isinstance(c.last, Failed) and c.last.code == "internal" for c in clients.values())


async def test_shutdown_fails_what_is_left(model: Model) -> None:
    clients = {"running": Client(A, max_tokens=50), "waiting": Client(A, max_tokens=50)}  # one slot per tenant
    steps = Steps(clients)
    scheduler = Scheduler(model, max_batch=2, on_step=steps)
    steps.scheduler = scheduler
    submit(scheduler, clients)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(clients["running"].read)
        nursery.start_soon(clients["waiting"].read)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                await inner.start(scheduler.run)
                await steps.stepped.wait()
                scope.cancel()
    for c in clients.values():
        assert c.last == Failed(0, "the server is shutting down", "cancelled")
    assert clients["waiting"].tokens == 0
    assert scheduler.running_requests() == ()
    assert scheduler.statistics().kv_bytes == 0  # every KV cache released


async def test_shutdown_fails_requests_still_in_the_inbox_and_refuses_new_ones(model: Model) -> None:
    scheduler = Scheduler(model, max_batch=2)
    unread = Client(uuid.uuid4())
    scheduler.submit_nowait(unread.request)  # queued in the inbox; the actor never received it
    with trio.CancelScope() as scope:
        scope.cancel()
        await scheduler.run()
    events = unread.drain()
    assert events == [Failed(0, "the server is shutting down", "cancelled")]
    with pytest.raises(trio.ClosedResourceError):
        scheduler.submit_nowait(Client(uuid.uuid4()).request)
