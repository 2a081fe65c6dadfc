"""``ops/backup.py``: a real install (PostgreSQL, the filesystem object store, an uploaded model, usage) backed up,
restored into a new empty database and data dir, compared table by table and object by object, and served again
with the old API key; a damaged backup, a database that is not empty and bad arguments are refused."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import uuid
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import trio

from bitnet_actor.stores.migrate import load_migrations
from tests.api.served import _org_with_key, serve
from tests.api.test_org_models_served import tar_bytes
from tests.conftest import with_database
from tests.ops._tools import REPO, require
from tests.test_cli import clean_env, run_cli

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytest.importorskip("transformers", reason="transformers builds the test model")

SCRIPT = REPO / "ops" / "backup.py"
COMPLETION = {"prompt": "def f(", "max_tokens": 6, "temperature": 0, "ignore_eos": True}


def _pg_dump_available() -> bool:
    import warnings

    try:
        with warnings.catch_warnings():  # it warns about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            import pgserver  # noqa: F401
    except ImportError:
        return shutil.which("pg_dump") is not None
    return True


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=clean_env(**env), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


async def arun(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(partial(run, *args, **env))


def assert_one_line_error(r: subprocess.CompletedProcess[str], fragment: str, code: int = 1) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("ops/backup.py: error:")]
    assert len(errors) == 1, r.stderr
    assert fragment in errors[0], errors[0]


async def _fetch(dsn: str, query: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(row.values()) for row in await conn.fetch(query)]
    finally:
        await conn.close()


async def _sql(dsn: str, query: str) -> Any:
    """The rows of ``query`` (asyncpg in asyncio, in a worker thread: the test runs under trio)."""
    return await trio.to_thread.run_sync(asyncio.run, _fetch(dsn, query))


async def _digests(dsn: str) -> dict[str, tuple[int, str | None]]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public' ORDER BY 1"
        )
        out = {}
        for (table,) in tables:
            row = await conn.fetchrow(f"SELECT count(*), md5(string_agg(x::text, '|' ORDER BY x::text)) FROM {table} x")
            assert row is not None
            out[table] = (row[0], row[1])
        return out
    finally:
        await conn.close()


async def table_digests(dsn: str) -> dict[str, tuple[int, str | None]]:
    """Every table's row count and a checksum of its rows (as the superuser: row-level security does not apply)."""
    return await trio.to_thread.run_sync(asyncio.run, _digests(dsn))


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def two_databases(pg_dsn: str) -> Iterator[tuple[str, str]]:
    names = [f"bitnet_test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    for name in names:
        asyncio.run(_fetch(pg_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(pg_dsn, names[0]), with_database(pg_dsn, names[1])
    finally:
        for name in names:
            asyncio.run(_fetch(pg_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def test_backup_and_restore_round_trip(
    aio_loop: object, two_databases: tuple[str, str], redis_url: str, model_dir: Path, tmp_path: Path
) -> None:
    require(_pg_dump_available(), "pg_dump is missing (neither the pgserver package nor PATH has it)")
    source_dsn, target_dsn = two_databases
    a, b = tmp_path / "a", tmp_path / "b"

    # An install with an organization, a key, an uploaded model and the usage of one completion.
    async with serve(source_dsn, redis_url, a, {}) as served:
        name = f"bk-{uuid.uuid4().hex[:6]}"
        _, key = await trio.to_thread.run_sync(
            _org_with_key, source_dsn, name, ["inference", "models:read", "models:write"]
        )
        async with httpx.AsyncClient(base_url=served.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            up = await c.post("/api/v1/orgs/current/models?name=coder&version=1", content=tar_bytes(model_dir))
            assert up.status_code == 201, up.text
            first = await c.post("/v1/completions", json={"model": "coder", **COMPLETION})
            assert first.status_code == 200, first.text
    before = await table_digests(source_dsn)
    assert sum(n for t, (n, _) in before.items() if t.startswith("public.usage_events")) >= 1  # its partitions
    assert before["public.model_data_keys"][0] >= 1 and before["public.api_keys"][0] >= 4
    objects = tree(a / "objects" / "sha256")
    assert objects, "the upload stored its ciphertext"

    src = {"BITNET_DATABASE_URL": source_dsn, "BITNET_DATA_DIR": str(a)}
    r = await arun("backup", "--to", str(tmp_path / "bk"), "--include-secrets", **src)
    assert r.returncode == 0, r.stderr
    assert "table public.organizations" in r.stderr and "objects[default]: [1/" in r.stderr
    assert "WARNING: secrets included" in r.stderr and "backed up schema version" in r.stdout
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert (
        manifest["database"]["schema_version"] == len(load_migrations())
        and "pg_dump (PostgreSQL)" in manifest["database"]["pg_dump_version"]
    )
    listed = {o["key"]: o["size"] for o in manifest["objects"]}
    assert listed == {f"sha256/{p.rsplit('/', 1)[1]}": len(data) for p, data in objects.items()}
    assert {s["name"] for s in manifest["secrets"]["files"]} >= {"master.key"}

    # Without --include-secrets: no keys in the backup, and the output says which ones to keep.
    r = await arun("backup", "--to", str(tmp_path / "bk-nokeys"), **src)
    assert r.returncode == 0, r.stderr
    assert "master.key" in r.stdout and "keep these yourself" in r.stdout
    assert not (tmp_path / "bk-nokeys" / "secrets").exists()
    r = await arun("backup", "--to", str(tmp_path / "bk"), **src)
    assert_one_line_error(r, "is not empty")

    # Restore refusals: a non-empty database; a damaged object (named, and nothing restored).
    r = await arun("restore", "--from", str(tmp_path / "bk"), BITNET_DATABASE_URL=source_dsn,
                   BITNET_DATA_DIR=str(tmp_path / "c"))  # fmt: skip
    assert_one_line_error(r, "the database is not empty")
    shutil.copytree(tmp_path / "bk", tmp_path / "bad")
    victim = next((tmp_path / "bad" / "objects" / "default" / "sha256").iterdir())
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    dst = {"BITNET_DATABASE_URL": target_dsn, "BITNET_DATA_DIR": str(b)}
    r = await arun("restore", "--from", str(tmp_path / "bad"), **dst)
    assert_one_line_error(r, f"object sha256/{victim.name} of the default store is damaged")
    assert await table_digests(target_dsn) == {}

    r = await arun("restore", "--from", str(tmp_path / "bk"), **dst)
    assert r.returncode == 0, r.stderr
    assert f"restored schema version {len(load_migrations())}," in r.stdout and "master.key: restored" in r.stdout
    assert "processing" not in r.stdout and "table public.api_keys" in r.stderr

    # The same rows in every table, the same objects, the same keys.
    assert await table_digests(target_dsn) == before
    assert tree(b / "objects" / "sha256") == objects
    assert tree(b / "secrets") == tree(a / "secrets")
    policies = "SELECT tablename, policyname, roles::text, qual, with_check FROM pg_policies ORDER BY 1, 2"
    assert await _sql(target_dsn, policies) == await _sql(source_dsn, policies)
    grants = (
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
        " WHERE grantee = 'bitnet_app' ORDER BY 1, 2"
    )
    assert await _sql(target_dsn, grants) == await _sql(source_dsn, grants)

    # The restored install serves the model to the old key, from its own data dir (decrypted afresh).
    auth = {"Authorization": f"Bearer {key}"}
    async with (
        serve(target_dsn, redis_url, b, {}) as served,
        httpx.AsyncClient(base_url=served.url, headers=auth, timeout=120) as c,
    ):
        again = await c.post("/v1/completions", json={"model": "coder", **COMPLETION})
        assert again.status_code == 200, again.text
        assert again.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]


def test_bad_arguments(tmp_path: Path) -> None:
    r = run("--help")
    assert r.returncode == 0 and "backup" in r.stdout and "restore" in r.stdout
    assert_one_line_error(run("backup"), "--to", code=2)
    assert_one_line_error(run("frobnicate"), "invalid choice", code=2)
    assert_one_line_error(run("restore", "--from", str(tmp_path / "nowhere")), "lacks manifest.json")
    assert_one_line_error(run("restore", "--from", "s3://"), "names no bucket", code=2)
    (tmp_path / "manifest.json").write_text("{not json")
    assert_one_line_error(run("restore", "--from", str(tmp_path)), "is not JSON")


def test_restore_as_another_owner_and_force(
    two_databases: tuple[str, str], pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    """Restored by a role that is neither a superuser nor the one the backup was taken as: it owns everything,
    the owner_all policies name it (its SECURITY DEFINER lookups and the audit check see every row), and the
    service role works under row-level security; ``--force`` then replaces the database's contents."""
    require(_pg_dump_available(), "pg_dump is missing (neither the pgserver package nor PATH has it)")
    source_dsn, _ = two_databases
    src: dict[str, Any] = {
        "BITNET_DATABASE_URL": source_dsn,
        "BITNET_REDIS_URL": redis_url,
        "BITNET_DATA_DIR": str(tmp_path / "a"),
    }
    r = run_cli("admin", "create-org", "--name", "Acme", "--owner-email", "o@acme.example", **src)
    assert r.returncode == 0, r.stderr
    assert run("backup", "--to", str(tmp_path / "bk"), **src).returncode == 0

    role, database = f"owner_{uuid.uuid4().hex[:8]}", f"bitnet_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_fetch(pg_dsn, f"CREATE ROLE {role} LOGIN NOSUPERUSER"))
    asyncio.run(_fetch(pg_dsn, f'CREATE DATABASE "{database}" OWNER {role}'))
    try:
        parts = urlsplit(with_database(pg_dsn, database))
        dsn = urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))
        dst: dict[str, Any] = {
            "BITNET_DATABASE_URL": dsn,
            "BITNET_REDIS_URL": redis_url,
            "BITNET_DATA_DIR": str(tmp_path / "b"),
        }
        r = run("restore", "--from", str(tmp_path / "bk"), **dst)
        assert r.returncode == 0, r.stderr
        assert "owner_all policies of" in r.stderr and f"now name {role}" in r.stderr
        assert "BITNET_SECRET_KEY" not in r.stdout and "master.key" in r.stdout  # the keys to bring
        owners = asyncio.run(_fetch(dsn, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"))
        assert owners == [(role,)]
        r = run_cli("admin", "create-key", "--org", "Acme", "--name", "after", "--scopes", "inference", **dst)
        assert r.returncode == 0 and r.stdout.startswith("bnk_live_"), r.stderr
        r = run_cli("audit", "verify", **dst)
        assert r.returncode == 0, r.stdout + r.stderr
        keys = "SELECT count(*) FROM api_keys"
        assert asyncio.run(_fetch(with_database(pg_dsn, database), keys)) == [(1,)]

        r = run("restore", "--from", str(tmp_path / "bk"), **dst)
        assert_one_line_error(r, "pass --force")
        r = run("restore", "--from", str(tmp_path / "bk"), "--force", **dst)
        assert r.returncode == 0, r.stderr
        assert asyncio.run(_fetch(with_database(pg_dsn, database), keys)) == [(0,)]  # the backup's state again
        assert asyncio.run(_digests(with_database(pg_dsn, database))) == asyncio.run(_digests(source_dsn))
    finally:
        asyncio.run(_fetch(pg_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        asyncio.run(_fetch(pg_dsn, f"DROP ROLE {role}"))
