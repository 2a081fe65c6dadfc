"""Model uploads: a single streamed body, or a resumable upload of byte ranges; then inspection and the new
version.

Either way the bytes are spooled to a temporary file (sha256 counted on the way, never whole in memory, the
plan's ``max_upload_bytes`` enforced while reading), then :func:`ingest` checks the format
(:mod:`.archive`), unpacks an HF archive safely, has the engine inspect it in a worker (:mod:`.inspect`),
stores the file once, encrypted (:mod:`.encrypted`; the same bytes uploaded again are one blob) and publishes the
version in one transaction. A refused upload leaves no version, no blob and no temporary file.

Resumable uploads store each range as a part object (any replica can take the next range); ranges must
arrive in order, each starting where the last ended (``received_bytes`` tells where to resume after a
dropped connection). ``complete`` concatenates the parts and ingests the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from bitnet_actor.services.errors import ConflictStateError, NotFoundError, ValidationError
from bitnet_actor.services.models import registry

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Callable
    from uuid import UUID

    from bitnet_actor.services.models.encrypted import EncryptedObjects
    from bitnet_actor.stores.postgres import Database

__all__ = [
    "FileChunks",
    "OutOfOrderError",
    "Spooled",
    "TooLargeError",
    "Upload",
    "abort_upload",
    "complete_upload",
    "create_upload",
    "get_upload",
    "ingest",
    "parse_content_range",
    "put_range",
    "spool",
]

_CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class TooLargeError(ValidationError):
    """The upload is over the plan's limit (413)."""


class OutOfOrderError(ConflictStateError):
    """A range that does not start where the upload stands; ``received_bytes`` says where (416)."""

    def __init__(self, message: str, *, received_bytes: int) -> None:
        super().__init__(message)
        self.received_bytes = received_bytes


@dataclass(frozen=True, slots=True)
class Spooled:
    """An upload on local disk."""

    path: Path
    sha256: str
    size: int


async def spool(chunks: AsyncIterable[bytes], directory: Path, *, limit: int | None) -> Spooled:
    """Write ``chunks`` to a new file in ``directory``, counting sha256 and size; the file is removed if
    anything fails.

    Raises:
        TooLargeError: more than ``limit`` bytes.
    """
    await trio.Path(directory).mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", dir=directory)
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            async for chunk in chunks:
                size += len(chunk)
                if limit is not None and size > limit:
                    raise TooLargeError(f"the upload is larger than this plan's limit of {limit} bytes")
                digest.update(chunk)
                await trio.to_thread.run_sync(fh.write, chunk)
    except BaseException:
        _remove(path)
        raise
    return Spooled(path, digest.hexdigest(), size)


def _remove(path: Path) -> None:
    """Remove a spooled file (a quick local unlink, safe in a cancelled scope)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class FileChunks:
    """A local file as an async iterator of 1 MiB chunks (a class, not an async generator: see flake8-async
    ASYNC900); ``on_chunk(bytes_done)`` is called after each."""

    def __init__(self, path: Path, on_chunk: Callable[[int], None] | None = None) -> None:
        self.path, self.on_chunk, self.done = path, on_chunk, 0
        self._fh: Any = None

    def __aiter__(self) -> FileChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._fh is None:
            self._fh = await trio.open_file(self.path, "rb")
        chunk: bytes = await self._fh.read(_CHUNK)
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        self.done += len(chunk)
        if self.on_chunk is not None:
            self.on_chunk(self.done)
        return chunk

    async def aclose(self) -> None:
        """Close the file (also when the reader stops early)."""
        fh, self._fh = self._fh, None
        if fh is not None:
            with trio.CancelScope(shield=True):
                await fh.aclose()


class _JoinedParts:
    """The plaintext of an upload's parts, one after the other."""

    def __init__(self, objects: EncryptedObjects, org_id: UUID, keys: list[str]) -> None:
        self.objects, self.org_id, self.keys = objects, org_id, list(keys)
        self._stream: Any = None

    def __aiter__(self) -> _JoinedParts:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._stream is None:
                if not self.keys:
                    raise StopAsyncIteration
                self._stream = self.objects.open(self.org_id, self.keys.pop(0))
                await self._stream.__aenter__()
            try:
                chunk: bytes = await self._stream.__anext__()
            except StopAsyncIteration:
                await self.aclose()
                continue
            return chunk

    async def aclose(self) -> None:
        """Close the part being read."""
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


