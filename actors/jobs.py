"""The job worker: runs conversion jobs (:mod:`bitnet_actor.services.models.jobs`) taken from a Redis stream.

Owns one consumer of the group :data:`~bitnet_actor.services.models.jobs.GROUP` on the stream
:data:`~bitnet_actor.services.models.jobs.STREAM` and a work directory. Delivery is at least once: an entry is
acknowledged (XACK) only after its job's final state is committed in PostgreSQL; an entry for a job already
finished is just acknowledged. While a job runs its lease is renewed (and the stream entry re-claimed, so its
idle time stays low) every ``heartbeat_s``; a worker that dies leaves the entry pending and the lease
running out, and after ``lease_s`` another worker takes both (XAUTOCLAIM, then a re-claim in PostgreSQL).
A failed attempt is retried after a backoff (doubling) up to the job's ``max_attempts``; the last failure
fails the job and writes a dead-letter entry on :data:`~bitnet_actor.services.models.jobs.DEAD_STREAM`.

The conversion runs in a worker thread (one at a time: CPU concurrency 1), its progress written to the job
row at most every ``heartbeat_s``, a cancel request stopping it between tensors. Its output is written under a
temporary name and ingested as a new version (lineage: parent = source) in one transaction, so nothing
partial is ever visible; temporaries are removed on failure or cancel, and leftovers swept at start.

Restart policy: supervised like the usage meter (restarted on a crash, bounded); a job it was running is
taken again when its lease passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from bitnet_actor.engine.errors import DeviceError, ModelLoadError
from bitnet_actor.services.errors import NotFoundError, ServiceError
from bitnet_actor.services.models import jobs as job_service
from bitnet_actor.services.models import registry, uploads

if TYPE_CHECKING:
    from collections.abc import Callable

    from bitnet_actor.services.models.encrypted import EncryptedObjects
    from bitnet_actor.services.models.files import LocalFiles
    from bitnet_actor.stores.postgres import Database
    from bitnet_actor.stores.redis import RedisStore

__all__ = ["JobWorker"]

log = logging.getLogger(__name__)

_CPU = trio.CapacityLimiter(1)  # conversions are CPU- and memory-heavy: one at a time per process


class JobCancelledError(Exception):
    """The job's cancel flag was seen (or this worker lost its lease)."""


def _default_convert(*args: Any, **kwargs: Any) -> Any:
    from bitnet_actor.engine.convert import convert_model

    return convert_model(*args, **kwargs)


