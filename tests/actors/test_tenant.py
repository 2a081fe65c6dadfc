"""Tenants on a real PostgreSQL: plans, admission counting requests in flight, idle eviction."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from actors.tenant import Tenants
from bitnet_actor.services.billing import plans

if TYPE_CHECKING:
    from bitnet_actor.stores.postgres import Database


async def org_on(db: Database, plan: str) -> uuid.UUID:
    async with db.transaction() as tx:
        return await tx.fetchval(
            "INSERT INTO organizations (name, plan) VALUES ($1, $2) RETURNING id", f"t-{uuid.uuid4().hex[:8]}", plan
        )


async def test_admission_yields_the_plans_limits_and_counts_in_flight(db: Database) -> None:
    org = await org_on(db, "pro")
    tenants = Tenants(db)
    async with tenants.admit(org) as profile:
        assert profile.plan.name == "pro"
        assert (profile.weight, profile.max_running) == (2, 8)  # the seeded pro plan's share
        async with tenants.admit(org):
            assert tenants.statistics().in_flight == 2
        assert tenants.statistics().in_flight == 1
    assert tenants.statistics().in_flight == 0


async def test_idle_eviction_keeps_organizations_with_requests_in_flight(db: Database) -> None:
    busy, idle = await org_on(db, "free"), await org_on(db, "free")
    tenants = Tenants(db, idle_s=60)
    async with tenants.admit(busy):
        async with tenants.admit(idle):
            pass
        later = time.monotonic() + 120  # both idle for two minutes, as far as last_seen goes
        assert tenants.evict_idle(now=later) == 1
        assert tenants.active() == 1  # the one with a request running stays
    assert tenants.evict_idle(now=time.monotonic() + 120) == 1
    assert tenants.active() == 0


async def test_overrides_and_a_changed_plan_apply_after_forget(db: Database) -> None:
    org = await org_on(db, "free")
    tenants = Tenants(db)
    async with tenants.admit(org) as profile:
        assert (profile.plan.name, profile.rpm) == ("free", 60)
    await plans.set_org_overrides(db, org, {"rpm": 7, "monthly_token_quota": 1000})
    await plans.set_org_plan(db, org, "enterprise")
    async with tenants.admit(org) as profile:
        assert profile.plan.name == "free"  # cached until its TTL or forget()
    tenants.forget(org)
    async with tenants.admit(org) as profile:
        assert (profile.plan.name, profile.rpm, profile.monthly_token_quota) == ("enterprise", 7, 1000)
        assert profile.tpm == profile.plan.tpm  # not overridden: the plan's
