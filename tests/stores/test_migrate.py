from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio

from bitnet_actor.errors import MigrationError
from bitnet_actor.stores.migrate import Migration, load_migrations, migrate
from bitnet_actor.stores.postgres import open_database

if TYPE_CHECKING:
    from pathlib import Path

CORE_TABLES = {
    "organizations",
    "users",
    "model_versions",
    "model_blobs",
    "model_jobs",
    "plans",
    "usage_events",
    "usage_rollups",
    "invoices",
    "billing_outbox",
}


async def test_migrate_fresh_database_then_noop(fresh_dsn: str) -> None:
    async with open_database(fresh_dsn) as db:
        applied = await migrate(db)
        assert applied == [m.version for m in load_migrations()]
        tables = {r["tablename"] for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert tables >= CORE_TABLES | {"schema_migrations"}
        # A partition for this month exists, so inserts don't land in the default partition.
        parts = await db.fetch(
            "SELECT inhrelid::regclass::text AS p FROM pg_inherits WHERE inhparent = 'usage_events'::regclass"
        )
        assert len(parts) >= 4
        assert await migrate(db) == []


async def test_concurrent_migrations_apply_once(fresh_dsn: str) -> None:
    results: list[list[int]] = []
    async with open_database(fresh_dsn, max_size=4) as db:

        async def one() -> None:
            results.append(await migrate(db))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one)
        assert sorted(map(len, results)) == [0, 0, len(load_migrations())]
        assert await db.fetchval("SELECT count(*) FROM schema_migrations") == len(load_migrations())


async def test_failed_migration_rolls_back_and_reports(fresh_dsn: str) -> None:
    good = load_migrations()
    bad = Migration(len(good) + 1, "broken", "CREATE TABLE half_done (id int); SELECT * FROM no_such_table;")
    async with open_database(fresh_dsn) as db:
        with pytest.raises(MigrationError, match=r"broken\.sql failed"):
            await migrate(db, [*good, bad])
        assert await db.fetchval("SELECT to_regclass('half_done')") is None
        assert await db.fetchval("SELECT max(version) FROM schema_migrations") == len(good)


async def test_changed_or_unknown_migration_is_refused(fresh_dsn: str) -> None:
    good = load_migrations()
    async with open_database(fresh_dsn) as db:
        await migrate(db)
        edited = [*good[:-1], Migration(good[-1].version, good[-1].name, good[-1].sql + "\n-- edited")]
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(db, edited)
        with pytest.raises(MigrationError, match="does not know"):
            await migrate(db, good[:-1])


def test_load_migrations_checks_names(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="expected 0002"):
        load_migrations(tmp_path)
    (tmp_path / "2_bad.sql").write_text("")
    with pytest.raises(MigrationError, match="not named"):
        load_migrations(tmp_path)
