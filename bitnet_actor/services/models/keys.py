"""Master keys and data keys: wrapping DEKs, keeping them in ``model_data_keys`` (migration 0006), rotation
and crypto-shredding.

A :class:`KeyProvider` wraps and unwraps data keys with master keys it names by key id. The one shipped here,
:class:`LocalKeyProvider`, holds the master keys in process memory, from ``BITNET_MASTER_KEYS`` (or a key
generated in the data dir). A KMS or Vault transit backend plugs in by implementing the same three members:

* ``current_key_id``: the key new DEKs are wrapped with (the KMS key ARN / the transit key name + version);
* ``wrap(dek, context=)``: AWS KMS ``Encrypt`` with ``EncryptionContext={"data_key": context}``, or Vault
  ``transit/encrypt/<name>`` with ``associated_data`` (an AEAD key type) and the ciphertext kept as bytes;
* ``unwrap(key_id, wrapped, context=)``: ``Decrypt`` / ``transit/decrypt`` with the same context.

They are coroutines so a network call fits; a provider raises :class:`MasterKeyError` when it cannot unwrap.
The context (the data key's id) binds a wrapped DEK to its row, so a wrapped key copied onto another row
does not unwrap.

Roles: storing, fetching and shredding run as the service role inside the tenant's transaction (row-level
security keeps each organization to its own keys). :func:`rotate` re-wraps every organization's keys, so it
runs as the tables' owner, as admin commands do (``open_database_only(settings, as_owner=True)``).
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bitnet_actor.config import parse_master_keys
from bitnet_actor.errors import BitnetError
from bitnet_actor.stores import load_or_create_secret

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from bitnet_actor.config import Settings
    from bitnet_actor.stores.postgres import Database

__all__ = [
    "DataKey",
    "DataKeyDestroyedError",
    "DataKeyNotFoundError",
    "KeyProvider",
    "LocalKeyProvider",
    "MasterKeyError",
    "RotationReport",
    "fetch_data_key",
    "find_by_plaintext",
    "rotate",
    "shred_org",
    "store_data_key",
]

log = logging.getLogger(__name__)

DATA_DIR_KEY_ID: Final = "local"
"""The key id of the master key generated in the data dir when ``BITNET_MASTER_KEYS`` is unset."""
_WRAP_VERSION: Final = b"\x01"
_WRAP_AAD: Final = b"bitnet-actor/model-dek/v1:"
_ROTATE_BATCH: Final = 500


class MasterKeyError(BitnetError):
    """A data key cannot be unwrapped: its master key is not configured, or is not the one that wrapped it."""


class DataKeyNotFoundError(BitnetError):
    """No data key for this object is visible to this organization (never stored, or another's)."""


class DataKeyDestroyedError(BitnetError):
    """The object's data key was crypto-shredded: the object can never be decrypted again."""


class KeyProvider(Protocol):
    """Wraps and unwraps data keys with master keys; see the module docstring for KMS / Vault transit."""

    @property
    def current_key_id(self) -> str:
        """The id of the master key new data keys are wrapped with."""
        ...

    async def wrap(self, dek: bytes, *, context: bytes) -> tuple[str, bytes]:
        """Wrap ``dek`` with the current master key; return ``(key_id, wrapped)``."""
        ...

    async def unwrap(self, key_id: str, wrapped: bytes, *, context: bytes) -> bytes:
        """Unwrap a data key; raise :class:`MasterKeyError` if that is impossible."""
        ...


class LocalKeyProvider:
    """Master keys held in this process; the first is current, the others only unwrap (until rotated away).

    Wrapping is AES-256-GCM: ``0x01 || nonce (12) || ciphertext + tag (48)``, with the key id and the context
    as associated data.
    """

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        """Create the provider.

        Args:
            keys: ``(key_id, 32-byte key)`` pairs, the current one first.

        Raises:
            ValueError: no key, a key of the wrong size, or a repeated id.
        """
        if not keys:
            raise ValueError("at least one master key is needed")
        if len({key_id for key_id, _ in keys}) != len(keys) or any(len(key) != 32 for _, key in keys):
            raise ValueError("master keys need distinct ids and 32 bytes each")
        self._keys = {key_id: AESGCM(key) for key_id, key in keys}
        self._current = keys[0][0]

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalKeyProvider:
        """``BITNET_MASTER_KEYS``, else a key generated in ``data_dir/secrets/master.key`` (mode 0600), id
        ``local``. Replicas must share their master keys: set ``BITNET_MASTER_KEYS`` for more than one.

        Raises:
            ConfigError: ``BITNET_MASTER_KEYS`` is malformed.
        """
        if settings.master_keys:
            return cls(parse_master_keys(settings.master_keys))
        if settings.database_url:
            log.warning(
                "BITNET_MASTER_KEYS is not set: using a master key from the data dir, which other replicas lack"
            )
        return cls([(DATA_DIR_KEY_ID, load_or_create_secret(settings.data_dir, "master.key"))])

    @property
    def current_key_id(self) -> str:
        """The id of the first configured key."""
        return self._current

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every configured key id, the current one first."""
        return tuple(self._keys)

    async def wrap(self, dek: bytes, *, context: bytes) -> tuple[str, bytes]:
        """Wrap ``dek`` with the current key."""
        nonce = secrets.token_bytes(12)
        sealed = self._keys[self._current].encrypt(nonce, dek, _WRAP_AAD + self._current.encode() + b"\0" + context)
        return self._current, _WRAP_VERSION + nonce + sealed

    async def unwrap(self, key_id: str, wrapped: bytes, *, context: bytes) -> bytes:
        """Unwrap a data key wrapped by :meth:`wrap` with key ``key_id``.

        Raises:
            MasterKeyError: ``key_id`` is not configured, or the wrapped key does not authenticate.
        """
        aead = self._keys.get(key_id)
        if aead is None:
            raise MasterKeyError(f"master key {key_id!r} is not configured (BITNET_MASTER_KEYS)")
        if wrapped[:1] != _WRAP_VERSION or len(wrapped) < 1 + 12 + 16:
            raise MasterKeyError(f"a data key wrapped by {key_id!r} has an unknown format")
        try:
            return aead.decrypt(wrapped[1:13], wrapped[13:], _WRAP_AAD + key_id.encode() + b"\0" + context)
        except InvalidTag:
            raise MasterKeyError(
                f"a data key does not unwrap with master key {key_id!r} (not the one that wrapped it)"
            ) from None


@dataclass(frozen=True, slots=True)
class DataKey:
    """One object's data key as stored (the DEK itself stays wrapped here).

    Attributes:
        id: The data key's id, bound into the object's every chunk.
        org_id: The owning organization; None for a platform object.
        object_key: The encrypted object's store key.
        key_id: The master key that wraps it.
        wrapped_key: The wrapped DEK; None once destroyed.
        plaintext_sha256 / plaintext_size: The plaintext's identity and size.
        chunk_size: The object's plaintext chunk size.
        created_at / destroyed_at: When it was stored and (if it was) shredded.
        region: The region whose object store holds it; None for the default store
            (:class:`~bitnet_actor.stores.objects.RegionStores`).
    """

    id: uuid.UUID
    org_id: uuid.UUID | None
    object_key: str
    key_id: str
    wrapped_key: bytes | None
    plaintext_sha256: str
    plaintext_size: int
    chunk_size: int
    created_at: datetime
    destroyed_at: datetime | None
    region: str | None = None

    async def unwrap(self, keys: KeyProvider) -> bytes:
        """Return the DEK.

        Raises:
            DataKeyDestroyedError: it was shredded.
            MasterKeyError: its master key cannot unwrap it.
        """
        if self.wrapped_key is None:
            raise DataKeyDestroyedError(f"the data key of {self.object_key} was destroyed at {self.destroyed_at}")
        return await keys.unwrap(self.key_id, self.wrapped_key, context=self.id.bytes)


_COLUMNS = (
    "id, org_id, object_key, key_id, wrapped_key, plaintext_sha256, plaintext_size, chunk_size, created_at, "
    "destroyed_at, region"
)


async def store_data_key(
    db: Database,
    keys: KeyProvider,
    *,
    data_key_id: uuid.UUID,
    org_id: uuid.UUID | None,
    object_key: str,
    dek: bytes,
    plaintext_sha256: str,
    plaintext_size: int,
    chunk_size: int,
    region: str | None = None,
) -> DataKey:
    """Wrap ``dek`` with the current master key and store it for ``object_key``, as ``org_id``; ``region``
    names the store the object was put in (None: the default store).

    Raises:
        ConflictError: a data key is already stored for ``object_key`` (or under ``data_key_id``).
    """
    key_id, wrapped = await keys.wrap(dek, context=data_key_id.bytes)
    async with db.transaction(org_id=org_id) as tx:
        row = await tx.fetchrow(
            "INSERT INTO model_data_keys (id, org_id, object_key, key_id, wrapped_key, plaintext_sha256, "
            f"plaintext_size, chunk_size, region) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_COLUMNS}",
            data_key_id, org_id, object_key, key_id, wrapped, plaintext_sha256, plaintext_size, chunk_size, region,
        )  # fmt: skip
    assert row is not None
    return DataKey(**dict(row))


async def fetch_data_key(db: Database, *, org_id: uuid.UUID | None, object_key: str) -> DataKey:
    """Return the data key of ``object_key`` as ``org_id`` sees it (its own, or a platform object's).

    Raises:
        DataKeyNotFoundError: none is visible to ``org_id``.
    """
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        row = await tx.fetchrow(f"SELECT {_COLUMNS} FROM model_data_keys WHERE object_key = $1", object_key)
    if row is None:
        raise DataKeyNotFoundError(f"no data key for {object_key} in this organization")
    return DataKey(**dict(row))


async def find_by_plaintext(db: Database, *, org_id: uuid.UUID | None, plaintext_sha256: str) -> DataKey | None:
    """Return the oldest live data key of ``org_id``'s own objects (or, for None, the platform's) whose
    plaintext has this SHA-256, or None."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        row = await tx.fetchrow(
            f"SELECT {_COLUMNS} FROM model_data_keys WHERE org_id IS NOT DISTINCT FROM $1 "
            "AND plaintext_sha256 = $2 AND wrapped_key IS NOT NULL ORDER BY created_at LIMIT 1",
            org_id, plaintext_sha256,
        )  # fmt: skip
    return None if row is None else DataKey(**dict(row))


