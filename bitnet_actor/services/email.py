"""Outgoing email, pluggable. The default sender writes messages to the log (a self-hosted install with no
mail server still works: an operator reads the links from the log)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

__all__ = ["EmailMessage", "EmailSender", "LogEmailSender", "MemoryEmailSender"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EmailMessage:
    """One message."""

    to: str
    subject: str
    body: str


class EmailSender(Protocol):
    """Anything that can send a message."""

    async def send(self, message: EmailMessage) -> None:
        """Send ``message`` (or queue it)."""


class LogEmailSender:
    """Writes each message to the log at INFO."""

    async def send(self, message: EmailMessage) -> None:
        """Log the message."""
        log.info(
            "email to %s: %s\n%s",
            message.to,
            message.subject,
            message.body,
            extra={"email_to": message.to, "email_subject": message.subject},
        )


class MemoryEmailSender:
    """Keeps messages in a list (tests, and the admin CLI's one-time links)."""

    def __init__(self) -> None:
        self.outbox: list[EmailMessage] = []

    async def send(self, message: EmailMessage) -> None:
        """Append the message to ``outbox``."""
        self.outbox.append(message)
