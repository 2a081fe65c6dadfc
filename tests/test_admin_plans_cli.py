"""``bitnet-actor admin plans | edit-plan | set-plan | set-limits`` and ``create-key --rpm ...`` end to end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg

from tests.test_cli import assert_one_line_error, run_cli


def _env(dsn: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {"BITNET_DATABASE_URL": dsn, "BITNET_REDIS_URL": redis_url, "BITNET_DATA_DIR": str(tmp_path)}


def _query(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def test_plans_edit_and_assign(fresh_dsn_sync: str, redis_url: str, tmp_path: Path) -> None:
    env = _env(fresh_dsn_sync, redis_url, tmp_path)
    r = run_cli("admin", "plans", **env)
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()[2:]]
    assert sorted(names) == ["enterprise", "free", "pro"], r.stdout

    r = run_cli("admin", "edit-plan", "--name", "team", "--rpm", "300", "--tpm", "none", "--key-concurrency", "8",
                "--monthly-token-quota", "5_000_000", "--quota-mode", "overage", "--input-price", "12.5",
                "--output-price", "50", "--model-price", "demo=1,2", "--monthly-fee-cents", "4900", **env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert (plan["name"], plan["rpm"], plan["tpm"], plan["key_concurrency"]) == ("team", 300, None, 8)
    assert (plan["monthly_token_quota"], plan["quota_mode"], plan["monthly_fee_cents"]) == (5_000_000, "overage", 4900)
    assert plan["input_price_per_m_cents"] == "12.5000" or plan["input_price_per_m_cents"].startswith("12.5")
    assert plan["model_prices"]["demo"]["output_price_per_m_cents"].startswith("2")
    r = run_cli("admin", "edit-plan", "--name", "team", "--rpm", "400", **env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rpm"] == 400 and json.loads(r.stdout)["key_concurrency"] == 8
    assert json.loads(r.stdout)["max_active_jobs"] == 4  # the default
    r = run_cli("admin", "edit-plan", "--name", "team", "--max-active-jobs", "12", **env)
    assert r.returncode == 0 and json.loads(r.stdout)["max_active_jobs"] == 12, r.stderr

    r = run_cli("admin", "create-org", "--name", "Acme", "--owner-email", "boss@acme.example", **env)
    assert r.returncode == 0, r.stderr
    r = run_cli("admin", "set-plan", "--org", "Acme", "--plan", "team", **env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "organization Acme is on plan team"
    assert [row["plan"] for row in _query(fresh_dsn_sync, "SELECT plan FROM organizations")] == ["team"]
    actions = [row["action"] for row in _query(fresh_dsn_sync, "SELECT action FROM audit_log ORDER BY seq")]
    assert "billing.plan_changed" in actions

    r = run_cli("admin", "set-limits", "--org", "Acme", "--rpm", "10", "--monthly-token-quota", "1000", **env)
    assert r.returncode == 0, r.stderr
    limits = json.loads(r.stdout)["limits"]
    assert (limits["rpm"], limits["monthly_token_quota"], limits["key_concurrency"]) == (10, 1000, 8)
    r = run_cli("admin", "set-limits", "--org", "Acme", "--rpm", "none", **env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["limits"]["rpm"] == 400  # back to the plan's
    r = run_cli("admin", "set-limits", "--org", "Acme", "--response-cache-ttl", "3600", **env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["limits"]["response_cache_ttl_s"] == 3600
    assert _query(fresh_dsn_sync, "SELECT response_cache_ttl_s FROM org_billing")[0]["response_cache_ttl_s"] == 3600
    r = run_cli("admin", "set-limits", "--org", "Acme", "--response-cache-ttl", "none", **env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["limits"]["response_cache_ttl_s"] is None

    r = run_cli("admin", "create-key", "--org", "Acme", "--name", "ci", "--scopes", "inference", "--rpm", "7",
                "--max-concurrency", "3", **env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = _query(fresh_dsn_sync, "SELECT rpm, tpm, max_concurrency FROM api_keys WHERE name = 'ci'")
    assert [(row["rpm"], row["tpm"], row["max_concurrency"]) for row in rows] == [(7, None, 3)]


def test_bad_plans_and_limits_are_refused(fresh_dsn_sync: str, redis_url: str, tmp_path: Path) -> None:
    env = _env(fresh_dsn_sync, redis_url, tmp_path)
    assert run_cli("migrate", **env).returncode == 0
    before = _query(fresh_dsn_sync, "SELECT * FROM plans ORDER BY name")
    for args, fragment in (
        (("--name", "pro", "--rpm", "-5"), "rpm must be between 0 and"),
        (("--name", "pro", "--tpm", "lots"), "--tpm must be a whole number or 'none'"),
        (("--name", "pro", "--input-price", "-1"), "input_price_per_m must be between 0 and"),
        (("--name", "pro", "--output-price", "1e12"), "output_price_per_m must be between 0 and"),
        (("--name", "pro", "--input-price", "0.123456"), "more than 4 decimals"),
        (("--name", "pro", "--model-price", "demo=1"), "MODEL=INPUT,OUTPUT"),
        (("--name", "pro", "--weight", "0"), "weight must be a whole number between 1 and"),
        (("--name", "pro", "--max-active-jobs", "1001"), "max_active_jobs must be a whole number between 1 and"),
        (("--name", "Bad Name", "--rpm", "1"), "a plan name is"),
        (("--name", "pro",), "needs at least one value"),
    ):  # fmt: skip
        assert_one_line_error(run_cli("admin", "edit-plan", *args, **env), fragment)
    assert _query(fresh_dsn_sync, "SELECT * FROM plans ORDER BY name") == before, "a refused edit changed a plan"

    assert run_cli("admin", "create-org", "--name", "Acme", "--owner-email", "b@acme.example", **env).returncode == 0
    assert_one_line_error(run_cli("admin", "set-plan", "--org", "Acme", "--plan", "gold", **env), "no plan 'gold'")
    assert_one_line_error(run_cli("admin", "set-plan", "--org", "Nope", "--plan", "pro", **env), "no organization")
    assert_one_line_error(
        run_cli("admin", "set-limits", "--org", "Acme", "--key-concurrency", "1000001", **env), "between 0 and"
    )
    assert_one_line_error(
        run_cli("admin", "set-limits", "--org", "Acme", "--response-cache-ttl", "604801", **env), "7 days"
    )
    assert_one_line_error(
        run_cli("admin", "create-key", "--org", "Acme", "--name", "k", "--scopes", "inference", "--tpm", "-1", **env),
        "tpm must be between 0 and",
    )
    assert _query(fresh_dsn_sync, "SELECT id FROM api_keys") == []
    assert [row["plan"] for row in _query(fresh_dsn_sync, "SELECT plan FROM organizations")] == ["free"]
