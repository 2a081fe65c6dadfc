"""Encryption at rest of model objects: the chunked AES-256-GCM format (round trips, every way of tampering,
ranged reads), master keys, data keys in real PostgreSQL (rotation, crypto-shredding, row-level security), and
EncryptedObjects over the filesystem store and S3 (SeaweedFS). Memory bounds are measured with tracemalloc."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import secrets
import stat
import tracemalloc
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import trio

from bitnet_actor.config import Settings
from bitnet_actor.errors import ConflictError, ObjectNotFoundError, QueryError
from bitnet_actor.services.models import (
    DataKeyDestroyedError,
    DataKeyNotFoundError,
    EncryptedObjects,
    LocalKeyProvider,
    MasterKeyError,
    ObjectIntegrityError,
)
from bitnet_actor.services.models.crypto import (
    DEFAULT_CHUNK_SIZE,
    HEADER_SIZE,
    TAG_SIZE,
    DecryptingStream,
    EncryptingStream,
    RangeDecryptor,
    ciphertext_size,
    plaintext_size,
)
from bitnet_actor.stores.objects import FilesystemObjectStore, ObjectStore, S3ObjectStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Callable
    from pathlib import Path

    from tests.services.models.conftest import Dbs
    from tests.stores.conftest import S3Server


MiB = 1024 * 1024
C = DEFAULT_CHUNK_SIZE
MARKER = b"TERNARY-PLAINTEXT-MARKER-0xB1T"  # a distinctive pattern that must never reach the disk


def data_of(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


class chunked:  # reads as a function; a class, so a consumer that stops early leaves no generator
    """``data`` as an async iterable of ``step``-sized chunks."""

    def __init__(self, data: bytes, step: int = 300_001) -> None:
        self._data, self._step, self._pos = data, step, 0

    def __aiter__(self) -> chunked:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if self._pos >= len(self._data):
            raise StopAsyncIteration
        piece = self._data[self._pos : self._pos + self._step]
        self._pos += self._step
        return piece


async def collect(stream: AsyncIterable[bytes]) -> bytes:
    return b"".join([piece async for piece in stream])


def records(blob: bytes, chunk_size: int = C) -> tuple[bytes, list[bytes]]:
    """Split an encrypted object into its header and sealed chunks."""
    record = chunk_size + TAG_SIZE
    body = blob[HEADER_SIZE:]
    return blob[:HEADER_SIZE], [body[i : i + record] for i in range(0, len(body), record)]


class Sealed:
    """One object encrypted in memory (no store), for the format's tests."""

    def __init__(self, plaintext: bytes, *, chunk_size: int = C, dek: bytes | None = None) -> None:
        self.plaintext = plaintext
        self.dek = dek or secrets.token_bytes(32)
        self.id = uuid.uuid4()
        self.chunk_size = chunk_size
        self.prefix = secrets.token_bytes(8)
        self.blob = b""

    async def seal(self) -> Sealed:
        stream = EncryptingStream(
            chunked(self.plaintext), dek=self.dek, data_key_id=self.id, nonce_prefix=self.prefix,
            chunk_size=self.chunk_size,
        )  # fmt: skip
        self.blob = await collect(stream)
        assert stream.sha256 == hashlib.sha256(self.plaintext).hexdigest()
        assert stream.size == len(self.plaintext)
        return self

    async def open(self, blob: bytes, *, data_key_id: uuid.UUID | None = None) -> bytes:
        stream = DecryptingStream(chunked(blob, 77_777), dek=self.dek, data_key_id=data_key_id or self.id)
        return await collect(stream)


# ------------------------------------------------------------------------------------------------ the format


