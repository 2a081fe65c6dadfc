"""Redis through ``redis.asyncio``, run inside the trio-asyncio loop.

``open_redis(url)`` owns one client (and its connection pool) for the block. ``RedisStore.run(fn)`` runs a
whole coroutine ``fn(client)`` in asyncio in one crossing (pipelines, Lua scripts, several commands); the
convenience methods cover the common single commands. ``subscribe`` bridges pub/sub to trio.

Connection failures map to ``StoreUnavailableError``; other Redis errors to ``StoreError``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
import trio
from trio_asyncio import aio_as_trio

from bitnet_actor.errors import StoreError, StoreUnavailableError
from bitnet_actor.stores.postgres import redact_dsn as redact_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

__all__ = ["RedisStore", "open_redis", "redact_url"]

T = TypeVar("T")


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise StoreUnavailableError(f"{what}: Redis unavailable: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        raise StoreError(f"{what}: {exc}") from exc


class RedisStore:
    """A Redis client usable from trio. Create with ``open_redis``."""

    def __init__(self, client: aioredis.Redis, url: str) -> None:
        self._client = client
        self.url = url
        self._scripts: dict[str, Any] = {}  # script text -> redis-py Script (its SHA1 computed once)

    async def run(self, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run ``fn(client)`` in asyncio in one crossing and return its result."""
        with _mapped("redis"):
            result: T = await aio_as_trio(fn)(self._client)
        return result

    async def ping(self) -> None:
        """Raise ``StoreUnavailableError`` unless Redis answers PING."""
        with trio.fail_after(5):
            await self.run(lambda r: r.ping())

    async def get(self, key: str) -> bytes | None:
        """GET key (the client does not decode responses, so values are bytes)."""
        value: bytes | None = await self.run(lambda r: r.get(key))  # type: ignore[arg-type,return-value]
        return value

    async def set(self, key: str, value: bytes | str | int, *, ex: int | None = None, nx: bool = False) -> bool:
        """SET key value [EX seconds] [NX]; True if it was set."""
        return bool(await self.run(lambda r: r.set(key, value, ex=ex, nx=nx)))

    async def delete(self, *keys: str) -> int:
        """DEL keys; how many existed."""
        return int(await self.run(lambda r: r.delete(*keys)))

    async def publish(self, channel: str, message: bytes | str) -> int:
        """PUBLISH; how many subscribers received it."""
        return int(await self.run(lambda r: r.publish(channel, message)))

    async def eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script: EVALSHA by its SHA1 (computed once here), loading it on the first NOSCRIPT
        (a new or restarted Redis), so the script's text crosses the wire once, not on every call."""
        runner = self._scripts.get(script)
        if runner is None:
            runner = self._scripts[script] = self._client.register_script(script)
        return await self.run(lambda r: runner(keys=keys, args=args, client=r))

    @asynccontextmanager
    async def subscribe(self, *channels: str) -> AsyncIterator[trio.MemoryReceiveChannel[tuple[str, bytes]]]:
        """Subscribe to ``channels`` for the block; yields a channel of ``(channel, data)`` messages.

        The subscription is active when the block starts. A slow reader makes the pump wait (the channel
        holds 64 messages), which Redis absorbs in its output buffer.
        """
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        with _mapped("subscribe"):
            await aio_as_trio(pubsub.subscribe)(*channels)
        send, recv = trio.open_memory_channel[tuple[str, bytes]](64)  # 64: bursts of invalidations
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, pubsub, send)
                try:
                    yield recv
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.move_on_after(5, shield=True):
                await aio_as_trio(pubsub.aclose)()

    @staticmethod
    async def _pump(pubsub: Any, send: trio.MemorySendChannel[tuple[str, bytes]]) -> None:
        async with send:
            while True:
                with _mapped("subscribe"):
                    msg = await aio_as_trio(pubsub.get_message)(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None and msg["type"] == "message":
                    channel = msg["channel"]
                    name = channel.decode() if isinstance(channel, bytes) else str(channel)
                    await send.send((name, msg["data"]))


@asynccontextmanager
async def open_redis(url: str, *, connect_timeout: float = 10.0) -> AsyncIterator[RedisStore]:
    """Connect to ``url`` for the block; must run inside ``trio_asyncio.open_loop()``.

    Raises:
        StoreUnavailableError: Redis does not answer PING within ``connect_timeout`` seconds.
    """
    client = aioredis.Redis.from_url(url, socket_connect_timeout=connect_timeout, health_check_interval=30)
    store = RedisStore(client, url)
    try:
        try:
            with trio.fail_after(connect_timeout):
                await store.run(lambda r: r.ping())
        except trio.TooSlowError:
            raise StoreUnavailableError(
                f"Redis at {redact_url(url)} did not answer within {connect_timeout:g} s"
            ) from None
        except StoreUnavailableError as exc:
            raise StoreUnavailableError(f"cannot connect to Redis at {redact_url(url)}: {exc.__cause__}") from exc
        yield store
    finally:
        with trio.move_on_after(5, shield=True):
            await aio_as_trio(client.aclose)()
