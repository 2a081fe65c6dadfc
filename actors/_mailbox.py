"""Bounded mailboxes and request/reply with caller-owned reply channels."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import outcome
import trio

from actors.errors import MailboxClosedError, NoReplyError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Mailbox", "MailboxStatistics", "ReplyChannel", "reply_with", "request", "request_nowait"]

M = TypeVar("M")
R = TypeVar("R")

# What an actor sends back: the value or the exception it raised, boxed so it crosses the channel.
ReplyChannel = trio.MemorySendChannel[outcome.Outcome[R]]


@dataclass(frozen=True, slots=True)
class MailboxStatistics:
    """A snapshot of a mailbox, for metrics and ``/debug`` views."""

    name: str
    capacity: int
    queued: int
    accepted: int
    rejected: int
    closed: bool


class Mailbox(Generic[M]):
    """A bounded queue of messages for one actor.

    Callers hold the mailbox and ``send`` (waits for room) or ``send_nowait`` (raises ``trio.WouldBlock`` when
    full, the HTTP edge's admission check). The actor reads ``mailbox.receiver``. The mailbox outlives any one
    incarnation of the actor, so a supervisor can restart the actor without callers noticing.
    """

    def __init__(self, name: str, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"mailbox capacity must be >= 0, not {capacity}")
        self.name = name
        self.capacity = capacity
        self._send, self._recv = trio.open_memory_channel[M](capacity)
        self._accepted = 0
        self._rejected = 0

    @property
    def receiver(self) -> trio.MemoryReceiveChannel[M]:
        """The actor's end. The actor must not close it (a restarted actor reads the same channel)."""
        return self._recv

    def send_nowait(self, message: M) -> None:
        """Enqueue ``message`` now or fail.

        Raises:
            trio.WouldBlock: the mailbox is full.
            MailboxClosedError: the mailbox was closed.
        """
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self._rejected += 1
            raise
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise MailboxClosedError(f"mailbox {self.name!r} is closed") from None
        self._accepted += 1

    async def send(self, message: M) -> None:
        """Enqueue ``message``, waiting for room.

        Raises:
            MailboxClosedError: the mailbox was closed.
        """
        try:
            await self._send.send(message)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise MailboxClosedError(f"mailbox {self.name!r} is closed") from None
        self._accepted += 1

    def close(self) -> None:
        """Stop accepting messages; the actor drains what is queued, then sees the end of its inbox."""
        self._send.close()

    def statistics(self) -> MailboxStatistics:
        """Return a snapshot of the queue."""
        stats = self._send.statistics()
        return MailboxStatistics(
            name=self.name,
            capacity=self.capacity,
            queued=stats.current_buffer_used,
            accepted=self._accepted,
            rejected=self._rejected,
            closed=stats.open_send_channels == 0,
        )


async def _ask(mailbox: Mailbox[M], make: Callable[[ReplyChannel[R]], M], *, wait: bool) -> R:
    send, recv = trio.open_memory_channel[outcome.Outcome[R]](1)  # 1: exactly one reply, never blocks the actor
    async with recv:
        message = make(send)
        try:
            if wait:
                await mailbox.send(message)
            else:
                mailbox.send_nowait(message)
        except BaseException:
            send.close()
            raise
        try:
            result = await recv.receive()
        except trio.EndOfChannel:
            raise NoReplyError(f"actor behind {mailbox.name!r} stopped without replying") from None
    return result.unwrap()


async def request(mailbox: Mailbox[M], make: Callable[[ReplyChannel[R]], M]) -> R:
    """Send ``make(reply_channel)`` and wait for the reply; the actor's exception is re-raised here.

    The caller owns the receive end: if the caller is cancelled, the actor's reply fails quietly instead of
    leaking.

    Raises:
        NoReplyError: the actor closed the reply channel without answering.
        MailboxClosedError: the mailbox is closed.
    """
    return await _ask(mailbox, make, wait=True)


async def request_nowait(mailbox: Mailbox[M], make: Callable[[ReplyChannel[R]], M]) -> R:
    """Like ``request`` but raises ``trio.WouldBlock`` at once when the mailbox is full."""
    return await _ask(mailbox, make, wait=False)


async def reply_with(reply: ReplyChannel[R], fn: Callable[[], Awaitable[R]]) -> None:
    """Actor side: run ``fn``, send its value or exception to ``reply`` and close it.

    A caller that went away (its receive end closed) is not an error for the actor. ``Cancelled`` and other
    ``BaseException``s are not boxed: they propagate, and the closed channel tells the caller.
    """
    async with reply:
        result: outcome.Outcome[R]
        try:
            result = outcome.Value(await fn())
        except Exception as exc:
            result = outcome.Error(exc)
        with contextlib.suppress(trio.BrokenResourceError, trio.WouldBlock):
            reply.send_nowait(result)
