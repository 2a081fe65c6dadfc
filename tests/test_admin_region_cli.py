"""``bitnet-actor admin set-region``: an organization's home region moves by operator only, and not while it
has stored models (``--move-data`` is refused with a clear 'not implemented yet')."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from tests.test_cli import assert_one_line_error, data_dir, run_cli  # noqa: F401  # fixture re-export


def test_set_region(fresh_dsn_sync: str, redis_url: str, tmp_path: Path) -> None:
    env = {"BITNET_DATABASE_URL": fresh_dsn_sync, "BITNET_REDIS_URL": redis_url, "BITNET_DATA_DIR": str(tmp_path),
           "BITNET_REGION": "eu"}  # fmt: skip
    r = run_cli("admin", "create-org", "--name", "Acme", "--owner-email", "boss@acme.example", **env)
    assert r.returncode == 0, r.stderr

    async def region() -> str:
        conn = await asyncpg.connect(fresh_dsn_sync)
        try:
            return str(await conn.fetchval("SELECT region FROM organizations WHERE name = 'Acme'"))
        finally:
            await conn.close()

    assert asyncio.run(region()) == "eu"  # the creating replica's region
    r = run_cli("admin", "set-region", "--org", "Acme", "--region", "us-east", **env)
    assert r.returncode == 0, r.stderr
    assert "from region eu to us-east" in r.stdout
    assert asyncio.run(region()) == "us-east"
    r = run_cli("admin", "set-region", "--org", "Acme", "--region", "Bad Region", **env)
    assert_one_line_error(r, "a region is 1-64")

    async def store_a_model() -> None:
        conn = await asyncpg.connect(fresh_dsn_sync)
        try:
            await conn.execute(
                "INSERT INTO model_blobs (org_id, sha256, object_key, bytes, format)"
                " SELECT id, repeat('a', 64), 'sha256/x', 1, 'gguf' FROM organizations WHERE name = 'Acme'"
            )
        finally:
            await conn.close()

    asyncio.run(store_a_model())
    r = run_cli("admin", "set-region", "--org", "Acme", "--region", "eu", **env)
    assert_one_line_error(r, "pass --move-data")
    r = run_cli("admin", "set-region", "--org", "Acme", "--region", "eu", "--move-data", **env)
    assert_one_line_error(r, "not implemented yet")
    assert asyncio.run(region()) == "us-east"