@pytest.mark.parametrize("size", [0, 1, C - 1, C, C + 1, 2 * C, 5 * C + 12345])
async def test_format_round_trip(size: int) -> None:
    sealed = await Sealed(data_of(size, size)).seal()
    assert len(sealed.blob) == ciphertext_size(size) == HEADER_SIZE + max(1, -(-size // C)) * TAG_SIZE + size
    assert plaintext_size(len(sealed.blob), C) == size
    assert await sealed.open(sealed.blob) == sealed.plaintext


async def test_small_chunks_and_odd_input_sizes() -> None:
    plaintext = data_of(100_000, 7)
    for chunk_size in (4096, 4097, 65536):
        sealed = await Sealed(plaintext, chunk_size=chunk_size).seal()
        _, chunks = records(sealed.blob, chunk_size)
        assert len(chunks) == -(-len(plaintext) // chunk_size)
        assert await sealed.open(sealed.blob) == plaintext
    with pytest.raises(ValueError, match="chunk_size"):
        EncryptingStream(chunked(b""), dek=bytes(32), data_key_id=uuid.uuid4(), nonce_prefix=bytes(8), chunk_size=100)


async def test_same_plaintext_twice_gives_unrelated_ciphertexts() -> None:
    plaintext = MARKER * 1000
    one, two = await Sealed(plaintext).seal(), await Sealed(plaintext).seal()
    assert one.blob[HEADER_SIZE:] != two.blob[HEADER_SIZE:]
    assert MARKER not in one.blob and MARKER[:8] not in one.blob


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (0, "bad magic"),  # the header
        (10, "chunk 0 fails authentication"),  # the nonce prefix (bound in every chunk's AAD)
        (HEADER_SIZE + 5, "chunk 0 fails authentication"),  # a ciphertext byte
        (HEADER_SIZE + C + TAG_SIZE - 1, "chunk 0 fails authentication"),  # chunk 0's tag
        (HEADER_SIZE + 2 * (C + TAG_SIZE) + 3, "chunk 2 fails authentication"),  # the final chunk
    ],
)
async def test_tampering_is_detected(where: int, message: str) -> None:
    sealed = await Sealed(data_of(2 * C + 500)).seal()
    tampered = bytearray(sealed.blob)
    tampered[where] ^= 0x01
    with pytest.raises(ObjectIntegrityError, match=message):
        await sealed.open(bytes(tampered))


async def test_truncation_extension_and_reordering_are_detected() -> None:
    sealed = await Sealed(data_of(3 * C + 10)).seal()
    header, chunks = records(sealed.blob)
    assert len(chunks) == 4
    cases = {
        "truncated: it ends after chunk 2": header + b"".join(chunks[:3]),  # the last chunk dropped
        "truncated inside chunk 0": header + chunks[0][:10],
        "truncated: it ends after chunk 0": header + chunks[0],
        "too short for a header": header[:20],
        "chunk 3 fails authentication": sealed.blob + chunks[1],  # a chunk appended to a short final one
        "chunk 0 fails authentication": header + chunks[1] + chunks[0] + b"".join(chunks[2:]),  # reordered
        "chunk 1 fails authentication": header + chunks[0] + chunks[0] + b"".join(chunks[2:]),  # duplicated
    }
    for message, blob in cases.items():
        with pytest.raises(ObjectIntegrityError, match=message):
            await sealed.open(blob)
    full = await Sealed(data_of(2 * C)).seal()  # the final chunk is full size: an appended one lines up
    _, full_chunks = records(full.blob)
    with pytest.raises(ObjectIntegrityError, match="data after its final chunk 1"):
        await full.open(full.blob + full_chunks[0])


async def test_chunks_of_another_object_and_the_wrong_object_are_rejected() -> None:
    # Even under the same DEK and nonce prefix (which never happens), another object's id keeps them apart.
    a = await Sealed(data_of(2 * C + 1, 1)).seal()
    b = Sealed(data_of(2 * C + 1, 2), dek=a.dek)
    b.prefix = a.prefix
    await b.seal()
    a_header, a_chunks = records(a.blob)
    _, b_chunks = records(b.blob)
    with pytest.raises(ObjectIntegrityError, match="chunk 1 fails authentication"):
        await a.open(a_header + a_chunks[0] + b_chunks[1] + a_chunks[2])
    # B's whole object presented as A's: its header names B.
    with pytest.raises(ObjectIntegrityError, match=f"belongs to data key {b.id}, not {a.id}"):
        await a.open(b.blob)
    # ... and with A's id forged into B's header, no chunk authenticates.
    forged = a_header + b.blob[HEADER_SIZE:]
    with pytest.raises(ObjectIntegrityError, match="chunk 0 fails authentication"):
        await a.open(forged)
    # The wrong data key.
    with pytest.raises(ObjectIntegrityError, match="chunk 0 fails authentication"):
        await collect(DecryptingStream(chunked(a.blob), dek=secrets.token_bytes(32), data_key_id=a.id))
    with pytest.raises(ObjectIntegrityError, match="3 were stored"):
        await collect(DecryptingStream(chunked(a.blob), dek=a.dek, data_key_id=a.id, expected_size=3))


async def read_at_of(blob: bytes) -> Callable[[int, int], Any]:
    async def read_at(offset: int, length: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return blob[offset : offset + length]

    return read_at


async def test_ranged_decrypt_equals_slice() -> None:
    sealed = await Sealed(data_of(3 * C + 777, 3)).seal()
    ranged = await RangeDecryptor.open(
        await read_at_of(sealed.blob), ciphertext_len=len(sealed.blob), dek=sealed.dek, data_key_id=sealed.id
    )
    assert ranged.size == len(sealed.plaintext)
    rng = random.Random(5)
    n = len(sealed.plaintext)
    spans = [(0, 0), (0, 1), (0, n), (C - 1, C + 1), (C, 2 * C), (n - 1, n), (n - 5, n + 100), (n + 10, n + 20)]
    spans += [tuple(sorted((rng.randrange(n), rng.randrange(n)))) for _ in range(20)]
    for start, end in spans:
        assert await ranged.read(start, end) == sealed.plaintext[start:end], (start, end)
    assert await ranged.read_chunk(3) == sealed.plaintext[3 * C :]
    with pytest.raises(IndexError):
        await ranged.read_chunk(4)
    with pytest.raises(ValueError, match="bad range"):
        await ranged.read(5, 4)


async def test_ranged_decrypt_detects_tampering_and_truncation() -> None:
    sealed = await Sealed(data_of(3 * C + 777, 4)).seal()
    tampered = bytearray(sealed.blob)
    tampered[HEADER_SIZE + (C + TAG_SIZE) + 9] ^= 0x80  # in chunk 1
    ranged = await RangeDecryptor.open(
        await read_at_of(bytes(tampered)), ciphertext_len=len(tampered), dek=sealed.dek, data_key_id=sealed.id
    )
    assert await ranged.read(0, C) == sealed.plaintext[:C]
    assert await ranged.read(2 * C, 2 * C + 10) == sealed.plaintext[2 * C : 2 * C + 10]
    with pytest.raises(ObjectIntegrityError, match="chunk 1 fails authentication"):
        await ranged.read(C - 1, C + 1)
    header, chunks = records(sealed.blob)
    short = header + b"".join(chunks[:3])  # the final chunk dropped: chunk 2 now looks final
    ranged = await RangeDecryptor.open(
        await read_at_of(short), ciphertext_len=len(short), dek=sealed.dek, data_key_id=sealed.id
    )
    with pytest.raises(ObjectIntegrityError, match="truncated: it ends after chunk 2"):
        await ranged.read(2 * C, 2 * C + 1)
    with pytest.raises(ObjectIntegrityError, match="impossible size"):
        await RangeDecryptor.open(
            await read_at_of(sealed.blob), ciphertext_len=HEADER_SIZE + 3, dek=sealed.dek, data_key_id=sealed.id
        )


async def test_encrypt_and_decrypt_64_mib_in_bounded_memory() -> None:
    block = data_of(MiB, 9)
    total = 64

    async def source() -> AsyncIterator[bytes]:
        for _ in range(total):
            yield block  # the same object each time: only the pipeline's own buffers are measured
            await trio.lowlevel.checkpoint()

    dek, data_key_id = secrets.token_bytes(32), uuid.uuid4()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        encrypting = EncryptingStream(source(), dek=dek, data_key_id=data_key_id, nonce_prefix=bytes(8))
        hasher = hashlib.sha256()
        size = 0
        async for piece in DecryptingStream(encrypting, dek=dek, data_key_id=data_key_id):
            hasher.update(piece)
            size += len(piece)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert size == total * MiB
    assert hasher.hexdigest() == hashlib.sha256(block * total).hexdigest() == encrypting.sha256
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"


# ------------------------------------------------------------------------------------------------ master keys


async def test_local_key_provider_wraps_with_the_current_key_and_binds_the_context() -> None:
    old, new = ("old", secrets.token_bytes(32)), ("new", secrets.token_bytes(32))
    dek = secrets.token_bytes(32)
    key_id, wrapped = await LocalKeyProvider([old]).wrap(dek, context=b"row-1")
    assert key_id == "old"
    both = LocalKeyProvider([new, old])
    assert both.current_key_id == "new" and both.key_ids == ("new", "old")
    assert await both.unwrap("old", wrapped, context=b"row-1") == dek
    with pytest.raises(MasterKeyError, match="does not unwrap"):
        await both.unwrap("old", wrapped, context=b"row-2")  # a wrapped key moved to another row
    with pytest.raises(MasterKeyError, match="'gone' is not configured"):
        await both.unwrap("gone", wrapped, context=b"row-1")
    with pytest.raises(MasterKeyError, match="does not unwrap"):
        await LocalKeyProvider([("old", secrets.token_bytes(32))]).unwrap("old", wrapped, context=b"row-1")
    with pytest.raises(MasterKeyError, match="unknown format"):
        await both.unwrap("old", b"\x02" + wrapped[1:], context=b"row-1")
    with pytest.raises(ValueError, match="distinct"):
        LocalKeyProvider([old, old])
    with pytest.raises(ValueError, match="at least one"):
        LocalKeyProvider([])


async def test_local_key_provider_from_settings(tmp_path: Path) -> None:
    made = LocalKeyProvider.from_settings(Settings(data_dir=tmp_path))
    path = tmp_path / "secrets" / "master.key"
    assert made.key_ids == ("local",)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(path.read_bytes()) == 32
    key_id, wrapped = await made.wrap(b"k" * 32, context=b"c")
    again = LocalKeyProvider.from_settings(Settings(data_dir=tmp_path))  # the same file, the same key
    assert await again.unwrap(key_id, wrapped, context=b"c") == b"k" * 32
    assert await LocalKeyProvider([("local", path.read_bytes())]).unwrap(key_id, wrapped, context=b"c") == b"k" * 32
    raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    configured = LocalKeyProvider.from_settings(Settings(data_dir=tmp_path, master_keys=f"k2:{raw},local:{'A' * 43}"))
    assert configured.key_ids == ("k2", "local")


# -------------------------------------------------------------------- EncryptedObjects: stores and PostgreSQL


@pytest.fixture(params=["fs", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    made: ObjectStore
    if request.param == "fs":
        made = FilesystemObjectStore(tmp_path / "objects", signing_key=b"k", base_url="http://x")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        made = S3ObjectStore(
            endpoint_url=server.endpoint_url, bucket=server.bucket, access_key_id=server.access_key_id,
            secret_access_key=server.secret_access_key, region=server.region, prefix=f"crypto-{uuid.uuid4().hex}",
            tmp_dir=tmp_path / "spool", multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB,
        )  # fmt: skip
    async with made:
        yield made


@pytest.fixture
def fs_store(tmp_path: Path) -> FilesystemObjectStore:
    return FilesystemObjectStore(tmp_path / "objects", signing_key=b"k", base_url="http://x")


MASTER = ("m1", secrets.token_bytes(32))


def fs_path(store: FilesystemObjectStore, key: str) -> Path:
    digest = key.removeprefix("sha256/")
    return store.root / "sha256" / digest[:2] / digest[2:4] / digest


async def read_all(objects: EncryptedObjects, org: uuid.UUID | None, key: str) -> bytes:
    async with objects.open(org, key) as stream:
        return await collect(stream)


async def test_put_open_round_trip_on_both_stores(store: ObjectStore, dbs: Dbs) -> None:
    objects = EncryptedObjects(store, dbs.app, LocalKeyProvider([MASTER]))
    org = await dbs.new_org()
    for size in (0, 1, C - 1, C, C + 1, 5 * C + 4321):
        plaintext = data_of(size, size + 1)
        put = await objects.put(org, chunked(plaintext))
        assert put.plaintext_sha256 == hashlib.sha256(plaintext).hexdigest() and put.plaintext_size == size
        assert put.info.size == ciphertext_size(size)
        ciphertext = await store.get(put.info.key)
        assert put.info.sha256 == hashlib.sha256(ciphertext).hexdigest()  # the store addresses the ciphertext
        assert await read_all(objects, org, put.info.key) == plaintext
        assert (
            await objects.read_range(org, put.info.key, size // 3, size // 3 + C + 5)
            == plaintext[size // 3 : size // 3 + C + 5]
        )
    small = await objects.put(org, b"bytes are fine too")
    assert await read_all(objects, org, small.info.key) == b"bytes are fine too"


async def test_ranged_reads_through_the_store(store: ObjectStore, dbs: Dbs) -> None:
    objects = EncryptedObjects(store, dbs.app, LocalKeyProvider([MASTER]))
    org = await dbs.new_org()
    plaintext = data_of(4 * C + 99, 11)
    put = await objects.put(org, chunked(plaintext))
    ranged = await objects.ranged(org, put.info.key)
    rng = random.Random(3)
    for _ in range(12):
        start, end = sorted((rng.randrange(len(plaintext) + 1), rng.randrange(len(plaintext) + 1)))
        assert await ranged.read(start, end) == plaintext[start:end]
    assert b"".join([p async for p in ranged.iter_range(C - 3, 3 * C + 3)]) == plaintext[C - 3 : 3 * C + 3]


async def test_no_plaintext_reaches_the_store(store: ObjectStore, dbs: Dbs, tmp_path: Path) -> None:
    objects = EncryptedObjects(store, dbs.app, LocalKeyProvider([MASTER]))
    org = await dbs.new_org()
    plaintext = MARKER * (3 * C // len(MARKER))
    put = await objects.put(org, chunked(plaintext))
    ciphertext = await store.get(put.info.key)
    assert MARKER[:12] not in ciphertext
    if isinstance(store, FilesystemObjectStore):  # every byte written under the store's root, temp files too
        for path in store.root.rglob("*"):
            if path.is_file():
                assert MARKER[:12] not in path.read_bytes(), path
    assert await read_all(objects, org, put.info.key) == plaintext


async def test_tampered_object_on_disk_fails_clearly(fs_store: FilesystemObjectStore, dbs: Dbs) -> None:
    objects = EncryptedObjects(fs_store, dbs.app, LocalKeyProvider([MASTER]))
    org = await dbs.new_org()
    a = await objects.put(org, data_of(2 * C + 5, 1))
    b = await objects.put(org, data_of(2 * C + 5, 2))
    path_a, path_b = fs_path(fs_store, a.info.key), fs_path(fs_store, b.info.key)
    original = path_a.read_bytes()

    tampered = bytearray(original)
    tampered[HEADER_SIZE + C + TAG_SIZE + 100] ^= 0x04
    path_a.write_bytes(bytes(tampered))
    async with objects.open(org, a.info.key) as stream:
        assert await anext(stream) == data_of(2 * C + 5, 1)[:C]  # chunk 0 is fine and released
        with pytest.raises(ObjectIntegrityError, match="chunk 1 fails authentication"):
            await anext(stream)
    with pytest.raises(ObjectIntegrityError, match="chunk 1 fails authentication"):
        await objects.read_range(org, a.info.key, C, C + 1)

    header, chunks = records(original)
    path_a.write_bytes(header + b"".join(chunks[:2]))  # the last chunk dropped
    with pytest.raises(ObjectIntegrityError, match="truncated: it ends after chunk 1"):
        await read_all(objects, org, a.info.key)
    _, b_chunks = records(path_b.read_bytes())
    path_a.write_bytes(header + chunks[0] + b_chunks[1] + chunks[2])  # a chunk of another object
    with pytest.raises(ObjectIntegrityError, match="chunk 1 fails authentication"):
        await read_all(objects, org, a.info.key)
    path_a.write_bytes(path_b.read_bytes())  # the other object's whole ciphertext under A's key
    with pytest.raises(ObjectIntegrityError, match=f"belongs to data key {b.data_key_id}, not {a.data_key_id}"):
        await read_all(objects, org, a.info.key)
    path_a.write_bytes(original)
    assert await read_all(objects, org, a.info.key) == data_of(2 * C + 5, 1)


async def test_rotation_rewraps_without_touching_the_data(store: ObjectStore, dbs: Dbs) -> None:
    old, new = ("old", secrets.token_bytes(32)), ("new", secrets.token_bytes(32))
    before = EncryptedObjects(store, dbs.app, LocalKeyProvider([old]))
    orgs = [await dbs.new_org(), await dbs.new_org(), None]
    puts = [(org, await before.put(org, data_of(C + i, i))) for i, org in enumerate(orgs)]
    ciphertexts = [await store.get(p.info.key) for _, p in puts]

    during = EncryptedObjects(store, dbs.app, LocalKeyProvider([new, old]))
    extra_org = await dbs.new_org()
    extra = await during.put(extra_org, b"already under the new key")
    report = await during.rotate(dbs.owner)
    assert (report.key_id, report.rewrapped, report.already_current) == ("new", 3, 1)
    assert [await store.get(p.info.key) for _, p in puts] == ciphertexts  # the same bytes, untouched
    assert await dbs.owner.fetchval("SELECT count(*) FROM model_data_keys WHERE key_id <> 'new'") == 0

    after = EncryptedObjects(store, dbs.app, LocalKeyProvider([new]))  # the old master key removed
    for i, (org, put) in enumerate(puts):
        assert await read_all(after, org, put.info.key) == data_of(C + i, i)
    assert await read_all(after, extra_org, extra.info.key) == b"already under the new key"
    with pytest.raises(MasterKeyError, match="'new' is not configured"):
        await read_all(before, orgs[0], puts[0][1].info.key)
    again = await after.rotate(dbs.owner)
    assert (again.rewrapped, again.already_current) == (0, 4)
    with pytest.raises(MasterKeyError, match="'new' is not configured"):
        await EncryptedObjects(store, dbs.app, LocalKeyProvider([("newer", secrets.token_bytes(32))])).rotate(dbs.owner)


async def test_crypto_shred_destroys_one_orgs_keys(store: ObjectStore, dbs: Dbs) -> None:
    objects = EncryptedObjects(store, dbs.app, LocalKeyProvider([MASTER]))
    doomed, kept = await dbs.new_org(), await dbs.new_org()
    same = data_of(C + 3, 42)  # both upload the same plaintext: two ciphertexts, one content identity
    doomed_puts = [await objects.put(doomed, same), await objects.put(doomed, b"second")]
    kept_put = await objects.put(kept, same)
    assert kept_put.info.key != doomed_puts[0].info.key
    assert kept_put.plaintext_sha256 == doomed_puts[0].plaintext_sha256
    found = await objects.find(kept, kept_put.plaintext_sha256)
    assert found is not None and found.object_key == kept_put.info.key
    platform = await objects.put(None, b"a platform model")

    assert await objects.shred_org(doomed, delete_objects=False) == 2
    for put in doomed_puts:
        with pytest.raises(DataKeyDestroyedError, match="destroyed"):
            await read_all(objects, doomed, put.info.key)
        with pytest.raises(DataKeyDestroyedError):
            await objects.read_range(doomed, put.info.key, 0, 1)
        assert await store.exists(put.info.key)  # the ciphertext is still there, and useless
    rows = await dbs.owner.fetch("SELECT wrapped_key, destroyed_at FROM model_data_keys WHERE org_id = $1", doomed)
    assert len(rows) == 2 and all(r["wrapped_key"] is None and r["destroyed_at"] is not None for r in rows)
    assert await objects.find(doomed, kept_put.plaintext_sha256) is None
    assert await read_all(objects, kept, kept_put.info.key) == same
    assert await read_all(objects, None, platform.info.key) == b"a platform model"
    assert await objects.shred_org(doomed) == 0  # idempotent

    other = await dbs.new_org()
    gone = await objects.put(other, b"delete me too")
    assert await objects.shred_org(other) == 1
    assert not await store.exists(gone.info.key)
    with pytest.raises(DataKeyDestroyedError):
        await read_all(objects, other, gone.info.key)


async def test_row_level_security_keeps_data_keys_apart(fs_store: FilesystemObjectStore, dbs: Dbs) -> None:
    objects = EncryptedObjects(fs_store, dbs.app, LocalKeyProvider([MASTER]))
    mine, theirs = await dbs.new_org(), await dbs.new_org()
    secret = await objects.put(theirs, b"their weights")
    platform = await objects.put(None, b"everyone's weights")
    with pytest.raises(DataKeyNotFoundError):
        await read_all(objects, mine, secret.info.key)
    with pytest.raises(DataKeyNotFoundError):
        await objects.ranged(mine, secret.info.key)
    assert await read_all(objects, mine, platform.info.key) == b"everyone's weights"
    assert await read_all(objects, theirs, platform.info.key) == b"everyone's weights"

    async with dbs.app.transaction(org_id=mine) as tx:
        assert await tx.fetchval("SELECT count(*) FROM model_data_keys WHERE org_id = $1", theirs) == 0
        assert await tx.fetchval("SELECT count(*) FROM model_data_keys") == 1  # the platform's only
        assert await tx.execute("UPDATE model_data_keys SET wrapped_key = NULL, destroyed_at = now()") == "UPDATE 0"
        assert await tx.execute("DELETE FROM model_data_keys") == "DELETE 0"
    assert await dbs.app.fetchval("SELECT count(*) FROM model_data_keys WHERE org_id IS NOT NULL") == 0
    for org_id in (theirs, None):  # writing another's key, or the platform's as a tenant
        with pytest.raises(QueryError, match="row-level security"):
            async with dbs.app.transaction(org_id=mine) as tx:
                await tx.execute(
                    "INSERT INTO model_data_keys (id, org_id, object_key, key_id, wrapped_key, plaintext_sha256, "
                    "plaintext_size, chunk_size) VALUES ($1, $2, $3, 'm1', $4, $5, 0, 4096)",
                    uuid.uuid4(), org_id, f"sha256/{'0' * 64}", bytes(61), "0" * 64,
                )  # fmt: skip
    assert await objects.shred_org(mine) == 0
    assert await read_all(objects, theirs, secret.info.key) == b"their weights"


async def test_failed_key_write_leaves_no_ciphertext(fs_store: FilesystemObjectStore, dbs: Dbs) -> None:
    objects = EncryptedObjects(fs_store, dbs.app, LocalKeyProvider([MASTER]))
    with pytest.raises((ConflictError, QueryError)):
        await objects.put(uuid.uuid4(), chunked(data_of(C + 1)))  # no such organization
    assert [p for p in fs_store.root.rglob("*") if p.is_file()] == []
    platform = await objects.put(None, b"x")
    await fs_store.delete(platform.info.key)  # a data key whose ciphertext is gone
    with pytest.raises(ObjectNotFoundError):
        await read_all(objects, None, platform.info.key)


async def test_64_mib_through_the_store_in_bounded_memory(fs_store: FilesystemObjectStore, dbs: Dbs) -> None:
    objects = EncryptedObjects(fs_store, dbs.app, LocalKeyProvider([MASTER]))
    org = await dbs.new_org()
    block = data_of(MiB, 13)
    total = 64

    class Source:
        def __init__(self) -> None:
            self.sent = 0

        def __aiter__(self) -> Source:
            return self

        async def __anext__(self) -> bytes:
            await trio.lowlevel.checkpoint()
            if self.sent == total:
                raise StopAsyncIteration
            self.sent += 1
            return block

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        put = await objects.put(org, Source())
        put_peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.reset_peak()
        hasher = hashlib.sha256()
        async with objects.open(org, put.info.key) as stream:
            async for piece in stream:
                hasher.update(piece)
        get_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert put.plaintext_size == total * MiB
    assert hasher.hexdigest() == put.plaintext_sha256 == hashlib.sha256(block * total).hexdigest()
    assert put_peak < 16 * MiB, f"put peak {put_peak / MiB:.1f} MiB"
    assert get_peak < 16 * MiB, f"open peak {get_peak / MiB:.1f} MiB"
