"""Usage in the ledger for the portal's tests: events written the way the usage meter writes them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from bitnet_actor.services.billing.ledger import UsageEvent, record_batch
from bitnet_actor.stores.postgres import Database


def today_at(hour: int, days_ago: int = 0) -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, hour, tzinfo=UTC) - timedelta(days=days_ago)


async def record(
    db: Database,
    org_id: str,
    *,
    model: str,
    at: datetime,
    input_tokens: int = 100,
    output_tokens: int = 50,
    outcome: str = "completed",
    key_id: str | None = None,
    n: int = 1,
) -> None:
    events = [
        UsageEvent(
            request_id=f"chatcmpl-{uuid.uuid4().hex}",
            org_id=uuid.UUID(org_id),
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=5,
            outcome=outcome,
            api_key_id=uuid.UUID(key_id) if key_id else None,
            created_at=at,
        )
        for _ in range(n)
    ]
    assert await record_batch(db, events, outbox=False) == n
