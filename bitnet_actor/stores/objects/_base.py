"""The :class:`ObjectStore` interface, :class:`ObjectStream`, and the machinery both backends share
(running blocking calls in worker threads with error mapping, spooling a stream to a hashed temporary file).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import tempfile
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, Self, TypeVar

import trio

from bitnet_actor.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Callable
    from types import TracebackType

    from bitnet_actor.stores.objects._keys import ObjectInfo

__all__ = ["DEFAULT_CHUNK_SIZE", "MiB", "ObjectStore", "ObjectStream"]

T = TypeVar("T")

MiB = 1024 * 1024
DEFAULT_CHUNK_SIZE = 1 * MiB
"""Default size of the chunks :meth:`ObjectStore.open_stream` yields."""

_WRITE_BLOCK = 1 * MiB  # small incoming chunks are coalesced to this size before one thread hop


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
    """The object store interface; see :mod:`bitnet_actor.stores.objects` for keys and error mapping.

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
    async def read_range(self, key: str, start: int, length: int) -> bytes:
        """Return ``length`` bytes of an object from offset ``start`` (fewer at the end of the object).

        For random access into big objects (a chunk of an encrypted model): one read, no stream to manage.
        Keep ``length`` to what a caller may hold in memory.

        Args:
            key: The object key.
            start: The first byte's offset (0 or more).
            length: How many bytes at most (0 or more).

        Returns:
            The bytes; empty when ``start`` is at or past the end, or ``length`` is 0.

        Raises:
            ValueError: ``key`` is malformed or ``start`` / ``length`` is negative.
            ObjectNotFoundError: No object has that key.
            StoreUnavailableError: The backend cannot be reached.
            StoreError: The backend failed otherwise.
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
    def _check_range(start: int, length: int) -> None:
        if start < 0 or length < 0:
            raise ValueError(f"start and length must not be negative, got {start} and {length}")

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
