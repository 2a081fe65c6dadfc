"""The actor toolkit and the service's long-lived actors.

An actor owns private state and serves a bounded ``Mailbox`` in ``run(task_status=...)``; callers talk to it
with frozen messages, and ask for answers with ``request`` through reply channels they own. A ``Supervisor``
restarts a crashed actor within a ``RestartPolicy`` and escalates to its parent beyond it.
"""

from __future__ import annotations

from actors._mailbox import (
    Mailbox,
    MailboxStatistics,
    ReplyChannel,
    reply_with,
    request,
    request_nowait,
)
from actors._supervise import Actor, RestartPolicy, Supervisor, SupervisorStatistics
from actors.errors import ActorError, MailboxClosedError, NoReplyError, TooManyRestartsError

__all__ = [
    "Actor",
    "ActorError",
    "Mailbox",
    "MailboxClosedError",
    "MailboxStatistics",
    "NoReplyError",
    "ReplyChannel",
    "RestartPolicy",
    "Supervisor",
    "SupervisorStatistics",
    "TooManyRestartsError",
    "reply_with",
    "request",
    "request_nowait",
]
