"""Storage adapters: PostgreSQL, Redis and the object store, configured or embedded.

``open_stores(settings)`` opens all three for the block, starting the embedded PostgreSQL / Redis and using
the filesystem object store wherever the settings name no server. Everything above sees the same
``Stores`` either way. It must run inside ``trio_asyncio.open_loop()``.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

import trio

from bitnet_actor.config import parse_region_stores
from bitnet_actor.stores.embedded import EmbeddedPostgres, EmbeddedRedis
from bitnet_actor.stores.migrate import migrate
from bitnet_actor.stores.objects import FilesystemObjectStore, ObjectStore, RegionStores, S3ObjectStore
from bitnet_actor.stores.postgres import Database, open_database
from bitnet_actor.stores.redis import RedisStore, open_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from bitnet_actor.config import Settings

__all__ = [
    "Stores",
    "app_dsn",
    "load_or_create_secret",
    "object_store",
    "open_database_only",
    "open_stores",
    "region_stores",
    "secret_key",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Stores:
    """The open storage backends of one process.

    Attributes:
        objects: The default object store.
        regions: The stores of every region (``BITNET_REGION_STORES``), ``objects`` as their default; None:
            ``objects`` is the only one.
    """

    db: Database
    redis: RedisStore
    objects: ObjectStore
    embedded: tuple[str, ...] = ()
    regions: RegionStores | None = None


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


def secret_key(settings: Settings) -> bytes:
    """The 32-byte key that encrypts stored secrets: ``BITNET_SECRET_KEY``, else one kept in the data dir.

    Replicas sharing a database must share this key; a single process may rely on the data-dir file.
    """
    if settings.secret_key:
        padded = settings.secret_key + "=" * (-len(settings.secret_key) % 4)
        return base64.urlsafe_b64decode(padded)
    if settings.database_url:
        log.warning("BITNET_SECRET_KEY is not set: using a key from the data dir, which other replicas lack")
    return load_or_create_secret(settings.data_dir, "secret.key")


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


def app_dsn(owner_dsn: str, user: str, password: str = "") -> str:
    """``owner_dsn`` with its user (and password) replaced by the service role's."""
    parts = urlsplit(owner_dsn)
    host = parts.netloc.rpartition("@")[2]
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}"))


async def _migrate_as_owner(dsn: str, as_owner: Callable[[Database], Awaitable[None]] | None = None) -> None:
    async with open_database(dsn, min_size=1, max_size=1) as owner:
        applied = await migrate(owner)
        if as_owner is not None:
            await as_owner(owner)
    if applied:
        log.info("applied migrations %s", applied)


@asynccontextmanager
async def open_database_only(settings: Settings, *, as_owner: bool = False) -> AsyncIterator[Database]:
    """Open just PostgreSQL (configured or embedded), for ``migrate`` and admin commands.

    Args:
        settings: where the database is.
        as_owner: connect as the tables' owner (migrations, audit verification) instead of the service role.
    """
    async with AsyncExitStack() as stack:
        dsn = settings.database_url or await _embedded_postgres(stack, settings.data_dir)
        if not as_owner:
            await _migrate_as_owner(dsn)
            dsn = app_dsn(dsn, settings.database_app_user, settings.database_app_password)
        yield await stack.enter_async_context(open_database(dsn))


@asynccontextmanager
async def open_redis_only(settings: Settings) -> AsyncIterator[RedisStore]:
    """Open just Redis (configured or the data dir's embedded one), for admin commands that queue work."""
    async with AsyncExitStack() as stack:
        url = settings.redis_url or await _embedded_redis(stack, settings.data_dir)
        yield await stack.enter_async_context(open_redis(url))


def object_store(settings: Settings) -> ObjectStore:
    """The configured (default) object store: S3 when a bucket is set, else the filesystem store in the data
    dir (the caller closes it)."""
    if settings.uses_s3:
        return _s3_store(settings, settings.s3_bucket, "")
    return _filesystem_store(settings, settings.data_dir / "objects")


def region_stores(settings: Settings) -> RegionStores:
    """The object stores of every region: those of ``BITNET_REGION_STORES``, opened on first use, and
    :func:`object_store` for the others (the caller closes them all with ``aclose``).

    Raises:
        ConfigError: ``BITNET_REGION_STORES`` is malformed.
    """
    default = object_store(settings)
    location = f"s3://{settings.s3_bucket}" if settings.uses_s3 else f"file://{settings.data_dir / 'objects'}"
    return RegionStores(
        default,
        parse_region_stores(settings.region_stores),
        open_store=lambda url: _store_at(settings, url),
        default_location=location,
    )


def _store_at(settings: Settings, url: str) -> ObjectStore:
    """The store of a URL of ``BITNET_REGION_STORES`` (normalized: ``s3://bucket[/prefix]``, ``file:///path``)."""
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return _s3_store(settings, bucket, prefix)
    return _filesystem_store(settings, Path(url.removeprefix("file://")))


def _s3_store(settings: Settings, bucket: str, prefix: str) -> S3ObjectStore:
    tmp = settings.data_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return S3ObjectStore(
        endpoint_url=settings.s3_endpoint or None,
        bucket=bucket,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
        region=settings.s3_region,
        prefix=prefix,
        tmp_dir=tmp,
    )


def _filesystem_store(settings: Settings, root: Path) -> FilesystemObjectStore:
    return FilesystemObjectStore(
        root,
        signing_key=load_or_create_secret(settings.data_dir, "object-url-signing.key"),
        base_url=settings.base_url,
    )


@asynccontextmanager
async def open_stores(
    settings: Settings, *, as_owner: Callable[[Database], Awaitable[None]] | None = None
) -> AsyncIterator[Stores]:
    """Open PostgreSQL, Redis and the object store for the block; embedded ones where none is configured.

    Migrations run first, as the owner of the tables (``BITNET_DATABASE_URL``'s user), then ``as_owner`` on
    that connection (writes the service role may not make, such as platform-wide rows); the pool the service
    uses then connects as the service role (``BITNET_DATABASE_APP_USER``), to which row-level security
    applies.

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
        await _migrate_as_owner(dsn, as_owner)
        app = app_dsn(dsn, settings.database_app_user, settings.database_app_password)
        db = await stack.enter_async_context(open_database(app))
        redis = await stack.enter_async_context(open_redis(redis_url))
        regions = region_stores(settings)
        if not settings.uses_s3:
            embedded.append("objects")
        stack.push_async_callback(regions.aclose)
        yield Stores(db=db, redis=redis, objects=regions.default, embedded=tuple(embedded), regions=regions)
