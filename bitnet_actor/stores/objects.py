"""Content-addressed object store: one async interface, a filesystem backend and an S3 backend.

Objects are immutable blobs (model weights, uploads, exports) addressed by the SHA-256 of their content.
The key of an object is always ``sha256/<64 lowercase hex digits>``; any other key is rejected with
:class:`ValueError` before it reaches a path or a request, so a key can never traverse out of the store.

Every method is a Trio coroutine (except :meth:`ObjectStore.presigned_url`, which needs no I/O); blocking
work (file I/O, hashing, boto3 calls) runs in worker threads via :func:`trio.to_thread.run_sync`. Foreign
errors are mapped at this boundary:

* a missing key raises :class:`~bitnet_actor.errors.ObjectNotFoundError`;
* a backend that cannot be reached or refuses us raises :class:`~bitnet_actor.errors.StoreUnavailableError`;
* anything else the backend reports raises :class:`~bitnet_actor.errors.StoreError`.

Typical use::

    async with FilesystemObjectStore(root, signing_key=k, base_url=url) as store:
        info = await store.put(chunks)               # bytes or any AsyncIterable[bytes]
        async with store.open_stream(info.key) as stream:
            async for chunk in stream:
                ...
"""

from __future__ import annotations

import abc
import contextlib
import errno
import hashlib
import hmac
import io
import os
import re
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, Self, TypeVar

import boto3.session
import trio
from boto3.exceptions import Boto3Error
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from s3transfer import exceptions as s3transfer_exceptions
from s3transfer.manager import TransferConfig, TransferManager

from bitnet_actor.errors import ObjectNotFoundError, StoreError, StoreUnavailableError

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Callable
    from types import TracebackType

    from mypy_boto3_s3.client import S3Client
    from s3transfer.futures import TransferFuture

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FilesystemObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStream",
    "S3ObjectStore",
    "key_for_digest",
    "sign_presigned",
    "validate_key",
    "verify_presigned",
]

T = TypeVar("T")

MiB = 1024 * 1024
DEFAULT_CHUNK_SIZE = 1 * MiB
"""Default size of the chunks :meth:`ObjectStore.open_stream` yields."""

