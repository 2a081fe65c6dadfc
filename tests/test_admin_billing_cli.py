"""``bitnet-actor admin usage`` and ``admin invoice`` end to end, over events written through the ledger."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import trio
import trio_asyncio

from bitnet_actor.services.billing.ledger import UsageEvent, record_batch
from bitnet_actor.stores.postgres import open_database
from tests.test_cli import assert_one_line_error, run_cli

if TYPE_CHECKING:
    from pathlib import Path


def _write_usage(dsn: str) -> None:
    async def write() -> None:
        async with trio_asyncio.open_loop(), open_database(dsn, min_size=1, max_size=1) as db:
            org = await db.fetchval("SELECT id FROM organizations WHERE name = 'Acme'")
            events = [
                UsageEvent(
                    request_id=uuid.uuid4().hex, org_id=org, model=model, input_tokens=i, output_tokens=o,
                    latency_ms=1, outcome="completed", created_at=at,
                )
                for model, i, o, at in [
                    ("alpha", 1_000_000, 10, datetime(2024, 3, 10, 1, tzinfo=UTC)),
                    ("alpha", 500_000, 20, datetime(2024, 3, 10, 2, tzinfo=UTC)),
                    ("beta", 7, 3, datetime(2024, 3, 11, tzinfo=UTC)),
                ]
            ]  # fmt: skip
            assert await record_batch(db, events) == 3
            await db.execute("UPDATE organizations SET plan = 'pro' WHERE id = $1", org)

    trio.run(write)


def test_usage_table_and_invoice_json(fresh_dsn_sync: str, tmp_path: Path) -> None:
    env = {"BITNET_DATABASE_URL": fresh_dsn_sync, "BITNET_DATA_DIR": str(tmp_path)}
    r = run_cli("admin", "create-org", "--name", "Acme", "--owner-email", "boss@acme.example", **env)
    assert r.returncode == 0, r.stderr
    _write_usage(fresh_dsn_sync)

    r = run_cli("admin", "usage", "--org", "Acme", "--start", "2024-03-10", "--end", "2024-03-12", **env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].split() == ["bucket", "(UTC)", "model", "input_tokens", "output_tokens", "requests"]
    rows = [line.split() for line in lines if line.startswith(("2024-", "total"))]
    assert rows == [
        ["2024-03-10", "00:00", "alpha", "1500000", "30", "2"],
        ["2024-03-11", "00:00", "beta", "7", "3", "1"],
        ["total", "1500007", "33", "3"],
    ]
    r = run_cli("admin", "usage", "--org", "Acme", "--start", "2024-03-10T01:00", "--end", "2024-03-10T03:00",
                "--width", "1h", **env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [line.split()[1:3] for line in r.stdout.splitlines() if line.startswith("2024-")] == [
        ["01:00", "alpha"],
        ["02:00", "alpha"],
    ]
    r = run_cli("admin", "usage", "--org", "Acme", "--start", "2020-01-01", "--end", "2020-01-02", **env)
    assert r.returncode == 0 and r.stdout.startswith("no usage in Acme")

    r = run_cli("admin", "invoice", "--org", "Acme", "--period", "2024-03", **env)
    assert r.returncode == 0, r.stderr
    draft = json.loads(r.stdout)
    assert draft["status"] == "draft" and draft["plan"] == "pro"
    # pro: a 2000-cent fee; 10 cents per 1M input and 40 per 1M output tokens, each line rounded half-up.
    assert [(ln["kind"], ln["model"], ln["amount_cents"]) for ln in draft["lines"]] == [
        ("base_fee", None, 2000),
        ("input_tokens", "alpha", 15),
        ("output_tokens", "alpha", 0),
        ("input_tokens", "beta", 0),
        ("output_tokens", "beta", 0),
    ]
    assert draft["total_cents"] == 2015
    r = run_cli("admin", "invoice", "--org", "Acme", "--period", "2024-03", "--finalize", **env)
    assert r.returncode == 0, r.stderr
    final = json.loads(r.stdout)
    assert final["status"] == "finalized" and final["id"] == draft["id"] and final["total_cents"] == 2015
    r = run_cli("admin", "invoice", "--org", "Acme", "--period", "2024-03", "--finalize", **env)
    assert r.returncode == 0 and json.loads(r.stdout) == final  # idempotent


def test_bad_input_is_one_line_and_non_zero(fresh_dsn_sync: str, tmp_path: Path) -> None:
    env = {"BITNET_DATABASE_URL": fresh_dsn_sync, "BITNET_DATA_DIR": str(tmp_path)}
    r = run_cli("admin", "create-org", "--name", "Acme", "--owner-email", "boss@acme.example", **env)
    assert r.returncode == 0, r.stderr
    assert_one_line_error(run_cli("admin", "usage", "--org", "Acme", "--start", "last week", **env), "--start")
    assert_one_line_error(
        run_cli("admin", "usage", "--org", "Acme", "--start", "2024-03-02", "--end", "2024-03-01", **env), "--end"
    )
    assert_one_line_error(run_cli("admin", "usage", "--org", "Acme", "--width", "2d", **env), "--width")
    assert_one_line_error(run_cli("admin", "usage", "--org", "Nope", **env), "no organization named 'Nope'")
    assert_one_line_error(run_cli("admin", "invoice", "--org", "Acme", "--period", "2024-13", **env), "YYYY-MM")
    assert_one_line_error(run_cli("admin", "invoice", "--org", "Acme", **env), "--period")
    month = datetime.now(UTC).strftime("%Y-%m")
    r = run_cli("admin", "invoice", "--org", "Acme", "--period", month, "--finalize", **env)
    assert_one_line_error(r, "only a month that is over")
