"""The usage meter on real PostgreSQL: batching, idempotency (the ledger, its rollups and the Stripe outbox
count every request once, whatever is retried or replayed), spilling while PostgreSQL is away (a proxy the
test cuts or makes hang) and replay once it is back, damaged and refused lines set aside, the bounded buffer,
and the drain at shutdown within its grace."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
import trio

from actors.meter import UsageMeter
from bitnet_actor.services.billing.ledger import UsageEvent, record_batch
from bitnet_actor.stores.postgres import open_database
from tests.pgproxy import open_pg_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from bitnet_actor.stores.postgres import Database
    from tests.pgproxy import PgProxy


async def new_org(db: Database) -> uuid.UUID:
    org: uuid.UUID = await db.fetchval(
        "INSERT INTO organizations (name, plan) VALUES ($1, 'free') RETURNING id", f"m-{uuid.uuid4().hex[:8]}"
    )
    return org


def event(org: uuid.UUID, i: int = 0, *, request_id: str | None = None, **kw: object) -> UsageEvent:
    fields: dict[str, object] = {"input_tokens": 10 + i, "output_tokens": 5, "latency_ms": 3, "outcome": "completed"}
    fields.update(kw)
    return UsageEvent(request_id=request_id or f"req-{uuid.uuid4().hex}", org_id=org, model="m", **fields)  # type: ignore[arg-type]


async def totals(db: Database, org: uuid.UUID) -> tuple[int, int, int, int, int]:
    """Events and input tokens in the ledger; requests and input tokens of the hourly rollups; the outbox."""
    events, tokens = await db.fetchrow(
        "SELECT count(*), coalesce(sum(input_tokens), 0) FROM usage_events WHERE org_id = $1", org
    )  # type: ignore[misc]
    requests, rolled = await db.fetchrow(
        "SELECT coalesce(sum(requests), 0), coalesce(sum(input_tokens), 0) FROM usage_rollups"
        " WHERE org_id = $1 AND width = '1h'",
        org,
    )  # type: ignore[misc]
    outbox = await db.fetchval(
        "SELECT coalesce(sum(value), 0) FROM billing_outbox WHERE org_id = $1 AND meter = 'input_tokens'", org
    )
    return int(events), int(tokens), int(requests), int(rolled), int(outbox)


def expect(events: list[UsageEvent]) -> tuple[int, int, int, int, int]:
    tokens = sum(e.input_tokens for e in events)
    return len(events), tokens, len(events), tokens, tokens


def spill_lines(spill_dir: Path, name: str = "spill.jsonl") -> list[str]:
    """The lines of ``name``; for the spill file, of the files taken aside for replay too."""
    paths = [spill_dir / name] + (sorted(spill_dir.glob("replaying-*.jsonl")) if name == "spill.jsonl" else [])
    return [line for p in paths if p.exists() for line in p.read_text().splitlines() if line.strip()]


def jsonl_files(spill_dir: Path) -> list[Path]:
    return sorted(spill_dir.glob("*.jsonl"))


@pytest.fixture
async def proxy(db: Database, pg_dsn: str) -> AsyncIterator[PgProxy]:
    async with open_pg_proxy(pg_dsn) as p:
        yield p


@pytest.fixture
async def proxied(proxy: PgProxy) -> AsyncIterator[Database]:
    """The ledger's database reached through ``proxy``."""
    async with open_database(proxy.dsn(), min_size=1, max_size=2, connect_timeout=5) as database:
        yield database


async def test_a_batch_is_one_statement(db: Database, tmp_path: Path) -> None:
    org = await new_org(db)
    meter = UsageMeter(db, tmp_path, flush_s=0.2)
    sent = [event(org, i) for i in range(120)]
    async with trio.open_nursery() as nursery:
        await nursery.start(meter.run)
        for e in sent:
            meter.record(e)
        assert await meter.flush()
        nursery.cancel_scope.cancel()
    stats = meter.statistics()
    assert (stats.batches, stats.written, stats.duplicates, stats.spilled) == (1, 120, 0, 0)
    assert await totals(db, org) == expect(sent)


async def test_batches_are_cut_at_batch_size(db: Database, tmp_path: Path) -> None:
    org = await new_org(db)
    meter = UsageMeter(db, tmp_path, batch_size=50, flush_s=0.2)
    sent = [event(org, i) for i in range(120)]
    for e in sent:
        meter.record(e)
    async with trio.open_nursery() as nursery:
        await nursery.start(meter.run)
        assert await meter.flush()
        nursery.cancel_scope.cancel()
    assert meter.statistics().batches == 3
    assert await totals(db, org) == expect(sent)


async def test_nothing_counts_twice(db: Database, tmp_path: Path) -> None:
    org = await new_org(db)
    one = event(org, 1)
    batch = [event(org, i) for i in range(5)]
    assert await record_batch(db, [one, one]) == 1  # the same request twice in one batch
    assert await record_batch(db, [one]) == 0  # and again in another
    assert await record_batch(db, batch) == 5
    assert await record_batch(db, batch) == 0  # a retried batch (committed, its answer lost)
    before = await totals(db, org)
    assert before == expect([one, *batch])
    meter = UsageMeter(db, tmp_path)
    meter._spill_now([one, *batch, one])  # a spill file of what is there already
    assert await meter.replay() == 0
    assert await totals(db, org) == before
    stats = meter.statistics()
    assert (stats.replayed, stats.duplicates, stats.written) == (0, 7, 0)
    assert not jsonl_files(tmp_path)


