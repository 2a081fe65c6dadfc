"""Tests for bitnet_actor.stores.objects, run against both backends (the S3 one on a real SeaweedFS)."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio

from bitnet_actor.errors import ObjectNotFoundError, StoreError, StoreUnavailableError
from bitnet_actor.stores.objects import (
    FilesystemObjectStore,
    ObjectInfo,
    ObjectStore,
    S3ObjectStore,
    key_for_digest,
    sign_presigned,
    validate_key,
    verify_presigned,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from tests.stores.conftest import S3Server

MiB = 1024 * 1024
SIGNING_KEY = b"test-signing-key"
BASE_URL = "https://objects.example.test/"
BIG = random.Random(1234).randbytes(12 * MiB + 12345)  # > multipart threshold used below, odd tail


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def chunked(data: bytes, sizes: tuple[int, ...] = (1, 100_000, 3 * MiB, 65_536)) -> AsyncIterator[bytes]:
    """Yield ``data`` in chunks of cycling, uneven sizes (with an empty chunk thrown in)."""
    pos, i = 0, 0
    yield b""
    while pos < len(data):
        size = sizes[i % len(sizes)]
        yield data[pos : pos + size]
        pos += size
        i += 1
        await trio.lowlevel.checkpoint()


def make_s3(server: S3Server, tmp_path: Path, **overrides: Any) -> S3ObjectStore:
    kwargs: dict[str, Any] = {
        "endpoint_url": server.endpoint_url,
        "bucket": server.bucket,
        "access_key_id": server.access_key_id,
        "secret_access_key": server.secret_access_key,
        "region": server.region,
        "prefix": f"test-{uuid.uuid4().hex}",
        "tmp_dir": tmp_path / "spool",
        "multipart_threshold": 5 * MiB,
        "multipart_chunksize": 5 * MiB,
    }
    kwargs.update(overrides)
    return S3ObjectStore(**kwargs)


def make_fs(tmp_path: Path) -> FilesystemObjectStore:
    return FilesystemObjectStore(tmp_path / "objects", signing_key=SIGNING_KEY, base_url=BASE_URL)


@pytest.fixture(params=["fs", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., ObjectStore]:
    if request.param == "fs":
        return lambda: make_fs(tmp_path)
    server: S3Server = request.getfixturevalue("s3_server")
    return lambda **overrides: make_s3(server, tmp_path, **overrides)


@pytest.fixture
async def store(make_store: Callable[..., ObjectStore]) -> AsyncIterator[ObjectStore]:
    async with make_store() as s:
        yield s


@pytest.fixture
async def s3_store(s3_server: S3Server, tmp_path: Path) -> AsyncIterator[S3ObjectStore]:
    async with make_s3(s3_server, tmp_path) as s:
        yield s


@pytest.fixture
async def fs_store(tmp_path: Path) -> AsyncIterator[FilesystemObjectStore]:
    async with make_fs(tmp_path) as s:
        yield s


async def leftovers(store: ObjectStore) -> list[str]:
    """Everything the store holds: objects, temp files and (S3) unfinished multipart uploads."""
    if isinstance(store, FilesystemObjectStore):

        def walk() -> list[str]:
            return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())

        return await trio.to_thread.run_sync(walk)
    assert isinstance(store, S3ObjectStore)
    client = store._client

    def list_all() -> list[str]:
        objects = client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix).get("Contents", [])
        uploads = client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", [])
        spool = [str(p) for p in store._tmp_dir.rglob("*") if p.is_file()] if store._tmp_dir.exists() else []
        return sorted([o["Key"] for o in objects] + [f"upload:{u['Key']}" for u in uploads] + spool)

    return await trio.to_thread.run_sync(list_all)


# ---------------------------------------------------------------------------------------------- both backends


async def test_put_bytes_get_stat_exists(store: ObjectStore) -> None:
    data = b"hello, ternary world"
    info = await store.put(data)
    assert info == ObjectInfo(key=f"sha256/{sha(data)}", sha256=sha(data), size=len(data))
    assert await store.get(info.key) == data
    assert await store.stat(info.key) == info
    assert await store.exists(info.key)


async def test_put_async_iterable_big_and_stream_round_trip(store: ObjectStore) -> None:
    info = await store.put(chunked(BIG))
    assert info.sha256 == sha(BIG)
    assert info.size == len(BIG)
    assert info.key == key_for_digest(sha(BIG))
    assert await store.stat(info.key) == info

    received = bytearray()
    async with store.open_stream(info.key, chunk_size=MiB) as stream:
        assert stream.size == len(BIG)
        assert stream.key == info.key
        async for chunk in stream:
            assert 0 < len(chunk) <= MiB
            received += chunk
    assert bytes(received) == BIG
    assert await store.get(info.key) == BIG


async def test_stream_without_context_manager_and_early_close(store: ObjectStore) -> None:
    info = await store.put(b"abcdefghij")
    assert [c async for c in store.open_stream(info.key, chunk_size=4)] == [b"abcd", b"efgh", b"ij"]

    async with store.open_stream(info.key, chunk_size=3) as stream:
        assert await stream.__anext__() == b"abc"
    # closed on exit: iterating further ends at once
    assert [c async for c in stream] == []


async def test_empty_object(store: ObjectStore) -> None:
    info = await store.put(b"")
    assert info.sha256 == sha(b"")
    assert info.size == 0
    assert await store.get(info.key) == b""
    async with store.open_stream(info.key) as stream:
        assert stream.size == 0
        assert [c async for c in stream] == []
    assert (await store.put(chunked(b""))).key == info.key


async def test_put_is_idempotent_and_does_not_rewrite(store: ObjectStore) -> None:
    data = random.Random(7).randbytes(200_000)
    first = await store.put(data)
    writes = await count_writes(store, first.key)
    assert await store.put(data) == first
    assert await store.put(chunked(data)) == first
    assert await writes() == 0
    assert await store.get(first.key) == data
    assert await leftovers(store) == [expected_location(store, first.key)]
    if isinstance(store, S3ObjectStore):  # the spy does see real writes
        await store.put(b"something else")
        assert await writes() == 1


async def test_concurrent_puts_of_same_content(store: ObjectStore) -> None:
    data = random.Random(8).randbytes(300_000)
    results: list[ObjectInfo] = []

    async def one(use_iter: bool) -> None:
        results.append(await store.put(chunked(data) if use_iter else data))

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(one, i % 2 == 0)
    assert {r.key for r in results} == {key_for_digest(sha(data))}
    assert await store.get(results[0].key) == data
    assert await leftovers(store) == [expected_location(store, results[0].key)]


async def test_read_range(store: ObjectStore) -> None:
    data = bytes(range(256)) * 40
    info = await store.put(data)
    for start, length in [(0, 1), (0, len(data)), (17, 300), (len(data) - 5, 100), (len(data), 10), (500, 0)]:
        assert await store.read_range(info.key, start, length) == data[start : start + length]
    assert await store.read_range(info.key, len(data) + 100, 10) == b""
    empty = await store.put(b"")
    assert await store.read_range(empty.key, 0, 10) == b""
    missing = key_for_digest(sha(b"never stored"))
    for length in (0, 10):
        with pytest.raises(ObjectNotFoundError):
            await store.read_range(missing, 0, length)
    with pytest.raises(ValueError, match="negative"):
        await store.read_range(info.key, -1, 10)
    with pytest.raises(ValueError, match="negative"):
        await store.read_range(info.key, 0, -1)


async def test_delete_and_missing_keys(store: ObjectStore) -> None:
    info = await store.put(b"to be deleted")
    await store.delete(info.key)
    assert not await store.exists(info.key)
    await store.delete(info.key)  # missing: no error

    missing = key_for_digest("0" * 64)
    for key in (info.key, missing):
        with pytest.raises(ObjectNotFoundError, match=key):
            await store.get(key)
        with pytest.raises(ObjectNotFoundError):
            await store.stat(key)
        with pytest.raises(ObjectNotFoundError):
            async with store.open_stream(key):
                pass
    err = ObjectNotFoundError(f"no object {missing}")
    assert isinstance(err, StoreError)
    assert isinstance(err, KeyError)
    assert await leftovers(store) == []


BAD_KEYS = [
    "",
    "sha256/",
    "sha256/" + "a" * 63,
    "sha256/" + "a" * 65,
    "sha256/" + "A" * 64,
    "sha256/" + "g" * 64,
    "sha256/" + "a" * 64 + "\n",
    "/sha256/" + "a" * 64,
    "sha256//" + "a" * 64,
    "md5/" + "a" * 32,
    "sha256/../../../../etc/passwd",
    "../" + "a" * 64,
    "sha256/" + "a" * 62 + "/.",
    "sha256\\" + "a" * 64,
    "sha256/" + "a" * 64 + "/../x",
]


async def test_bad_keys_are_rejected(store: ObjectStore) -> None:
    for key in BAD_KEYS:
        with pytest.raises(ValueError, match="invalid object key"):
            await store.get(key)
        with pytest.raises(ValueError, match="invalid object key"):
            await store.stat(key)
        with pytest.raises(ValueError, match="invalid object key"):
            await store.exists(key)
        with pytest.raises(ValueError, match="invalid object key"):
            await store.delete(key)
        with pytest.raises(ValueError, match="invalid object key"):
            store.open_stream(key)
        with pytest.raises(ValueError, match="invalid object key"):
            store.presigned_url(key)


def test_validate_key() -> None:
    assert validate_key("sha256/" + "ab" * 32) == "ab" * 32
    with pytest.raises(ValueError, match="must be a str"):
        validate_key(None)
    with pytest.raises(ValueError, match="invalid object key"):
        key_for_digest("xyz")


async def test_bad_arguments(store: ObjectStore) -> None:
    key = key_for_digest("1" * 64)
    with pytest.raises(ValueError, match="chunk_size"):
        store.open_stream(key, chunk_size=0)
    with pytest.raises(ValueError, match="expires_s"):
        store.presigned_url(key, expires_s=0)


async def test_cancel_mid_put_leaves_nothing(store: ObjectStore) -> None:
    scope = trio.CancelScope()
    sent = b"x" * (3 * MiB) + b"y" * 1000

    async def chunks() -> AsyncIterator[bytes]:
        yield sent[: 3 * MiB]
        yield sent[3 * MiB :]
        scope.cancel()
        await trio.sleep_forever()

    with scope:
        await store.put(chunks())
    assert scope.cancelled_caught
    assert not await store.exists(key_for_digest(sha(sent)))
    assert await leftovers(store) == []


async def test_failing_source_leaves_nothing(store: ObjectStore) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"z" * (2 * MiB)
        raise RuntimeError("upstream broke")

    with pytest.raises(RuntimeError, match="upstream broke"):
        await store.put(chunks())
    assert await leftovers(store) == []


async def test_ping_and_aclose(store: ObjectStore) -> None:
    await store.ping()
    await store.aclose()
    await store.aclose()  # idempotent


# ----------------------------------------------------------------------------------------------- filesystem


async def test_fs_layout(fs_store: FilesystemObjectStore) -> None:
    info = await fs_store.put(b"layout")
    h = info.sha256
    assert (fs_store.root / "sha256" / h[:2] / h[2:4] / h).read_bytes() == b"layout"
    assert list((fs_store.root / "tmp").iterdir()) == []


async def test_fs_presigned_url(fs_store: FilesystemObjectStore) -> None:
    info = await fs_store.put(b"presign me")
    before = int(time.time())
    url = fs_store.presigned_url(info.key, expires_s=600)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == BASE_URL.rstrip("/")
    assert parts.path == f"/v1/objects/{info.key}"
    query = parse_qs(parts.query, strict_parsing=True)
    assert set(query) == {"expires", "signature"}
    expires, signature = int(query["expires"][0]), query["signature"][0]
    assert before + 600 <= expires <= int(time.time()) + 600
    assert signature == sign_presigned(SIGNING_KEY, info.key, expires)

    assert verify_presigned(SIGNING_KEY, info.key, expires, signature)
    assert verify_presigned(SIGNING_KEY, info.key, expires, signature.upper())
    assert verify_presigned(SIGNING_KEY, info.key, expires, signature, now=expires)
    assert not verify_presigned(SIGNING_KEY, info.key, expires, signature, now=expires + 1)  # expired
    tampered = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert not verify_presigned(SIGNING_KEY, info.key, expires, tampered)
    assert not verify_presigned(SIGNING_KEY, info.key, expires + 1, signature)  # extended expiry
    assert not verify_presigned(SIGNING_KEY, key_for_digest("0" * 64), expires, signature)  # other key
    assert not verify_presigned(b"other-signing-key", info.key, expires, signature)
    assert not verify_presigned(SIGNING_KEY, info.key, expires, "not hex")
    assert not verify_presigned(SIGNING_KEY, info.key, expires, "")
    assert not verify_presigned(SIGNING_KEY, "sha256/../../etc/passwd", expires, signature)


async def test_fs_ping_unusable_root(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    store = FilesystemObjectStore(not_a_dir, signing_key=SIGNING_KEY, base_url=BASE_URL)
    with pytest.raises(StoreUnavailableError):
        await store.ping()
    with pytest.raises(StoreUnavailableError):
        await store.put(b"data")
    with pytest.raises(StoreUnavailableError):
        await store.put(chunked(b"data"))


def test_fs_requires_signing_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="signing_key"):
        FilesystemObjectStore(tmp_path, signing_key=b"", base_url=BASE_URL)


# ------------------------------------------------------------------------------------------------------- S3


async def test_s3_presigned_url_downloads(s3_store: S3ObjectStore, s3_server: S3Server) -> None:
    info = await s3_store.put(chunked(BIG[: 2 * MiB]))
    url = s3_store.presigned_url(info.key, expires_s=60)
    assert url.startswith(f"{s3_server.endpoint_url}/{s3_server.bucket}/{s3_store.prefix}{info.key}?")
    response = await trio.to_thread.run_sync(httpx.get, url)
    assert response.status_code == 200
    assert response.content == BIG[: 2 * MiB]
    unsigned = await trio.to_thread.run_sync(httpx.get, url.split("?")[0])
    assert unsigned.status_code == 403  # SigV4 really is enforced
    with pytest.raises(ValueError, match="expires_s"):
        s3_store.presigned_url(info.key, expires_s=8 * 24 * 3600)


async def test_s3_unreachable_endpoint(s3_server: S3Server, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    async with make_s3(s3_server, tmp_path, endpoint_url=dead, max_attempts=1, connect_timeout=1) as store:
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            await store.ping()
        with pytest.raises(StoreUnavailableError):
            await store.get(key_for_digest("0" * 64))
        with pytest.raises(StoreUnavailableError):
            await store.put(b"nowhere to go")
        assert await leftovers_local(store) == []


async def test_s3_wrong_credentials(s3_server: S3Server, tmp_path: Path) -> None:
    async with make_s3(s3_server, tmp_path, secret_access_key="wrong", max_attempts=1) as store:
        with pytest.raises(StoreUnavailableError):
            await store.ping()
        with pytest.raises(StoreUnavailableError):
            await store.put(chunked(b"rejected"))
        assert await leftovers_local(store) == []


async def test_s3_missing_bucket_and_create(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = f"bitnet-new-{uuid.uuid4().hex[:12]}"
    async with make_s3(s3_server, tmp_path, bucket=bucket) as store:
        with pytest.raises(StoreUnavailableError):
            await store.ping()
        with pytest.raises(StoreUnavailableError):  # not ObjectNotFoundError: the bucket is the problem
            await store.get(key_for_digest("0" * 64))
        assert await store.create_bucket_if_missing() is True
        assert await store.create_bucket_if_missing() is False
        await store.ping()
        info = await store.put(b"in a new bucket")
        assert await store.get(info.key) == b"in a new bucket"


async def test_s3_closed_store(s3_store: S3ObjectStore) -> None:
    await s3_store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await s3_store.put(b"late")
    with pytest.raises(StoreError, match="closed"):
        await s3_store.get(key_for_digest("0" * 64))


async def test_s3_cancel_during_multipart_upload_aborts_it(s3_store: S3ObjectStore) -> None:
    entered, release = threading.Event(), threading.Event()

    def block_upload_part(**_kwargs: Any) -> None:
        entered.set()
        release.wait(10)

    s3_store._client.meta.events.register("before-send.s3.UploadPart", block_upload_part)
    scope = trio.CancelScope()

    async def controller() -> None:
        assert await trio.to_thread.run_sync(entered.wait, 10)
        scope.cancel()
        await trio.sleep(0.05)
        release.set()

    async def putter() -> None:
        with scope:
            await s3_store.put(chunked(BIG))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(putter)
        nursery.start_soon(controller)
    assert scope.cancelled_caught
    s3_store._client.meta.events.unregister("before-send.s3.UploadPart", block_upload_part)
    assert not await s3_store.exists(key_for_digest(sha(BIG)))
    assert await leftovers(s3_store) == []


# ------------------------------------------------------------------------------------------------- helpers


def expected_location(store: ObjectStore, key: str) -> str:
    digest = validate_key(key)
    if isinstance(store, FilesystemObjectStore):
        return f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"
    assert isinstance(store, S3ObjectStore)
    return store.prefix + key


async def count_writes(store: ObjectStore, key: str) -> Callable[[], Any]:
    """Return an async callable telling how many times the object under ``key`` was (re)written since now."""
    if isinstance(store, FilesystemObjectStore):
        path = store.root / expected_location(store, key)
        before = path.stat()

        async def fs_writes() -> int:
            after = path.stat()
            return int((after.st_ino, after.st_mtime_ns) != (before.st_ino, before.st_mtime_ns))

        return fs_writes
    assert isinstance(store, S3ObjectStore)
    calls: list[str] = []

    def on_write(event_name: str, **_kwargs: Any) -> None:
        calls.append(event_name)

    for op in ("PutObject", "CreateMultipartUpload", "UploadPart"):
        store._client.meta.events.register(f"before-call.s3.{op}", on_write)

    async def s3_writes() -> int:
        return len(calls)

    return s3_writes


async def leftovers_local(store: S3ObjectStore) -> list[Path]:
    tmp = store._tmp_dir
    return await trio.to_thread.run_sync(lambda: sorted(tmp.rglob("*")) if tmp.exists() else [])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
