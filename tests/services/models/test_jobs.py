"""The conversion-job queue's depth on a real Redis: waiting and pending entries of a consumer group."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from bitnet_actor.services.models.jobs import QueueDepth, queue_depth

if TYPE_CHECKING:
    from bitnet_actor.stores.redis import RedisStore


@pytest.fixture
def stream() -> str:
    return f"test:jobs:{uuid.uuid4().hex[:12]}"  # a stream of the test's own: the real one is shared


async def add(redis: RedisStore, stream: str, n: int) -> list[bytes]:
    return [await redis.run(lambda r, i=i: r.xadd(stream, {"job_id": str(i)})) for i in range(n)]


async def test_depth_follows_delivery_and_acknowledgement(redis: RedisStore, stream: str) -> None:
    group = "workers"
    assert await queue_depth(redis, stream=stream, group=group) == QueueDepth(0, 0)  # no stream yet
    await add(redis, stream, 3)
    assert await queue_depth(redis, stream=stream, group=group) == QueueDepth(3, 0)  # no group yet: all wait
    await redis.run(lambda r: r.xgroup_create(stream, group, id="0"))
    assert await queue_depth(redis, stream=stream, group=group) == QueueDepth(3, 0)
    got = await redis.run(lambda r: r.xreadgroup(group, "w1", {stream: ">"}, count=2))
    (entry_id, _), _ = got[0][1]
    assert await queue_depth(redis, stream=stream, group=group) == QueueDepth(1, 2)
    await redis.run(lambda r: r.xack(stream, group, entry_id))
    assert await queue_depth(redis, stream=stream, group=group) == QueueDepth(1, 1)  # acked: gone, not trimmed
    await add(redis, stream, 2)
    assert await queue_depth(redis, stream=stream, group=group) == QueueDepth(3, 1)
    # Another group on the same stream does not count.
    await redis.run(lambda r: r.xgroup_create(stream, "others", id="$"))
    assert await queue_depth(redis, stream=stream, group="others") == QueueDepth(0, 0)
    await redis.run(lambda r: r.delete(stream))
