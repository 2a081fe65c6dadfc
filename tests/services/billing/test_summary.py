"""The dashboard's period summary (services/billing/summary.py) on real PostgreSQL: per day and model, errors
counted as the ledger counts them, only the organization's own rows."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from bitnet_actor.services.billing.ledger import UsageEvent, record_batch
from bitnet_actor.services.billing.summary import DayUsage, period_summary
from tests.services.billing.test_invoices import new_org

if TYPE_CHECKING:
    from bitnet_actor.stores.postgres import Database


def event(org: uuid.UUID, at: datetime, model: str, outcome: str = "completed") -> UsageEvent:
    return UsageEvent(
        request_id=uuid.uuid4().hex, org_id=org, model=model, input_tokens=10, output_tokens=5, latency_ms=1,
        outcome=outcome, created_at=at,
    )  # fmt: skip


async def test_period_summary(db: Database) -> None:
    org, other = await new_org(db), await new_org(db)
    events = [
        event(org, datetime(2024, 3, 1, 5, tzinfo=UTC), "a"),
        event(org, datetime(2024, 3, 1, 23, 59, tzinfo=UTC), "a", "failed"),
        event(org, datetime(2024, 3, 1, 12, tzinfo=UTC), "b", "cancelled"),  # a client that left: not an error
        event(org, datetime(2024, 3, 3, 0, tzinfo=UTC), "a", "timeout"),
        event(org, datetime(2024, 4, 1, 0, tzinfo=UTC), "a"),  # the next month
        event(other, datetime(2024, 3, 1, 5, tzinfo=UTC), "a"),
    ]
    assert await record_batch(db, events, outbox=False) == len(events)
    s = await period_summary(db, org, datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC))
    assert s.days == (
        DayUsage(date(2024, 3, 1), "a", 2, 20, 10, 1),
        DayUsage(date(2024, 3, 1), "b", 1, 10, 5, 0),
        DayUsage(date(2024, 3, 3), "a", 1, 10, 5, 1),
    )
    assert (s.requests, s.input_tokens, s.output_tokens, s.errors) == (4, 40, 20, 2)
    assert s.models == ("a", "b")
    calendar = s.calendar()
    assert len(calendar) == 31 and calendar[0] == date(2024, 3, 1) and calendar[-1] == date(2024, 3, 31)
    empty = await period_summary(db, org, datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 1, 2, tzinfo=UTC))
    assert empty.days == () and empty.calendar() == (date(2023, 1, 1),)
