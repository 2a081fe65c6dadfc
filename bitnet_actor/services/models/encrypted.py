""":class:`EncryptedObjects`: model objects encrypted at rest in the object store, their data keys in PostgreSQL.

``put`` encrypts a plaintext stream under a fresh data key (:mod:`.crypto`), stores the ciphertext
(content-addressed by the *ciphertext's* SHA-256) and then the wrapped data key (:mod:`.keys`). The plaintext's
SHA-256, computed on the way, is the content's identity: two organizations uploading the same bytes get two
ciphertexts under two data keys, and the plaintext digest beside each is what dedup compares
(:meth:`EncryptedObjects.find`).

A crash between storing the ciphertext and its data key leaves an object no one can decrypt and no row names;
it is garbage (safe to delete), never a readable leak.

Regions: an organization's objects go to its home region's store
(:class:`~bitnet_actor.stores.objects.RegionStores`), and the data key records which (its ``region``); reads
and deletes go to the recorded store, so objects stay readable wherever they were put. Platform objects use
the default store. :mod:`.relocation` moves an organization's objects to another region's store.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import trio

from bitnet_actor.services.models import keys as _keys
from bitnet_actor.services.models.crypto import DEFAULT_CHUNK_SIZE, DecryptingStream, EncryptingStream, RangeDecryptor
from bitnet_actor.stores.objects import RegionStores

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator
    from types import TracebackType

    from bitnet_actor.services.models.keys import DataKey, KeyProvider, RotationReport
    from bitnet_actor.stores.objects import ObjectInfo, ObjectStore, ObjectStream
    from bitnet_actor.stores.postgres import Database

__all__ = ["EncryptedObject", "EncryptedObjects", "PlaintextStream"]

_CLEANUP_S = 10.0


@dataclass(frozen=True, slots=True)
class EncryptedObject:
    """A stored encrypted object.

    Attributes:
        info: The ciphertext's store info (its key is what :meth:`EncryptedObjects.open` takes).
        plaintext_sha256: The lowercase hex SHA-256 of the plaintext: the content's identity.
        plaintext_size: The plaintext's size in bytes.
        data_key_id: The id of its data key.
    """

    info: ObjectInfo
    plaintext_sha256: str
    plaintext_size: int
    data_key_id: uuid.UUID


class _Once:
    """``bytes`` as a one-chunk async iterable."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        data, self._data = self._data, None
        if data is None:
            raise StopAsyncIteration
        return data


