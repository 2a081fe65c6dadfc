"""Per-organization state for inference: the plan's limits, cached while the organization is active.

``Tenants`` keeps one ``TenantState`` per active organization: its plan (read from PostgreSQL on the first
request, refreshed every ``ttl_s``), the scheduling weight and running-sequence cap that plan gives, and the
number of requests in flight. Organizations idle for ``idle_s`` are dropped by ``run``. API keys are cached
by ``bitnet_actor.services.api_keys.KeyCache`` (invalidated over Redis pub/sub), so a warm tenant's request
costs no database round trip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.stores.postgres import Database

__all__ = ["PLAN_LIMITS", "TenantState", "Tenants"]

# plan -> (scheduling weight: requests admitted per round-robin turn, running sequences at most)
PLAN_LIMITS: dict[str, tuple[int, int]] = {"free": (1, 4), "pro": (2, 8), "enterprise": (4, 16)}


@dataclass(slots=True)
class TenantState:
    """One active organization."""

    org_id: UUID
    plan: str
    loaded_at: float
    last_seen: float = field(default_factory=time.monotonic)
    in_flight: int = 0

    @property
    def limits(self) -> tuple[int, int]:
        """(weight, max running sequences) of the plan."""
        return PLAN_LIMITS.get(self.plan, PLAN_LIMITS["free"])


class Tenants:
    """The active organizations. ``run`` evicts idle ones until cancelled."""

    def __init__(self, db: Database, *, ttl_s: float = 60.0, idle_s: float = 600.0) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.idle_s = idle_s
        self._states: dict[UUID, TenantState] = {}

    async def get(self, org_id: UUID) -> TenantState:
        """The state of ``org_id``, loading its plan when new or stale."""
        await trio.lowlevel.checkpoint()
        now = time.monotonic()
        state = self._states.get(org_id)
        if state is None or now - state.loaded_at > self.ttl_s:
            async with self.db.transaction(org_id=org_id, readonly=True) as tx:
                plan = await tx.fetchval("SELECT plan FROM organizations WHERE id = $1", org_id) or "free"
            if state is None:
                state = self._states[org_id] = TenantState(org_id, plan, now)
            else:
                state.plan, state.loaded_at = plan, now
        state.last_seen = now
        return state

    def active(self) -> int:
        """How many organizations are active."""
        return len(self._states)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drop organizations idle longer than ``idle_s`` (and with nothing in flight)."""
        task_status.started()
        while True:
            await trio.sleep(min(self.idle_s / 4, 60))
            cutoff = time.monotonic() - self.idle_s
            for org_id, state in list(self._states.items()):
                if state.last_seen < cutoff and state.in_flight == 0:
                    del self._states[org_id]