async def shred_org(db: Database, org_id: uuid.UUID) -> list[tuple[str, str | None]]:
    """Crypto-shred an organization: destroy the wrapped DEKs of all its objects, which can then never be
    decrypted again. Idempotent.

    The wrapped keys are overwritten with NULL; copies may survive in PostgreSQL's WAL and backups until they
    age out, so a shred is complete against those once :func:`rotate` has moved the remaining keys to a new
    master key and the old master key is deleted (a wrapped DEK without its master key is noise).

    Returns:
        ``(store key, region)`` of the objects whose keys were destroyed now (their ciphertext, in that
        region's store, may be deleted).
    """
    async with db.transaction(org_id=org_id) as tx:
        rows = await tx.fetch(
            "UPDATE model_data_keys SET wrapped_key = NULL, destroyed_at = now() "
            "WHERE org_id = $1 AND destroyed_at IS NULL RETURNING object_key, region",
            org_id,
        )
    return [(row["object_key"], row["region"]) for row in rows]


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What :func:`rotate` did.

    Attributes:
        key_id: The master key every live data key is now wrapped with.
        rewrapped: Data keys re-wrapped by this run.
        already_current: Live data keys that were already under ``key_id``.
    """

    key_id: str
    rewrapped: int
    already_current: int


async def rotate(db: Database, keys: KeyProvider) -> RotationReport:
    """Re-wrap every live data key (all organizations') under the current master key; the objects are not
    touched. Afterwards the older master keys can be removed from the configuration. Safe to rerun and to run
    beside the service: each row is updated only if it still has the wrapping that was read.

    ``db`` must connect as the tables' owner (admin commands do); as the service role it would see one
    organization's keys at most.

    Raises:
        MasterKeyError: a data key's master key is not configured (nothing is lost: rerun with it).
    """
    current = keys.current_key_id
    rewrapped = 0
    after = uuid.UUID(int=0)
    while True:
        rows = await db.fetch(
            "SELECT id, key_id, wrapped_key FROM model_data_keys "
            "WHERE key_id <> $1 AND wrapped_key IS NOT NULL AND id > $2 ORDER BY id LIMIT $3",
            current, after, _ROTATE_BATCH,
        )  # fmt: skip
        if not rows:
            break
        updates = []
        for row in rows:
            dek = await keys.unwrap(row["key_id"], row["wrapped_key"], context=row["id"].bytes)
            new_id, wrapped = await keys.wrap(dek, context=row["id"].bytes)
            updates.append((row["id"], row["key_id"], row["wrapped_key"], new_id, wrapped))
        async with db.transaction() as tx:
            for data_key_id, old_id, old_wrapped, new_id, wrapped in updates:
                status = await tx.execute(
                    "UPDATE model_data_keys SET key_id = $4, wrapped_key = $5, rotated_at = now() "
                    "WHERE id = $1 AND key_id = $2 AND wrapped_key = $3",
                    data_key_id, old_id, old_wrapped, new_id, wrapped,
                )  # fmt: skip
                rewrapped += status == "UPDATE 1"
        after = rows[-1]["id"]
    already = await db.fetchval(
        "SELECT count(*) FROM model_data_keys WHERE key_id = $1 AND wrapped_key IS NOT NULL", current
    )
    return RotationReport(key_id=current, rewrapped=rewrapped, already_current=int(already) - rewrapped)