_WRITE_BLOCK = 1 * MiB  # small incoming chunks are coalesced to this size before one thread hop
_S3_MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 presigned URLs cannot outlive 7 days
_KEY_RE = re.compile(r"sha256/([0-9a-f]{64})")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store knows about one object.

    Attributes:
        key: The object's key, ``sha256/<hex>``.
        sha256: The lowercase hex SHA-256 of the content (the last part of ``key``).
        size: The content length in bytes.
    """

    key: str
    sha256: str
    size: int


def validate_key(key: object) -> str:
    """Check that ``key`` is a well-formed object key and return its hex digest.

    Args:
        key: The candidate key.

    Returns:
        The 64-character lowercase hex digest part of the key.

    Raises:
        ValueError: ``key`` is not exactly ``sha256/<64 lowercase hex digits>``.
    """
    if not isinstance(key, str):
        raise ValueError(f"object key must be a str, not {type(key).__name__}")
    match = _KEY_RE.fullmatch(key)
    if match is None:
        raise ValueError(f"invalid object key {key[:100]!r}: expected 'sha256/<64 lowercase hex digits>'")
    return match.group(1)


def key_for_digest(sha256_hex: str) -> str:
    """Return the object key for a lowercase hex SHA-256 digest.

    Args:
        sha256_hex: 64 lowercase hex digits.

    Returns:
        ``sha256/<sha256_hex>``.

    Raises:
        ValueError: ``sha256_hex`` is not 64 lowercase hex digits.
    """
    key = f"sha256/{sha256_hex}"
    validate_key(key)
    return key


def _presign_message(key: str, expires: int) -> bytes:
    return f"{key}\n{expires}".encode("ascii")


def sign_presigned(signing_key: bytes, key: str, expires: int) -> str:
    """Compute the signature of a filesystem-store presigned URL.

    The signature is ``hex(HMAC-SHA256(signing_key, f"{key}\\n{expires}"))``.

    Args:
        signing_key: The secret shared by the store and the HTTP layer.
        key: A valid object key.
        expires: Unix time (seconds) after which the URL is no longer valid.

    Returns:
        The lowercase hex signature.

    Raises:
        ValueError: ``key`` is not a valid object key.
    """
    validate_key(key)
    return hmac.new(signing_key, _presign_message(key, expires), hashlib.sha256).hexdigest()


def verify_presigned(signing_key: bytes, key: str, expires: int, signature: str, *, now: float | None = None) -> bool:
    """Check a presigned URL made by :meth:`FilesystemObjectStore.presigned_url`.

    The comparison is constant-time. Malformed input (bad key, non-hex signature) is rejected, never raised.

    Args:
        signing_key: The secret the store signed with.
        key: The object key taken from the URL path.
        expires: The ``expires`` query parameter (Unix seconds).
        signature: The ``signature`` query parameter (hex).
        now: The current Unix time; defaults to :func:`time.time`.

    Returns:
        True when the signature matches ``key`` and ``expires`` and the URL has not expired.
    """
    try:
        validate_key(key)
        given = bytes.fromhex(signature)
    except (ValueError, TypeError):
        return False
    if isinstance(expires, bool) or not isinstance(expires, int):
        return False
    expected = hmac.new(signing_key, _presign_message(key, expires), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, given):
        return False
    current = time.time() if now is None else now
    return current <= expires


class _Hasher(Protocol):
    """What :func:`_write_block` needs of a :mod:`hashlib` object."""

    def update(self, data: bytes | bytearray, /) -> None: ...


class _Reader(Protocol):
    """A blocking byte source: a file opened ``rb`` or a botocore ``StreamingBody``."""

    def read(self, amt: int, /) -> bytes: ...

    def close(self) -> None: ...


class ObjectStream:
    """An async iterator over one object's bytes, in chunks of at most ``chunk_size``.

    Get one from :meth:`ObjectStore.open_stream` and use it as an async context manager, so the underlying
    file or HTTP response is closed even when iteration stops early::

        async with store.open_stream(key) as stream:
            length = stream.size
            async for chunk in stream:
                ...

    Entering the context opens the object (raising :class:`ObjectNotFoundError` right away if it is missing).
    Iterating without ``async with`` also works (it opens lazily and closes at the end), but then an early
    ``break`` leaves the source open until :meth:`aclose` is called.

    This is a plain class rather than an async generator, so there is no generator to finalize and no
    ``yield`` inside a cancel scope.
    """

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        opener: Callable[[], tuple[_Reader, int]],
        chunk_size: int,
    ) -> None:
        """Create a stream; nothing is opened until it is entered or iterated.

        Args:
            store: The store whose error mapping applies.
            key: The (validated) object key.
            opener: Blocking function returning the reader and the object's size.
            chunk_size: Maximum bytes per chunk.
        """
        self._store = store
        self._key = key
        self._opener = opener
        self._chunk_size = chunk_size
        self._reader: _Reader | None = None
        self._size: int | None = None
        self._closed = False
        self._busy = False

    @property
    def key(self) -> str:
        """The object's key."""
        return self._key

    @property
    def size(self) -> int:
        """The object's size in bytes (available once the stream is open).

        Raises:
            RuntimeError: The stream has not been opened yet.
        """
        if self._size is None:
            raise RuntimeError("ObjectStream.size is only known once the stream is open")
        return self._size

    async def _open(self) -> _Reader:
        if self._closed:
            raise StoreError(f"stream for {self._key} is closed")
        if self._reader is None:
            reader, size = await self._store._run(self._opener, key=self._key)
            self._reader, self._size = reader, size
        return self._reader

    async def __aenter__(self) -> Self:
        """Open the object.

        Returns:
            This stream.
        """
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the underlying source."""
        await self.aclose()

    def __aiter__(self) -> Self:
        """Return this stream."""
        return self

    async def __anext__(self) -> bytes:
        """Read the next chunk in a worker thread.

        Returns:
            The next non-empty chunk.

        Raises:
            StopAsyncIteration: At the end of the object (the source is then closed).
            trio.BusyResourceError: Two tasks read the same stream at once.
        """
        if self._busy:
            raise trio.BusyResourceError("another task is already reading this ObjectStream")
        self._busy = True
        try:
            if self._closed:
                raise StopAsyncIteration
            reader = await self._open()
            chunk = await self._store._run(partial(reader.read, self._chunk_size), key=self._key)
        finally:
            self._busy = False
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Close the underlying source; safe to call more than once, and under cancellation."""
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await trio.to_thread.run_sync(reader.close)