async def test_replay_counts_new_and_duplicate_events(db: Database, tmp_path: Path) -> None:
    org = await new_org(db)
    there, new = [event(org, i) for i in range(3)], [event(org, i) for i in range(4)]
    await record_batch(db, there)
    written: list[int] = []
    meter = UsageMeter(db, tmp_path, batch_size=2, on_written=written.append)
    meter._spill_now([*there, *new])
    assert await meter.replay() == 4
    stats = meter.statistics()
    assert (stats.replayed, stats.written, stats.duplicates, stats.batches) == (4, 4, 3, 4)
    assert sum(written) == 4
    assert await totals(db, org) == expect([*there, *new])


async def test_spills_while_postgres_is_away_and_replays_once_back(
    db: Database, proxied: Database, proxy: PgProxy, tmp_path: Path
) -> None:
    org = await new_org(db)
    meter = UsageMeter(proxied, tmp_path, flush_s=0.01, write_timeout_s=2, replay_every_s=3600)
    before = [event(org, i) for i in range(3)]
    during = [event(org, i) for i in range(7)]
    async with trio.open_nursery() as nursery:
        await nursery.start(meter.run)
        for e in before:
            meter.record(e)
        assert await meter.flush()
        proxy.cut()
        for e in during:
            meter.record(e)
            await trio.sleep(0.002)
        assert await meter.flush()
        assert meter.statistics().spilled == 7
        assert len(spill_lines(tmp_path)) == 7
        assert await meter.replay() == 0  # still away: kept
        assert len(spill_lines(tmp_path)) == 7
        proxy.restore()
        assert await meter.replay() == 7
        nursery.cancel_scope.cancel()
    assert await totals(db, org) == expect([*before, *during])
    assert not jsonl_files(tmp_path)


async def test_an_outage_leaves_one_file_waiting_not_one_per_round(
    db: Database, proxied: Database, proxy: PgProxy, tmp_path: Path
) -> None:
    org = await new_org(db)
    meter = UsageMeter(proxied, tmp_path, write_timeout_s=2)
    proxy.cut()
    sent = []
    for _ in range(4):
        sent.append(event(org))
        meter._spill_now(sent[-1:])
        assert await meter.replay() == 0
    assert len(jsonl_files(tmp_path)) <= 2  # the one taken aside, and the spill file
    proxy.restore()
    assert await meter.replay() == 4
    assert await totals(db, org) == expect(sent)


async def test_concurrent_replays_count_once(db: Database, tmp_path: Path) -> None:
    org = await new_org(db)
    meter = UsageMeter(db, tmp_path)
    sent = [event(org, i) for i in range(20)]
    meter._spill_now(sent)
    results: list[int] = []

    async def replay() -> None:
        results.append(await meter.replay())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(replay)
        nursery.start_soon(replay)
    assert max(results) == 20
    assert meter.statistics().replayed == 20
    assert await totals(db, org) == expect(sent)


async def test_damaged_lines_are_set_aside_and_the_others_written(db: Database, tmp_path: Path) -> None:
    org = await new_org(db)
    meter = UsageMeter(db, tmp_path)
    first, after = event(org, 1), [event(org, i) for i in range(3)]
    cut_short = event(org, 9).to_json()[:40]
    meter._spill_now([first])
    with (tmp_path / "spill.jsonl").open("a") as f:
        f.write("{not json}\n" + cut_short)  # a damaged line, then one a crash cut short (no newline)
    meter._spill_now(after)  # appended after the cut: must not run on from it
    assert await meter.replay() == 4
    assert await totals(db, org) == expect([first, *after])
    assert spill_lines(tmp_path, "damaged.jsonl") == ["{not json}", cut_short]
    assert meter.statistics().damaged == 2
    assert not (tmp_path / "spill.jsonl").exists()


async def test_a_refused_event_is_set_aside_and_its_batch_written(db: Database, tmp_path: Path) -> None:
    org = await new_org(db)
    meter = UsageMeter(db, tmp_path, flush_s=0.05)
    good = [event(org, i) for i in range(4)]
    orphan = event(uuid.uuid4())  # an organization that is not there
    async with trio.open_nursery() as nursery:
        await nursery.start(meter.run)
        for e in [*good[:2], orphan, *good[2:]]:
            meter.record(e)
        assert await meter.flush()
        assert await totals(db, org) == expect(good)  # at once, not at the next replay
        nursery.cancel_scope.cancel()
    stats = meter.statistics()
    assert (stats.written, stats.refused, stats.spilled) == (4, 1, 0)
    assert [json.loads(line)["request_id"] for line in spill_lines(tmp_path, "refused.jsonl")] == [orphan.request_id]