class EncryptedObjects:
    """Encrypted model objects for every organization (``org_id`` None: a platform object).

    Args:
        stores: Where the ciphertext goes: the stores of every region, or one store for everything (not
            closed here either way).
        db: The service role's database (row-level security scopes data keys to the organization).
        keys: The master keys.
        chunk_size: Plaintext bytes per authenticated chunk for new objects.
    """

    def __init__(
        self,
        stores: RegionStores | ObjectStore,
        db: Database,
        keys: KeyProvider,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        """See the class docstring."""
        self._stores = stores if isinstance(stores, RegionStores) else RegionStores(stores)
        self._db = db
        self._keys = keys
        self._chunk_size = chunk_size

    @property
    def stores(self) -> RegionStores:
        """The object stores, by region."""
        return self._stores

    @property
    def db(self) -> Database:
        """The database of the data keys (the service role's)."""
        return self._db

    async def put(self, org_id: uuid.UUID | None, data: bytes | AsyncIterable[bytes]) -> EncryptedObject:
        """Encrypt and store ``data`` (never held whole in memory) for ``org_id``, in its home region's store.

        Raises:
            StoreError: The object store or the database failed (no data key is left behind; the
                ciphertext is deleted).
        """
        source = _Once(data) if isinstance(data, bytes) else data
        region = self._stores.placement(await self.home_region(org_id))
        store = self._stores.for_region(region)
        dek = secrets.token_bytes(32)
        data_key_id = uuid.uuid4()
        stream = EncryptingStream(
            source, dek=dek, data_key_id=data_key_id, nonce_prefix=secrets.token_bytes(8), chunk_size=self._chunk_size
        )
        info = await store.put(stream)
        try:
            await _keys.store_data_key(
                self._db, self._keys, data_key_id=data_key_id, org_id=org_id, object_key=info.key, dek=dek,
                plaintext_sha256=stream.sha256, plaintext_size=stream.size, chunk_size=self._chunk_size,
                region=region,
            )  # fmt: skip
        except BaseException:
            with trio.move_on_after(_CLEANUP_S, shield=True):
                await store.delete(info.key)  # undecryptable without its key; don't leave it
            raise
        return EncryptedObject(info, stream.sha256, stream.size, data_key_id)

    def open(self, org_id: uuid.UUID | None, key: str) -> PlaintextStream:
        """Return a stream over an object's plaintext, as ``org_id``; use it with ``async with``.

        Entering it looks up and unwraps the data key and opens the ciphertext, raising
        :class:`~.keys.DataKeyNotFoundError` (not this organization's), :class:`~.keys.DataKeyDestroyedError`
        (shredded), :class:`~.keys.MasterKeyError` or ``ObjectNotFoundError``; iterating raises
        :class:`~.crypto.ObjectIntegrityError` at the first chunk that fails authentication.
        """
        return PlaintextStream(self, org_id, key)

    async def ranged(self, org_id: uuid.UUID | None, key: str) -> RangeDecryptor:
        """Return a :class:`RangeDecryptor` over an object's plaintext, for random access by chunk.

        Raises:
            DataKeyNotFoundError, DataKeyDestroyedError, MasterKeyError, ObjectNotFoundError: as :meth:`open`.
            ObjectIntegrityError: a bad header or an impossible size.
        """
        data_key, dek = await self._unwrapped(org_id, key)
        store = self._stores.stored_in(data_key.region)
        size = (await store.stat(key)).size

        async def read_at(offset: int, length: int) -> bytes:
            return await store.read_range(key, offset, length)

        return await RangeDecryptor.open(read_at, ciphertext_len=size, dek=dek, data_key_id=data_key.id)

    async def read_range(self, org_id: uuid.UUID | None, key: str, start: int, end: int) -> bytes:
        """Return plaintext bytes ``[start, end)`` of an object (clipped to its end); see :meth:`ranged`."""
        decryptor = await self.ranged(org_id, key)
        return await decryptor.read(start, end)

    async def find(self, org_id: uuid.UUID | None, plaintext_sha256: str) -> DataKey | None:
        """Return a live object of ``org_id``'s with this plaintext digest, if there is one (for dedup)."""
        return await _keys.find_by_plaintext(self._db, org_id=org_id, plaintext_sha256=plaintext_sha256)

    async def delete(self, org_id: uuid.UUID | None, key: str) -> None:
        """Delete an object of ``org_id``'s and its data key (the key first: what is left can never be read),
        from the store its data key names (without one: the store the organization's objects go to now)."""
        async with self._db.transaction(org_id=org_id) as tx:
            row = await tx.fetchrow("DELETE FROM model_data_keys WHERE object_key = $1 RETURNING region", key)
        if row is not None:
            store = self._stores.stored_in(row["region"])
        else:
            store = self._stores.for_region(self._stores.placement(await self.home_region(org_id)))
        await store.delete(key)

    async def shred_org(self, org_id: uuid.UUID, *, delete_objects: bool = True) -> int:
        """Crypto-shred an organization's objects (see :func:`.keys.shred_org`); optionally delete their
        ciphertext too (undecryptable either way). Returns how many data keys were destroyed now."""
        shredded = await _keys.shred_org(self._db, org_id)
        if delete_objects:
            for key, region in shredded:
                await self._stores.stored_in(region).delete(key)
        return len(shredded)

    async def home_region(self, org_id: uuid.UUID | None) -> str | None:
        """``org_id``'s home region (None for platform objects, and without region stores: nothing to
        choose)."""
        if org_id is None or not self._stores.regions:
            return None
        async with self._db.transaction(org_id=org_id, readonly=True) as tx:
            region: str | None = await tx.fetchval("SELECT region FROM organizations WHERE id = $1", org_id)
        return region

    async def rotate(self, owner_db: Database) -> RotationReport:
        """Re-wrap every data key under the current master key (see :func:`.keys.rotate`; ``owner_db``
        connects as the tables' owner)."""
        return await _keys.rotate(owner_db, self._keys)

    async def _unwrapped(self, org_id: uuid.UUID | None, key: str) -> tuple[DataKey, bytes]:
        data_key = await _keys.fetch_data_key(self._db, org_id=org_id, object_key=key)
        return data_key, await data_key.unwrap(self._keys)


class PlaintextStream:
    """An async iterator over an encrypted object's plaintext, one authenticated chunk per item; get one
    from :meth:`EncryptedObjects.open` and use it with ``async with`` (which closes the ciphertext stream)."""

    def __init__(self, objects: EncryptedObjects, org_id: uuid.UUID | None, key: str) -> None:
        """Use :meth:`EncryptedObjects.open`."""
        self._objects = objects
        self._org_id = org_id
        self._key = key
        self._source: ObjectStream | None = None
        self._plain: AsyncIterator[bytes] | None = None
        self._closed = False
        self.data_key: DataKey | None = None
        """The object's data key (plaintext digest and size), once opened."""

    async def _open(self) -> AsyncIterator[bytes]:
        if self._plain is None:
            data_key, dek = await self._objects._unwrapped(self._org_id, self._key)
            store = self._objects.stores.stored_in(data_key.region)
            source = store.open_stream(self._key, chunk_size=data_key.chunk_size + 16)
            await source.__aenter__()
            self._source, self.data_key = source, data_key
            self._plain = DecryptingStream(
                source, dek=dek, data_key_id=data_key.id, expected_size=data_key.plaintext_size
            )
        return self._plain

    async def __aenter__(self) -> Self:
        """Look up the data key and open the ciphertext."""
        await self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the ciphertext stream."""
        await self.aclose()

    def __aiter__(self) -> Self:
        """Return this stream."""
        return self

    async def __anext__(self) -> bytes:
        """Return the next chunk of plaintext (authenticated before it is returned)."""
        if self._closed:
            raise StopAsyncIteration
        plain = await self._open()
        try:
            return await anext(plain)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the ciphertext stream; idempotent."""
        self._closed = True
        source, self._source = self._source, None
        if source is not None:
            await source.aclose()
