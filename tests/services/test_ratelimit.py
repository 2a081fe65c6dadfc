"""Rate limits on a real Redis: exact across limiter instances (replicas), tokens reserved and given back,
the concurrency cap, a zero limit, and OpenAI's header values."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
import trio

from bitnet_actor.services.ratelimit import Limits, RateLimiter, openai_duration

if TYPE_CHECKING:
    from bitnet_actor.stores.redis import RedisStore


def rid() -> str:
    return uuid.uuid4().hex


def scope() -> str:
    return f"key:{uuid.uuid4().hex[:12]}"  # a fresh scope per test: no state shared between tests


async def test_two_replicas_admit_exactly_the_limit(redis: RedisStore) -> None:
    one, two = RateLimiter(redis), RateLimiter(redis)  # two service instances on one Redis
    key = scope()
    allowed: list[bool] = []

    async def client(limiter: RateLimiter) -> None:
        decision = await limiter.admit({key: Limits(rpm=10)}, request_id=rid(), tokens=0)
        allowed.append(decision.allowed)

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(client, one if i % 2 else two)
    assert allowed.count(True) == 10
    refused = await one.admit({key: Limits(rpm=10)}, request_id=rid(), tokens=0)
    assert not refused.allowed
    assert 0 < refused.retry_after_s <= 60
    assert refused.headers()["Retry-After"] == str(max(1, int(-(-refused.retry_after_s // 1))))
    assert refused.headers()["x-ratelimit-remaining-requests"] == "0"


async def test_a_request_is_refused_by_any_of_its_limits_and_charged_to_none(redis: RedisStore) -> None:
    limiter = RateLimiter(redis)
    key, org = scope(), scope()
    assert (await limiter.admit({key: Limits(rpm=5), org: Limits(rpm=1)}, request_id=rid(), tokens=0)).allowed
    second = await limiter.admit({key: Limits(rpm=5), org: Limits(rpm=1)}, request_id=rid(), tokens=0)
    assert not second.allowed
    # the refusal charged nothing: the key alone still has 4 of its 5
    states = [(await limiter.admit({key: Limits(rpm=5)}, request_id=rid(), tokens=0)).allowed for _ in range(5)]
    assert states == [True, True, True, True, False]


async def test_unused_tokens_are_given_back(redis: RedisStore) -> None:
    limiter = RateLimiter(redis)
    key = scope()
    limits = {key: Limits(tpm=1000)}
    first = await limiter.admit(limits, request_id=rid(), tokens=800)  # prompt + max_tokens, reserved
    assert first.allowed and first.headers()["x-ratelimit-remaining-tokens"] == "200"
    assert not (await limiter.admit(limits, request_id=rid(), tokens=500)).allowed  # would be a false 429...
    await limiter.settle(first, used_tokens=100)  # ...once the request ends having used 100
    again = await limiter.admit(limits, request_id=rid(), tokens=500)
    assert again.allowed
    assert int(again.headers()["x-ratelimit-remaining-tokens"]) in range(398, 401)


async def test_the_concurrency_cap_holds_and_frees_places(redis: RedisStore) -> None:
    limiter = RateLimiter(redis)
    key = scope()
    limits = {key: Limits(concurrency=2)}
    a = await limiter.admit(limits, request_id=rid(), tokens=0)
    b = await limiter.admit(limits, request_id=rid(), tokens=0)
    c = await limiter.admit(limits, request_id=rid(), tokens=0)
    assert (a.allowed, b.allowed, c.allowed) == (True, True, False)
    await limiter.settle(a, used_tokens=0)
    assert (await limiter.admit(limits, request_id=rid(), tokens=0)).allowed


async def test_a_place_never_released_expires(redis: RedisStore) -> None:
    limiter = RateLimiter(redis, lease_s=0.2)  # a request that died without settling
    key = scope()
    assert (await limiter.admit({key: Limits(concurrency=1)}, request_id=rid(), tokens=0)).allowed
    assert not (await limiter.admit({key: Limits(concurrency=1)}, request_id=rid(), tokens=0)).allowed
    await trio.sleep(0.3)
    assert (await limiter.admit({key: Limits(concurrency=1)}, request_id=rid(), tokens=0)).allowed


async def test_a_zero_limit_refuses_at_once(redis: RedisStore) -> None:
    decision = await RateLimiter(redis).admit({scope(): Limits(rpm=0)}, request_id=rid(), tokens=0)
    assert not decision.allowed
    assert decision.retry_after_s == 60


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="rpm"):
        Limits(rpm=-1)
    with pytest.raises(ValueError, match="tpm"):
        Limits(tpm=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.012, "12ms"), (0.0, "0ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"), (3723, "1h2m3s"), (59.9996, "1m0s")],
)
def test_openai_durations(seconds: float, text: str) -> None:
    assert openai_duration(seconds) == text


async def _script_calls(redis: RedisStore) -> int:
    stats = await redis.run(lambda r: r.info("commandstats"))
    return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_eval", "cmdstat_evalsha"))


async def test_nothing_limited_makes_no_redis_call(redis: RedisStore) -> None:
    limiter = RateLimiter(redis, prefix=f"t:{uuid.uuid4().hex[:8]}")
    before = await _script_calls(redis)
    decision = await limiter.admit({}, request_id=rid(), tokens=100)
    await limiter.settle(decision, used_tokens=40)
    assert decision.allowed
    assert decision.headers() == {}
    assert await _script_calls(redis) == before


async def test_a_script_redis_forgot_is_loaded_again(redis: RedisStore) -> None:
    limiter = RateLimiter(redis, prefix=f"t:{uuid.uuid4().hex[:8]}")
    scopes = {scope(): Limits(rpm=2)}
    assert (await limiter.admit(scopes, request_id=rid(), tokens=0)).allowed
    await redis.run(lambda r: r.script_flush())  # a restarted Redis has no scripts
    assert (await limiter.admit(scopes, request_id=rid(), tokens=0)).allowed
    assert not (await limiter.admit(scopes, request_id=rid(), tokens=0)).allowed
