"""The billing outbox against a real PostgreSQL (as the service role, row-level security on) and the local
Stripe server: ended hours frozen with stable identifiers and sent once, retried with backoff after Stripe
was down or an answer was lost, two outboxes racing without sending a row twice, the sum of the meter events
equal to the ledger's tokens, rows past Stripe's 35-day window skipped, refusals skipped, and the payment
grace sweep."""

from __future__ import annotations

import logging
import re
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
import trio

from actors.outbox import BillingOutbox
from bitnet_actor.services.billing.ledger import UsageEvent, record_batch
from bitnet_actor.services.billing.stripe import StripeBilling
from bitnet_actor.stores import app_dsn
from bitnet_actor.stores.migrate import migrate
from bitnet_actor.stores.postgres import Database, open_database
from tests.stripe_server import StripeServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path


@pytest.fixture
def server() -> Iterator[StripeServer]:
    with StripeServer() as s:
        yield s


class Dbs:
    def __init__(self, owner: Database, app: Database, dsn: str) -> None:
        self.owner, self.app, self.dsn = owner, app, dsn


@pytest.fixture
async def dbs(fresh_dsn: str) -> AsyncIterator[Dbs]:
    """A database of this test's own (no other test's outbox rows), migrated; the service role's pool."""
    async with open_database(fresh_dsn, max_size=2) as owner:
        await migrate(owner)
        async with open_database(app_dsn(fresh_dsn, "bitnet_app"), max_size=4) as app:
            yield Dbs(owner, app, fresh_dsn)


def outbox(db: Database, server: StripeServer, **kw: object) -> BillingOutbox:
    stripe = StripeBilling(server.api_key, api_base=server.url, timeout_s=5)
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    return BillingOutbox(db, stripe, **kw)  # type: ignore[arg-type]


async def new_org(dbs: Dbs, plan: str = "free") -> uuid.UUID:
    org: uuid.UUID = await dbs.owner.fetchval(
        "INSERT INTO organizations (name, plan) VALUES ($1, $2) RETURNING id", f"o-{uuid.uuid4().hex[:8]}", plan
    )
    return org


def hour(n: int) -> datetime:
    """A moment ``n`` hours before this hour started (n=0: now)."""
    now = datetime.now(UTC)
    if n == 0:
        return now
    return now.replace(minute=7, second=0, microsecond=0) - timedelta(hours=n)


async def use(dbs: Dbs, org: uuid.UUID, when: datetime, inp: int, out: int) -> None:
    event = UsageEvent(
        request_id=f"req-{uuid.uuid4().hex}",
        org_id=org,
        model="m",
        input_tokens=inp,
        output_tokens=out,
        latency_ms=1,
        outcome="completed",
        created_at=when,
    )
    assert await record_batch(dbs.app, [event]) == 1


async def ledger(dbs: Dbs, org: uuid.UUID, before: datetime) -> tuple[int, int]:
    row = await dbs.owner.fetchrow(
        "SELECT coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0) FROM usage_events"
        " WHERE org_id = $1 AND created_at < $2",
        org,
        before,
    )
    assert row is not None
    return int(row[0]), int(row[1])


async def customer_of(dbs: Dbs, org: uuid.UUID) -> str:
    found: str = await dbs.owner.fetchval("SELECT stripe_customer_id FROM org_billing WHERE org_id = $1", org)
    return found


def this_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


async def drain(box: BillingOutbox, rounds: int = 50) -> None:
    for _ in range(rounds):
        await box.run_once()
        if await box.pending() == await open_rows(box.db):  # every frozen row accepted
            return
        await trio.sleep(0.02)
    raise AssertionError("the outbox did not drain")


async def open_rows(db: Database) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM billing_outbox WHERE state = 'open'")
    return count