async def _inspect(spooled: Spooled, temp_root: Path) -> tuple[str, dict[str, Any]]:
    """(format, facts) of an uploaded file, or the archive's or loader's refusal."""
    from bitnet_actor.services.models.archive import detect_format
    from bitnet_actor.services.models.inspect import inspect_upload

    fmt = await trio.to_thread.run_sync(detect_format, spooled.path)
    inspected = await inspect_upload(spooled.path, temp_root=temp_root)
    try:
        return fmt, inspected.facts.to_json()
    finally:
        with trio.move_on_after(60, shield=True):
            await trio.to_thread.run_sync(inspected.remove)


async def ingest(
    db: Database,
    objects: EncryptedObjects,
    org_id: UUID,
    spooled: Spooled,
    *,
    name: str,
    version: str,
    temp_root: Path,
    created_by: UUID | None = None,
    description: str = "",
    parent_id: UUID | None = None,
    origin: str = "uploaded",
    origin_details: dict[str, Any] | None = None,
) -> registry.ModelVersion:
    """Inspect an uploaded (or converted) file and publish it as ``name:version`` of ``org_id``. The spooled
    file is removed either way. ``parent_id``, ``origin`` and ``origin_details`` record lineage (a job's
    output: its source, ``converted`` or ``quantized``, the tool and options); the file's format, size and
    digest are added to ``origin_details``.

    Raises:
        ValidationError: a bad name or version; the archive's or the loader's refusal (400 with its words).
        ConflictStateError: ``name:version`` exists.
    """
    try:
        registry.check_name(name)
        registry.check_version(version)
        if await registry.version_exists(db, org_id, name, version):
            raise ConflictStateError(f"model {name} already has a version {version!r}")
        fmt, facts = await _inspect(spooled, temp_root)
        blob_id = await _blob(db, objects, org_id, spooled, fmt)
        return await registry.create_version(
            db,
            org_id,
            name=name,
            version=version,
            blob_id=blob_id,
            sha256=spooled.sha256,
            parent_id=parent_id,
            origin=origin,
            origin_details={**(origin_details or {}), "format": fmt, "bytes": spooled.size, "sha256": spooled.sha256},
            description=description,
            created_by=created_by,
            facts=facts,
        )
    finally:
        _remove(spooled.path)


async def _blob(db: Database, objects: EncryptedObjects, org_id: UUID, spooled: Spooled, fmt: str) -> UUID:
    """The organization's blob of these bytes: the existing one (the same bytes uploaded before are stored
    once), else a new one, encrypted under its own data key."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        found: UUID | None = await tx.fetchval(
            "SELECT id FROM model_blobs WHERE org_id = $1 AND sha256 = $2", org_id, spooled.sha256
        )
    if found is not None:
        return found
    stored = await objects.put(org_id, FileChunks(spooled.path))
    if stored.plaintext_sha256 != spooled.sha256:  # the file changed under us: never record a wrong hash
        raise ConflictStateError("the upload changed while it was stored; upload it again")
    async with db.transaction(org_id=org_id) as tx:
        blob_id: UUID = await tx.fetchval(
            "INSERT INTO model_blobs (org_id, sha256, object_key, bytes, format) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT ON CONSTRAINT model_blobs_org_sha_key DO UPDATE SET sha256 = excluded.sha256"
            " RETURNING id",
            org_id,
            spooled.sha256,
            stored.info.key,
            spooled.size,
            fmt,
        )
    return blob_id


# -- resumable uploads --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upload:
    """A resumable upload as the API shows it."""

    id: UUID
    state: str
    total_bytes: int | None
    received_bytes: int
    version_id: UUID | None

    def to_json(self) -> dict[str, Any]:
        """The API's view."""
        return {
            "object": "model.upload",
            "id": str(self.id),
            "state": self.state,
            "total_bytes": self.total_bytes,
            "received_bytes": self.received_bytes,
            "version_id": str(self.version_id) if self.version_id else None,
        }


