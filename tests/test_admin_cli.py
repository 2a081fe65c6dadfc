"""Operator commands end to end: ``bitnet-actor admin ...`` and ``bitnet-actor audit verify``."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import asyncpg
import httpx
import pytest

from bitnet_actor.services.api_keys import format_ok
from tests.test_cli import Server, assert_one_line_error, data_dir, run_cli  # noqa: F401  # fixture re-export


def test_create_org_key_revoke_and_audit(fresh_dsn_sync: str, redis_url: str, tmp_path: Path) -> None:
    env = {"BITNET_DATABASE_URL": fresh_dsn_sync, "BITNET_REDIS_URL": redis_url, "BITNET_DATA_DIR": str(tmp_path),
           "BITNET_PUBLIC_URL": "https://bitnet.example"}  # fmt: skip
    r = run_cli("admin", "create-org", "--name", "Acme", "--owner-email", "boss@acme.example", **env)
    assert r.returncode == 0, r.stderr
    assert "created organization Acme" in r.stdout
    assert re.search(r"https://bitnet\.example/password/set\?token=[\w-]{40,}", r.stdout)

    r = run_cli("admin", "create-key", "--org", "acme", "--name", "ci", "--scopes", "inference,models:read", **env)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert format_ok(key), "create-key must print the key and nothing else"
    assert r.stdout == key + "\n"

    r = run_cli("admin", "create-key", "--org", "acme", "--name", "bad", "--scopes", "root", **env)
    assert_one_line_error(r, "unknown scopes ['root']")
    r = run_cli("admin", "create-key", "--org", "nope", "--name", "x", "--scopes", "inference", **env)
    assert_one_line_error(r, "no organization named 'nope'")

    r = run_cli("admin", "revoke-key", "--org", "Acme", "--name", "ci", **env)
    assert r.returncode == 0, r.stderr
    assert "revoked 1 key named ci" in r.stdout
    r = run_cli("admin", "revoke-key", "--org", "Acme", "--name", "ci", **env)
    assert_one_line_error(r, "no active key named 'ci'")

    r = run_cli("audit", "verify", **env)
    assert r.returncode == 0, r.stderr
    assert re.match(r"audit log intact: [3-9] rows verified", r.stdout)

    async def tamper() -> int:
        conn = await asyncpg.connect(fresh_dsn_sync)
        try:
            await conn.execute("SET session_replication_role = replica")  # bypass the append-only trigger
            return await conn.fetchval('UPDATE audit_log SET details = \'{"name": "Evil"}\' WHERE seq = 1 RETURNING id')
        finally:
            await conn.close()

    row_id = asyncio.run(tamper())
    r = run_cli("audit", "verify", **env)
    assert r.returncode == 1
    assert f"first bad row id={row_id}" in r.stdout
    assert "edited" in r.stdout


@pytest.mark.slow
def test_admin_commands_share_a_running_embedded_server(data_dir: Path) -> None:  # noqa: F811
    server = Server(data_dir)
    try:
        server.wait_ready()
        env = {"BITNET_DATA_DIR": str(data_dir)}
        r = run_cli("admin", "create-org", "--name", "Initech", "--owner-email", "bill@initech.example", **env)
        assert r.returncode == 0, r.stderr + r.stdout
        r = run_cli("admin", "create-key", "--org", "Initech", "--name", "prod", "--scopes", "admin", **env)
        assert r.returncode == 0, r.stderr
        key = r.stdout.strip()
        headers = {"Authorization": f"Bearer {key}"}
        orgs = httpx.get(f"{server.url}/api/v1/roles", headers=headers)
        assert orgs.status_code == 200
        org_id = httpx.get(f"{server.url}/api/v1/orgs/00000000-0000-0000-0000-000000000000", headers=headers)
        assert org_id.status_code == 404
        r = run_cli("admin", "revoke-key", "--org", "Initech", "--name", "prod", **env)
        assert r.returncode == 0, r.stderr
        # The running server heard the revocation over its Redis: the key is refused at once.
        denied = httpx.get(f"{server.url}/api/v1/orgs/00000000-0000-0000-0000-000000000000", headers=headers)
        assert denied.status_code == 401
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=20) == 0
    finally:
        server.close()
