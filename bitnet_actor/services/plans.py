"""Plans: what each plan allows an organization while its requests run, and the plan an organization is on.

The scheduling side of a plan is two numbers: the *weight* (how many of the organization's requests join the
batch per round-robin turn) and the cap on its running sequences. Billing ([G]) adds prices and quotas here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.stores.postgres import Database

__all__ = ["DEFAULT_PLAN", "PLANS", "PlanLimits", "limits_of", "org_plan"]


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """What a plan allows while requests run.

    Attributes:
        plan: the plan's name.
        weight: requests admitted per round-robin turn.
        max_running: sequences running at once, at most.
    """

    plan: str
    weight: int
    max_running: int


PLANS: dict[str, PlanLimits] = {
    "free": PlanLimits("free", weight=1, max_running=4),
    "pro": PlanLimits("pro", weight=2, max_running=8),
    "enterprise": PlanLimits("enterprise", weight=4, max_running=16),
}
DEFAULT_PLAN = "free"


def limits_of(plan: str) -> PlanLimits:
    """The limits of ``plan`` (an unknown plan gets the default plan's)."""
    return PLANS.get(plan, PLANS[DEFAULT_PLAN])


async def org_plan(db: Database, org_id: UUID) -> str:
    """The plan ``org_id`` is on (the default plan when the organization has none or does not exist)."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        plan = await tx.fetchval("SELECT plan FROM organizations WHERE id = $1", org_id)
    return str(plan) if plan else DEFAULT_PLAN