def parse_content_range(value: str | None) -> tuple[int, int, int | None]:
    """``bytes START-END/TOTAL`` (END inclusive; TOTAL or ``*``) -> (start, end exclusive, total).

    Raises:
        ValidationError: missing or malformed.
    """
    match = _RANGE.match((value or "").strip())
    if not match:
        raise ValidationError("Content-Range must be 'bytes START-END/TOTAL' (or '/*')", field="Content-Range")
    start, last = int(match[1]), int(match[2])
    total = None if match[3] == "*" else int(match[3])
    if last < start or (total is not None and last >= total):
        raise ValidationError(f"Content-Range {value!r} is not a range inside the file", field="Content-Range")
    return start, last + 1, total


async def create_upload(
    db: Database, org_id: UUID, *, total_bytes: int | None, limit: int | None, created_by: UUID | None
) -> Upload:
    """A new resumable upload.

    Raises:
        TooLargeError: ``total_bytes`` over the plan's limit. ValidationError: a negative size.
    """
    if total_bytes is not None and total_bytes < 0:
        raise ValidationError("total_bytes must be >= 0", field="total_bytes")
    if total_bytes is not None and limit is not None and total_bytes > limit:
        raise TooLargeError(f"the upload is larger than this plan's limit of {limit} bytes")
    async with db.transaction(org_id=org_id) as tx:
        row = await tx.fetchrow(
            "INSERT INTO model_uploads (org_id, created_by, total_bytes) VALUES ($1, $2, $3)"
            " RETURNING id, state, total_bytes, received_bytes, version_id",
            org_id,
            created_by,
            total_bytes,
        )
    assert row is not None
    return Upload(**dict(row))


async def get_upload(db: Database, org_id: UUID, upload_id: UUID) -> Upload:
    """An upload of ``org_id``.

    Raises:
        NotFoundError: none (or another organization's).
    """
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        row = await tx.fetchrow(
            "SELECT id, state, total_bytes, received_bytes, version_id FROM model_uploads"
            " WHERE id = $1 AND expires_at > now()",
            upload_id,
        )
    if row is None:
        raise NotFoundError("no such upload")
    return Upload(**dict(row))


class _Counted:
    def __init__(self, chunks: AsyncIterable[bytes], limit: int) -> None:
        self.chunks, self.limit, self.count = chunks, limit, 0

        self._it = chunks.__aiter__()

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._it.__anext__()
        self.count += len(chunk)
        if self.count > self.limit:
            raise ValidationError("the body is longer than its Content-Range says", field="Content-Range")
        return chunk


async def put_range(
    db: Database,
    objects: EncryptedObjects,
    org_id: UUID,
    upload_id: UUID,
    *,
    content_range: str | None,
    chunks: AsyncIterable[bytes],
    limit: int | None,
) -> Upload:
    """Store one byte range of an upload; it must start at ``received_bytes``.

    Raises:
        ValidationError: a malformed range, a body of another length, a total that disagrees.
        ConflictStateError: the range does not start where the upload stands (``received_bytes`` says where),
            or the upload is not open.
        TooLargeError: past the plan's limit.
    """
    start, end, total = parse_content_range(content_range)
    upload = await get_upload(db, org_id, upload_id)
    if upload.state != "open":
        raise ConflictStateError(f"the upload is {upload.state}")
    if start != upload.received_bytes:
        raise OutOfOrderError(
            f"this range starts at byte {start}, but the upload has {upload.received_bytes} bytes: "
            f"send from byte {upload.received_bytes}",
            received_bytes=upload.received_bytes,
        )
    if total is not None and upload.total_bytes is not None and total != upload.total_bytes:
        raise ValidationError(
            f"Content-Range says the file has {total} bytes, the upload was created with {upload.total_bytes}",
            field="Content-Range",
        )
    if limit is not None and end > limit:
        raise TooLargeError(f"the upload is larger than this plan's limit of {limit} bytes")
    counted = _Counted(chunks, end - start)
    stored = await objects.put(org_id, counted)
    if counted.count != end - start:
        raise ValidationError(
            f"the body has {counted.count} bytes, Content-Range says {end - start}", field="Content-Range"
        )
    async with db.transaction(org_id=org_id) as tx:
        moved = await tx.fetchval(
            "UPDATE model_uploads SET received_bytes = $3, total_bytes = coalesce(total_bytes, $4)"
            " WHERE id = $1 AND received_bytes = $2 AND state = 'open' RETURNING id",
            upload_id,
            start,
            end,
            total,
        )
        if moved is None:  # another request took this range meanwhile
            raise ConflictStateError("another request changed the upload meanwhile: ask where it stands")
        await tx.execute(
            "INSERT INTO model_upload_parts (upload_id, org_id, start_byte, bytes, object_key)"
            " VALUES ($1, $2, $3, $4, $5)",
            upload_id,
            org_id,
            start,
            end - start,
            stored.info.key,
        )
    return await get_upload(db, org_id, upload_id)


