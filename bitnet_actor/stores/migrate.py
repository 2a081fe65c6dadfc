"""Numbered SQL migrations.

Files ``migrations/NNNN_name.sql`` are applied in order, each in its own transaction, and recorded in
``schema_migrations`` with a checksum. ``migrate`` holds a PostgreSQL advisory lock for the whole run, so
replicas starting together apply each migration exactly once and the others wait, then find nothing to do.
Running it again is a no-op. A recorded migration whose file changed, or a database newer than the code,
stops the run with ``MigrationError`` rather than guessing.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from bitnet_actor.errors import MigrationError, StoreError

if TYPE_CHECKING:
    import asyncpg

    from bitnet_actor.stores.postgres import Database

__all__ = ["MIGRATIONS_DIR", "Migration", "load_migrations", "migrate"]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any constant unique to this application; pg_advisory_lock takes a bigint.
_LOCK_ID = 0x62_69_74_6E_65_74  # "bitnet"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text: a recorded migration must never change."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read and order the migration files.

    Raises:
        MigrationError: a file is misnamed or the numbering has a gap or a duplicate.
    """
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name} is not named NNNN_lowercase_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"migration numbering must run 1, 2, 3, ...: expected {expected:04d}, found "
                f"{migration.version:04d}_{migration.name}.sql"
            )
    return found


async def migrate(db: Database, migrations: list[Migration] | None = None) -> list[int]:
    """Apply the pending migrations; return the versions applied by this call.

    Raises:
        MigrationError: a migration failed (it is rolled back; earlier ones stay) or the history disagrees.
    """
    pending_from = load_migrations() if migrations is None else migrations
    applied_now: list[int] = []
    async with db.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
            known = {m.version: m for m in pending_from}
            for row in rows:
                migration = known.get(row["version"])
                if migration is None:
                    raise MigrationError(
                        f"the database has migration {row['version']:04d}_{row['name']}, which this version "
                        "of bitnet-actor does not know: it is older than the schema"
                    )
                if migration.checksum != row["checksum"]:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name}.sql changed after it was applied"
                    )
            done = {row["version"] for row in rows}
            for migration in pending_from:
                if migration.version in done:
                    continue
                log.info("applying migration %04d_%s", migration.version, migration.name)
                try:
                    await conn.run(lambda c, m=migration: _apply(c, m))  # type: ignore[misc]
                except StoreError as exc:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name}.sql failed: {exc}"
                    ) from exc
                applied_now.append(migration.version)
        finally:
            with trio.move_on_after(5, shield=True):  # also when cancelled: never keep the lock
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied_now


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    # Runs in asyncio (one bridge crossing): the file and its record commit together or not at all.
    async with conn.transaction():
        await conn.execute(migration.sql)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            migration.version,
            migration.name,
            migration.checksum,
        )