async def test_ended_hours_reach_stripe_once_with_the_ledgers_tokens(dbs: Dbs, server: StripeServer) -> None:
    a, b = await new_org(dbs), await new_org(dbs)
    for org, n in ((a, 1), (a, 1), (a, 3), (b, 2)):
        await use(dbs, org, hour(n), 100 * n, 7 * n)
    await use(dbs, a, hour(0), 5, 5)  # this hour is not over: it stays open
    pending: list[int] = []
    box = outbox(dbs.app, server, on_pending=pending.append)
    first = await box.run_once()
    assert (first.frozen, first.sent, first.retried, first.skipped) == (6, 6, 0, 0)
    assert pending == [2] and first.pending == 2  # this hour's two meters
    for org in (a, b):
        customer = await customer_of(dbs, org)
        inp, out = await ledger(dbs, org, this_hour())
        assert server.meter_total("bitnet_input_tokens", customer) == inp
        assert server.meter_total("bitnet_output_tokens", customer) == out
    assert inp > 0 and out > 0
    rows = await dbs.owner.fetch("SELECT id, org_id, meter, bucket_start, identifier, state FROM billing_outbox")
    for row in rows:
        if row["state"] == "open":
            assert row["identifier"] is None and row["bucket_start"] == this_hour()
            continue
        stamp = row["bucket_start"].astimezone(UTC).strftime("%Y-%m-%dT%HZ")
        assert row["identifier"] == f"{row['org_id']}:{row['meter']}:{stamp}:{row['id']}"
        assert row["state"] == "sent"
    sent = [e["identifier"] for e in server.meter_events]
    assert sorted(sent) == sorted(r["identifier"] for r in rows if r["state"] == "sent")
    assert all(
        e["timestamp"]
        == int(datetime.strptime(e["identifier"].split(":")[2], "%Y-%m-%dT%HZ").replace(tzinfo=UTC).timestamp())
        for e in server.meter_events
    )
    again = await box.run_once()
    assert (again.frozen, again.sent) == (0, 0)
    assert len(server.meter_events) == 6


@pytest.mark.parametrize("mode", ["refuse", "503"])
async def test_a_stripe_outage_is_retried_with_the_same_identifiers_and_counted_once(
    dbs: Dbs, server: StripeServer, mode: str
) -> None:
    org = await new_org(dbs)
    for n in (1, 2):
        await use(dbs, org, hour(n), 40 * n, 3 * n)
    box = outbox(dbs.app, server, backoff_s=0.2, backoff_max_s=1.0)
    server.down(mode)
    down = await box.run_once()
    assert (down.frozen, down.sent, down.retried) == (4, 0, 1)  # one probe, then the round stops
    assert down.pending == 4
    row = await dbs.owner.fetchrow(
        "SELECT attempts, last_error, next_attempt_at > now() AS later FROM billing_outbox WHERE attempts > 0"
    )
    assert row is not None and row["attempts"] == 1 and row["later"] and "Stripe" in row["last_error"]
    frozen = {r[0] for r in await dbs.owner.fetch("SELECT identifier FROM billing_outbox")}
    assert (await box.run_once()).retried == 1  # still down: another row probes
    server.up()
    await trio.sleep(0.3)  # the backoff of the rows that failed
    await drain(box)
    assert await box.pending() == 0
    assert {r[0] for r in await dbs.owner.fetch("SELECT identifier FROM billing_outbox")} == frozen
    counted = Counter(e["identifier"] for e in server.meter_events)
    assert set(counted) == frozen and set(counted.values()) == {1}
    customer = await customer_of(dbs, org)
    assert (
        server.meter_total("bitnet_input_tokens", customer),
        server.meter_total("bitnet_output_tokens", customer),
    ) == (await ledger(dbs, org, this_hour()))


async def test_an_answer_lost_after_stripe_counted_is_not_counted_twice(dbs: Dbs, server: StripeServer) -> None:
    org = await new_org(dbs)
    await use(dbs, org, hour(1), 123, 45)
    box = outbox(dbs.app, server)
    await box.stripe.ensure_customer(dbs.app, org)
    server.lose_responses = 2  # both meter events are carried out, and neither answer arrives
    assert (await box.run_once()).retried == 1
    await drain(box)
    assert len(server.meter_events) == 2  # the retries were replays of the same Idempotency-Key
    assert sum(1 for r in server.requests if r[1] == "/v1/billing/meter_events") >= 3
    customer = await customer_of(dbs, org)
    assert server.meter_total("bitnet_input_tokens", customer) == 123
    assert server.meter_total("bitnet_output_tokens", customer) == 45


