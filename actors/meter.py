"""The usage meter: every request's :class:`UsageEvent`, batched into the PostgreSQL ledger.

The request path calls :meth:`UsageMeter.record`, which never waits: the event joins a bounded in-memory
buffer. ``run`` (under the "usage-meter" supervisor) takes what has arrived, up to ``batch_size`` events or
``flush_s`` seconds after the first, and writes it as one statement (:func:`ledger.record_batch`: a
multi-row insert into ``usage_events``, ``ON CONFLICT DO NOTHING``, with the rollups and the Stripe outbox in
the same transaction).

Nothing is dropped:

- a batch PostgreSQL does not take (unreachable, shutting down, or no answer within ``write_timeout_s``)
  is appended to the spill file ``<data dir>/usage-spill/spill.jsonl`` (one JSON event per line, fsynced
  per batch) and replayed once PostgreSQL answers again; replay is idempotent (the ledger's key is the
  event's request id and time), so a batch that was committed but whose answer was lost counts once;
- an event the ledger refuses (its organization is gone) is found within its batch and moved to
  ``refused.jsonl``, logged; the rest of the batch is written at once;
- a full buffer (PostgreSQL slower than the requests) spills the event at once instead of waiting;
- at shutdown, :meth:`drain` writes the buffer within the grace period: a write still running at the
  deadline is cut short and spilled, as is what is left in memory; cancelled, the meter spills what it
  holds (the batch in hand included) before it goes.

Replay writes the files set aside earlier (``replaying-<n>.jsonl``, oldest first), and only once they are
all in takes the spill file aside (renamed under the spill lock) and writes it, so an outage leaves one
file waiting; each file is deleted once written, and a crash mid-replay leaves it for the next start. Lines
that do not parse (a crash cut them short: every append starts on a new line, so the next event never runs
on from one) are moved to ``damaged.jsonl``. The spool of the older recorder (``usage-spool.jsonl``) is read
the same way, once.
"""

from __future__ import annotations

