"""Operator commands for customers' models: ``bitnet-actor models push | list | quantize`` and ``bitnet-actor admin
rotate-keys | shred-org``.

They use the service's configuration (its PostgreSQL, object store and master keys; the embedded ones of the
data dir when nothing is configured), and the same services as the API: a pushed model is inspected by the
engine in a worker and stored encrypted exactly as an upload through ``POST /api/v1/orgs/{org}/models``.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, TextIO

import trio
import trio_asyncio

from bitnet_actor.services import tenancy
from bitnet_actor.services.billing.plans import org_profile
from bitnet_actor.services.errors import ConflictStateError, ValidationError
from bitnet_actor.services.models import jobs, registry, uploads
from bitnet_actor.services.models.encrypted import EncryptedObjects
from bitnet_actor.services.models.keys import LocalKeyProvider
from bitnet_actor.stores import open_database_only, open_redis_only, region_stores

if TYPE_CHECKING:
    from pathlib import Path

    from bitnet_actor.config import Settings

__all__ = ["list_models", "push", "quantize", "rotate_keys", "shred_org"]

_CHUNK = 1 << 20


class _Bytes:
    """A byte progress bar on a terminal (start and end lines otherwise)."""

    def __init__(self, out: TextIO, label: str, total: int) -> None:
        self.out, self.label, self.total, self.t0, self.last = out, label, total, time.perf_counter(), -1
        self.tty = out.isatty()
        if not self.tty:
            print(f"pushing {label} ({total:,} bytes) ...", file=out)

    def __call__(self, done: int) -> None:
        pct = 100 * done // max(self.total, 1)
        if self.tty and pct != self.last:
            self.last = pct
            self.out.write(f"\rpushing {self.label} [{'#' * (pct * 30 // 100):<30}] {pct:3d}% ({done:,} bytes)")
            self.out.flush()

    def close(self, what: str) -> None:
        if self.tty:
            self.out.write("\n")
        print(f"{what} in {time.perf_counter() - self.t0:.1f} s", file=self.out)


def _size(path: Path) -> int:
    """Bytes to push: a file's, or a directory's files'."""
    if not path.exists():
        raise ValidationError(f"{path}: no such file or directory")
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def _tar_directory(path: Path) -> bytes:
    """An HF model directory as an uncompressed tar of its top-level files (what an upload takes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for item in sorted(path.iterdir()):
            if item.is_file() and not item.is_symlink():
                tf.add(item, arcname=item.name)
    return buf.getvalue()


class _DirectoryChunks:
    """An HF directory as tar bytes, in chunks (a class, not an async generator: flake8-async ASYNC900)."""

    def __init__(self, path: Path, progress: _Bytes) -> None:
        self.path, self.progress, self.data, self.at = path, progress, b"", -1

    def __aiter__(self) -> _DirectoryChunks:
        return self

    async def __anext__(self) -> bytes:
        if self.at < 0:
            self.data, self.at = await trio.to_thread.run_sync(_tar_directory, self.path), 0
        if self.at >= len(self.data):
            raise StopAsyncIteration
        chunk = self.data[self.at : self.at + _CHUNK]
        self.at += len(chunk)
        self.progress(self.at)
        return chunk


async def push(settings: Settings, path: Path, *, org: str, name: str, version: str, out: TextIO = sys.stderr) -> str:
    """Push a GGUF file or an HF model directory as ``name:version`` of ``org``; return the version as text.

    Raises:
        ValidationError: no such path, or the checker's / loader's refusal. ConflictStateError: the version exists.
    """
    total = await trio.to_thread.run_sync(_size, path)
    async with trio_asyncio.open_loop(), open_database_only(settings) as db, AsyncExitStack() as stack:
        org_id = await tenancy.org_id_by_name(db, org)
        stores = region_stores(settings)
        stack.push_async_callback(stores.aclose)
        objects = EncryptedObjects(stores, db, LocalKeyProvider.from_settings(settings))
        spool_dir = settings.data_dir / "uploads-tmp"
        progress = _Bytes(out, str(path), total)
        limit = (await org_profile(db, org_id)).plan.max_upload_bytes
        is_dir = await trio.Path(path).is_dir()
        chunks = _DirectoryChunks(path, progress) if is_dir else uploads.FileChunks(path, progress)
        spooled = await uploads.spool(chunks, spool_dir, limit=limit)
        progress.close("uploaded; inspected and stored")
        made = await uploads.ingest(db, objects, org_id, spooled, name=name, version=version, temp_root=spool_dir)
    facts = made.facts
    return (
        f"{made.ref} published in {org} (sha256 {made.sha256}): {facts.get('architecture')}, "
        f"{facts.get('parameter_count', 0):,} parameters, {facts.get('format')}"
    )


async def list_models(settings: Settings, *, org: str) -> str:
    """The organization's model versions (and the platform's) as a table."""
    async with trio_asyncio.open_loop(), open_database_only(settings) as db:
        org_id = await tenancy.org_id_by_name(db, org)
        versions = await registry.list_versions(db, org_id)
    rows = [
        (
            v.ref,
            "platform" if v.org_id is None else "own",
            v.state,
            ",".join(v.aliases) or "-",
            str(v.facts.get("parameter_count", "-")),
            v.origin,
            (v.sha256 or "-")[:12],
        )
        for v in versions
    ]
    header = ("model", "owner", "state", "aliases", "parameters", "origin", "sha256")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


class _Tensors:
    """A job's progress on a terminal: a bar over tensors done with the ETA (a line per 10% otherwise)."""

    def __init__(self, out: TextIO, label: str) -> None:
        self.out, self.label, self.tty, self.last, self.state = out, label, out.isatty(), -1, ""

    def __call__(self, job: jobs.Job) -> None:
        p = job.progress or {}
        total, done = int(p.get("tensors_total") or 0), int(p.get("tensors_done") or 0)
        pct = 100 * done // total if total else 0
        eta = p.get("eta_s")
        tail = f" eta {float(eta):.0f} s" if eta is not None and job.state == "running" else ""
        if self.tty:
            bar = "#" * (pct * 30 // 100)
            self.out.write(f"\r{self.label} {job.state:<9} [{bar:<30}] {pct:3d}% ({done}/{total or '?'} tensors){tail}")
            self.out.flush()
        elif pct // 10 != self.last // 10 or job.state != self.state:
            print(f"{self.label}: {job.state}, {done}/{total or '?'} tensors ({pct}%){tail}", file=self.out)
        self.last, self.state = pct, job.state

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")


async def quantize(
    settings: Settings,
    source: str,
    *,
    org: str,
    target: str,
    name: str,
    version: str,
    wait: bool = False,
    poll_s: float = 0.5,
    out: TextIO = sys.stderr,
) -> str:
    """Queue a conversion job of ``source`` (``name:version`` of ``org``) into ``name:version`` in ``target``,
    as ``POST /api/v1/orgs/{org}/jobs`` does; a running server's job worker takes it from the Redis stream.
    With ``wait``, follow its progress until it ends; return the job as JSON.

    Raises:
        ValidationError, NotFoundError, ConflictStateError, ThrottledError: as the API (a bad target or
        reference, no such source, the output exists, too many unfinished jobs). ConflictStateError also
        when a waited-for job fails or is cancelled (the job's error in the message).
    """
    async with trio_asyncio.open_loop(), open_database_only(settings) as db, open_redis_only(settings) as redis:
        org_id = await tenancy.org_id_by_name(db, org)
        job = await jobs.create_job(
            db, redis, org_id, source=source, target=target, output_name=name, output_version=version
        )
        if wait:
            bar = _Tensors(out, f"job {job.id}")
            try:
                while job.state not in jobs.FINAL:
                    bar(job)
                    await trio.sleep(poll_s)
                    job = await jobs.get_job(db, org_id, job.id)
                bar(job)
            finally:
                bar.close()
            if job.state != "succeeded":
                raise ConflictStateError(f"job {job.id} {job.state}: {job.error or 'no error recorded'}")
    return json.dumps(job.to_json(), indent=2)


async def rotate_keys(settings: Settings) -> str:
    """Re-wrap every model object's data key under the current master key (data untouched)."""
    async with trio_asyncio.open_loop(), open_database_only(settings, as_owner=True) as owner, AsyncExitStack() as st:
        stores = region_stores(settings)
        st.push_async_callback(stores.aclose)
        report = await EncryptedObjects(stores, owner, LocalKeyProvider.from_settings(settings)).rotate(owner)
    return (
        f"data keys re-wrapped under the current master key: {report.rewrapped}"
        f" (already current: {report.already_current})"
    )


async def shred_org(settings: Settings, *, org: str) -> str:
    """Crypto-shred an organization's model objects: their data keys destroyed, their ciphertext deleted."""
    async with trio_asyncio.open_loop(), open_database_only(settings) as db, AsyncExitStack() as stack:
        org_id = await tenancy.org_id_by_name(db, org)
        stores = region_stores(settings)
        stack.push_async_callback(stores.aclose)
        destroyed = await EncryptedObjects(stores, db, LocalKeyProvider.from_settings(settings)).shred_org(org_id)
        async with db.transaction(org_id=org_id) as tx:
            await tx.execute("DELETE FROM model_uploads WHERE org_id = $1", org_id)
            await tx.execute("DELETE FROM model_versions WHERE org_id = $1", org_id)
            await tx.execute("DELETE FROM model_blobs WHERE org_id = $1", org_id)
    return f"{org}: {destroyed} data keys destroyed; its model objects can never be decrypted again"