class JobWorker:
    """Runs conversion jobs from the Redis stream (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        redis: RedisStore,
        objects: EncryptedObjects,
        files: LocalFiles,
        work_dir: Path,
        *,
        name: str | None = None,
        lease_s: float = 60.0,
        heartbeat_s: float = 0.5,
        block_ms: int = 1000,
        backoff_s: float = 1.0,
        convert: Callable[..., Any] = _default_convert,
    ) -> None:
        self._db, self._redis, self._objects, self._files = db, redis, objects, files
        self.work_dir = work_dir
        self.name = name or f"worker-{uuid.uuid4().hex[:12]}"
        self.lease_s, self.heartbeat_s, self.block_ms, self.backoff_s = lease_s, heartbeat_s, block_ms, backoff_s
        self._convert = convert

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take and run jobs until cancelled."""
        await trio.to_thread.run_sync(self._sweep)
        await self._ensure_group()
        task_status.started()
        while True:
            for entry_id, fields in await self._next():
                await self._handle(entry_id, fields)

    def _sweep(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.work_dir.glob(".*.converting-*"):
            _remove(leftover)
        for leftover in self.work_dir.glob("job-*"):
            _remove(leftover)

    async def _ensure_group(self) -> None:
        async def create(r: Any) -> None:  # noqa: ASYNC910  # an asyncio coroutine (RedisStore.run)
            try:
                await r.xgroup_create(job_service.STREAM, job_service.GROUP, id="0", mkstream=True)
            except Exception as exc:  # BUSYGROUP: it exists
                if "BUSYGROUP" not in str(exc):
                    raise

        await self._redis.run(create)

    async def _next(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries a dead worker left (idle past the lease) first, else new ones (blocking a while)."""
        stale: Any = await self._redis.run(
            lambda r: r.xautoclaim(
                job_service.STREAM, job_service.GROUP, self.name, min_idle_time=int(self.lease_s * 1000), count=1
            )
        )
        if stale and stale[1]:
            return [(e[0], e[1]) for e in stale[1] if e[1] is not None]
        got: Any = await self._redis.run(
            lambda r: r.xreadgroup(
                job_service.GROUP, self.name, {job_service.STREAM: ">"}, count=1, block=self.block_ms
            )
        )
        return [(e[0], e[1]) for _, entries in (got or []) for e in entries]

    async def _ack(self, entry_id: bytes) -> None:
        await self._redis.run(lambda r: r.xack(job_service.STREAM, job_service.GROUP, entry_id))

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            job_id, org_id = uuid.UUID(fields[b"job_id"].decode()), uuid.UUID(fields[b"org_id"].decode())
        except (KeyError, ValueError):
            log.warning("dropping a malformed job entry %r", fields)
            await self._ack(entry_id)
            return
        backoff = self.backoff_s
        while True:
            job = await job_service.claim(self._db, org_id, job_id, worker=self.name, lease_s=self.lease_s)
            if job is None:
                try:
                    current = await job_service.get_job(self._db, org_id, job_id)
                except NotFoundError:
                    await self._ack(entry_id)
                    return
                if current.finished:
                    await self._ack(entry_id)  # done already (a redelivery): idempotent by job id
                return  # another worker holds a live lease: leave the entry pending
            state = "failed" if job.state == "failed" else await self._attempt(job, entry_id)
            if state == "queued":  # retry after a backoff
                await trio.sleep(backoff)
                backoff *= 2
                continue
            # The job's end is recorded: its dead letter and the ack follow even if this worker is being
            # cancelled now (else the entry is redelivered, found finished and acked with no dead letter).
            with trio.move_on_after(10, shield=True):
                if state == "failed":
                    current = await job_service.get_job(self._db, org_id, job_id)
                    dead = {"job_id": str(job_id), "org_id": str(org_id), "error": current.error or ""}
                    await self._redis.run(lambda r, d=dead: r.xadd(job_service.DEAD_STREAM, d))  # type: ignore[misc]
                await self._ack(entry_id)
            return

    async def _attempt(self, job: job_service.Job, entry_id: bytes) -> str:
        """One attempt; the job's state after it."""
        try:
            version_id = await self._run_job(job, entry_id)
        except JobCancelledError:
            await job_service.finish_cancelled(self._db, job, worker=self.name)
            return "cancelled"
        except Exception as exc:
            cause = _leaf(exc)
            # The loader's or converter's refusal of the model would be the same on every attempt.
            permanent = isinstance(cause, (ModelLoadError, ServiceError)) and not isinstance(cause, DeviceError)
            log.warning("job %s attempt %d failed: %s", job.id, job.attempts, cause, exc_info=not permanent)
            error = str(cause) if permanent else f"{type(cause).__name__}: {cause}"
            return await job_service.fail_attempt(self._db, job, worker=self.name, error=error, permanent=permanent)
        if await job_service.succeed(self._db, job, worker=self.name, version_id=version_id):
            return "succeeded"
        return "lost"

    async def _run_job(self, job: job_service.Job, entry_id: bytes) -> uuid.UUID:
        if job.source_version_id is None:
            raise RuntimeError("the source version was deleted")
        async with self._db.transaction(org_id=job.org_id, readonly=True) as tx:
            name_version = await tx.fetchrow(
                "SELECT name, version FROM model_versions WHERE id = $1", job.source_version_id
            )
        if name_version is None:
            raise RuntimeError("the source version was deleted")
        source = await registry.get_version(self._db, job.org_id, name_version["name"], name_version["version"])
        src_path = await self._files.path_of(source)
        if not await trio.Path(src_path).exists():
            raise FileNotFoundError(f"the source's file {Path(src_path).name} is missing")
        job_dir = self.work_dir / f"job-{job.id}-{uuid.uuid4().hex[:8]}"
        await trio.Path(job_dir).mkdir(parents=True)
        dst = job_dir / ("model" if job.target == "hf-ternary" else "model.gguf")
        stop = threading.Event()
        latest: dict[str, Any] = {}
        started = time.monotonic()

        def progress(tensors_done: int, tensors_total: int, bytes_done: int, bytes_total: int) -> None:
            elapsed = time.monotonic() - started
            eta = elapsed * (bytes_total - bytes_done) / bytes_done if bytes_done else None
            latest.update(
                tensors_done=tensors_done, tensors_total=tensors_total, bytes_done=bytes_done,
                bytes_total=bytes_total, eta_s=round(eta, 2) if eta is not None else None,
            )  # fmt: skip

        spent: list[float] = []

        def convert() -> Any:
            t0 = time.thread_time()
            try:
                return self._convert(
                    src_path, dst, job.target, progress=progress, should_stop=stop.is_set,
                    source_sha256=source.sha256,
                )  # fmt: skip
            finally:
                spent.append(time.thread_time() - t0)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_alive, job, entry_id, latest, stop)
                result = await trio.to_thread.run_sync(convert, limiter=_CPU)
                nursery.cancel_scope.cancel()
            if stop.is_set():
                raise JobCancelledError
            await job_service.heartbeat(self._db, job, worker=self.name, lease_s=self.lease_s, progress=latest)
            spooled = await trio.to_thread.run_sync(_spool_output, result.path, job_dir)
            made = await uploads.ingest(
                self._db, self._objects, job.org_id, spooled, name=job.output_name, version=job.output_version,
                temp_root=job_dir, parent_id=source.id,
                origin="converted" if job.kind == "convert" else "quantized",
                origin_details={
                    "tool": "bitnet-actor convert", "options": {"to": job.target}, "source_sha256": source.sha256,
                    "job_id": str(job.id),
                },
            )  # fmt: skip
            return made.id
        except Exception as exc:
            if stop.is_set() or type(exc).__name__ == "ConversionCancelled":
                raise JobCancelledError from exc
            cause = _leaf(exc)
            if isinstance(cause, ModelLoadError) and src_path in str(cause):  # name the version, not our path
                raise type(cause)(str(cause).replace(src_path, source.ref)) from exc
            raise
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_remove, job_dir)
            if spent:
                with trio.move_on_after(5, shield=True):
                    await job_service.add_cpu_seconds(self._db, job, spent[0])

    async def _keep_alive(
        self, job: job_service.Job, entry_id: bytes, latest: dict[str, Any], stop: threading.Event
    ) -> None:
        """Renew the lease with the latest progress, keep the stream entry ours, watch the cancel flag."""
        while True:
            go_on = await job_service.heartbeat(
                self._db, job, worker=self.name, lease_s=self.lease_s, progress=dict(latest) or None
            )
            if not go_on:
                stop.set()
                return
            await self._redis.run(
                lambda r: r.xclaim(job_service.STREAM, job_service.GROUP, self.name, 0, [entry_id], justid=True)
            )
            await trio.sleep(self.heartbeat_s)


def _leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups: what to tell the user."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _spool_output(path: Path, job_dir: Path) -> uploads.Spooled:
    """The conversion's output as one file for ingest (an HF directory packed as a tar), with its digest."""
    if path.is_dir():
        packed = job_dir / "model.tar"
        with tarfile.open(packed, "w") as tf:
            for item in sorted(path.iterdir()):
                tf.add(item, arcname=item.name)
        path = packed
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return uploads.Spooled(path, digest.hexdigest(), os.path.getsize(path))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
