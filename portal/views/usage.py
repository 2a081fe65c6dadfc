"""Usage: tokens and requests per day, model and API key, filtered, and exported as CSV.

The rows are the answer of the usage API's own query (:func:`bitnet_actor.services.billing.usage
.query_usage`, what ``GET /api/v1/orgs/<org>/usage/completions`` runs): daily buckets of the ledger's
rollups grouped by model and key, so a page costs the same however many requests the ledger holds, and
the figures match the invoices. ``billing:read`` opens it (as the API); key names are shown to roles that
may read keys, others see key ids.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Final
from uuid import UUID

from quart import Response, request

from bitnet_actor.api.auth import handles
from bitnet_actor.services import api_keys
from bitnet_actor.services.billing import usage
from bitnet_actor.services.errors import ValidationError
from portal.forms import day_start, optional_date
from portal.tenancy import OrgPage, org_page
from portal.views.audit import csv_cell
from portal.web import blueprint, render

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["MAX_DAYS", "UsageFilters", "UsageRow", "usage_rows"]

MAX_DAYS: Final = 366
DEFAULT_DAYS: Final = 7


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One day x model x key of usage."""

    day: date
    model: str
    api_key_id: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int


@dataclass(frozen=True, slots=True)
class UsageFilters:
    """Whole UTC days [first, last], and optionally one model and one key."""

    first: date
    last: date
    model: str
    key: UUID | None

    @classmethod
    def parse(cls, args: Mapping[str, str], *, today: date | None = None) -> UsageFilters:
        """The filters of a query string (default: the last seven days, today included).

        Raises:
            ValidationError: a malformed filter, an inverted range or one longer than ``MAX_DAYS``.
        """
        today = today or datetime.now(UTC).date()
        last = optional_date(args, "to") or today
        first = optional_date(args, "from") or last - timedelta(days=DEFAULT_DAYS - 1)
        if last < first:
            raise ValidationError("the end date is before the start date", field="to")
        if (last - first).days >= MAX_DAYS:
            raise ValidationError(f"choose at most {MAX_DAYS} days", field="from")
        raw_key = args.get("key", "").strip()
        try:
            key = UUID(raw_key) if raw_key else None
        except ValueError:
            raise ValidationError("key must be an API key id", field="key") from None
        return cls(first, last, args.get("model", "").strip()[:300], key)

    def args(self) -> dict[str, str]:
        """The filters as query-string values."""
        out = {"from": self.first.isoformat(), "to": self.last.isoformat(), "model": self.model}
        if self.key:
            out["key"] = str(self.key)
        return {k: v for k, v in out.items() if v}


async def usage_rows(org_id: UUID, filters: UsageFilters) -> list[UsageRow]:
    """The usage of ``org_id`` matching ``filters``, by day, then model, then key (every page of the query)."""
    base: dict[str, list[str]] = {
        "start_time": [str(int(day_start(filters.first).timestamp()))],
        "end_time": [str(int(day_start(filters.last + timedelta(days=1)).timestamp()))],
        "bucket_width": ["1d"],
        "group_by": ["model,api_key_id"],
        "limit": ["31"],
    }
    if filters.model:
        base["models"] = [filters.model]
    if filters.key:
        base["api_key_ids"] = [str(filters.key)]
    rows: list[UsageRow] = []
    cursor: str | None = None
    for _ in range(MAX_DAYS // 31 + 2):  # pages of 31 days
        query = usage.parse_usage_query({**base, "page": [cursor]} if cursor else base)
        answer = await usage.query_usage(handles().stores.db, org_id, query)
        for bucket in answer["data"]:
            day = datetime.fromtimestamp(bucket["start_time"], UTC).date()
            for r in bucket["results"]:
                rows.append(
                    UsageRow(day, r["model"], r["api_key_id"], r["num_model_requests"], r["input_tokens"],
                             r["output_tokens"], r["input_cached_tokens"])
                )  # fmt: skip
        cursor = answer["next_page"]
        if cursor is None:
            break
    return rows


async def _key_names(page: OrgPage) -> dict[str, str]:
    if not page.can("keys:read"):
        return {}
    return {
        str(k.id): f"{k.name} ({k.prefix}…{k.last4})"
        for k in await api_keys.list_keys(handles().stores.db, page.org.id)
    }


@blueprint.get("/orgs/<uuid:org_id>/usage")
@org_page("billing:read")
async def usage_page(page: OrgPage) -> Response:
    """The usage table with its filters and totals."""
    names = await _key_names(page)
    try:
        filters = UsageFilters.parse(request.args)
    except ValidationError as exc:
        return await render(
            "portal/org/usage.html", status=400, page=page, filters=None, error=exc, rows=[], names=names,
            args=request.args, totals=None,
        )  # fmt: skip
    rows = await usage_rows(page.org.id, filters)
    totals = {
        "requests": sum(r.requests for r in rows),
        "input_tokens": sum(r.input_tokens for r in rows),
        "output_tokens": sum(r.output_tokens for r in rows),
        "cached_tokens": sum(r.cached_tokens for r in rows),
    }
    return await render(
        "portal/org/usage.html", page=page, filters=filters, error=None, rows=rows, names=names,
        args=request.args, totals=totals,
    )  # fmt: skip


@blueprint.get("/orgs/<uuid:org_id>/usage.csv")
@org_page("billing:read")
async def usage_csv(page: OrgPage) -> Response:
    """The same rows as CSV."""
    filters = UsageFilters.parse(request.args)
    rows = await usage_rows(page.org.id, filters)
    names = await _key_names(page)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["day", "model", "api_key_id", "api_key", "requests", "input_tokens", "output_tokens", "cached_tokens"]
    )
    for r in rows:
        writer.writerow(
            [csv_cell(v) for v in (r.day.isoformat(), r.model, r.api_key_id or "", names.get(r.api_key_id or "", ""),
                                   r.requests, r.input_tokens, r.output_tokens, r.cached_tokens)]
        )  # fmt: skip
    name = f"usage-{page.org.id}-{filters.first}-{filters.last}.csv"
    return Response(
        out.getvalue(),
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
