"""Outgoing email, pluggable. The default sender writes each message to a file in the data dir's ``mail/``
folder (0600) and logs only who it is for and where it is: a self-hosted install with no mail server still
works (an operator reads the links there), and one-time links never reach the logs."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["EmailMessage", "EmailSender", "FileEmailSender", "MemoryEmailSender"]

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


class FileEmailSender:
    """Writes each message to ``<folder>/<time>-<recipient>-<id>.eml`` (readable by its owner only) and logs
    where, never the body."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _write(self, message: EmailMessage) -> Path:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        safe_to = re.sub(r"[^A-Za-z0-9@._-]", "_", message.to)[:100]
        path = self.folder / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{safe_to}-{uuid.uuid4().hex[:8]}.eml"
        text = f"To: {message.to}\nSubject: {message.subject}\n\n{message.body}\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    async def send(self, message: EmailMessage) -> None:
        """Write the message and log its file."""
        path = await trio.to_thread.run_sync(self._write, message)
        log.info("email to %s (%s) written to %s", message.to, message.subject, path)


class MemoryEmailSender:
    """Keeps messages in a list (tests, and the admin CLI's one-time links)."""

    def __init__(self) -> None:
        self.outbox: list[EmailMessage] = []

    async def send(self, message: EmailMessage) -> None:
        """Append the message to ``outbox``."""
        self.outbox.append(message)
