"""The usage ledger on a real PostgreSQL: written once, spooled when the database refuses, replayed later."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from bitnet_actor.services.usage import UsageEntry, UsageRecorder, write_entry

if TYPE_CHECKING:
    from pathlib import Path

    from bitnet_actor.stores.postgres import Database


def entry(org_id: uuid.UUID, tokens: int = 7) -> UsageEntry:
    return UsageEntry(
        org_id=org_id,
        model="m",
        request_data={"endpoint": "completions"},
        response_data={"usage": {"total_tokens": tokens}},
        latency_ms=3,
        total_tokens=tokens,
    )


async def counts(db: Database, org_id: uuid.UUID) -> tuple[int, int]:
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        requests = await tx.fetchval("SELECT count(*) FROM inference_requests WHERE org_id = $1", org_id)
        tokens = await tx.fetchval(
            "SELECT coalesce(sum(operation_count), 0) FROM usage_records WHERE org_id = $1", org_id
        )
    return int(requests), int(tokens)


async def new_org(db: Database, org_id: uuid.UUID | None = None) -> uuid.UUID:
    org_id = org_id or uuid.uuid4()
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO organizations (id, name) VALUES ($1, $2)", org_id, f"usage-{org_id.hex[:8]}")
    return org_id


async def test_an_entry_is_written_once(db: Database) -> None:
    org = await new_org(db)
    e = entry(org)
    assert await write_entry(db, e) is True
    assert await write_entry(db, e) is False  # the same request again: skipped, not counted twice
    assert await counts(db, org) == (1, 7)


async def test_a_refused_entry_is_spooled_then_replayed(db: Database, tmp_path: Path) -> None:
    org = uuid.uuid4()  # no such organization yet: the database refuses the rows (foreign key)
    spooled: list[int] = []
    recorder = UsageRecorder(db, tmp_path / "spool.jsonl", on_spooled=lambda: spooled.append(1))
    await recorder.record(entry(org, tokens=5))
    await recorder.record(entry(org, tokens=6))
    assert spooled == [1, 1]
    assert len((tmp_path / "spool.jsonl").read_text().splitlines()) == 2
    assert await recorder.replay() == 0  # still refused: kept
    assert len((tmp_path / "spool.jsonl").read_text().splitlines()) == 2
    await new_org(db, org)
    assert await recorder.replay() == 2
    assert not (tmp_path / "spool.jsonl").exists()
    assert await counts(db, org) == (2, 11)
    assert await recorder.replay() == 0


async def test_a_damaged_spool_line_is_set_aside(db: Database, tmp_path: Path) -> None:
    org = await new_org(db)
    spool = tmp_path / "spool.jsonl"
    spool.write_text(entry(org, tokens=4).to_json() + "\n" + '{"org_id": "trunc\n')
    recorder = UsageRecorder(db, spool)
    assert await recorder.replay() == 1
    assert await counts(db, org) == (1, 4)
    assert (tmp_path / "spool.jsonl.damaged").read_text().strip() == '{"org_id": "trunc'
    assert not spool.exists()


async def test_a_refused_entry_does_not_hold_back_the_others(db: Database, tmp_path: Path) -> None:
    missing, present = uuid.uuid4(), await new_org(db)
    spool = tmp_path / "spool.jsonl"
    spool.write_text(entry(missing, tokens=1).to_json() + "\n" + entry(present, tokens=2).to_json() + "\n")
    recorder = UsageRecorder(db, spool)
    assert await recorder.replay() == 1
    assert await counts(db, present) == (1, 2)
    kept = spool.read_text().splitlines()
    assert len(kept) == 1 and UsageEntry.from_json(kept[0]).org_id == missing
