"""Supervision: restart an actor when it crashes, within a declared policy, else escalate."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from actors.errors import TooManyRestartsError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Actor", "RestartPolicy", "Supervisor", "SupervisorStatistics"]


class Actor(Protocol):
    """The actor shape: private state plus ``run``, which reports readiness once it can take messages."""

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until the inbox ends (clean exit), a crash, or cancellation."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPolicy:
    """When a supervisor restarts its actor.

    Attributes:
        max_restarts: restarts allowed within ``window_s``; one more crash in that window escalates.
        window_s: the sliding window over which crashes are counted.
        backoff_s: wait before the first restart; doubles with each crash in the window.
        backoff_max_s: upper bound of that wait.
        restart_on: exception types that count as a crash; anything else escalates at once.
    """

    max_restarts: int = 3
    window_s: float = 60.0
    backoff_s: float = 0.1
    backoff_max_s: float = 10.0
    restart_on: tuple[type[Exception], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.window_s <= 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError(f"invalid restart policy {self!r}")


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    """A snapshot of a supervisor."""

    name: str
    running: bool
    starts: int
    restarts: int
    crashes_in_window: int
    last_error: str | None


class Supervisor:
    """Runs one actor built by ``factory`` and restarts it on crashes as ``policy`` declares.

    Owns: the actor's current incarnation and the crash history. The actor's mailbox belongs to whoever
    built the factory, so it survives restarts. Behaviour:

    - a clean return from ``actor.run`` ends the supervisor cleanly (no restart);
    - a crash (an exception in ``policy.restart_on``) restarts a fresh actor after a backoff, unless it is the
      ``max_restarts + 1``-th crash within ``window_s``: then ``TooManyRestartsError`` escalates to the
      parent;
    - any other exception escalates at once; ``Cancelled`` always propagates.

    ``run`` reports readiness (``task_status.started()``) once, when the first incarnation has started.
    """

    def __init__(self, name: str, factory: Callable[[], Actor], policy: RestartPolicy | None = None) -> None:
        self.name = name
        self._factory = factory
        self.policy = policy or RestartPolicy()
        self._crashes: deque[float] = deque(maxlen=self.policy.max_restarts + 1)
        self._starts = 0
        self._running = False
        self._last_error: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise until the actor exits cleanly, escalation, or cancellation."""
        while True:
            crash: BaseException | None = None
            try:
                async with trio.open_nursery() as nursery:
                    actor = self._factory()
                    self._starts += 1
                    await nursery.start(actor.run)
                    self._running = True
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED  # report readiness once, not on every restart
            except* self.policy.restart_on as group:
                crash = group
            finally:
                self._running = False
            if crash is None:
                return  # noqa: ASYNC910  # the nursery's exit was the checkpoint
            leaf = _first_leaf(crash)
            self._last_error = f"{type(leaf).__name__}: {leaf}"
            now = trio.current_time()
            self._crashes.append(now)
            recent = [t for t in self._crashes if now - t <= self.policy.window_s]
            if len(recent) > self.policy.max_restarts:
                raise TooManyRestartsError(self.name, len(recent), self.policy.window_s) from crash
            backoff = min(self.policy.backoff_s * 2 ** (len(recent) - 1), self.policy.backoff_max_s)
            await trio.sleep(backoff)

    def statistics(self) -> SupervisorStatistics:
        """Return a snapshot of this supervisor."""
        now = trio.current_time()
        return SupervisorStatistics(
            name=self.name,
            running=self._running,
            starts=self._starts,
            restarts=max(self._starts - 1, 0),
            crashes_in_window=sum(1 for t in self._crashes if now - t <= self.policy.window_s),
            last_error=self._last_error,
        )


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
