from __future__ import annotations

import uuid

import pytest
import trio

from bitnet_actor.errors import StoreUnavailableError
from bitnet_actor.stores.redis import RedisStore, open_redis, redact_url


async def test_commands_and_pipeline(redis: RedisStore) -> None:
    key = f"test:{uuid.uuid4().hex}"
    assert await redis.set(key, "v", ex=60)
    assert await redis.get(key) == b"v"
    assert not await redis.set(key, "w", nx=True)

    async def pipeline(r):  # one bridge crossing for several commands
        async with r.pipeline(transaction=True) as pipe:
            pipe.incr(key + ":n")
            pipe.incr(key + ":n")
            pipe.expire(key + ":n", 60)
            return await pipe.execute()

    assert (await redis.run(pipeline))[:2] == [1, 2]
    assert await redis.delete(key, key + ":n") == 2


async def test_lua_script(redis: RedisStore) -> None:
    key = f"test:{uuid.uuid4().hex}"
    script = "local n = redis.call('INCRBY', KEYS[1], ARGV[1]); redis.call('EXPIRE', KEYS[1], 60); return n"
    assert await redis.eval(script, [key], [5]) == 5
    assert await redis.eval(script, [key], [2]) == 7
    await redis.delete(key)


async def test_pubsub_roundtrip(redis: RedisStore) -> None:
    channel = f"test:{uuid.uuid4().hex}"
    async with redis.subscribe(channel) as messages:
        assert await redis.publish(channel, "hello") == 1
        with trio.fail_after(5):
            assert await messages.receive() == (channel, b"hello")


async def test_unreachable_server(aio_loop: object) -> None:
    with pytest.raises(StoreUnavailableError, match="cannot connect to Redis"):
        async with open_redis("redis://:pw@127.0.0.1:1/0", connect_timeout=3):
            pass


def test_redact_url() -> None:
    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("unix:///tmp/r.sock") == "unix:///tmp/r.sock"