class ObjectStore(abc.ABC):
    """The object store interface; see the module docstring for keys and error mapping.

    Stores are async context managers: ``async with store:`` calls :meth:`aclose` on exit.
    """

    # ---- the interface -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def put(self, data: bytes | AsyncIterable[bytes]) -> ObjectInfo:
        """Store content and return its info; the key is derived from the SHA-256 of the content.

        ``data`` may be an async iterable of chunks of any size, and is never held in memory whole. Putting
        content that is already stored returns the same key without rewriting it. A failed or cancelled put
        leaves nothing under the final key and removes its temporary data. The caller keeps ownership of an
        async iterable: if the put fails part way, it is not closed here.

        Args:
            data: The content, whole or as an async iterable of chunks.

        Returns:
            The stored object's info.

        Raises:
            StoreUnavailableError: The backend cannot be reached.
            StoreError: The backend failed otherwise (for instance, no space left).
        """

    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """Return an object's whole content; use :meth:`open_stream` for big objects.

        Args:
            key: The object key.

        Returns:
            The content.

        Raises:
            ValueError: ``key`` is malformed.
            ObjectNotFoundError: No object has that key.
            StoreUnavailableError: The backend cannot be reached.
            StoreError: The backend failed otherwise.
        """

    @abc.abstractmethod
    def open_stream(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ObjectStream:
        """Return a stream over an object's content; use it with ``async with``.

        Args:
            key: The object key.
            chunk_size: Maximum bytes per chunk.

        Returns:
            An unopened :class:`ObjectStream` (errors such as a missing key surface when it is entered).

        Raises:
            ValueError: ``key`` is malformed or ``chunk_size`` is not positive.
        """

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete an object; deleting a missing key is not an error.

        Args:
            key: The object key.

        Raises:
            ValueError: ``key`` is malformed.
            StoreUnavailableError: The backend cannot be reached.
            StoreError: The backend failed otherwise.
        """

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        """Tell whether an object exists.

        Args:
            key: The object key.

        Returns:
            True if the object exists.

        Raises:
            ValueError: ``key`` is malformed.
            StoreUnavailableError: The backend cannot be reached.
            StoreError: The backend failed otherwise.
        """

    @abc.abstractmethod
    async def stat(self, key: str) -> ObjectInfo:
        """Return an object's info.

        Args:
            key: The object key.

        Returns:
            The object's info.

        Raises:
            ValueError: ``key`` is malformed.
            ObjectNotFoundError: No object has that key.
            StoreUnavailableError: The backend cannot be reached.
            StoreError: The backend failed otherwise.
        """

    @abc.abstractmethod
    def presigned_url(self, key: str, *, expires_s: int = 3600) -> str:
        """Return a URL that lets anyone holding it download the object until it expires.

        No I/O is done and the object's existence is not checked.

        Args:
            key: The object key.
            expires_s: Seconds the URL stays valid.

        Returns:
            The URL.

        Raises:
            ValueError: ``key`` is malformed or ``expires_s`` is out of range.
        """

    @abc.abstractmethod
    async def ping(self) -> None:
        """Check that the backend is reachable and usable (for readiness probes).

        Raises:
            StoreUnavailableError: It is not.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the store's resources; idempotent."""

    async def __aenter__(self) -> Self:
        """Return the store.

        Returns:
            This store.
        """
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        await self.aclose()

    # ---- shared machinery ----------------------------------------------------------------------------

    @abc.abstractmethod
    def _translate(self, exc: Exception, key: str | None) -> StoreError | None:
        """Map a foreign exception to a store error, or return None to let it propagate unchanged."""

    async def _run(self, fn: Callable[[], T], *, key: str | None = None, abandon_on_cancel: bool = False) -> T:
        """Run blocking ``fn`` in a worker thread, mapping backend errors (``key`` names a missing object)."""
        try:
            return await trio.to_thread.run_sync(fn, abandon_on_cancel=abandon_on_cancel)
        except Exception as exc:
            mapped = self._translate(exc, key)
            if mapped is None:
                raise
            raise mapped from exc

    @staticmethod
    def _check_chunk_size(chunk_size: int) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    @staticmethod
    def _check_expires(expires_s: int, maximum: int | None = None) -> None:
        if expires_s <= 0 or (maximum is not None and expires_s > maximum):
            limit = f" and at most {maximum}" if maximum is not None else ""
            raise ValueError(f"expires_s must be positive{limit}, got {expires_s}")

    async def _spool(self, data: AsyncIterable[bytes], tmp_dir: Path, *, fsync: bool) -> tuple[Path, str, int]:
        """Write an async iterable to a new temporary file in ``tmp_dir`` while hashing it.

        Small chunks are coalesced so each worker-thread hop writes about a MiB. On any failure or
        cancellation the temporary file is removed before the exception propagates.

        Args:
            data: The chunks.
            tmp_dir: Where to create the file (created if missing).
            fsync: Whether to fsync the file before returning.

        Returns:
            The temporary file's path, the content's hex SHA-256 and its size.
        """
        fileobj, path = await self._run(partial(_create_temp, tmp_dir))
        hasher = hashlib.sha256()
        size = 0
        done = False
        try:
            pending = bytearray()
            async for chunk in data:
                if not chunk:
                    continue
                size += len(chunk)
                if not pending and len(chunk) >= _WRITE_BLOCK:
                    await self._run(partial(_write_block, fileobj, hasher, chunk))
                    continue
                pending += chunk
                if len(pending) >= _WRITE_BLOCK:
                    block, pending = pending, bytearray()
                    await self._run(partial(_write_block, fileobj, hasher, block))
            if pending:
                await self._run(partial(_write_block, fileobj, hasher, pending))
            await self._run(partial(_finish_file, fileobj, fsync=fsync))
            done = True
        finally:
            if not done:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_discard_temp, fileobj, path)
        return path, hasher.hexdigest(), size


