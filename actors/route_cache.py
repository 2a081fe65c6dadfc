"""The A/B route cache: each replica's routes in memory, invalidated across replicas over Redis pub/sub.

``get`` is on the path of every request naming an organization's model (no database round trip while the
entry is fresh; a name with no route is cached too, so plain model names cost nothing either). ``run``
listens on :data:`bitnet_actor.services.models.routes.INVALIDATION_CHANNEL` (published by every route PUT
and DELETE) and forgets the entry named, so a weight change reaches every replica within the message's
latency; the TTL bounds how stale a missed message can leave one.

Restart policy: under the "route-invalidation" supervisor (a Redis hiccup restarts the listener; it then
drops every entry, since messages may have been missed while it was away).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING

import trio

from bitnet_actor.services.models.routes import INVALIDATION_CHANNEL, Route, load_route

if TYPE_CHECKING:
    from bitnet_actor.stores.postgres import Database
    from bitnet_actor.stores.redis import RedisStore

__all__ = ["RouteCache"]

log = logging.getLogger(__name__)


class RouteCache:
    """Routes by (organization, public name), with cross-replica invalidation."""

    def __init__(self, db: Database, redis: RedisStore, *, ttl_s: float = 30.0, max_entries: int = 50_000) -> None:
        self.db = db
        self.redis = redis
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[tuple[uuid.UUID, str], tuple[Route | None, float]] = {}

    async def get(self, org_id: uuid.UUID, public_name: str) -> Route | None:
        """The route ``public_name`` of ``org_id`` (None: no such route)."""
        await trio.lowlevel.checkpoint()
        now = time.monotonic()
        entry = self._entries.get((org_id, public_name))
        if entry is not None and now - entry[1] <= self.ttl_s:
            return entry[0]
        route = await load_route(self.db, org_id, public_name)
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude but bounded; a cleared cache refills from the database
        self._entries[(org_id, public_name)] = (route, now)
        return route

    def invalidate(self, org_id: uuid.UUID, public_name: str) -> None:
        """Forget one route (its next request reads the database)."""
        self._entries.pop((org_id, public_name), None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen for invalidations until cancelled."""
        async with self.redis.subscribe(INVALIDATION_CHANNEL) as messages:
            self._entries.clear()  # what changed while nobody listened is unknown
            task_status.started()
            async for _, data in messages:
                text = data.decode() if isinstance(data, bytes) else str(data)
                org, _, name = text.partition(":")
                try:
                    self.invalidate(uuid.UUID(org), name)
                except ValueError:
                    log.warning("ignoring a malformed route invalidation message")