async def test_after_the_idempotency_key_expired_the_identifier_still_counts_once(
    dbs: Dbs, server: StripeServer
) -> None:
    org = await new_org(dbs)
    await use(dbs, org, hour(1), 10, 0)
    box = outbox(dbs.app, server)
    server.lose_responses = 2  # the customer, then the meter event: carried out, unanswered
    await drain(box)
    assert len(server.meter_events) == 1
    server._idempotency.clear()
    await dbs.owner.execute("UPDATE billing_outbox SET state = 'sending'")  # as if we never heard back
    result = await box.run_once()
    assert (result.sent, result.known) == (0, 1)  # Stripe knew the identifier: sent, not counted again
    assert server.meter_total("bitnet_input_tokens") == 10


async def test_two_outboxes_racing_send_each_row_once(dbs: Dbs, server: StripeServer) -> None:
    orgs = [await new_org(dbs) for _ in range(3)]
    for org in orgs:
        for n in (1, 2, 3):
            await use(dbs, org, hour(n), 11 * n, 2 * n)
    server.meter_delay_s = 0.02  # both are in flight at once
    async with open_database(app_dsn(dbs.dsn, "bitnet_app"), max_size=4) as other:
        boxes = [outbox(dbs.app, server), outbox(other, server)]
        for _ in range(30):
            async with trio.open_nursery() as nursery:
                for box in boxes:
                    nursery.start_soon(box.run_once)
            if await boxes[0].pending() == 0:
                break
    assert await boxes[0].pending() == 0
    by_each = [box.statistics().sent for box in boxes]
    assert sum(by_each) == 18 and min(by_each) > 0  # both worked, on different rows
    sends = Counter(r[2]["identifier"] for r in server.requests if r[1] == "/v1/billing/meter_events")
    assert len(sends) == 18 and set(sends.values()) == {1}  # no row was sent twice, not even refused
    for org in orgs:
        customer = await customer_of(dbs, org)
        inp, out = await ledger(dbs, org, this_hour())
        assert server.meter_total("bitnet_input_tokens", customer) == inp == 66
        assert server.meter_total("bitnet_output_tokens", customer) == out
    assert len(server.customers) == 3


async def test_usage_arriving_after_its_hour_froze_is_sent_under_a_new_identifier(
    dbs: Dbs, server: StripeServer
) -> None:
    org = await new_org(dbs)
    when = hour(1)
    await use(dbs, org, when, 50, 5)
    box = outbox(dbs.app, server)
    assert (await box.run_once()).sent == 2
    await use(dbs, org, when, 7, 0)  # late: a replayed spill file, a slow replica
    late = await box.run_once()
    assert (late.frozen, late.sent) == (1, 1)
    ids = [e["identifier"] for e in server.meter_events if e["event_name"] == "bitnet_input_tokens"]
    assert len(ids) == 2 and len(set(ids)) == 2 and {i.rsplit(":", 1)[0] for i in ids} == {ids[0].rsplit(":", 1)[0]}
    assert server.meter_total("bitnet_input_tokens") == 57


async def test_rows_past_stripes_window_and_refused_rows_are_skipped_and_logged(
    dbs: Dbs, server: StripeServer, caplog: pytest.LogCaptureFixture
) -> None:
    old, gone, fine = await new_org(dbs), await new_org(dbs), await new_org(dbs)
    await use(dbs, old, datetime.now(UTC) - timedelta(days=36), 9, 9)
    await use(dbs, gone, hour(1), 8, 0)
    await use(dbs, fine, hour(1), 7, 0)
    await dbs.owner.execute("INSERT INTO org_billing (org_id, stripe_customer_id) VALUES ($1, 'cus_deleted')", gone)
    box = outbox(dbs.app, server)
    with caplog.at_level(logging.ERROR, logger="actors.outbox"):
        result = await box.run_once()
    assert (result.frozen, result.sent, result.skipped, result.pending) == (4, 1, 3, 0)
    states = {
        (r["org_id"], r["state"]): r["last_error"]
        for r in await dbs.owner.fetch("SELECT org_id, state, last_error FROM billing_outbox")
    }
    assert "35 days" in states[old, "skipped"] and "No such customer" in states[gone, "skipped"]
    assert (fine, "sent") in states
    assert server.meter_total("bitnet_input_tokens") == 7
    assert any("older than Stripe's 35 days window" in r.getMessage() for r in caplog.records)
    assert any(re.search("refused by Stripe.*No such customer", r.getMessage()) for r in caplog.records)


