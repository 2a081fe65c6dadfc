"""API keys: ``bnk_live_`` + 30 random base62 characters (178 bits) + a 6-character base62 CRC32 checksum.

The checksum lets a secret scanner (and we) reject mistyped or made-up keys without a lookup. A key is shown
once, at creation; the database keeps its SHA-256 only, with a display prefix and the last four characters.

Checking a key (``KeyCache.authenticate``) is served from memory when warm: entries live ``ttl_s`` seconds
(30 by default) and are dropped at once on every replica when a key is revoked (Redis pub/sub), so a
revocation takes effect everywhere within the TTL even if an invalidation message were lost.
``last_used_at`` is written in batches by ``KeyCache.run``, never on the request path.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol
from uuid import UUID, uuid4

from bitnet_actor.services import audit
from bitnet_actor.services.errors import NotFoundError, ValidationError
from bitnet_actor.services.permissions import SCOPES

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bitnet_actor.stores.postgres import Database, Record
    from bitnet_actor.stores.redis import RedisStore

__all__ = [
    "INVALIDATION_CHANNEL",
    "KEY_PREFIX",
    "ApiKey",
    "KeyAuthority",
    "KeyPrincipal",
    "create_key",
    "format_ok",
    "generate_key",
    "hash_key",
    "list_keys",
    "principal_by_hash",
    "record_last_used",
    "revoke_key",
    "rotate_key",
]

log = logging.getLogger(__name__)

KEY_PREFIX = "bnk_live_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_CHARS = 30  # 62**30 ~ 2**178.6
_CHECK_CHARS = 6  # 62**6 > 2**32
_KEY_LENGTH = len(KEY_PREFIX) + _RANDOM_CHARS + _CHECK_CHARS
INVALIDATION_CHANNEL = "bitnet:api-keys:invalidate"


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_CHARS)


def generate_key() -> str:
    """A new random key with its checksum."""
    body = KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_CHARS))
    return body + _checksum(body)


def format_ok(key: str) -> bool:
    """Whether ``key`` looks like one of ours: prefix, length, alphabet and checksum."""
    if len(key) != _KEY_LENGTH or not key.startswith(KEY_PREFIX):
        return False
    rest = key[len(KEY_PREFIX) :]
    if any(c not in _ALPHABET for c in rest):
        return False
    return secrets.compare_digest(_checksum(key[:-_CHECK_CHARS]), key[-_CHECK_CHARS:])


def hash_key(key: str) -> bytes:
    """The SHA-256 the database stores (keys are random: no salt or slow hash is needed)."""
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as listed (never the secret)."""

    id: UUID
    org_id: UUID
    name: str
    prefix: str
    last4: str
    scopes: tuple[str, ...]
    created_by: UUID | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    rotated_to: UUID | None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None

    @classmethod
    def from_row(cls, row: Record) -> ApiKey:
        """Build from an ``api_keys`` row."""
        return cls(
            id=row["id"],
            org_id=row["org_id"],
            name=row["name"],
            prefix=row["prefix"],
            last4=row["last4"],
            scopes=tuple(row["scopes"]),
            created_by=row["created_by"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
            last_used_at=row["last_used_at"],
            rotated_to=row["rotated_to"],
            rpm=row["rpm"],
            tpm=row["tpm"],
            max_concurrency=row["max_concurrency"],
        )

    @property
    def active(self) -> bool:
        """Not revoked and not expired."""
        now = datetime.now(UTC)
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


_COLUMNS = (
    "id, org_id, name, prefix, last4, scopes, created_by, created_at, expires_at, revoked_at, last_used_at, rotated_to,"
    " rpm, tpm, max_concurrency"
)


def _check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(scopes, str) or not scopes:
        raise ValidationError("scopes must be a non-empty list", field="scopes")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValidationError(f"unknown scopes {unknown}; known: {list(SCOPES)}", field="scopes")
    return tuple(sorted(set(scopes)))


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
        raise ValidationError("name must be 1 to 100 characters", field="name")
    return name.strip()


async def create_key(
    db: Database,
    *,
    org_id: UUID,
    name: str,
    scopes: Sequence[str],
    actor: audit.Actor,
    expires_at: datetime | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrency: int | None = None,
) -> tuple[str, ApiKey]:
    """Create a key; return the secret (shown once) and its record.

    ``rpm`` / ``tpm`` / ``max_concurrency`` override the plan's per-key limits for this key (None: the plan's).
    """
    from bitnet_actor.services.billing.plans import check_limit

    rpm = check_limit("rpm", rpm)
    tpm = check_limit("tpm", tpm)
    max_concurrency = check_limit("key_concurrency", max_concurrency)
    name = _check_name(name)
    checked = _check_scopes(scopes)
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise ValidationError("expires_at must be in the future", field="expires_at")
    secret = generate_key()
    async with db.transaction(org_id=org_id) as tx:
        row = await tx.fetchrow(
            "INSERT INTO api_keys (id, org_id, created_by, name, key_hash, prefix, last4, scopes, expires_at,"
            " rpm, tpm, max_concurrency) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            f" RETURNING {_COLUMNS}",
            uuid4(),
            org_id,
            actor.user_id,
            name,
            hash_key(secret),
            secret[: len(KEY_PREFIX) + 4],
            secret[-4:],
            list(checked),
            expires_at,
            rpm,
            tpm,
            max_concurrency,
        )
        assert row is not None
        key = ApiKey.from_row(row)
        await audit.record(
            tx,
            org_id=org_id,
            actor=actor,
            action="api_key.created",
            target_type="api_key",
            target_id=key.id,
            details={"name": name, "scopes": list(checked)},
        )
    return secret, key


async def list_keys(db: Database, org_id: UUID) -> list[ApiKey]:
    """Every key of ``org_id``, newest first."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        rows = await tx.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at DESC")
    return [ApiKey.from_row(r) for r in rows]


async def _publish_invalidation(redis: RedisStore, key_hashes: list[bytes], cache: KeyAuthority | None) -> None:
    for key_hash in key_hashes:
        if cache is not None:
            cache.invalidate(key_hash)  # this replica at once; the others through pub/sub
        await redis.publish(INVALIDATION_CHANNEL, key_hash.hex())


async def revoke_key(
    db: Database,
    redis: RedisStore,
    *,
    org_id: UUID,
    key_id: UUID,
    actor: audit.Actor,
    cache: KeyAuthority | None = None,
) -> ApiKey:
    """Revoke a key now, everywhere.

    Raises:
        NotFoundError: ``org_id`` has no such key (whether or not another organization does).
    """
    async with db.transaction(org_id=org_id) as tx:
        row = await tx.fetchrow(
            f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1"
            f" RETURNING {_COLUMNS}, key_hash",
            key_id,
        )
        if row is None:
            raise NotFoundError("no such API key")
        await audit.record(
            tx, org_id=org_id, actor=actor, action="api_key.revoked", target_type="api_key", target_id=key_id
        )
    await _publish_invalidation(redis, [bytes(row["key_hash"])], cache)
    return ApiKey.from_row(row)


async def revoke_key_quietly(db: Database, *, org_id: UUID, key_id: UUID, actor: audit.Actor) -> None:
    """Revoke a key when no replica is running to notify (the operator CLI with an embedded, stopped server)."""
    async with db.transaction(org_id=org_id) as tx:
        done = await tx.fetchval(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING id", key_id
        )
        if done is None:
            raise NotFoundError("no such API key")
        await audit.record(
            tx, org_id=org_id, actor=actor, action="api_key.revoked", target_type="api_key", target_id=key_id
        )


async def rotate_key(
    db: Database,
    redis: RedisStore,
    *,
    org_id: UUID,
    key_id: UUID,
    actor: audit.Actor,
    grace_s: int = 86400,
    cache: KeyAuthority | None = None,
) -> tuple[str, ApiKey]:
    """Replace a key by a new one with the same name and scopes; the old one keeps working ``grace_s``.

    Raises:
        NotFoundError: no such active key in ``org_id``.
        ValidationError: ``grace_s`` is negative or longer than 30 days.
    """
    if not 0 <= grace_s <= 30 * 86400:
        raise ValidationError("grace_seconds must be between 0 and 2592000", field="grace_seconds")
    secret = generate_key()
    async with db.transaction(org_id=org_id) as tx:
        old = await tx.fetchrow(
            "SELECT name, scopes, expires_at, key_hash, rpm, tpm, max_concurrency FROM api_keys"
            " WHERE id = $1 AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > now()) FOR UPDATE",
            key_id,
        )
        if old is None:
            raise NotFoundError("no such active API key")
        row = await tx.fetchrow(
            "INSERT INTO api_keys (id, org_id, created_by, name, key_hash, prefix, last4, scopes, expires_at,"
            " rpm, tpm, max_concurrency) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            f" RETURNING {_COLUMNS}",
            uuid4(),
            org_id,
            actor.user_id,
            old["name"],
            hash_key(secret),
            secret[: len(KEY_PREFIX) + 4],
            secret[-4:],
            old["scopes"],
            old["expires_at"],
            old["rpm"],
            old["tpm"],
            old["max_concurrency"],
        )
        assert row is not None
        new = ApiKey.from_row(row)
        grace_end = datetime.now(UTC) + timedelta(seconds=grace_s)
        await tx.execute(
            "UPDATE api_keys SET rotated_to = $2, expires_at = LEAST(coalesce(expires_at, $3), $3) WHERE id = $1",
            key_id,
            new.id,
            grace_end,
        )
        await audit.record(
            tx,
            org_id=org_id,
            actor=actor,
            action="api_key.rotated",
            target_type="api_key",
            target_id=key_id,
            details={"new_key_id": str(new.id), "grace_seconds": grace_s},
        )
    await _publish_invalidation(redis, [bytes(old["key_hash"])], cache)
    return secret, new


@dataclass(frozen=True, slots=True)
class KeyPrincipal:
    """Who an API key speaks for."""

    key_id: UUID
    org_id: UUID
    name: str
    scopes: frozenset[str]
    expires_at: datetime | None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None


class KeyAuthority(Protocol):
    """What checks API keys for the web layer (the key cache actor, :class:`actors.key_cache.KeyCache`)."""

    async def authenticate(self, key: str) -> KeyPrincipal:
        """The principal of ``key`` (``AuthenticationError``: malformed, unknown, revoked or expired)."""
        ...

    def invalidate(self, key_hash: bytes) -> None:
        """Forget one key on this replica (its next check goes to the database)."""
        ...


async def principal_by_hash(db: Database, key_hash: bytes) -> KeyPrincipal | None:
    """The principal of the key whose hash is ``key_hash``, or None when unknown or revoked (expiry is the
    caller's check: it changes with time, not with the row)."""
    row = await db.fetchrow("SELECT * FROM bitnet_api_key_by_hash($1)", key_hash)
    if row is None or row["revoked_at"] is not None:
        return None
    return KeyPrincipal(
        row["id"],
        row["org_id"],
        row["name"],
        frozenset(row["scopes"]),
        row["expires_at"],
        rpm=row["rpm"],
        tpm=row["tpm"],
        max_concurrency=row["max_concurrency"],
    )


async def record_last_used(db: Database, used: dict[UUID, UUID]) -> None:
    """Write ``last_used_at = now()`` for the keys in ``used`` (key id -> organization id)."""
    by_org: dict[UUID, list[UUID]] = {}
    for key_id, org_id in used.items():
        by_org.setdefault(org_id, []).append(key_id)
    for org_id, ids in by_org.items():
        async with db.transaction(org_id=org_id) as tx:
            await tx.execute("UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1::uuid[])", ids)