async def _delete_unused(db: Database, objects: EncryptedObjects, org_id: UUID, keys: list[str]) -> None:
    for key in set(keys):
        if not await db.fetchval("SELECT bitnet_object_in_use($1)", key):
            await objects.delete(org_id, key)


async def complete_upload(
    db: Database,
    objects: EncryptedObjects,
    org_id: UUID,
    upload_id: UUID,
    *,
    name: str,
    version: str,
    spool_dir: Path,
    limit: int | None,
    created_by: UUID | None = None,
    description: str = "",
) -> registry.ModelVersion:
    """Join an upload's parts and ingest them as ``name:version``; the parts go either way.

    Raises:
        ConflictStateError: the upload is incomplete (fewer bytes than its total) or not open.
        ValidationError / TooLargeError: as :func:`ingest` and :func:`spool`.
    """
    async with db.transaction(org_id=org_id) as tx:
        row = await tx.fetchrow(
            "UPDATE model_uploads SET state = 'completing' WHERE id = $1 AND state = 'open'"
            " AND (total_bytes IS NULL OR received_bytes = total_bytes) RETURNING received_bytes",
            upload_id,
        )
        if row is None:
            upload = await get_upload(db, org_id, upload_id)
            if upload.state != "open":
                raise ConflictStateError(f"the upload is {upload.state}")
            raise ConflictStateError(
                f"the upload has {upload.received_bytes} of its {upload.total_bytes} bytes: send the rest first"
            )
        parts = await tx.fetch(
            "SELECT object_key FROM model_upload_parts WHERE upload_id = $1 ORDER BY start_byte", upload_id
        )
    keys = [p["object_key"] for p in parts]

    made: registry.ModelVersion | None = None
    try:
        joined = _JoinedParts(objects, org_id, keys)
        try:
            spooled = await spool(joined, spool_dir, limit=limit)
        finally:
            await joined.aclose()
        made = await ingest(
            db, objects, org_id, spooled, name=name, version=version, temp_root=spool_dir,
            created_by=created_by, description=description,
        )  # fmt: skip
        return made
    finally:
        with trio.CancelScope(shield=True):
            async with db.transaction(org_id=org_id) as tx:
                # Refused (a bad model, a name taken): open again, to complete under another name or abort.
                await tx.execute(
                    "UPDATE model_uploads SET state = $2, version_id = $3 WHERE id = $1",
                    upload_id,
                    "completed" if made is not None else "open",
                    made.id if made is not None else None,
                )
                if made is not None:
                    await tx.execute("DELETE FROM model_upload_parts WHERE upload_id = $1", upload_id)
            if made is not None:
                await _delete_unused(db, objects, org_id, keys)


async def abort_upload(db: Database, objects: EncryptedObjects, org_id: UUID, upload_id: UUID) -> Upload:
    """Abort an open upload and delete its parts.

    Raises:
        NotFoundError: no such upload. ConflictStateError: it completed (or is completing).
    """
    async with db.transaction(org_id=org_id) as tx:
        row = await tx.fetchval(
            "UPDATE model_uploads SET state = 'aborted' WHERE id = $1 AND state = 'open' RETURNING id", upload_id
        )
        if row is None:
            upload = await get_upload(db, org_id, upload_id)
            raise ConflictStateError(f"the upload is {upload.state}")
        keys = [
            r["object_key"]
            for r in await tx.fetch(
                "DELETE FROM model_upload_parts WHERE upload_id = $1 RETURNING object_key", upload_id
            )
        ]
    await _delete_unused(db, objects, org_id, keys)
    return await get_upload(db, org_id, upload_id)
