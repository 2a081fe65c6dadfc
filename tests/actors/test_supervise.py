from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    Mailbox,
    MailboxClosedError,
    NoReplyError,
    ReplyChannel,
    RestartPolicy,
    Supervisor,
    TooManyRestartsError,
    reply_with,
    request,
    request_nowait,
)


class Boom(Exception):
    pass


class Echo:
    """A minimal actor: replies to each message with (incarnation, text); 'crash' crashes it."""

    instances = 0

    def __init__(self, inbox: trio.MemoryReceiveChannel[tuple[str, ReplyChannel[Any]]]) -> None:
        Echo.instances += 1
        self.incarnation = Echo.instances
        self.inbox = inbox

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for text, reply in self.inbox:
            if text == "crash":
                reply.close()
                raise Boom("asked to crash")

            async def answer(text: str = text) -> tuple[int, str]:
                if text == "fail":
                    raise ValueError("bad request")
                return self.incarnation, text

            await reply_with(reply, answer)


@pytest.fixture(autouse=True)
def _reset_echo():
    Echo.instances = 0


def make_echo(capacity: int = 4) -> tuple[Mailbox[tuple[str, ReplyChannel[Any]]], Supervisor, RestartPolicy]:
    mailbox: Mailbox[tuple[str, ReplyChannel[Any]]] = Mailbox("echo", capacity)
    policy = RestartPolicy(max_restarts=2, window_s=10.0, backoff_s=1.0, backoff_max_s=4.0)
    return mailbox, Supervisor("echo", lambda: Echo(mailbox.receiver), policy), policy


async def test_request_reply_and_boxed_error(nursery: trio.Nursery) -> None:
    mailbox, sup, _ = make_echo()
    await nursery.start(sup.run)
    assert await request(mailbox, lambda reply: ("hi", reply)) == (1, "hi")
    with pytest.raises(ValueError, match="bad request"):
        await request(mailbox, lambda reply: ("fail", reply))
    # A boxed error is the actor's answer, not a crash: no restart.
    assert sup.statistics().restarts == 0
    mailbox.close()


async def test_restart_after_crash(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    mailbox, sup, policy = make_echo()
    await nursery.start(sup.run)
    with pytest.raises(NoReplyError):
        await request(mailbox, lambda reply: ("crash", reply))
    before = trio.current_time()
    # The mailbox survives the restart; the next request reaches the second incarnation after the backoff.
    assert await request(mailbox, lambda reply: ("again", reply)) == (2, "again")
    assert trio.current_time() - before == pytest.approx(policy.backoff_s)
    stats = sup.statistics()
    assert (stats.restarts, stats.crashes_in_window, stats.running) == (1, 1, True)
    assert stats.last_error == "Boom: asked to crash"
    mailbox.close()


async def test_escalation_after_too_many_crashes(autojump_clock: trio.testing.MockClock) -> None:
    mailbox, sup, policy = make_echo()
    with pytest.RaisesGroup(pytest.RaisesExc(TooManyRestartsError, match="crashed 3 times")) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            for _ in range(policy.max_restarts + 1):
                with pytest.raises(NoReplyError):
                    await request(mailbox, lambda reply: ("crash", reply))
    assert isinstance(info.value.exceptions[0].__cause__, BaseExceptionGroup)
    assert Echo.instances == policy.max_restarts + 1
    # Backoffs doubled: 1 s then 2 s.
    assert trio.current_time() == pytest.approx(1.0 + 2.0)


async def test_crashes_outside_the_window_do_not_accumulate(autojump_clock: trio.testing.MockClock) -> None:
    mailbox, sup, policy = make_echo()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for _ in range(2 * policy.max_restarts + 2):
            with pytest.raises(NoReplyError):
                await request(mailbox, lambda reply: ("crash", reply))
            await trio.sleep(policy.window_s + 1)
        assert sup.statistics().crashes_in_window == 0
        mailbox.close()
    assert Echo.instances == 2 * policy.max_restarts + 3


async def test_no_restart_after_clean_exit(autojump_clock: trio.testing.MockClock) -> None:
    mailbox, sup, _ = make_echo()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        mailbox.close()  # the actor's inbox ends: it returns normally
    assert Echo.instances == 1
    assert not sup.statistics().running
    with pytest.raises(MailboxClosedError):
        mailbox.send_nowait(("late", trio.open_memory_channel[Any](1)[0]))


async def test_undeclared_error_escalates_at_once() -> None:
    class Picky:
        async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            raise KeyError("not restartable")

    sup = Supervisor("picky", Picky, RestartPolicy(restart_on=(Boom,)))
    with pytest.RaisesGroup(pytest.RaisesGroup(KeyError)):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
    assert sup.statistics().starts == 1


async def test_cancellation_propagates(autojump_clock: trio.testing.MockClock) -> None:
    cleaned_up = trio.Event()

    class Sleeper:
        async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                cleaned_up.set()

    sup = Supervisor("sleeper", Sleeper)
    with trio.move_on_after(5) as scope:
        await sup.run()
    assert scope.cancelled_caught
    assert cleaned_up.is_set()
    assert sup.statistics().starts == 1  # cancelled, not restarted


async def test_full_mailbox_would_block() -> None:
    mailbox: Mailbox[int] = Mailbox("tiny", 2)
    mailbox.send_nowait(1)
    mailbox.send_nowait(2)
    with pytest.raises(trio.WouldBlock):
        mailbox.send_nowait(3)
    stats = mailbox.statistics()
    assert (stats.queued, stats.accepted, stats.rejected, stats.closed) == (2, 2, 1, False)
    with pytest.raises(trio.WouldBlock):
        await request_nowait(mailbox, lambda reply: 4)  # type: ignore[arg-type,return-value]
    mailbox.close()
    assert mailbox.statistics().closed


async def test_send_waits_for_room(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    mailbox: Mailbox[int] = Mailbox("one", 1)
    mailbox.send_nowait(1)

    async def drain_later() -> None:
        await trio.sleep(3)
        assert await mailbox.receiver.receive() == 1

    nursery.start_soon(drain_later)
    await mailbox.send(2)
    assert trio.current_time() == pytest.approx(3)


async def test_caller_gone_does_not_hurt_actor(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    mailbox: Mailbox[ReplyChannel[int]] = Mailbox("slow", 4)
    answered = trio.Event()

    class Slow:
        async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            async for reply in mailbox.receiver:

                async def work() -> int:
                    await trio.sleep(10)
                    return 42

                await reply_with(reply, work)
                answered.set()

    sup = Supervisor("slow", Slow)
    await nursery.start(sup.run)
    with trio.move_on_after(1):
        await request(mailbox, lambda reply: reply)
    await answered.wait()  # the actor finished its work and survived the vanished caller
    assert sup.statistics().restarts == 0
    mailbox.close()


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="invalid restart policy"):
        RestartPolicy(max_restarts=-1)
    with pytest.raises(ValueError, match="capacity"):
        Mailbox("x", -1)
