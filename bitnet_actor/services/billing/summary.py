"""An organization's usage at a glance, per UTC day and model, read from the ledger's daily rollups.

The portal's dashboard shows these (requests, tokens and errors of the billing period, and a chart per
model); the figures are the same rollups the usage API (:mod:`bitnet_actor.services.billing.usage`) and the
invoices (:mod:`bitnet_actor.services.billing.invoices`) read, so the three always agree. Errors are the
requests whose outcome the ledger counts as one (``ERROR_OUTCOMES``: a client that went away is not).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uuid

    from bitnet_actor.stores.postgres import Database

__all__ = ["DayUsage", "PeriodSummary", "period_summary"]


@dataclass(frozen=True, slots=True)
class DayUsage:
    """One model's usage on one UTC day."""

    day: date
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    errors: int


@dataclass(frozen=True, slots=True)
class PeriodSummary:
    """Totals over [start, end) and the days they come from (only days and models with usage)."""

    start: datetime
    end: datetime
    days: tuple[DayUsage, ...]

    @property
    def requests(self) -> int:
        """Requests in the period."""
        return sum(d.requests for d in self.days)

    @property
    def input_tokens(self) -> int:
        """Input tokens in the period."""
        return sum(d.input_tokens for d in self.days)

    @property
    def output_tokens(self) -> int:
        """Output tokens in the period."""
        return sum(d.output_tokens for d in self.days)

    @property
    def errors(self) -> int:
        """Requests that failed in the period."""
        return sum(d.errors for d in self.days)

    @property
    def models(self) -> tuple[str, ...]:
        """The models with usage, alphabetically."""
        return tuple(sorted({d.model for d in self.days}))

    def calendar(self) -> tuple[date, ...]:
        """Every day of the period, usage or not."""
        first, last = self.start.date(), (self.end - timedelta(microseconds=1)).date()
        return tuple(first + timedelta(days=i) for i in range((last - first).days + 1))


async def period_summary(db: Database, org_id: uuid.UUID, start: datetime, end: datetime) -> PeriodSummary:
    """``org_id``'s usage per day and model over [start, end) (whole UTC days: the daily rollups).

    Args:
        start: the first day's midnight (UTC). end: the midnight after the last day.
    """
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        rows = await tx.fetch(
            "SELECT bucket_start, model, sum(requests)::bigint AS n, sum(input_tokens)::bigint AS i,"
            " sum(output_tokens)::bigint AS o, sum(errors)::bigint AS e FROM usage_rollups"
            " WHERE org_id = $1 AND width = '1d' AND bucket_start >= $2 AND bucket_start < $3"
            " GROUP BY bucket_start, model ORDER BY bucket_start, model",
            org_id,
            start,
            end,
        )
    days = tuple(
        DayUsage(
            r["bucket_start"].astimezone(UTC).date(), r["model"], int(r["n"]), int(r["i"]), int(r["o"]), int(r["e"])
        )
        for r in rows
    )
    return PeriodSummary(start, end, days)
