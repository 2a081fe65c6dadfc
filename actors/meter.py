"""The usage meter: every request's :class:`UsageEvent`, batched into the PostgreSQL ledger.

The request path calls :meth:`UsageMeter.record`, which never waits: the event joins a bounded in-memory
buffer. ``run`` (under the "usage-meter" supervisor) takes what has arrived, up to ``batch_size`` events or
``flush_s`` seconds after the first, and writes it as one statement (:func:`ledger.record_batch`: a
multi-row insert into ``usage_events``, ``ON CONFLICT DO NOTHING``, with the rollups and the Stripe outbox in
the same transaction).

Nothing is dropped:

- a batch PostgreSQL refuses or does not answer within ``write_timeout_s`` is appended to the spill file
  ``<data dir>/usage-spill/spill.jsonl`` (one JSON event per line, fsynced per batch) and replayed once
  PostgreSQL answers again; replay is idempotent (the ledger's key is the event's request id and time), so
  a batch that was committed but whose answer was lost counts once;
- a full buffer (PostgreSQL slower than the requests) spills the event at once instead of waiting;
- at shutdown, :meth:`drain` writes the buffer within the grace period and spills what is left; cancelled
  with events still buffered, the meter spills them before it goes.

Replay takes the spill file aside (renamed to ``replaying-<n>.jsonl``) under the spill lock, writes it in
batches and deletes it; a crash mid-replay leaves the renamed file, replayed at the next start. Lines a
crash cut short are moved to ``damaged.jsonl``, and events the ledger refuses outright (their organization
is gone) to ``refused.jsonl``, logged, never retried forever. The spool of the older
recorder (``usage-spool.jsonl``) is read the same way, once.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

import trio
import trio.lowlevel

from bitnet_actor.errors import StoreError, StoreUnavailableError
from bitnet_actor.services.billing.ledger import UsageEvent, record_batch

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from bitnet_actor.stores.postgres import Database

__all__ = ["MeterStatistics", "UsageMeter"]

log = logging.getLogger(__name__)

_SPILL = "spill.jsonl"
_DAMAGED = "damaged.jsonl"
_REFUSED = "refused.jsonl"
_REPLAY_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class MeterStatistics:
    """A snapshot for metrics and tests."""

    buffered: int
    written: int
    duplicates: int
    spilled: int
    replayed: int
    batches: int
    spill_bytes: int
    last_batch_s: float


class UsageMeter:
    """Batches usage events into the ledger; spills and replays them when PostgreSQL is away."""

    def __init__(
        self,
        db: Database,
        spill_dir: Path,
        *,
        batch_size: int = 500,
        flush_s: float = 0.05,
        buffer_size: int = 20_000,
        write_timeout_s: float = 5.0,
        on_written: Callable[[int], None] | None = None,
        on_spilled: Callable[[int], None] | None = None,
    ) -> None:
        """Args:
        db: the ledger's database.
        spill_dir: where events go while PostgreSQL is away (created on need).
        batch_size: events per insert at most. flush_s: how long a batch waits for more after its first.
        buffer_size: events held in memory at most; past it, events spill at once.
        write_timeout_s: a batch write taking longer spills.
        on_written / on_spilled: called with counts (metrics).
        """
        self.db = db
        self.spill_dir = spill_dir
        self.batch_size = batch_size
        self.flush_s = flush_s
        self.write_timeout_s = write_timeout_s
        self._send, self._recv = trio.open_memory_channel[UsageEvent](buffer_size)
        self._on_written = on_written
        self._on_spilled = on_spilled
        self._spill_lock = trio.Lock()
        self._idle = trio.Event()
        self._idle.set()
        self._written = self._duplicates = self._spilled = self._replayed = self._batches = 0
        self._last_batch_s = 0.0
        self._db_ok = True

    # The request path ----------------------------------------------------------------------------------

    def record(self, event: UsageEvent) -> None:
        """Take ``event``; never waits. A full buffer (or a closed meter) spills it synchronously."""
        try:
            self._send.send_nowait(event)
            self._idle = trio.Event() if self._idle.is_set() else self._idle
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._spill_now([event])

    # The actor -------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until cancelled or drained; replay the spill file whenever PostgreSQL answers."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._replay_loop)
                task_status.started()
                await self._write_loop()
                nursery.cancel_scope.cancel()
        finally:
            self._spill_buffered()  # cancelled (or crashed) with events in memory: keep them on disk

    async def drain(self, timeout_s: float) -> None:
        """Stop taking events into memory and write those buffered within ``timeout_s`` (shutdown). What
        is not written in time is spilled when ``run`` is cancelled; events recorded after this spill."""
        self._send.close()
        with trio.move_on_after(timeout_s):
            await self._idle.wait()

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every event recorded so far is written or spilled (tests, the benchmark)."""
        await trio.lowlevel.checkpoint()
        with trio.move_on_after(timeout_s):
            while self._recv.statistics().current_buffer_used or not self._idle.is_set():
                await self._idle.wait()
                await trio.lowlevel.checkpoint()
            return True
        return False

    async def _write_loop(self) -> None:
        while True:
            try:
                first = await self._recv.receive()
            except trio.EndOfChannel:
                self._idle.set()
                return  # noqa: ASYNC910  # receive() was the checkpoint
            batch = [first]
            with trio.move_on_after(self.flush_s):
                while len(batch) < self.batch_size:
                    try:
                        batch.append(await self._recv.receive())
                    except trio.EndOfChannel:
                        break
            while len(batch) < self.batch_size:  # whatever else is already here joins without waiting
                try:
                    batch.append(self._recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await self._write(batch)
            if not self._recv.statistics().current_buffer_used:
                self._idle.set()

    async def _write(self, batch: Sequence[UsageEvent]) -> None:
        started = time.perf_counter()
        try:
            with trio.fail_after(self.write_timeout_s):
                new = await record_batch(self.db, batch)
        except Exception as exc:  # unreachable, timed out or refused: the batch goes to disk, not away
            if self._db_ok:
                log.error("usage batch of %d not written (%s); spilling to %s", len(batch), exc, self.spill_dir)
            self._db_ok = False
            with trio.CancelScope(shield=True):
                await self._spill(batch)
            return
        self._db_ok = True
        self._last_batch_s = time.perf_counter() - started
        self._batches += 1
        self._written += new
        self._duplicates += len(batch) - new
        if self._on_written is not None:
            self._on_written(new)

    # Spilling and replay ---------------------------------------------------------------------------------

    def _append_lines(self, path: Path, lines: Sequence[str]) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, "".join(line + "\n" for line in lines).encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _spilled_now(self, count: int) -> None:
        self._spilled += count
        if self._on_spilled is not None:
            self._on_spilled(count)

    async def _spill(self, batch: Sequence[UsageEvent]) -> None:
        lines = [e.to_json() for e in batch]
        async with self._spill_lock:
            try:
                await trio.to_thread.run_sync(self._append_lines, self.spill_dir / _SPILL, lines)
            except OSError:
                log.critical("usage events could neither be written nor spilled: %s", "\n".join(lines))
                return
        self._spilled_now(len(batch))

    def _spill_now(self, batch: Sequence[UsageEvent]) -> None:
        # Synchronous: from ``record`` (no await allowed) and at cancellation. A single O_APPEND write of
        # whole lines, so it never interleaves with a threaded append mid-line.
        if not batch:
            return
        lines = [e.to_json() for e in batch]
        try:
            self._append_lines(self.spill_dir / _SPILL, lines)
        except OSError:
            log.critical("usage events could neither be written nor spilled: %s", "\n".join(lines))
            return
        self._spilled_now(len(batch))

    def _spill_buffered(self) -> None:
        left: list[UsageEvent] = []
        while True:
            try:
                left.append(self._recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        if left:
            log.warning("usage meter stopping with %d events unwritten; spilled to %s", len(left), self.spill_dir)
            self._spill_now(left)
        self._idle.set()

    async def _replay_loop(self) -> None:
        while True:
            try:
                await self.replay()
            except Exception:  # the next round retries; nothing was removed
                log.exception("usage spill replay failed")
            await trio.sleep(_REPLAY_EVERY_S)

    def _pending_files(self) -> list[Path]:
        if not self.spill_dir.exists():
            return []
        return sorted(self.spill_dir.glob("replaying-*.jsonl"))

    async def replay(self) -> int:
        """Write what was spilled; return how many events were new to the ledger.

        Stops at the first batch PostgreSQL does not take (the files stay for the next round).
        """
        async with self._spill_lock:
            spill = self.spill_dir / _SPILL
            if spill.exists() and spill.stat().st_size:
                spill.rename(self.spill_dir / f"replaying-{time.time_ns()}-{uuid.uuid4().hex[:8]}.jsonl")
        for path in [*self._legacy_spools(), *self._pending_files()]:
            new = await self._replay_file(path)
            if new is None:
                return self._replayed
        return self._replayed

    def _legacy_spools(self) -> list[Path]:
        legacy = self.spill_dir.parent / "usage-spool.jsonl"
        return [legacy] if legacy.exists() else []

    async def _replay_file(self, path: Path) -> int | None:
        text = await trio.to_thread.run_sync(path.read_text, "utf-8")
        events: list[UsageEvent] = []
        damaged: list[str] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                events.append(_parse_line(line))
            except (ValueError, KeyError, TypeError):
                damaged.append(line)
        new_total = 0
        refused: list[str] = []
        for i in range(0, len(events), self.batch_size):
            chunk = events[i : i + self.batch_size]
            try:
                with trio.fail_after(self.write_timeout_s):
                    new_total += await record_batch(self.db, chunk)
            except (trio.TooSlowError, StoreUnavailableError) as exc:  # still away: keep the file (idempotent)
                log.warning("usage spill replay paused (%s): %s kept", exc or "timeout", path.name)
                return None
            except StoreError:  # one event the ledger refuses (its organization is gone...): find it, set it aside
                for event in chunk:
                    try:
                        with trio.fail_after(self.write_timeout_s):
                            new_total += await record_batch(self.db, [event])
                    except (trio.TooSlowError, StoreUnavailableError):
                        return None
                    except StoreError as exc:
                        log.error(
                            "usage event %s refused by the ledger (%s); moved to %s", event.request_id, exc, _REFUSED
                        )
                        refused.append(event.to_json())
        if refused:
            await trio.to_thread.run_sync(self._append_lines, self.spill_dir / _REFUSED, refused)
        if damaged:
            log.error("%d damaged usage spill lines from %s moved to %s", len(damaged), path.name, _DAMAGED)
            await trio.to_thread.run_sync(self._append_lines, self.spill_dir / _DAMAGED, damaged)
        await trio.to_thread.run_sync(partial(path.unlink, missing_ok=True))
        self._replayed += new_total
        self._written += new_total
        self._db_ok = True
        if new_total:
            log.info("usage spill replay: %d events written from %s", new_total, path.name)
        if self._on_written is not None:
            self._on_written(new_total)
        return new_total

    def buffered(self) -> int:
        """Events waiting in memory."""
        return self._recv.statistics().current_buffer_used

    def statistics(self) -> MeterStatistics:
        """Buffered, written, duplicate, spilled and replayed events; batches; bytes waiting on disk."""
        spill_bytes = 0
        if self.spill_dir.exists():
            spill_bytes = sum(
                p.stat().st_size for p in self.spill_dir.glob("*.jsonl") if p.name not in (_DAMAGED, _REFUSED)
            )
        return MeterStatistics(
            buffered=self._recv.statistics().current_buffer_used,
            written=self._written,
            duplicates=self._duplicates,
            spilled=self._spilled,
            replayed=self._replayed,
            batches=self._batches,
            spill_bytes=spill_bytes,
            last_batch_s=self._last_batch_s,
        )


def _parse_line(line: str) -> UsageEvent:
    data = json.loads(line)
    if isinstance(data, dict) and "total_tokens" in data:  # a line of the older recorder's spool
        usage = (data.get("response_data") or {}).get("usage") or {}
        request = data.get("request_data") or {}
        return UsageEvent(
            request_id=str(request.get("request_id") or data["id"]),
            org_id=uuid.UUID(data["org_id"]),
            model=str(data["model"]),
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
            latency_ms=int(data.get("latency_ms", 0)),
            outcome=str((data.get("response_data") or {}).get("outcome", "ok")),
            api_key_id=uuid.UUID(request["api_key_id"]) if request.get("api_key_id") else None,
            endpoint=str(request.get("endpoint", "")),
            request_data=request,
            created_at=datetime.fromisoformat(data["created_at"]),
        )
    return UsageEvent.from_json(line)
