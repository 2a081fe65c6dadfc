"""Conversion jobs: make a new version of a model from a ready one (``quantize`` to a GGUF TQ1_0 / TQ2_0 /
I2_S, ``convert`` to a packed ternary HF directory).

A job row lives in PostgreSQL (``model_jobs``, the system of record); its id, with its organization's, is
queued on the Redis stream :data:`STREAM` for the job workers (:mod:`actors.jobs`). The row's state moves
``queued -> running -> succeeded | failed | cancelled``; ``running`` is held by one worker under a lease
(``lease_until``, renewed by each heartbeat): a worker that dies stops renewing, and once the lease is past
another worker may :func:`claim` the job again. Every claim counts an attempt; a failure under
``max_attempts`` puts the job back to ``queued`` (retried later), the last one fails it for good
(dead-lettered). A finished job is never claimed again, so a stream entry delivered twice is harmless.

The web layer calls :func:`create_job`, :func:`get_job`, :func:`list_jobs` and :func:`request_cancel` (and
:func:`queue_depth` for the metrics); the worker :func:`claim`, :func:`heartbeat`, :func:`succeed`,
:func:`fail_attempt` and :func:`finish_cancelled`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bitnet_actor.services.billing import plans
from bitnet_actor.services.errors import ConflictStateError, NotFoundError, ThrottledError, ValidationError
from bitnet_actor.services.models import registry

if TYPE_CHECKING:
    from datetime import datetime
    from uuid import UUID

    from bitnet_actor.stores.postgres import Database, Record
    from bitnet_actor.stores.redis import RedisStore

__all__ = [
    "DEAD_STREAM",
    "GROUP",
    "STREAM",
    "TARGETS",
    "Job",
    "QueueDepth",
    "claim",
    "create_job",
    "enqueue",
    "fail_attempt",
    "finish_cancelled",
    "get_job",
    "heartbeat",
    "list_jobs",
    "queue_depth",
    "request_cancel",
    "succeed",
]

STREAM = "bitnet:jobs"
"""The Redis stream of job ids (fields ``job_id``, ``org_id``)."""
GROUP = "job-workers"
"""The consumer group of the job workers on :data:`STREAM`."""
DEAD_STREAM = "bitnet:jobs:dead"
"""Where a job that failed its last attempt is recorded (``job_id``, ``org_id``, ``error``)."""
TARGETS = {"hf-ternary": "convert", "tq1_0": "quantize", "tq2_0": "quantize", "i2_s": "quantize"}
"""Target format -> job kind."""
"""Queued plus running jobs an organization may have at once (more: 429)."""
FINAL = ("succeeded", "failed", "cancelled")

_COLUMNS = (
    "j.id, j.org_id, j.kind, j.source_version_id, j.target, j.output_name, j.output_version, j.state,"
    " j.attempts, j.max_attempts, j.progress, j.error, j.result_version_id, j.cancel_requested, j.created_at,"
    " j.started_at, j.finished_at, j.lease_until, j.worker, j.cpu_seconds"
)


@dataclass(frozen=True, slots=True)
class Job:
    """One job as the API shows it (plus what the worker needs)."""

    id: UUID
    org_id: UUID
    kind: str
    source_version_id: UUID | None
    target: str
    output_name: str
    output_version: str
    state: str
    attempts: int
    max_attempts: int
    progress: dict[str, Any]
    error: str | None
    result_version_id: UUID | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_until: datetime | None
    worker: str | None
    cpu_seconds: float = 0.0

    @classmethod
    def from_row(cls, row: Record) -> Job:
        """From a row selected with ``_COLUMNS``."""
        values = dict(row)
        progress = values["progress"]
        values["progress"] = dict(json.loads(progress) if isinstance(progress, str) else (progress or {}))
        return cls(**values)

    @property
    def finished(self) -> bool:
        """Whether the job reached a final state."""
        return self.state in FINAL

    def to_json(self) -> dict[str, Any]:
        """The API's view."""

        def ts(value: datetime | None) -> int | None:
            return int(value.timestamp()) if value else None

        return {
            "object": "model.job",
            "id": str(self.id),
            "kind": self.kind,
            "source_version_id": str(self.source_version_id) if self.source_version_id else None,
            "target": self.target,
            "output": f"{self.output_name}:{self.output_version}",
            "state": self.state,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "progress": self.progress,
            "error": self.error,
            "result_version_id": str(self.result_version_id) if self.result_version_id else None,
            "cancel_requested": self.cancel_requested,
            "cpu_seconds": round(self.cpu_seconds, 3),
            "created_at": ts(self.created_at),
            "started_at": ts(self.started_at),
            "finished_at": ts(self.finished_at),
        }


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Entries of :data:`STREAM` by their state in the workers' group (all organizations together)."""

    waiting: int
    """Not yet delivered to any worker."""
    pending: int
    """Delivered and not yet acknowledged: running, awaiting a retry, or left by a dead worker."""