def _create_temp(tmp_dir: Path) -> tuple[BinaryIO, Path]:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="put-", suffix=".part")
    return os.fdopen(fd, "wb"), Path(name)


def _write_block(fileobj: BinaryIO, hasher: _Hasher, block: bytes | bytearray) -> None:
    hasher.update(block)
    fileobj.write(block)


def _finish_file(fileobj: BinaryIO, *, fsync: bool) -> None:
    fileobj.flush()
    if fsync:
        os.fsync(fileobj.fileno())
    fileobj.close()


def _discard_temp(fileobj: BinaryIO | None, path: Path) -> None:
    if fileobj is not None:
        with contextlib.suppress(OSError):
            fileobj.close()
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ filesystem


class FilesystemObjectStore(ObjectStore):
    """Objects as files under a local directory.

    Layout: ``root/sha256/ab/cd/<hex>`` for an object whose digest starts ``abcd``; in-flight writes live in
    ``root/tmp`` and are fsynced, then moved into place with :func:`os.replace` (atomic on one filesystem),
    and the destination directory is fsynced. A put cancelled or failed mid-way removes its temporary file;
    after a hard crash, stale ``root/tmp/put-*.part`` files may remain and are safe to delete.

    Presigned URLs point at the service's own HTTP layer, which checks them with :func:`verify_presigned`.
    """

    def __init__(self, root: Path, *, signing_key: bytes, base_url: str) -> None:
        """Create the store; directories are created on first use, not here.

        Args:
            root: The store's directory (created on first put or ping if missing).
            signing_key: Secret for presigned URLs (shared with the HTTP layer).
            base_url: The service's external base URL, e.g. ``https://api.example.com``.

        Raises:
            ValueError: ``signing_key`` is empty.
        """
        if not signing_key:
            raise ValueError("signing_key must not be empty")
        self._root = Path(root)
        self._tmp = self._root / "tmp"
        self._signing_key = bytes(signing_key)
        self._base_url = base_url.rstrip("/")

    def verify_url(self, key: str, expires: int, signature: str) -> bool:
        """Whether ``(key, expires, signature)`` come from an unexpired ``presigned_url`` of this store."""
        return verify_presigned(self._signing_key, key, expires, signature)

    @property
    def root(self) -> Path:
        """The store's root directory."""
        return self._root

    def _path(self, key: str) -> Path:
        digest = validate_key(key)
        return self._root / "sha256" / digest[:2] / digest[2:4] / digest

    def _translate(self, exc: Exception, key: str | None) -> StoreError | None:
        if not isinstance(exc, OSError):
            return None
        if isinstance(exc, FileNotFoundError) and key is not None:
            return ObjectNotFoundError(f"no object {key}")
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return StoreError(f"object store at {self._root} is full: {exc.strerror or exc}")
        return StoreUnavailableError(f"object store at {self._root} is not usable: {exc}")

    async def put(self, data: bytes | AsyncIterable[bytes]) -> ObjectInfo:
        """Store content; see :meth:`ObjectStore.put`."""
        if isinstance(data, bytes):
            return await self._run(partial(self._put_bytes_sync, data))
        path, digest, size = await self._spool(data, self._tmp, fsync=True)
        try:
            # Not abandoned on cancel: once started, the commit finishes (the object is then complete).
            return await self._run(partial(self._commit_sync, path, digest, size))
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_discard_temp, None, path)

    def _put_bytes_sync(self, data: bytes) -> ObjectInfo:
        digest = _hash_bytes(data)
        if self._path(key_for_digest(digest)).is_file():
            return ObjectInfo(key_for_digest(digest), digest, len(data))
        fileobj, path = _create_temp(self._tmp)
        try:
            fileobj.write(data)
            _finish_file(fileobj, fsync=True)
            return self._commit_sync(path, digest, len(data))
        finally:
            _discard_temp(fileobj, path)

    def _commit_sync(self, tmp_path: Path, digest: str, size: int) -> ObjectInfo:
        key = key_for_digest(digest)
        final = self._path(key)
        if not final.is_file():  # content-addressed: an existing file already holds these bytes
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_path, final)
            _fsync_dir(final.parent)
        return ObjectInfo(key, digest, size)

    async def get(self, key: str) -> bytes:
        """Return an object's content; see :meth:`ObjectStore.get`."""
        path = self._path(key)
        return await self._run(path.read_bytes, key=key)

    def open_stream(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ObjectStream:
        """Return a stream over an object; see :meth:`ObjectStore.open_stream`."""
        path = self._path(key)
        self._check_chunk_size(chunk_size)
        return ObjectStream(self, key, partial(_open_file, path), chunk_size)

    async def delete(self, key: str) -> None:
        """Delete an object; see :meth:`ObjectStore.delete`."""
        path = self._path(key)
        await self._run(partial(path.unlink, missing_ok=True))

    async def exists(self, key: str) -> bool:
        """Tell whether an object exists; see :meth:`ObjectStore.exists`."""
        path = self._path(key)
        return await self._run(path.is_file)

    async def stat(self, key: str) -> ObjectInfo:
        """Return an object's info; see :meth:`ObjectStore.stat`."""
        digest = validate_key(key)
        st = await self._run(self._path(key).stat, key=key)
        return ObjectInfo(key, digest, st.st_size)

    def presigned_url(self, key: str, *, expires_s: int = 3600) -> str:
        """Return ``{base_url}/v1/objects/{key}?expires=<unix>&signature=<hex>``.

        The signature is :func:`sign_presigned` over the key and the expiry time; the HTTP layer checks it
        with :func:`verify_presigned`.

        Args:
            key: The object key.
            expires_s: Seconds the URL stays valid (positive).

        Returns:
            The URL.

        Raises:
            ValueError: ``key`` is malformed or ``expires_s`` is not positive.
        """
        validate_key(key)
        self._check_expires(expires_s)
        expires = int(time.time()) + expires_s
        signature = sign_presigned(self._signing_key, key, expires)
        return f"{self._base_url}/v1/objects/{key}?expires={expires}&signature={signature}"

    async def ping(self) -> None:
        """Check that the root is a writable directory (creating it if missing).

        Raises:
            StoreUnavailableError: It is not.
        """
        try:
            await self._run(self._ping_sync)
        except StoreError as exc:
            if isinstance(exc, StoreUnavailableError):
                raise
            raise StoreUnavailableError(str(exc)) from exc

    def _ping_sync(self) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        if not os.access(self._root, os.W_OK | os.X_OK) or not os.access(self._tmp, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable", str(self._root))

    async def aclose(self) -> None:
        """Nothing to release; present for the interface."""


def _open_file(path: Path) -> tuple[_Reader, int]:
    fileobj = path.open("rb")
    try:
        size = os.fstat(fileobj.fileno()).st_size
    except BaseException:
        fileobj.close()
        raise
    return fileobj, size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------------------------------- S3

_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_UNAVAILABLE_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "NoSuchBucket",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "InternalError",
    }
)
_S3TRANSFER_ERRORS: tuple[type[Exception], ...] = (
    s3transfer_exceptions.RetriesExceededError,
    s3transfer_exceptions.S3UploadFailedError,
    s3transfer_exceptions.S3DownloadFailedError,
    s3transfer_exceptions.CancelledError,  # the transfer manager was shut down under a transfer
)


