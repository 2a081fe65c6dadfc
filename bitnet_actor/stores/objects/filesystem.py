""":class:`FilesystemObjectStore`: objects as files under a local directory, presigned URLs signed with HMAC."""

from __future__ import annotations

import errno
import os
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from bitnet_actor.errors import ObjectNotFoundError, StoreError, StoreUnavailableError
from bitnet_actor.stores.objects._base import (
    DEFAULT_CHUNK_SIZE,
    ObjectStore,
    ObjectStream,
    _create_temp,
    _discard_temp,
    _finish_file,
    _hash_bytes,
    _Reader,
)
from bitnet_actor.stores.objects._keys import (
    ObjectInfo,
    key_for_digest,
    sign_presigned,
    validate_key,
    verify_presigned,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterable

__all__ = ["FilesystemObjectStore"]


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

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        """Return part of an object; see :meth:`ObjectStore.read_range`."""
        path = self._path(key)
        self._check_range(start, length)
        return await self._run(partial(_read_range_sync, path, start, length), key=key)

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


def _read_range_sync(path: Path, start: int, length: int) -> bytes:
    with path.open("rb") as fileobj:
        if length == 0:
            return b""
        fileobj.seek(start)
        return fileobj.read(length)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