import json
import logging
import math
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
    refused: int
    damaged: int
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
        replay_every_s: float = _REPLAY_EVERY_S,
        on_written: Callable[[int], None] | None = None,
        on_spilled: Callable[[int], None] | None = None,
    ) -> None:
        """Args:
        db: the ledger's database.
        spill_dir: where events go while PostgreSQL is away (created on need).
        batch_size: events per insert at most. flush_s: how long a batch waits for more after its first.
        buffer_size: events held in memory at most; past it, events spill at once.
        write_timeout_s: a batch write taking longer spills. replay_every_s: how often the spill is retried.
        on_written / on_spilled: called with counts (metrics).
        """
        self.db = db
        self.spill_dir = spill_dir
        self.batch_size = batch_size
        self.flush_s = flush_s
        self.write_timeout_s = write_timeout_s
        self.replay_every_s = replay_every_s
        self._send, self._recv = trio.open_memory_channel[UsageEvent](buffer_size)
        self._on_written = on_written
        self._on_spilled = on_spilled
        self._spill_lock = trio.Lock()
        self._idle = trio.Event()
        self._idle.set()
        self._written = self._duplicates = self._spilled = self._replayed = self._batches = 0
        self._refused = self._damaged = 0
        self._replay_lock = trio.Lock()
        self._pending: list[UsageEvent] = []  # the batch being gathered or written
        self._deadline = math.inf  # a drain's: no write runs past it
        self._write_scopes: set[trio.CancelScope] = set()  # writes under way (the live batch, a replay)
        self._last_batch_s = 0.0
        self._db_ok = True

    # The request path ----------------------------------------------------------------------------------

    def record(self, event: UsageEvent) -> None:
        """Take ``event``; never waits. A full buffer (or a closed meter) spills it synchronously."""
        try:
            self._send.send_nowait(event)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._spill_now([event])
            return
        if self._idle.is_set():
            self._idle = trio.Event()

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
            # Cancelled (or crashed) with events in memory, the batch in hand included: keep them on disk. A
            # batch cancelled mid-write may have been committed too: replay is idempotent.
            self._spill_buffered()

    async def drain(self, timeout_s: float) -> None:
        """Stop taking events into memory and write those buffered within ``timeout_s`` (shutdown).

        A write still running at the deadline is cut short and its batch spilled, as is everything still
        in memory then (whether or not ``run`` is running); events recorded after this spill at once.
        """
        self._deadline = trio.current_time() + timeout_s
        for scope in self._write_scopes:
            scope.deadline = min(scope.deadline, self._deadline)
        self._send.close()
        with trio.move_on_at(self._deadline):
            await self._idle.wait()
        self._spill_buffered(keep_pending=True)  # the batch being written is its writer's to spill

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
            batch = self._pending = [first]  # held where a cancellation's cleanup finds it
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
            self._pending = []
            if not self._recv.statistics().current_buffer_used:
                self._idle.set()

    async def _write(self, batch: Sequence[UsageEvent]) -> None:
        started = time.perf_counter()
        await trio.lowlevel.checkpoint()
        try:
            new = await self._store(batch)
        except Exception as exc:  # an event the driver cannot even encode: the batch goes to disk, not away
            log.exception("usage batch of %d not written; spilling to %s", len(batch), self.spill_dir)
            new = exc
        if not isinstance(new, int):  # unreachable, timed out or broken: the batch goes to disk, not away
            if self._db_ok:
                log.error("usage batch of %d not written (%s); spilling to %s", len(batch), new, self.spill_dir)
            self._db_ok = False
            with trio.CancelScope(shield=True):
                await self._spill(batch)
            return
        self._db_ok = True
        self._last_batch_s = time.perf_counter() - started
        self._count_written(len(batch), new)

    async def _store(self, chunk: Sequence[UsageEvent]) -> int | BaseException:
        """Write ``chunk``; return how many events were new, or why PostgreSQL did not take it (away,
        timed out). Events it refuses (their organization is gone...) are found one by one and set aside
        in ``refused.jsonl``; the others are written."""
        await trio.lowlevel.checkpoint()
        try:
            return await self._record_batch(chunk)
        except (StoreUnavailableError, trio.TooSlowError) as exc:
            return exc
        except StoreError as exc:
            first_error = exc
        new = 0
        refused: list[UsageEvent] = []
        for event in chunk:
            try:
                if len(chunk) == 1:  # already tried alone
                    raise first_error
                new += await self._record_batch([event])
            except (StoreUnavailableError, trio.TooSlowError) as exc:
                return exc
            except StoreError as exc:
                log.error("usage event %s refused by the ledger (%s); moved to %s", event.request_id, exc, _REFUSED)
                refused.append(event)
        if refused:
            lines = [e.to_json() for e in refused]
            await trio.to_thread.run_sync(self._append_lines, self.spill_dir / _REFUSED, lines)
            self._refused += len(refused)
        return new

    async def _record_batch(self, chunk: Sequence[UsageEvent]) -> int:
        # One write, within write_timeout_s and never past a drain's deadline (raises TooSlowError).
        deadline = min(trio.current_time() + self.write_timeout_s, self._deadline)
        with trio.CancelScope(deadline=deadline) as scope:
            self._write_scopes.add(scope)
            try:
                return await record_batch(self.db, chunk)
            finally:
                self._write_scopes.discard(scope)
        raise trio.TooSlowError

    def _count_written(self, offered: int, new: int, *, replayed: bool = False) -> None:
        self._batches += 1
        self._written += new
        self._duplicates += offered - new
        if replayed:
            self._replayed += new
        if self._on_written is not None and new:
            self._on_written(new)

    # Spilling and replay ---------------------------------------------------------------------------------

    def _append_lines(self, path: Path, lines: Sequence[str]) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            data = "".join(line + "\n" for line in lines).encode()
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a crash cut the last line short: ours must not run on from it
            os.write(fd, data)
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

    def _spill_buffered(self, *, keep_pending: bool = False) -> None:
        left: list[UsageEvent] = [] if keep_pending else self._pending
        self._pending = [] if not keep_pending else self._pending
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
            await trio.sleep(self.replay_every_s)

    def _pending_files(self) -> list[Path]:
        if not self.spill_dir.exists():
            return []
        return sorted(self.spill_dir.glob("replaying-*.jsonl"))

    async def replay(self) -> int:
        """Write what was spilled; return how many events replay has made new to the ledger so far.

        Files set aside earlier go first, oldest first; the spill file is taken aside only once they are
        all written, so an outage leaves one file waiting, not one per round. Stops at the first batch
        PostgreSQL does not take (the files stay for the next round).
        """
        async with self._replay_lock:
            for path in [*self._legacy_spools(), *self._pending_files()]:
                if not await self._replay_file(path):
                    return self._replayed
            async with self._spill_lock:
                spill = self.spill_dir / _SPILL
                if not (spill.exists() and spill.stat().st_size):
                    return self._replayed
                aside = self.spill_dir / f"replaying-{time.time_ns()}-{uuid.uuid4().hex[:8]}.jsonl"
                spill.rename(aside)
            await self._replay_file(aside)
            return self._replayed

    def _legacy_spools(self) -> list[Path]:
        legacy = self.spill_dir.parent / "usage-spool.jsonl"
        return [legacy] if legacy.exists() else []

    async def _replay_file(self, path: Path) -> bool:
        """Replay one file and delete it; False (the file kept) when PostgreSQL does not take a batch."""
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
        for i in range(0, len(events), self.batch_size):
            chunk = events[i : i + self.batch_size]
            new = await self._store(chunk)
            if not isinstance(new, int):  # still away: keep the file (what went in counts once: idempotent)
                log.warning("usage spill replay paused (%s): %s kept", new or "timeout", path.name)
                return False
            self._db_ok = True
            new_total += new
            self._count_written(len(chunk), new, replayed=True)
        if damaged:
            log.error("%d damaged usage spill lines from %s moved to %s", len(damaged), path.name, _DAMAGED)
            await trio.to_thread.run_sync(self._append_lines, self.spill_dir / _DAMAGED, damaged)
            self._damaged += len(damaged)
        await trio.to_thread.run_sync(partial(path.unlink, missing_ok=True))
        if new_total:
            log.info("usage spill replay: %d events written from %s", new_total, path.name)
        return True

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
            refused=self._refused,
            damaged=self._damaged,
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
