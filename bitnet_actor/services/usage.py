"""The usage ledger of inference requests: one ``inference_requests`` row and one ``usage_records`` row each.

:class:`UsageRecorder` writes an entry in one transaction, retrying a failed write; an entry that still cannot
be written is appended to a spool file (JSON lines, ``<data dir>/usage-spool.jsonl``) and logged, never
dropped, and :meth:`UsageRecorder.replay` writes the spool back once the database answers again (the
service's maintenance loop calls it). Each entry carries its request's id, and a replayed entry whose
``inference_requests`` row exists already is skipped, so a write that failed after its commit is not counted
twice. The metering actor of [G] replaces this with a durable outbox.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio

from bitnet_actor.errors import StoreUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from bitnet_actor.stores.postgres import Database

__all__ = ["UsageEntry", "UsageRecorder", "write_entry"]

log = logging.getLogger(__name__)

_ATTEMPTS = 3
_RETRY_S = 0.2
_WRITE_BUDGET_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageEntry:
    """What one request used, as the ledger stores it.

    Attributes:
        org_id: the organization billed.
        model: the served model's name.
        request_data: the parsed request (sampling parameters, prompt size, endpoint, ids).
        response_data: usage, finish reasons and outcome.
        latency_ms: end-to-end time.
        total_tokens: prompt plus completion tokens (what ``usage_records`` counts).
        id: the ``inference_requests`` row's id (also what makes a replay idempotent).
        created_at: when the request ended.
    """

    org_id: uuid.UUID
    model: str
    request_data: dict[str, Any]
    response_data: dict[str, Any]
    latency_ms: int
    total_tokens: int
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> str:
        """One line of the spool."""
        data = asdict(self)
        data.update(org_id=str(self.org_id), id=str(self.id), created_at=self.created_at.isoformat())
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> UsageEntry:
        """An entry from a spool line (raises ``ValueError``/``KeyError``/``TypeError`` on a damaged one)."""
        data = json.loads(line)
        data.update(
            org_id=uuid.UUID(data["org_id"]),
            id=uuid.UUID(data["id"]),
            created_at=datetime.fromisoformat(data["created_at"]),
        )
        return cls(**data)


async def write_entry(db: Database, entry: UsageEntry) -> bool:
    """Write ``entry`` in one transaction (as its organization: row-level security applies).

    Returns:
        False when its row was already there (nothing written), else True.
    """
    async with db.transaction(org_id=entry.org_id) as tx:
        if await tx.fetchval("SELECT 1 FROM inference_requests WHERE id = $1", entry.id):
            return False
        model_id = await tx.fetchval(
            "SELECT id FROM models WHERE name = $1 AND (org_id IS NULL OR org_id = $2)"
            " ORDER BY org_id NULLS LAST LIMIT 1",
            entry.model,
            entry.org_id,
        )
        await tx.execute(
            "INSERT INTO inference_requests (id, org_id, model_id, request_data, response_data, latency_ms, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            entry.id,
            entry.org_id,
            model_id,
            entry.request_data,
            entry.response_data,
            entry.latency_ms,
            entry.created_at,
        )
        await tx.execute(
            "INSERT INTO usage_records (org_id, operation_count, billing_period) VALUES ($1, $2, $3)",
            entry.org_id,
            entry.total_tokens,
            entry.created_at.date().replace(day=1),
        )
    return True


class UsageRecorder:
    """Writes usage entries; spools the ones the database refuses and replays them later."""

    def __init__(self, db: Database, spool: Path, *, on_spooled: Callable[[], None] | None = None) -> None:
        """Args:
        db: the database.
        spool: the spool file (created on first need).
        on_spooled: called once per entry that went to the spool (a metrics counter).
        """
        self.db = db
        self.spool = spool
        self._on_spooled = on_spooled
        self._lock = trio.Lock()  # one writer of the spool file at a time
        self._replaying = trio.Lock()  # one replay at a time

    async def record(self, entry: UsageEntry) -> None:
        """Write ``entry``, retrying; spool it when the database still fails. Never raises for a write failure.

        Raises:
            OSError: neither the database nor the spool file took the entry (it is in the log).
        """
        why = f"no answer within {_WRITE_BUDGET_S:g} s"
        with trio.move_on_after(_WRITE_BUDGET_S):  # a hung database must leave time to spool
            for attempt in range(_ATTEMPTS):
                try:
                    await write_entry(self.db, entry)
                    return
                except Exception as exc:  # any store failure: retry, then spool
                    why = str(exc) or type(exc).__name__
                    if attempt == _ATTEMPTS - 1:
                        break
                    await trio.sleep(_RETRY_S * (attempt + 1))
        async with self._lock:
            try:
                await trio.to_thread.run_sync(self._append, entry.to_json())
            except OSError:
                log.critical("usage entry could not be written (%s) nor spooled: %s", why, entry.to_json())
                raise
        log.error("usage of request %s not written (%s); spooled to %s", entry.id, why, self.spool)
        if self._on_spooled is not None:
            self._on_spooled()

    def _append(self, line: str) -> None:
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with self.spool.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    async def replay(self) -> int:
        """Write the spooled entries; keep those that still fail. Returns how many were written.

        The spool is read, then written to the database without holding the spool's lock (a hung database
        must not keep ``record`` from spooling), then rewritten under the lock with the entries that failed
        and those appended meanwhile. An entry the database refuses stays for the next round without holding
        back the others; an unreachable or silent database ends the round. A damaged line (a crash
        mid-append) is moved to ``<spool>.damaged`` and logged, not retried forever.
        """
        async with self._replaying:
            async with self._lock:
                if not self.spool.exists():
                    return 0
                lines = self.spool.read_text(encoding="utf-8").splitlines()
            keep: list[str] = []
            damaged: list[str] = []
            written = 0
            for i, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    entry = UsageEntry.from_json(line)
                except (ValueError, KeyError, TypeError):
                    damaged.append(line)
                    continue
                try:
                    with trio.fail_after(_WRITE_BUDGET_S):
                        await write_entry(self.db, entry)
                    written += 1
                except (trio.TooSlowError, StoreUnavailableError) as exc:  # the database is away: next round
                    log.warning("usage spool replay stopped (%s); %d entries left", exc or "timeout", len(lines) - i)
                    keep.extend(ln for ln in lines[i:] if ln.strip())
                    break
                except Exception as exc:  # this entry refused: keep it, go on with the others
                    log.error("spooled usage entry %s refused again (%s); kept", entry.id, exc)
                    keep.append(line)
            async with self._lock:
                # Only appends happen between the read above and now (one replay at a time).
                current = self.spool.read_text(encoding="utf-8").splitlines() if self.spool.exists() else []
                keep.extend(ln for ln in current[len(lines) :] if ln.strip())
                if damaged:
                    log.error("%d damaged usage spool lines moved to %s.damaged", len(damaged), self.spool)
                    with self.spool.with_name(self.spool.name + ".damaged").open("a", encoding="utf-8") as f:
                        f.write("\n".join(damaged) + "\n")
                if keep:
                    tmp = self.spool.with_name(self.spool.name + ".tmp")
                    tmp.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")
                    tmp.replace(self.spool)  # atomic: a crash here leaves the old spool, replayed idempotently
                else:
                    self.spool.unlink(missing_ok=True)
            if written:
                log.info("usage spool: %d entries written", written)
            return written
