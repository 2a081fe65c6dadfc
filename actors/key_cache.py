"""The API-key cache: in-memory key checks on each replica, invalidated across replicas over Redis pub/sub.

``KeyCache`` is the hot path of every API-key request (no database round trip while a key is cached) and an
actor: ``run`` listens on the invalidation channel (revocations and rotations published by
:mod:`bitnet_actor.services.api_keys`) and writes keys' ``last_used_at`` in batches. The key rules and their
SQL stay in that module; this one holds only the cache.

Restart policy: under the "api-key-invalidation" supervisor (a Redis hiccup restarts the listener; the
cached entries survive in this object, and their TTL bounds how stale a missed invalidation can leave them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio

from bitnet_actor.services.api_keys import (
    INVALIDATION_CHANNEL,
    KeyPrincipal,
    format_ok,
    hash_key,
    principal_by_hash,
    record_last_used,
)
from bitnet_actor.services.errors import AuthenticationError

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.stores.postgres import Database
    from bitnet_actor.stores.redis import RedisStore

__all__ = ["KeyCache"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Entry:
    principal: KeyPrincipal | None  # None: known-bad key (cached briefly)
    cached_at: float
    key_hash: bytes = field(default=b"")


class KeyCache:
    """In-memory API-key checks with cross-replica invalidation.

    ``authenticate`` is the hot path; ``run`` (a long-lived task in the system's nursery) listens for
    invalidations and writes ``last_used_at`` in batches.
    """

    def __init__(
        self,
        db: Database,
        redis: RedisStore,
        *,
        ttl_s: float = 30.0,
        negative_ttl_s: float = 5.0,
        max_entries: int = 100_000,
    ) -> None:
        self.db = db
        self.redis = redis
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_entries = max_entries
        self._entries: dict[bytes, _Entry] = {}
        self._used: dict[UUID, UUID] = {}  # key id -> org id, used since the last flush
        self.hits = 0
        self.misses = 0

    async def authenticate(self, key: str) -> KeyPrincipal:
        """The principal of ``key``.

        Raises:
            AuthenticationError: malformed, unknown, revoked or expired (one message for all).
        """
        await trio.lowlevel.checkpoint()  # a cache hit is a checkpoint too (callers may rely on it)
        if not format_ok(key):
            raise AuthenticationError("invalid API key")
        key_hash = hash_key(key)
        now = time.monotonic()
        entry = self._entries.get(key_hash)
        ttl = self.ttl_s if entry is not None and entry.principal is not None else self.negative_ttl_s
        if entry is None or now - entry.cached_at > ttl:
            self.misses += 1
            entry = _Entry(await self._load(key_hash), now, key_hash)
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # crude but bounded; a full cache refills from the database
            self._entries[key_hash] = entry
        else:
            self.hits += 1
        principal = entry.principal
        if principal is None or (principal.expires_at is not None and principal.expires_at <= datetime.now(UTC)):
            raise AuthenticationError("invalid API key")
        self._used[principal.key_id] = principal.org_id
        return principal

    async def _load(self, key_hash: bytes) -> KeyPrincipal | None:
        return await principal_by_hash(self.db, key_hash)

    def invalidate(self, key_hash: bytes) -> None:
        """Forget one key (its next check goes to the database)."""
        self._entries.pop(key_hash, None)

    async def run(
        self, *, flush_every_s: float = 30.0, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen for invalidations and flush ``last_used_at`` until cancelled."""
        async with self.redis.subscribe(INVALIDATION_CHANNEL) as messages, trio.open_nursery() as nursery:
            nursery.start_soon(self._flush_loop, flush_every_s)
            task_status.started()
            async for _, data in messages:
                try:
                    self.invalidate(bytes.fromhex(data.decode() if isinstance(data, bytes) else str(data)))
                except ValueError:
                    log.warning("ignoring a malformed API-key invalidation message")

    async def _flush_loop(self, every_s: float) -> None:
        while True:
            await trio.sleep(every_s)
            try:
                await self.flush_last_used()
            except Exception:
                log.exception("could not record API keys' last use; will retry")

    async def flush_last_used(self) -> None:
        """Write ``last_used_at = now()`` for the keys used since the last flush."""
        used, self._used = self._used, {}
        await record_last_used(self.db, used)

    def statistics(self) -> dict[str, Any]:
        """Entries, hits and misses, for metrics."""
        return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses}
