"""A request's limits on real Redis and PostgreSQL: the plan's and key's scopes, the monthly quota (hard stop,
overage, seeded from the ledger, exact across replicas), settled tokens, and the Redis-outage policy
(in process for the fail-open window, then refused) against a Redis server the test stops."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
import trio

from bitnet_actor.services.api_keys import KeyPrincipal
from bitnet_actor.services.billing import plans
from bitnet_actor.services.billing.ledger import UsageEvent, record_batch
from bitnet_actor.services.limits import LimiterUnavailableError, LocalLimiter, RequestLimits, month_tokens
from bitnet_actor.services.ratelimit import Limits, RateLimiter
from bitnet_actor.stores.embedded import EmbeddedRedis
from bitnet_actor.stores.redis import open_redis

if TYPE_CHECKING:
    from pathlib import Path

    from bitnet_actor.stores.postgres import Database
    from bitnet_actor.stores.redis import RedisStore


async def new_org(db: Database, plan: str = "free") -> uuid.UUID:
    async with db.transaction() as tx:
        org: uuid.UUID = await tx.fetchval(
            "INSERT INTO organizations (name, plan) VALUES ($1, $2) RETURNING id", f"l-{uuid.uuid4().hex[:8]}", plan
        )
    return org


def key_of(org: uuid.UUID, **limits: int | None) -> KeyPrincipal:
    return KeyPrincipal(uuid.uuid4(), org, "k", frozenset({"inference"}), None, **limits)  # type: ignore[arg-type]


def limiter(redis: RedisStore, db: Database, **kw: object) -> RequestLimits:
    return RequestLimits(RateLimiter(redis, prefix=f"t:{uuid.uuid4().hex[:8]}"), db, **kw)  # type: ignore[arg-type]


async def test_the_tightest_of_key_and_organization_limits_applies(db: Database, redis: RedisStore) -> None:
    org = await new_org(db)
    await plans.set_org_overrides(db, org, {"rpm": 5})
    profile = await plans.org_profile(db, org)
    limits = limiter(redis, db)
    tight, loose = key_of(org, rpm=2), key_of(org)
    admitted = [
        (await limits.admit(profile, key=tight, user_id=None, request_id=uuid.uuid4().hex)).allowed for _ in range(3)
    ]
    assert admitted == [True, True, False]  # the key's own 2 a minute
    admitted = [
        (await limits.admit(profile, key=loose, user_id=None, request_id=uuid.uuid4().hex)).allowed for _ in range(4)
    ]
    assert admitted == [True, True, True, False]  # the organization's 5, two of them taken by the other key


async def test_tokens_are_reserved_capped_and_settled_with_the_real_count(db: Database, redis: RedisStore) -> None:
    org = await new_org(db)
    await plans.set_org_overrides(db, org, {"tpm": 1000, "rpm": None})
    profile = await plans.org_profile(db, org)
    limits = limiter(redis, db)
    key = key_of(org)
    big = await limits.admit(profile, key=key, user_id=None, request_id="a", tokens=5000)
    assert big.allowed and big.reserved_tokens == 1000  # capped at the minute's budget
    assert not (await limits.admit(profile, key=key, user_id=None, request_id="b", tokens=10)).allowed
    await limits.settle(big, used_tokens=100)  # 900 come back
    after = await limits.admit(profile, key=key, user_id=None, request_id="c", tokens=800)
    assert after.allowed
    assert after.tightest("tokens").remaining <= 100  # type: ignore[union-attr]


async def test_hard_quota_stops_an_org_and_overage_only_counts(db: Database, redis: RedisStore) -> None:
    org = await new_org(db)
    await plans.set_org_overrides(db, org, {"monthly_token_quota": 100, "rpm": None, "tpm": None})
    limits = limiter(redis, db)
    key = key_of(org)
    profile = await plans.org_profile(db, org)
    first = await limits.admit(profile, key=key, user_id=None, request_id="1", tokens=50)
    assert first.allowed
    await limits.settle(first, used_tokens=120)  # past the quota: it had been admitted, so it finishes
    refused = await limits.admit(profile, key=key, user_id=None, request_id="2", tokens=1)
    assert not refused.allowed and refused.quota_exhausted
    assert "Retry-After" not in refused.headers()  # not retryable this month
    await plans.set_org_overrides(db, org, {"quota_mode": "overage"})
    profile = await plans.org_profile(db, org)
    later = await limits.admit(profile, key=key, user_id=None, request_id="3", tokens=1)
    assert later.allowed and later.quota_used == 120


async def test_the_quota_counter_is_seeded_from_the_ledger(db: Database, redis: RedisStore) -> None:
    org = await new_org(db)
    await plans.set_org_overrides(db, org, {"monthly_token_quota": 1000})
    now = datetime.now(UTC)
    earlier = now.replace(day=1, hour=0, minute=0, second=1, microsecond=0)
    events = [
        UsageEvent(
            request_id=f"s{i}", org_id=org, model="m", input_tokens=200, output_tokens=100, latency_ms=1,
            outcome="completed", created_at=earlier,
        )
        for i in range(3)
    ]  # fmt: skip
    assert await record_batch(db, events) == 3
    assert await month_tokens(db, org) == 900
    limits = limiter(redis, db)  # a fresh prefix: Redis has no counter (as after a Redis restart)
    profile = await plans.org_profile(db, org)
    decision = await limits.admit(profile, key=key_of(org), user_id=None, request_id="x", tokens=10)
    assert decision.allowed and decision.quota_used == 900
    await limits.settle(decision, used_tokens=150)
    assert not (await limits.admit(profile, key=key_of(org), user_id=None, request_id="y", tokens=1)).allowed


async def test_quota_is_exact_across_replicas(db: Database, redis: RedisStore) -> None:
    # Two replicas (two limiters on one Redis), 20 requests of 10 tokens each against a quota of 100: an org
    # goes past its quota by at most the requests admitted when it ran out (none are in flight here).
    org = await new_org(db)
    await plans.set_org_overrides(db, org, {"monthly_token_quota": 100, "rpm": None, "tpm": None})
    profile = await plans.org_profile(db, org)
    prefix = f"t:{uuid.uuid4().hex[:8]}"
    replicas = [RequestLimits(RateLimiter(redis, prefix=prefix), db) for _ in range(2)]
    admitted = 0

    async def one(i: int) -> None:
        nonlocal admitted
        limits = replicas[i % 2]
        decision = await limits.admit(profile, key=None, user_id=None, request_id=f"q{i}", tokens=10)
        if decision.allowed:
            admitted += 1
            await limits.settle(decision, used_tokens=10)

    for i in range(20):  # one after another: each admission sees the settled count before it
        await one(i)
    assert admitted == 10


async def test_a_zero_limit_refuses_at_once(db: Database, redis: RedisStore) -> None:
    org = await new_org(db)
    profile = await plans.org_profile(db, org)
    limits = limiter(redis, db)
    for key in (key_of(org, rpm=0), key_of(org, max_concurrency=0), key_of(org, tpm=0)):
        with trio.fail_after(2):
            decision = await limits.admit(profile, key=key, user_id=None, request_id="z", tokens=5)
        assert not decision.allowed and decision.retry_after_s > 0


async def test_a_read_takes_nothing(db: Database, redis: RedisStore) -> None:
    org = await new_org(db)
    profile = await plans.org_profile(db, org)
    limits = limiter(redis, db)
    key = key_of(org, rpm=1)
    for _ in range(5):
        peek = await limits.admit(profile, key=key, user_id=None, request_id="", requests=0)
        assert peek.allowed and peek.headers()["x-ratelimit-remaining-requests"] == "1"
    assert (await limits.admit(profile, key=key, user_id=None, request_id="r")).allowed


def test_the_local_limiter_follows_the_same_rules() -> None:
    clock = [0.0]
    local = LocalLimiter(clock=lambda: clock[0])
    scopes = {"key:a": Limits(rpm=2, tpm=100, concurrency=1)}
    first = local.admit(scopes, request_id="1", tokens=60)
    assert first.allowed
    assert not local.admit(scopes, request_id="2", tokens=10).allowed  # the concurrency cap
    local.settle(first, used_tokens=10)  # place freed, 50 tokens back
    second = local.admit(scopes, request_id="3", tokens=80)
    assert second.allowed and second.source == "local"
    local.settle(second, used_tokens=80)
    assert not local.admit(scopes, request_id="4", tokens=1).allowed  # both requests of the minute used
    clock[0] += 31  # half a minute: one request back
    assert local.admit(scopes, request_id="5", tokens=1).allowed


async def test_redis_outage_fails_open_for_the_window_then_closed(
    db: Database, aio_loop: object, embedded_dir: Path
) -> None:
    server = EmbeddedRedis(embedded_dir / f"outage-{uuid.uuid4().hex[:6]}")
    server.spawn()
    server.wait_ready()
    clock = [1000.0]
    org = await new_org(db)
    await plans.set_org_overrides(db, org, {"rpm": 3})
    profile = await plans.org_profile(db, org)
    try:
        async with open_redis(server.url) as redis:
            limits = RequestLimits(RateLimiter(redis), db, fail_open_s=30, redis_timeout_s=0.5, clock=lambda: clock[0])
            shared = await limits.admit(profile, key=None, user_id=None, request_id="a")
            assert shared.allowed and shared.source == "redis"
            server.stop()
            during = [await limits.admit(profile, key=None, user_id=None, request_id=f"o{i}") for i in range(4)]
            assert [d.source for d in during] == ["local"] * 4
            assert [d.allowed for d in during] == [True, True, True, False]  # the same limit, in process
            await limits.settle(during[0], used_tokens=0)  # settles where it was taken, no Redis needed
            clock[0] += 31  # past the window: fail closed
            with pytest.raises(LimiterUnavailableError):
                await limits.admit(profile, key=None, user_id=None, request_id="late")
            await limits.settle(shared, used_tokens=1)  # a Redis failure at settle is only logged
    finally:
        server.stop()


async def test_a_settle_off_the_response_path_lands_before_the_next_admission(db: Database, redis: RedisStore) -> None:
    org = await new_org(db)
    await plans.set_org_overrides(db, org, {"rpm": None, "tpm": 1000, "key_concurrency": 1})
    profile = await plans.org_profile(db, org)
    limits = limiter(redis, db)
    key = key_of(org)
    async with trio.open_nursery() as nursery:
        await nursery.start(limits.run)
        for i in range(5):  # one place: each request is admitted only if the one before was settled
            decision = await limits.admit(profile, key=key, user_id=None, request_id=f"r{i}", tokens=500)
            assert decision.allowed, i
            await limits.settle(decision, used_tokens=100, wait=False)  # returns before Redis has it
        nursery.cancel_scope.cancel()
    # Settled, not expired: 5 x 100 used of the minute's 1000 tokens (unsettled, 5 x 500 would not fit).
    after = await limits.admit(profile, key=key, user_id=None, request_id="last", tokens=400)
    assert after.allowed


async def test_the_settler_settles_what_is_left_when_cancelled(db: Database, redis: RedisStore) -> None:
    org = await new_org(db)
    await plans.set_org_overrides(db, org, {"rpm": None, "tpm": None, "key_concurrency": 1})
    profile = await plans.org_profile(db, org)
    limits = limiter(redis, db)
    key = key_of(org)
    async with trio.open_nursery() as nursery:
        await nursery.start(limits.run)
        decision = await limits.admit(profile, key=key, user_id=None, request_id="a")
        await limits.settle(decision, used_tokens=0, wait=False)
        nursery.cancel_scope.cancel()  # before the settler took it
    assert (await limits.admit(profile, key=key, user_id=None, request_id="b")).allowed