_DEPTH_CAP = 10_000
"""On Redis < 7 (no ``lag`` in XINFO GROUPS) the waiting entries are counted by reading them, at most this many."""


async def queue_depth(redis: RedisStore, *, stream: str = STREAM, group: str = GROUP) -> QueueDepth:
    """How many entries of ``stream`` wait for a worker of ``group`` and how many a worker holds.

    Before any worker created the group every entry waits. The stream is never trimmed, so its length is not
    the depth: ``waiting`` is the group's ``lag`` (Redis >= 7), else the entries after its last delivered id,
    counted up to :data:`_DEPTH_CAP`.
    """
    name = group

    async def read(r: Any) -> QueueDepth:  # noqa: ASYNC910  # an asyncio coroutine (RedisStore.run)
        if not await r.exists(stream):
            return QueueDepth(0, 0)
        groups = await r.xinfo_groups(stream)
        info = next((g for g in groups if g["name"] in (name, name.encode())), None)
        if info is None:
            return QueueDepth(int(await r.xlen(stream)), 0)
        lag = info.get("lag")
        if lag is None:  # Redis < 7, or 7 after deletions made the lag unknown
            last = info["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else str(last)
            lag = len(await r.xrange(stream, min=f"({last}", max="+", count=_DEPTH_CAP))
        return QueueDepth(int(lag), int(info["pending"]))

    return await redis.run(read)


async def enqueue(redis: RedisStore, job_id: UUID, org_id: UUID) -> None:
    """Put a job's id on :data:`STREAM` (a job worker takes it)."""
    fields = {"job_id": str(job_id), "org_id": str(org_id)}
    await redis.run(lambda r: r.xadd(STREAM, fields))  # type: ignore[arg-type]


async def create_job(
    db: Database,
    redis: RedisStore,
    org_id: UUID,
    *,
    source: str,
    target: str,
    output_name: str,
    output_version: str,
    created_by: UUID | None = None,
    max_attempts: int = 3,
) -> Job:
    """A new queued job making ``output_name:output_version`` from ``source`` (``name:version``, a ready
    version of the organization) in ``target``; its id is queued for the workers.

    Raises:
        ValidationError: a bad target, source reference, name or version.
        NotFoundError: the source is not a ready version of this organization.
        ConflictStateError: the output version exists, or another unfinished job makes it.
        ThrottledError: the organization has its plan's ``max_active_jobs`` unfinished jobs already.
    """
    if target not in TARGETS:
        raise ValidationError(f"target must be one of {', '.join(TARGETS)}", field="target")
    if ":" not in source:
        raise ValidationError("source must name a version: 'name:version'", field="source")
    registry.check_name(output_name)
    registry.check_version(output_version)
    src = await registry.resolve(db, org_id, source)
    if src.org_id != org_id:
        raise NotFoundError(f"the model {source!r} is not one of this organization's")
    if await registry.version_exists(db, org_id, output_name, output_version):
        raise ConflictStateError(f"model {output_name} already has a version {output_version!r}")
    limit = (await plans.org_profile(db, org_id)).plan.max_active_jobs
    async with db.transaction(org_id=org_id) as tx:
        # One organization's job creations in turn, so the count below cannot be raced past.
        await tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('model_jobs:' || $1::uuid::text, 0))", org_id)
        active = await tx.fetch(
            "SELECT output_name, output_version FROM model_jobs WHERE state IN ('queued', 'running')"
        )
        if any((r["output_name"], r["output_version"]) == (output_name, output_version) for r in active):
            raise ConflictStateError(f"another job is making {output_name}:{output_version}")
        if len(active) >= limit:
            raise ThrottledError(
                f"this organization has {len(active)} unfinished jobs (its plan allows {limit})", retry_after=30
            )
        job_id = await tx.fetchval(
            "INSERT INTO model_jobs (org_id, kind, source_version_id, target, output_name, output_version,"
            " created_by, max_attempts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            org_id,
            TARGETS[target],
            src.id,
            target,
            output_name,
            output_version,
            created_by,
            max_attempts,
        )
    await enqueue(redis, job_id, org_id)
    return await get_job(db, org_id, job_id)


