from __future__ import annotations

import uuid

import asyncpg
import pytest
import trio

from bitnet_actor.errors import ConflictError, QueryError, StoreUnavailableError
from bitnet_actor.stores.postgres import Database, _mapped, open_database, redact_dsn


async def test_queries_and_json_codec(db: Database) -> None:
    assert await db.fetchval("SELECT 1 + 1") == 2
    assert await db.fetchval("SELECT $1::jsonb", {"a": [1, 2]}) == {"a": [1, 2]}
    rows = await db.fetch("SELECT g FROM generate_series(1, 3) AS g")
    assert [r["g"] for r in rows] == [1, 2, 3]
    assert await db.fetchrow("SELECT 1 WHERE false") is None


async def test_transaction_commits_and_rolls_back(db: Database) -> None:
    name = f"org-{uuid.uuid4().hex}"
    async with db.transaction() as tx:
        org_id = await tx.fetchval("INSERT INTO organizations (name) VALUES ($1) RETURNING id", name)
    assert await db.fetchval("SELECT name FROM organizations WHERE id = $1", org_id) == name

    class Abort(Exception):
        pass

    async def update_then_fail() -> None:
        async with db.transaction() as tx:
            await tx.execute("UPDATE organizations SET plan = 'pro' WHERE id = $1", org_id)
            raise Abort

    with pytest.raises(Abort):
        await update_then_fail()
    assert await db.fetchval("SELECT plan FROM organizations WHERE id = $1", org_id) == "free"


async def test_tenant_setting_is_local_to_the_transaction(db: Database) -> None:
    org = uuid.uuid4()
    async with db.transaction(org_id=org) as tx:
        assert await tx.fetchval("SELECT current_setting('app.org_id', true)") == str(org)
    # The pool has few connections: the setting must not survive on any of them.
    for _ in range(6):
        assert await db.fetchval("SELECT current_setting('app.org_id', true)") in (None, "")


async def test_cancelled_transaction_rolls_back_and_pool_stays_usable(db: Database) -> None:
    name = f"org-{uuid.uuid4().hex}"
    with trio.move_on_after(0.3):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO organizations (name) VALUES ($1)", name)
            await tx.execute("SELECT pg_sleep(5)")
    assert await db.fetchval("SELECT count(*) FROM organizations WHERE name = $1", name) == 0
    assert await db.fetchval("SELECT 1") == 1


async def test_errors_are_mapped(db: Database) -> None:
    name = f"org-{uuid.uuid4().hex}"
    await db.execute("INSERT INTO organizations (name) VALUES ($1)", name)
    with pytest.raises(ConflictError) as info:
        await db.execute("INSERT INTO organizations (name) VALUES ($1)", name.upper())
    assert info.value.constraint == "organizations_name_key"
    with pytest.raises(QueryError, match="syntax"):
        await db.execute("SELEC 1")


async def test_a_connection_the_server_ends_is_unavailable_not_a_rejected_query(db: Database) -> None:
    # pg_terminate_backend is what a fast shutdown (or an operator) does to a session: 57P01, "terminating
    # connection due to administrator command". The caller must see the server going away (the meter
    # spills, the limits fail open), not a query it got wrong.
    async with db.connection() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(StoreUnavailableError):
            await conn.fetchval("SELECT 1")
    assert await db.fetchval("SELECT 1") == 1  # the pool replaces it


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CrashShutdownError("terminating connection because of crash of another server process"),
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.ConnectionFailureError("connection failure"),
        asyncpg.exceptions.DiskFullError("could not extend file"),
        asyncpg.PostgresError("the database system is not accepting connections"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_server_going_away_is_unavailable(exc: Exception) -> None:
    with pytest.raises(StoreUnavailableError), _mapped("query"):
        raise exc


def test_a_cancelled_statement_is_not_unavailable() -> None:
    with pytest.raises(QueryError), _mapped("query"):
        raise asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout")


async def test_unreachable_server(aio_loop: object) -> None:
    with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1:1"):
        async with open_database("postgresql://u:secret@127.0.0.1:1/x", connect_timeout=3):
            pass


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_dsn("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact_dsn("postgresql:///db?host=/tmp") == "postgresql:///db?host=/tmp"
