"""S3ObjectStore: objects in an S3 (or S3-compatible) bucket, uploaded with s3transfer, S3's own presigned URLs."""

from __future__ import annotations

import contextlib
import io
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

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
from bitnet_actor.stores.objects._base import (
    DEFAULT_CHUNK_SIZE,
    MiB,
    ObjectStore,
    ObjectStream,
    _discard_temp,
    _hash_bytes,
    _Reader,
)
from bitnet_actor.stores.objects._keys import ObjectInfo, key_for_digest, validate_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterable

    from mypy_boto3_s3.client import S3Client
    from s3transfer.futures import TransferFuture

__all__ = ["S3ObjectStore"]

_S3_MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 presigned URLs cannot outlive 7 days

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

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        """Return part of an object with one ranged ``GET``; see :meth:`ObjectStore.read_range`."""
        s3_key = self._s3_key(key)
        self._check_range(start, length)
        self._check_open()
        if length == 0:  # an empty range cannot be asked for; still say whether the object exists
            await self.stat(key)
            return b""
        return await self._run(partial(self._read_range_sync, s3_key, start, length), key=key)

    def _read_range_sync(self, s3_key: str, start: int, length: int) -> bytes:
        try:
            response = self._client.get_object(
                Bucket=self._bucket, Key=s3_key, Range=f"bytes={start}-{start + length - 1}"
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"InvalidRange", "416"}:  # start at or past the end
                return b""
            raise
        body = response["Body"]
        try:
            return body.read()
        finally:
            body.close()

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
