"""Storage adapters: PostgreSQL, Redis and the object store, configured or embedded.

``open_stores(settings)`` opens all three for the block, starting the embedded PostgreSQL / Redis and using
the filesystem object store wherever the settings name no server. Everything above sees the same
``Stores`` either way. It must run inside ``trio_asyncio.open_loop()``.
"""

from __future__ import annotations

import logging
import os
import secrets
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from bitnet_actor.stores.embedded import EmbeddedPostgres, EmbeddedRedis
from bitnet_actor.stores.objects import FilesystemObjectStore, ObjectStore, S3ObjectStore
from bitnet_actor.stores.postgres import Database, open_database
from bitnet_actor.stores.redis import RedisStore, open_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from bitnet_actor.config import Settings

__all__ = ["Stores", "load_or_create_secret", "open_database_only", "open_stores"]

log = logging.getLogger(__name__)


async def _shielded(fn: Callable[[], Awaitable[None]]) -> None:
    with trio.move_on_after(10, shield=True):
        await fn()


@dataclass(frozen=True, slots=True, kw_only=True)
class Stores:
    """The open storage backends of one process."""

    db: Database
    redis: RedisStore
    objects: ObjectStore
    embedded: tuple[str, ...] = ()


def load_or_create_secret(data_dir: Path, name: str, nbytes: int = 32) -> bytes:
    """Return the secret ``data_dir/secrets/<name>``, creating it (random, mode 0600) on first use."""
    directory = data_dir / "secrets"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(nbytes))
    return path.read_bytes()


async def _embedded_postgres(stack: AsyncExitStack, data_dir: Path) -> str:
    server = EmbeddedPostgres(data_dir)
    dsn = await trio.to_thread.run_sync(server.start)

    async def stop() -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.stop)

    stack.push_async_callback(stop)
    log.info("embedded PostgreSQL ready in %s", server.pgdata)
    return dsn


async def _embedded_redis(stack: AsyncExitStack, data_dir: Path) -> str:
    server = EmbeddedRedis(data_dir)
    server.spawn()  # in this (the main) thread: the child's parent-death signal follows the spawning thread

    async def stop() -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.stop)

    stack.push_async_callback(stop)
    await trio.to_thread.run_sync(server.wait_ready)
    log.info("embedded Redis ready on %s", server.socket)
    return server.url


@asynccontextmanager
async def open_database_only(settings: Settings) -> AsyncIterator[Database]:
    """Open just PostgreSQL (configured or embedded), for ``migrate`` and admin commands."""
    async with AsyncExitStack() as stack:
        dsn = settings.database_url or await _embedded_postgres(stack, settings.data_dir)
        yield await stack.enter_async_context(open_database(dsn))


@asynccontextmanager
async def open_stores(settings: Settings) -> AsyncIterator[Stores]:
    """Open PostgreSQL, Redis and the object store for the block; embedded ones where none is configured.

    Raises:
        StoreUnavailableError: a configured server cannot be reached.
        StartupError: an embedded server cannot start.
    """
    async with AsyncExitStack() as stack:
        embedded: list[str] = []
        dsn = settings.database_url
        if not dsn:
            dsn = await _embedded_postgres(stack, settings.data_dir)
            embedded.append("postgres")
        redis_url = settings.redis_url
        if not redis_url:
            redis_url = await _embedded_redis(stack, settings.data_dir)
            embedded.append("redis")
        db = await stack.enter_async_context(open_database(dsn))
        redis = await stack.enter_async_context(open_redis(redis_url))
        objects: ObjectStore
        if settings.uses_s3:
            tmp = settings.data_dir / "tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            objects = S3ObjectStore(
                endpoint_url=settings.s3_endpoint or None,
                bucket=settings.s3_bucket,
                access_key_id=settings.s3_access_key_id,
                secret_access_key=settings.s3_secret_access_key,
                region=settings.s3_region,
                tmp_dir=tmp,
            )
        else:
            objects = FilesystemObjectStore(
                settings.data_dir / "objects",
                signing_key=load_or_create_secret(settings.data_dir, "object-url-signing.key"),
                base_url=settings.public_url or f"http://{settings.host}:{settings.port}",
            )
            embedded.append("objects")
        stack.push_async_callback(_shielded, objects.aclose)
        yield Stores(db=db, redis=redis, objects=objects, embedded=tuple(embedded))