async def get_job(db: Database, org_id: UUID, job_id: UUID) -> Job:
    """A job of ``org_id``.

    Raises:
        NotFoundError: none (or another organization's).
    """
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        row = await tx.fetchrow(
            f"SELECT {_COLUMNS} FROM model_jobs j WHERE j.id = $1 AND j.org_id = $2", job_id, org_id
        )
    if row is None:
        raise NotFoundError("no such job")
    return Job.from_row(row)


async def list_jobs(db: Database, org_id: UUID, *, limit: int = 100) -> list[Job]:
    """The organization's jobs, newest first."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        rows = await tx.fetch(
            f"SELECT {_COLUMNS} FROM model_jobs j WHERE j.org_id = $1 ORDER BY j.created_at DESC LIMIT $2",
            org_id,
            limit,
        )
    return [Job.from_row(r) for r in rows]


async def request_cancel(db: Database, org_id: UUID, job_id: UUID) -> Job:
    """Ask for a job to stop: a queued one is cancelled at once, a running one by its worker (which polls
    the flag between tensors); a finished one is left as it is.

    Raises:
        NotFoundError: no such job.
    """
    async with db.transaction(org_id=org_id) as tx:
        await tx.execute(
            "UPDATE model_jobs SET cancel_requested = true,"
            " state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,"
            " finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END"
            " WHERE id = $1 AND org_id = $2 AND state IN ('queued', 'running')",
            job_id,
            org_id,
        )
    return await get_job(db, org_id, job_id)


# -- the worker's side ---------------------------------------------------------------------------------------


async def claim(db: Database, org_id: UUID, job_id: UUID, *, worker: str, lease_s: float) -> Job | None:
    """Take a job to run: a queued one, or a running one whose lease has passed (its worker died). Counts
    an attempt and sets the lease. None when the job is not to be run (finished, or another worker holds a
    live lease). A job whose worker died on its last attempt is failed here and returned ``failed`` (for the
    caller's dead letter)."""
    async with db.transaction(org_id=org_id) as tx:
        row = await tx.fetchrow(
            "UPDATE model_jobs j SET state = 'running', attempts = attempts + 1, worker = $3,"
            " lease_until = now() + make_interval(secs => $4), heartbeat_at = now(),"
            " started_at = coalesce(started_at, now()), error = NULL"
            " WHERE j.id = $1 AND j.org_id = $2 AND NOT j.cancel_requested"
            " AND (j.state = 'queued' OR (j.state = 'running' AND j.lease_until < now()"
            " AND j.attempts < j.max_attempts))"
            f" RETURNING {_COLUMNS}",
            job_id,
            org_id,
            worker,
            lease_s,
        )
        if row is None:  # a running job whose cancel was asked and whose worker died: cancel it here
            await tx.execute(
                "UPDATE model_jobs SET state = 'cancelled', finished_at = now() WHERE id = $1 AND org_id = $2"
                " AND state = 'running' AND cancel_requested AND lease_until < now()",
                job_id,
                org_id,
            )
            row = await tx.fetchrow(
                "UPDATE model_jobs j SET state = 'failed', finished_at = now(), lease_until = NULL,"
                " error = 'the worker running its last attempt stopped (no heartbeat within the lease)'"
                " WHERE j.id = $1 AND j.org_id = $2 AND j.state = 'running' AND j.lease_until < now()"
                f" AND j.attempts >= j.max_attempts RETURNING {_COLUMNS}",
                job_id,
                org_id,
            )
    return Job.from_row(row) if row else None


async def heartbeat(
    db: Database, job: Job, *, worker: str, lease_s: float, progress: dict[str, Any] | None = None
) -> bool:
    """Renew the lease (and record ``progress``); True while the job should go on (this worker still holds
    it and no cancel was asked)."""
    async with db.transaction(org_id=job.org_id) as tx:
        cancel = await tx.fetchval(
            "UPDATE model_jobs SET lease_until = now() + make_interval(secs => $3), heartbeat_at = now(),"
            " progress = coalesce($4, progress) WHERE id = $1 AND state = 'running' AND worker = $2"
            " RETURNING cancel_requested",
            job.id,
            worker,
            lease_s,
            progress,
        )
    return cancel is False


async def succeed(db: Database, job: Job, *, worker: str, version_id: UUID) -> bool:
    """Mark the job succeeded with its result version; False if this worker no longer held it."""
    async with db.transaction(org_id=job.org_id) as tx:
        done = await tx.fetchval(
            "UPDATE model_jobs SET state = 'succeeded', result_version_id = $3, finished_at = now(),"
            " lease_until = NULL, error = NULL WHERE id = $1 AND state = 'running' AND worker = $2 RETURNING id",
            job.id,
            worker,
            version_id,
        )
    return done is not None


async def finish_cancelled(db: Database, job: Job, *, worker: str) -> None:
    """Mark the job cancelled (its worker stopped at the cancel flag)."""
    async with db.transaction(org_id=job.org_id) as tx:
        await tx.execute(
            "UPDATE model_jobs SET state = 'cancelled', finished_at = now(), lease_until = NULL"
            " WHERE id = $1 AND state = 'running' AND worker = $2",
            job.id,
            worker,
        )


async def add_cpu_seconds(db: Database, job: Job, seconds: float) -> None:
    """Add an attempt's conversion CPU time to the job (what the job cost, whatever its outcome)."""
    async with db.transaction(org_id=job.org_id) as tx:
        await tx.execute(
            "UPDATE model_jobs SET cpu_seconds = cpu_seconds + $2 WHERE id = $1", job.id, max(0.0, seconds)
        )


async def fail_attempt(db: Database, job: Job, *, worker: str, error: str, permanent: bool = False) -> str:
    """Record a failed attempt: back to ``queued`` while attempts remain, else ``failed`` for good (at once
    when ``permanent``: a refusal that another attempt would repeat). Returns the new state (``''`` if this
    worker no longer held the job)."""
    async with db.transaction(org_id=job.org_id) as tx:
        state: str | None = await tx.fetchval(
            "UPDATE model_jobs SET state = CASE WHEN $4 OR attempts >= max_attempts THEN 'failed' ELSE 'queued' END,"
            " error = $3, worker = NULL, lease_until = NULL,"
            " finished_at = CASE WHEN $4 OR attempts >= max_attempts THEN now() END"
            " WHERE id = $1 AND state = 'running' AND worker = $2 RETURNING state",
            job.id,
            worker,
            error[:2000],
            permanent,
        )
    return state or ""