class S3ObjectStore(ObjectStore):
    """Objects in an S3 (or S3-compatible) bucket, under ``{prefix}sha256/<hex>``.

    One boto3 client (SigV4, path-style addressing) is created in the constructor and shared by all calls;
    boto3 clients are thread-safe and every call runs in a Trio worker thread.

    How ``put`` is done, and why: the key is the SHA-256 of the content, known only once the whole stream has
    been read, so the stream is first spooled to a temporary file in ``tmp_dir`` while it is hashed. Then, if
    the key already exists, nothing is uploaded; otherwise the file is uploaded under its final key with an
    s3transfer ``TransferManager`` (one PUT below ``multipart_threshold``, parallel multipart above it). S3
    makes a PUT or a completed multipart upload visible atomically, so no partial object can ever appear under
    the key; on failure or cancellation the transfer is cancelled (its multipart upload aborted) and the
    temporary file removed. The alternative, a multipart upload to a temporary key followed by a server-side
    copy, was rejected: ``CopyObject`` is limited to 5 GiB (bigger objects need a multipart
    ``UploadPartCopy``), the copy doubles server-side I/O, a crash leaves orphaned temporary keys that need a
    lifecycle rule, and copy support varies across S3-compatible servers. The price of spooling is local disk
    space for the largest object being put and reading it twice locally. Content given as ``bytes`` is already
    in memory and is uploaded straight from it.

    Presigned URLs are S3's own (``generate_presigned_url('get_object')``), valid for at most 7 days.
    """

    def __init__(
        self,
        *,
        endpoint_url: str | None,
        bucket: str,
        access_key_id: str | None,
        secret_access_key: str | None,
        region: str = "us-east-1",
        prefix: str = "",
        tmp_dir: Path,
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 16 * MiB,
        max_concurrency: int = 8,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
    ) -> None:
        """Create the store and its boto3 client (no network I/O is done here).

        Args:
            endpoint_url: The S3 endpoint, e.g. ``http://127.0.0.1:8333``; None for AWS.
            bucket: The bucket name.
            access_key_id: Access key; None to use boto3's default credential chain.
            secret_access_key: Secret key; None to use boto3's default credential chain.
            region: The region to sign for.
            prefix: Prepended to every object key (a ``/`` is added if missing), to share a bucket.
            tmp_dir: Local directory for spooling streamed puts (created on first use).
            multipart_threshold: Uploads at least this big use multipart upload (at least 5 MiB).
            multipart_chunksize: Part size for multipart uploads (at least 5 MiB).
            max_concurrency: Parallel part uploads per transfer manager.
            connect_timeout: Seconds to wait for a TCP connection.
            read_timeout: Seconds to wait for data on a connection.
            max_attempts: Total attempts per request, retries included (botocore "standard" mode).

        Raises:
            ValueError: An argument is out of range.
        """
        if not bucket:
            raise ValueError("bucket must not be empty")
        if multipart_threshold < 5 * MiB or multipart_chunksize < 5 * MiB:
            raise ValueError("multipart_threshold and multipart_chunksize must be at least 5 MiB")
        prefix = prefix.strip("/")
        self._prefix = f"{prefix}/" if prefix else ""
        self._bucket = bucket
        self._region = region
        self._tmp_dir = Path(tmp_dir)
        config = BotoConfig(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=max(10, max_concurrency * 2),
            # Many S3-compatible servers reject the CRC checksums boto3 sends by default since 1.36.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
        )
        self._client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self._transfer = TransferManager(
            self._client,
            TransferConfig(
                multipart_threshold=multipart_threshold,
                multipart_chunksize=multipart_chunksize,
                max_request_concurrency=max_concurrency,
            ),
        )
        self._closed = False

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self._bucket

    @property
    def prefix(self) -> str:
        """The key prefix inside the bucket (empty or ending with ``/``)."""
        return self._prefix

    def _s3_key(self, key: str) -> str:
        validate_key(key)
        return self._prefix + key

    def _translate(self, exc: Exception, key: str | None) -> StoreError | None:
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if key is not None and (code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket")):
                return ObjectNotFoundError(f"no object {key}")
            message = f"S3 bucket {self._bucket!r}: {code or status} {error.get('Message', '')}".rstrip()
            if code in _UNAVAILABLE_CODES or status in (403, 404) or status >= 500:
                return StoreUnavailableError(message)
            return StoreError(message)
        if isinstance(exc, BotoConnectionError | HTTPClientError):  # refused, timed out, connection dropped
            return StoreUnavailableError(f"S3 endpoint unreachable: {exc}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreUnavailableError(f"S3 credentials missing: {exc}")
        if isinstance(exc, (BotoCoreError, Boto3Error, *_S3TRANSFER_ERRORS)):
            return StoreError(f"S3 request failed: {exc}")
        if isinstance(exc, OSError):
            return StoreError(f"S3 store local spool error: {exc}")
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("S3 object store is closed")

    async def put(self, data: bytes | AsyncIterable[bytes]) -> ObjectInfo:
        """Store content; see the class docstring and :meth:`ObjectStore.put`."""
        self._check_open()
        if isinstance(data, bytes):
            digest = await trio.to_thread.run_sync(_hash_bytes, data)
            info = ObjectInfo(key_for_digest(digest), digest, len(data))
            if not await self.exists(info.key):
                await self._upload(io.BytesIO(data), info.key)
            return info
        path, digest, size = await self._spool(data, self._tmp_dir, fsync=False)
        try:
            info = ObjectInfo(key_for_digest(digest), digest, size)
            if not await self.exists(info.key):
                await self._upload(str(path), info.key)
            return info
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_discard_temp, None, path)

    async def _upload(self, source: str | BinaryIO, key: str) -> None:
        """Upload a file (by name) or a seekable file object under ``key``; cancellable part by part."""
        submit = partial(
            self._transfer.upload,
            source,
            self._bucket,
            self._s3_key(key),
            extra_args={"ContentType": "application/octet-stream"},
        )
        future: TransferFuture = await self._run(submit)
        try:
            # Abandoned on cancel so cancellation is prompt; the transfer itself is then cancelled below.
            await self._run(future.result, abandon_on_cancel=True)
        except BaseException:
            future.cancel()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_wait_quietly, future)
            raise

    async def get(self, key: str) -> bytes:
        """Return an object's content; see :meth:`ObjectStore.get`."""
        s3_key = self._s3_key(key)
        self._check_open()
        return await self._run(partial(self._get_sync, s3_key), key=key)

    def _get_sync(self, s3_key: str) -> bytes:
        body = self._client.get_object(Bucket=self._bucket, Key=s3_key)["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def open_stream(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ObjectStream:
        """Return a stream over an object; see :meth:`ObjectStore.open_stream`."""
        s3_key = self._s3_key(key)
        self._check_chunk_size(chunk_size)
        self._check_open()
        return ObjectStream(self, key, partial(self._open_sync, s3_key), chunk_size)

    def _open_sync(self, s3_key: str) -> tuple[_Reader, int]:
        response = self._client.get_object(Bucket=self._bucket, Key=s3_key)
        return response["Body"], response["ContentLength"]

    async def delete(self, key: str) -> None:
        """Delete an object; see :meth:`ObjectStore.delete`."""
        s3_key = self._s3_key(key)
        self._check_open()
        await self._run(partial(self._client.delete_object, Bucket=self._bucket, Key=s3_key))

    async def exists(self, key: str) -> bool:
        """Tell whether an object exists; see :meth:`ObjectStore.exists`."""
        try:
            await self.stat(key)
        except ObjectNotFoundError:
            return False
        return True

    async def stat(self, key: str) -> ObjectInfo:
        """Return an object's info; see :meth:`ObjectStore.stat`."""
        s3_key = self._s3_key(key)
        digest = validate_key(key)
        self._check_open()
        head = await self._run(partial(self._client.head_object, Bucket=self._bucket, Key=s3_key), key=key)
        return ObjectInfo(key, digest, head["ContentLength"])

    def presigned_url(self, key: str, *, expires_s: int = 3600) -> str:
        """Return a SigV4 presigned ``GET`` URL for the object.

        Args:
            key: The object key.
            expires_s: Seconds the URL stays valid (1 to 604800).

        Returns:
            The URL.

        Raises:
            ValueError: ``key`` is malformed or ``expires_s`` is out of range.
            StoreError: The URL could not be signed (for instance, no credentials).
        """
        s3_key = self._s3_key(key)
        self._check_expires(expires_s, _S3_MAX_PRESIGN_S)
        try:
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self._bucket, "Key": s3_key}, ExpiresIn=expires_s
            )
        except Exception as exc:
            mapped = self._translate(exc, None)
            if mapped is None:
                raise
            raise mapped from exc

    async def ping(self) -> None:
        """Check the bucket is reachable with our credentials (``HeadBucket``).

        Raises:
            StoreUnavailableError: It is not.
        """
        self._check_open()
        try:
            await self._run(partial(self._client.head_bucket, Bucket=self._bucket))
        except StoreUnavailableError:
            raise
        except StoreError as exc:
            raise StoreUnavailableError(str(exc)) from exc

    async def create_bucket_if_missing(self) -> bool:
        """Create the bucket unless it already exists (and is ours).

        Returns:
            True if the bucket was created, False if it already existed.

        Raises:
            StoreUnavailableError: The endpoint cannot be reached or refused us.
            StoreError: The bucket could not be created.
        """
        self._check_open()
        try:
            await self._run(partial(self._client.head_bucket, Bucket=self._bucket))
        except StoreUnavailableError as exc:
            if not _is_missing_bucket(exc.__cause__):
                raise
        else:
            return False
        await self._run(self._create_bucket_sync)
        return True

    def _create_bucket_sync(self) -> None:
        try:
            if self._region == "us-east-1":
                self._client.create_bucket(Bucket=self._bucket)
            else:
                self._client.create_bucket(
                    Bucket=self._bucket,
                    CreateBucketConfiguration={"LocationConstraint": self._region},  # type: ignore[typeddict-item]
                )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",):
                raise

    async def aclose(self) -> None:
        """Shut down the transfer manager and close the client's connection pool; idempotent."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._close_sync)

    def _close_sync(self) -> None:
        with contextlib.suppress(Exception):
            self._transfer.shutdown(cancel=True)
        with contextlib.suppress(Exception):
            self._client.close()


def _is_missing_bucket(exc: BaseException | None) -> bool:
    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchBucket", "NotFound") or status == 404


def _wait_quietly(future: TransferFuture) -> None:
    with contextlib.suppress(Exception):
        future.result()
