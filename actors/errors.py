"""Errors of the actor toolkit.

The tree::

    ActorError (BitnetError)    an actor could not do what was asked of it (under the service's one tree)
    ├── MailboxClosedError      the actor's mailbox is closed: it stopped for good
    ├── NoReplyError            the actor closed the reply channel without answering (it crashed or stopped)
    └── TooManyRestartsError    a supervised actor crashed more often than its policy allows (escalation)

A full mailbox is not an error of ours: ``send_nowait`` raises ``trio.WouldBlock``, which the HTTP edge turns
into 429 / 503 with Retry-After.
"""

from __future__ import annotations

from bitnet_actor.errors import BitnetError

__all__ = ["ActorError", "MailboxClosedError", "NoReplyError", "TooManyRestartsError"]


class ActorError(BitnetError):
    """An actor could not do what was asked of it."""


class MailboxClosedError(ActorError):
    """The mailbox is closed: its actor has stopped for good."""


class NoReplyError(ActorError):
    """The actor closed the reply channel without answering (it crashed or was stopped)."""


class TooManyRestartsError(ActorError):
    """A supervised actor crashed more often than its restart policy allows; the parent must handle it."""

    def __init__(self, name: str, crashes: int, window_s: float) -> None:
        super().__init__(f"actor {name!r} crashed {crashes} times within {window_s:g} s; giving up")
        self.name = name
        self.crashes = crashes
        self.window_s = window_s