async def test_the_grace_sweep_moves_organizations_past_their_grace_to_free(dbs: Dbs, server: StripeServer) -> None:
    late, waiting = await new_org(dbs, "pro"), await new_org(dbs, "pro")
    await dbs.owner.execute(
        "INSERT INTO org_billing (org_id, payment_failed_at, grace_until) VALUES"
        " ($1, now() - interval '8 days', now() - interval '1 day'), ($2, now(), now() + interval '7 days')",
        late,
        waiting,
    )
    changed: list[uuid.UUID] = []
    box = outbox(dbs.app, server, on_plan_changed=changed.append)
    assert (await box.run_once()).downgraded == 1
    assert changed == [late]
    plans = dict(await dbs.owner.fetch("SELECT id, plan FROM organizations WHERE id = ANY($1)", [late, waiting]))
    assert plans == {late: "free", waiting: "pro"}
    grace = await dbs.owner.fetchval("SELECT grace_until FROM org_billing WHERE org_id = $1", late)
    assert grace is None
    assert (await box.run_once()).downgraded == 0


async def test_a_paid_plans_subscription_is_made_along_the_way(dbs: Dbs, server: StripeServer) -> None:
    price = server.create_price()
    await dbs.owner.execute("UPDATE plans SET stripe_price_id = $1 WHERE name = 'pro'", price)
    org = await new_org(dbs, "pro")
    await use(dbs, org, hour(1), 5, 5)
    await outbox(dbs.app, server).run_once()
    sub = await dbs.owner.fetchval("SELECT stripe_subscription_id FROM org_billing WHERE org_id = $1", org)
    assert sub in server.subscriptions
    assert server.subscriptions[sub]["items"]["data"][0]["price"]["id"] == price


async def test_the_actor_runs_rounds_until_cancelled(dbs: Dbs, server: StripeServer) -> None:
    org = await new_org(dbs)
    await use(dbs, org, hour(2), 3, 4)
    pending: list[int] = []
    three = trio.Event()

    def counted(n: int) -> None:
        pending.append(n)
        if len(pending) == 3:
            three.set()

    box = outbox(dbs.app, server, interval_s=0.05, on_pending=counted)
    async with trio.open_nursery() as nursery:
        await nursery.start(box.run)
        with trio.fail_after(10):
            await three.wait()
        nursery.cancel_scope.cancel()
    assert box.statistics().sent == 2 and pending[-1] == 0
    assert server.meter_total("bitnet_output_tokens") == 4


async def test_the_system_builds_it_only_with_a_stripe_key_and_feeds_the_gauge(
    dbs: Dbs, server: StripeServer, tmp_path: Path
) -> None:
    from actors.tenant import Tenants
    from bitnet_actor.config import Settings
    from bitnet_actor.observability import Metrics
    from bitnet_actor.system import billing_outbox

    metrics = Metrics()
    stores = SimpleNamespace(db=dbs.app)
    tenants = Tenants(dbs.app)
    local = Settings(data_dir=tmp_path)
    assert billing_outbox(local, stores, metrics, tenants) is None  # type: ignore[arg-type]
    configured = Settings(
        data_dir=tmp_path, stripe_api_key=server.api_key, stripe_api_base=server.url, stripe_webhook_secret="whsec_x"
    )
    box = billing_outbox(configured, stores, metrics, tenants)  # type: ignore[arg-type]
    assert box is not None
    org = await new_org(dbs)
    await use(dbs, org, hour(0), 4, 4)
    await box.run_once()
    assert b"bitnet_billing_outbox_pending 2.0" in metrics.render()
    await use(dbs, org, hour(1), 1, 1)
    await box.run_once()
    assert b"bitnet_billing_outbox_pending 2.0" in metrics.render()  # the ended hour went, this one waits
    assert server.meter_total("bitnet_input_tokens") == 1
