"""``bitnet-actor admin set-region``: an organization's home region moves by operator only, and not while it
has stored models unless ``--move-data`` moves them to the new region's object store (BITNET_REGION_STORES)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import trio
import trio_asyncio

from bitnet_actor.config import Settings
from bitnet_actor.services import tenancy
from bitnet_actor.services.models import EncryptedObjects, LocalKeyProvider
from bitnet_actor.services.models.files import LocalFiles
from bitnet_actor.services.models.registry import get_version
from bitnet_actor.stores import open_stores
from tests.api.conftest import model_dir  # noqa: F401  # fixture re-export
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
    assert asyncio.run(region()) == "us-east"
    r = run_cli("admin", "set-region", "--org", "Acme", "--region", "eu", "--region-stores", "eu=ftp://x", **env)
    assert_one_line_error(r, "BITNET_REGION_STORES entries must be")


def files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "sha256").rglob("*") if p.is_file()) if root.exists() else []


async def _sql(dsn: str, statement: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(statement, *args)
    finally:
        await conn.close()


def test_set_region_moves_the_data(fresh_dsn_sync: str, redis_url: str, model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    eu, us = tmp_path / "eu-objects", tmp_path / "us-objects"
    env = {"BITNET_DATABASE_URL": fresh_dsn_sync, "BITNET_REDIS_URL": redis_url, "BITNET_DATA_DIR": str(tmp_path),
           "BITNET_REGION": "eu", "BITNET_REGION_STORES": f"eu=file://{eu},us=file://{us}"}  # fmt: skip
    assert run_cli("admin", "create-org", "--name", "Acme", "--owner-email", "o@acme.example", **env).returncode == 0
    r = run_cli(
        "models", "push", str(model_dir), "--org", "Acme", "--name", "tiny", "--version", "1", timeout=180, **env
    )
    assert r.returncode == 0, r.stderr
    pushed = files(eu)
    assert len(pushed) == 1 and files(us) == [] and files(tmp_path / "objects") == []  # in eu's store only
    ciphertext = pushed[0].read_bytes()

    assert_one_line_error(run_cli("admin", "set-region", "--org", "Acme", "--region", "us", **env), "pass --move-data")
    org_id = asyncio.run(_sql(fresh_dsn_sync, "SELECT id FROM organizations WHERE name = 'Acme'"))
    upload = asyncio.run(_sql(fresh_dsn_sync, "INSERT INTO model_uploads (org_id) VALUES ($1) RETURNING id", org_id))
    r = run_cli("admin", "set-region", "--org", "Acme", "--region", "us", "--move-data", **env)
    assert_one_line_error(r, "1 upload(s) in progress; let them complete or abort them")
    asyncio.run(_sql(fresh_dsn_sync, "UPDATE model_uploads SET state = 'aborted' WHERE id = $1", upload))

    r = run_cli("admin", "set-region", "--org", "Acme", "--region", "us", "--move-data", **env)
    assert r.returncode == 0, r.stderr
    assert f"[1/1] sha256/{pushed[0].name} (" in r.stderr and "eu -> us store (copied)" in r.stderr
    assert "moved organization Acme from region eu to us; moved 1 object(s)" in r.stdout
    assert files(eu) == [] and [p.name for p in files(us)] == [pushed[0].name]
    assert (us / pushed[0].relative_to(eu)).read_bytes() == ciphertext  # as is: not re-encrypted
    assert asyncio.run(_sql(fresh_dsn_sync, "SELECT region FROM organizations WHERE id = $1", org_id)) == "us"

    r = run_cli("admin", "set-region", "--org", "Acme", "--region", "us", "--move-data", **env)
    assert r.returncode == 0, r.stderr
    assert "already in region us; moved 0 object(s), 0 bytes" in r.stdout and "[1/" not in r.stderr

    # The model still decrypts and unpacks, as a replica would load it (now from us's store).
    settings = Settings.from_env(env).validated()

    async def fetch() -> Path:
        async with trio_asyncio.open_loop(), open_stores(settings) as stores:
            objects = EncryptedObjects(
                stores.regions or stores.objects, stores.db, LocalKeyProvider.from_settings(settings)
            )
            org = await tenancy.org_id_by_name(stores.db, "Acme")
            version = await get_version(stores.db, org, "tiny", "1")
            local = LocalFiles(settings.data_dir / f"model-files-{uuid.uuid4().hex}", objects, stores.db)
            return Path(await local.path_of(version))

    served = trio.run(fetch)
    for original in (p for p in model_dir.iterdir() if p.is_file()):
        assert (served / original.name).read_bytes() == original.read_bytes()