async def test_an_event_json_cannot_hold_is_still_written(db: Database, tmp_path: Path) -> None:
    org = await new_org(db)
    meter = UsageMeter(db, tmp_path, flush_s=0.01)
    odd = event(org, request_data={"stop": {"a"}, "when": datetime(2026, 1, 1, tzinfo=UTC)})
    async with trio.open_nursery() as nursery:
        await nursery.start(meter.run)
        meter.record(odd)
        assert await meter.flush()
        nursery.cancel_scope.cancel()
    assert await totals(db, org) == expect([odd])
    assert meter.statistics().spilled == 0


async def test_a_full_buffer_spills_at_once(db: Database, tmp_path: Path) -> None:
    org = await new_org(db)
    meter = UsageMeter(db, tmp_path, buffer_size=3)
    sent = [event(org, i) for i in range(5)]
    for e in sent:  # the meter is not running: nothing takes from the buffer
        meter.record(e)
    assert meter.buffered() == 3
    assert [json.loads(line)["request_id"] for line in spill_lines(tmp_path)] == [e.request_id for e in sent[3:]]
    async with trio.open_nursery() as nursery:
        await nursery.start(meter.run)
        assert await meter.flush()
        await meter.replay()
        nursery.cancel_scope.cancel()
    assert await totals(db, org) == expect(sent)


async def test_cancelled_while_gathering_a_batch_spills_it(db: Database, tmp_path: Path) -> None:
    org = await new_org(db)
    meter = UsageMeter(db, tmp_path, flush_s=60)
    sent = [event(org, i) for i in range(3)]
    async with trio.open_nursery() as nursery:
        await nursery.start(meter.run)
        for e in sent:
            meter.record(e)
        await trio.testing.wait_all_tasks_blocked()
        assert meter.buffered() == 0  # taken into the batch being gathered
        nursery.cancel_scope.cancel()
    assert sorted(json.loads(line)["request_id"] for line in spill_lines(tmp_path)) == sorted(
        e.request_id for e in sent
    )


async def test_drain_writes_the_buffer_within_its_grace(db: Database, tmp_path: Path) -> None:
    org = await new_org(db)
    meter = UsageMeter(db, tmp_path, flush_s=0.01, batch_size=10)
    sent = [event(org, i) for i in range(45)]
    async with trio.open_nursery() as nursery:
        await nursery.start(meter.run)
        for e in sent:
            meter.record(e)
        with trio.fail_after(5):
            await meter.drain(5)
        late = event(org, 99)
        meter.record(late)  # after the drain: spilled at once
        nursery.cancel_scope.cancel()
    assert await totals(db, org) == expect(sent)
    assert [json.loads(line)["request_id"] for line in spill_lines(tmp_path)] == [late.request_id]


async def test_drain_keeps_its_deadline_when_postgres_hangs(
    db: Database, proxied: Database, proxy: PgProxy, tmp_path: Path
) -> None:
    org = await new_org(db)
    meter = UsageMeter(proxied, tmp_path, flush_s=0.01, batch_size=5, write_timeout_s=30)
    sent = [event(org, i) for i in range(12)]
    async with trio.open_nursery() as nursery:
        await nursery.start(meter.run)
        await trio.sleep(0.2)  # the first replay round is done
        proxy.hang()
        for e in sent:
            meter.record(e)
        await trio.sleep(0.1)  # a write is under way, and hangs
        started = trio.current_time()
        await meter.drain(0.5)
        assert trio.current_time() - started < 1.5
        nursery.cancel_scope.cancel()  # what the service does once the drain returns
    spilled = [json.loads(line)["request_id"] for line in spill_lines(tmp_path)]
    assert sorted(spilled) == sorted(e.request_id for e in sent)  # the batch in flight included
    proxy.cut()  # the hung connections go
    proxy.restore()
    async with open_database(proxy.dsn(), max_size=1) as again:
        assert await UsageMeter(again, tmp_path).replay() == 12
    assert await totals(db, org) == expect(sent)


async def test_drain_spills_the_buffer_of_a_meter_that_is_not_running(db: Database, tmp_path: Path) -> None:
    org = await new_org(db)
    meter = UsageMeter(db, tmp_path)
    sent = [event(org, i) for i in range(3)]
    for e in sent:
        meter.record(e)
    await meter.drain(0.1)
    assert len(spill_lines(tmp_path)) == 3
    assert await UsageMeter(db, tmp_path).replay() == 3  # the next start
    assert await totals(db, org) == expect(sent)


async def test_concurrent_batches_over_the_same_buckets_do_not_deadlock(db: Database) -> None:
    orgs = [await new_org(db) for _ in range(6)]
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    sent: list[UsageEvent] = []

    async def batch(order: list[uuid.UUID]) -> None:
        events = [event(org, i, created_at=hour + timedelta(minutes=i)) for i in range(3) for org in order]
        sent.extend(events)
        await record_batch(db, events)

    for round_ in range(8):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(batch, orgs if round_ % 2 else orgs[::-1])
            nursery.start_soon(batch, orgs[::-1] if round_ % 2 else orgs)
    for org in orgs:
        assert await totals(db, org) == expect([e for e in sent if e.org_id == org])
