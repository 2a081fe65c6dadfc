"""Monthly invoices on real PostgreSQL: totals equal the ledger (summed from usage_events, not the rollups),
the rounding rule, drafts that follow the ledger, finalization (idempotent, past months only) and the
trigger that keeps a finalized invoice as it is."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

import pytest

from bitnet_actor.errors import ConflictError, QueryError
from bitnet_actor.services.billing import invoices, plans
from bitnet_actor.services.billing.ledger import UsageEvent, record_batch
from bitnet_actor.services.billing.plans import ModelPrice, Plan
from bitnet_actor.services.billing.usage import MonthUsage
from bitnet_actor.services.errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from bitnet_actor.stores.postgres import Database

FEB = date(2024, 2, 1)


async def new_org(db: Database, plan: str = "free") -> uuid.UUID:
    async with db.transaction() as tx:
        org: uuid.UUID = await tx.fetchval(
            "INSERT INTO organizations (name, plan) VALUES ($1, $2) RETURNING id", f"i-{uuid.uuid4().hex[:8]}", plan
        )
    return org


def event(org: uuid.UUID, at: datetime, model: str, i: int, o: int) -> UsageEvent:
    return UsageEvent(
        request_id=uuid.uuid4().hex, org_id=org, model=model, input_tokens=i, output_tokens=o, latency_ms=1,
        outcome="completed", created_at=at, api_key_id=uuid.uuid4(),
    )  # fmt: skip


async def priced_plan(db: Database, **extra: object) -> Plan:
    return await plans.upsert_plan(
        db,
        f"p-{uuid.uuid4().hex[:8]}",
        {
            "display_name": "Test",
            "input_price_per_m": "12.3457",
            "output_price_per_m": "40",
            "monthly_fee_cents": 1999,
            "model_prices": {"cheap": {"input_price_per_m": "0.5", "output_price_per_m": "1.0001"}},
            **extra,
        },
    )


def half_up(tokens: int, per_m: Decimal) -> int:
    return int((Decimal(tokens) * per_m / Decimal(10**6)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_rounding_is_half_up_per_line() -> None:
    plan = Plan(
        name="r", display_name="R", rpm=None, tpm=None, key_rpm=None, key_tpm=None, key_concurrency=None,
        monthly_token_quota=None, quota_mode="hard", input_price_per_m=Decimal(500_000),
        output_price_per_m=Decimal("0.4999"), monthly_fee_cents=0, weight=1, max_running=1,
        model_prices={"x": ModelPrice(Decimal(1_500_000), Decimal(0))},
    )  # fmt: skip
    lines = invoices.compute_lines(
        plan, [MonthUsage("a", input_tokens=5, output_tokens=1_000_000, requests=1), MonthUsage("x", 1, 0, 1)]
    )
    # 5 x 0.5 cents = 2.5 -> 3 (half-up, not half-even's 2); 0.4999 cents -> 0; 1.5 cents -> 2. No zero-token line.
    assert [(ln.kind, ln.model, ln.amount_cents) for ln in lines] == [
        ("input_tokens", "a", 3),
        ("output_tokens", "a", 0),
        ("input_tokens", "x", 2),
    ]
    assert [ln.line_no for ln in lines] == [1, 2, 3]
    assert invoices.line_cents(1, Decimal("0.5")) == 0  # 0.0000005 cents
    assert invoices.line_cents(10**6, Decimal("0.5")) == 1  # exactly half a cent -> 1


async def test_invoice_totals_equal_the_ledger(db: Database) -> None:
    org = await new_org(db)
    plan = await priced_plan(db)
    await plans.set_org_plan(db, org, plan.name)
    start = datetime(2024, 2, 1, tzinfo=UTC)
    events = [
        event(org, start - timedelta(microseconds=1), "big", 10**9, 10**9),  # January's
        event(org, start, "big", 123_457, 99_999),  # the first instant of February
        event(org, start + timedelta(days=10, hours=3), "big", 1, 7),
        event(org, start + timedelta(days=28, hours=23, minutes=59, seconds=59), "cheap", 1_000_001, 333_333),
        event(org, start + timedelta(days=29), "big", 10**9, 10**9),  # March's
        event(org, start + timedelta(days=15), "cheap", 999, 1),
    ]
    assert await record_batch(db, events) == len(events)
    invoice = await invoices.invoice_for_period(db, org, FEB)
    # The ledger itself, summed from the events (not from the rollups the invoice reads).
    rows = await db.fetch(
        "SELECT model, sum(input_tokens) AS i, sum(output_tokens) AS o, count(*) AS n FROM usage_events"
        " WHERE org_id = $1 AND created_at >= $2 AND created_at < $3 GROUP BY model",
        org,
        start,
        datetime(2024, 3, 1, tzinfo=UTC),
    )
    expected = plan.monthly_fee_cents
    for r in rows:
        price = plan.price(r["model"])
        expected += half_up(int(r["i"]), price.input_per_m) + half_up(int(r["o"]), price.output_per_m)
    assert invoice.total_cents == invoice.subtotal_cents == expected
    assert invoice.total_cents == sum(ln.amount_cents for ln in invoice.lines)
    assert invoice.input_tokens == sum(int(r["i"]) for r in rows) == 123_457 + 1 + 1_000_001 + 999
    assert invoice.output_tokens == sum(int(r["o"]) for r in rows)
    assert invoice.requests == 4
    assert invoice.status == "draft" and invoice.plan == plan.name
    assert [(ln.kind, ln.model, ln.quantity) for ln in invoice.lines] == [
        ("base_fee", "", 1),
        ("input_tokens", "big", 123_458),
        ("output_tokens", "big", 100_006),
        ("input_tokens", "cheap", 1_001_000),
        ("output_tokens", "cheap", 333_334),
    ]
    assert invoice.lines[0].amount_cents == 1999
    assert invoice.lines[1].unit_price_per_m == Decimal("12.3457")  # the default price
    assert invoice.lines[3].unit_price_per_m == Decimal("0.5")  # the model's own price
    assert invoice.lines[1].amount_cents == 2  # 123458 x 12.3457 / 1e6 = 1.524... -> 2


async def test_overage_is_billed_on_the_token_lines(db: Database) -> None:
    org = await new_org(db)
    plan = await priced_plan(db, monthly_token_quota=1000, quota_mode="overage", monthly_fee_cents=0)
    await plans.set_org_plan(db, org, plan.name)
    await record_batch(db, [event(org, datetime(2024, 2, 3, tzinfo=UTC), "big", 1_000_000, 0)])
    invoice = await invoices.invoice_for_period(db, org, FEB)
    assert [(ln.quantity, ln.amount_cents) for ln in invoice.lines] == [(1_000_000, 12)]  # past the quota too


async def test_finalized_invoices_never_change(db: Database) -> None:
    org = await new_org(db)
    plan = await priced_plan(db)
    await plans.set_org_plan(db, org, plan.name)
    await record_batch(db, [event(org, datetime(2024, 2, 5, tzinfo=UTC), "big", 2_000_000, 10)])
    draft = await invoices.invoice_for_period(db, org, FEB)
    await record_batch(db, [event(org, datetime(2024, 2, 6, tzinfo=UTC), "big", 1_000_000, 0)])  # late event
    final = await invoices.finalize_invoice(db, org, FEB)
    assert final.id == draft.id
    assert final.status == "finalized" and final.finalized_at is not None
    assert final.input_tokens == 3_000_000  # recomputed once more when finalized
    # Usage arriving later changes nothing; finalizing again returns the same invoice.
    await record_batch(db, [event(org, datetime(2024, 2, 7, tzinfo=UTC), "big", 5_000_000, 0)])
    again = await invoices.finalize_invoice(db, org, FEB)
    assert again == final
    assert await invoices.invoice_for_period(db, org, FEB) == final
    assert await invoices.get_invoice(db, org, final.id) == final
    # The trigger refuses any change, even from the tables' owner.
    for statement in (
        "UPDATE invoices SET total_cents = 0 WHERE id = $1",
        "DELETE FROM invoices WHERE id = $1",
        "UPDATE invoice_lines SET amount_cents = 0 WHERE invoice_id = $1",
        "DELETE FROM invoice_lines WHERE invoice_id = $1",
        "INSERT INTO invoice_lines (invoice_id, line_no, org_id, kind, description, quantity, amount_cents)"
        " SELECT id, 99, org_id, 'base_fee', 'x', 1, 1 FROM invoices WHERE id = $1",
    ):
        with pytest.raises((ConflictError, QueryError), match="finalized"):
            async with db.transaction(org_id=org) as tx:
                await tx.execute(statement, final.id)
    assert await invoices.get_invoice(db, org, final.id) == final


async def test_only_a_month_that_is_over_can_be_finalized(db: Database) -> None:
    org = await new_org(db)
    now = datetime(2024, 2, 29, 23, 0, tzinfo=UTC)
    with pytest.raises(ValidationError) as caught:
        await invoices.finalize_invoice(db, org, FEB, now=now)
    assert caught.value.field == "period"
    with pytest.raises(ValidationError):
        await invoices.finalize_invoice(db, org, date(2024, 3, 1), now=now)
    final = await invoices.finalize_invoice(db, org, FEB, now=datetime(2024, 3, 1, tzinfo=UTC))
    assert final.status == "finalized" and final.total_cents == 0 and final.lines == ()  # free plan, no usage


async def test_drafts_follow_the_ledger_and_the_list_has_the_current_month(db: Database) -> None:
    org = await new_org(db)
    plan = await priced_plan(db)
    await plans.set_org_plan(db, org, plan.name)
    now = datetime.now(UTC)
    await record_batch(db, [event(org, now - timedelta(seconds=5), "big", 10**6, 0)])
    await record_batch(db, [event(org, datetime(2023, 11, 20, tzinfo=UTC), "big", 10**6, 0)])
    listed = await invoices.list_invoices(db, org)
    current = date(now.year, now.month, 1)
    assert listed[0].period == current
    assert date(2023, 11, 1) in {i.period for i in listed}  # a month with usage and no invoice yet
    live = listed[0]
    assert live.status == "draft" and live.input_tokens == 10**6
    await record_batch(db, [event(org, now, "big", 10**6, 0)])
    again = await invoices.get_invoice(db, org, live.id)
    assert again.id == live.id and again.input_tokens == 2 * 10**6
    assert again.total_cents == 1999 + half_up(2 * 10**6, Decimal("12.3457"))
    other = await new_org(db)
    with pytest.raises(NotFoundError):
        await invoices.get_invoice(db, other, live.id)  # another tenant's invoice


@pytest.mark.parametrize("bad", ["2024-13", "2024-2", "24-02", "2024-02-01", "", "1969-12"])
def test_periods_are_year_and_month(bad: str) -> None:
    with pytest.raises(ValidationError):
        invoices.parse_period(bad)


def test_period_bounds_cross_the_year() -> None:
    start, end = invoices.period_bounds(date(2024, 12, 1))
    assert (start, end) == (datetime(2024, 12, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))
