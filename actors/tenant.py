"""Per-organization state for inference: the plan's limits and the requests in flight, while it is active.

``Tenants`` keeps one ``TenantState`` per active organization: its plan and overrides (read through
:func:`bitnet_actor.services.billing.plans.org_profile` on the first request, refreshed every ``ttl_s``) and
the number of its requests in flight. A request holds its organization through ``admit`` (an async context
manager) from admission until its last event is delivered, so the count is exact; ``run`` drops organizations
idle for ``idle_s`` with nothing in flight. API keys are cached by ``bitnet_actor.services.api_keys.KeyCache``
(invalidated over Redis pub/sub), so a warm tenant's request costs no database round trip.

The handle's methods run in the caller's task (one trio thread: the state is never touched concurrently, and
the per-request path pays no mailbox round trip); only ``run`` is a task, under the "tenants" supervisor,
restarted on a crash (the state it evicts from survives in this object).
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from bitnet_actor.services.billing.plans import OrgProfile, org_profile

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from uuid import UUID

    from bitnet_actor.stores.postgres import Database

__all__ = ["TenantState", "TenantStatistics", "Tenants"]


@dataclass(slots=True)
class TenantState:
    """One active organization."""

    org_id: UUID
    profile: OrgProfile
    loaded_at: float
    last_seen: float = field(default_factory=time.monotonic)
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class TenantStatistics:
    """A snapshot for metrics."""

    active: int
    in_flight: int


class Tenants:
    """The active organizations. ``run`` evicts idle ones until cancelled."""

    def __init__(self, db: Database, *, ttl_s: float = 60.0, idle_s: float = 600.0) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.idle_s = idle_s
        self._states: dict[UUID, TenantState] = {}

    async def get(self, org_id: UUID) -> TenantState:
        """The state of ``org_id``, loading its plan and overrides when new or stale."""
        await trio.lowlevel.checkpoint()
        now = time.monotonic()
        state = self._states.get(org_id)
        if state is None or now - state.loaded_at > self.ttl_s:
            profile = await org_profile(self.db, org_id)
            state = self._states.get(org_id)  # another request may have loaded it meanwhile
            if state is None:
                state = self._states[org_id] = TenantState(org_id, profile, now)
            else:
                state.profile, state.loaded_at = profile, now
        state.last_seen = now
        return state

    @asynccontextmanager
    async def admit(self, org_id: UUID) -> AsyncIterator[OrgProfile]:
        """Hold one request of ``org_id`` in flight for the block; yields what it runs under (plan, limits).

        Entering waits for the plan (a database read when not cached); leaving never blocks.
        """
        state = await self.get(org_id)
        state.in_flight += 1
        try:
            yield state.profile
        finally:
            state.in_flight -= 1
            state.last_seen = time.monotonic()
            self._states.setdefault(org_id, state)  # evicted while running (it could not be): keep it counted

    async def profile(self, org_id: UUID) -> OrgProfile:
        """What ``org_id`` runs under (cached like ``admit``'s), without holding a request in flight."""
        return (await self.get(org_id)).profile

    def forget(self, org_id: UUID) -> None:
        """Reload ``org_id``'s plan on its next request (its plan or overrides changed)."""
        state = self._states.get(org_id)
        if state is not None:
            state.loaded_at = float("-inf")

    def active(self) -> int:
        """How many organizations are active."""
        return len(self._states)

    def statistics(self) -> TenantStatistics:
        """Active organizations and their requests in flight."""
        return TenantStatistics(len(self._states), sum(s.in_flight for s in self._states.values()))

    def evict_idle(self, now: float | None = None) -> int:
        """Drop organizations idle longer than ``idle_s`` with nothing in flight; return how many."""
        cutoff = (time.monotonic() if now is None else now) - self.idle_s
        idle = [o for o, s in self._states.items() if s.last_seen < cutoff and s.in_flight == 0]
        for org_id in idle:
            del self._states[org_id]
        return len(idle)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Evict idle organizations every quarter of ``idle_s`` (at most every minute) until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(min(self.idle_s / 4, 60))
            self.evict_idle()
