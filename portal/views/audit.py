"""The audit log: newest first, filtered by action, actor and time, paged, and exported as CSV.

Read through :func:`bitnet_actor.services.audit.list_entries` with ``audit:read`` (as ``GET
/api/v1/orgs/<org>/audit``). Actors are shown by the email of the member (or the name of the key) when the
organization still has them, else by id. CSV cells that a spreadsheet would run as a formula are prefixed
with an apostrophe.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

from quart import Response, request

from bitnet_actor.api.auth import handles
from bitnet_actor.services import api_keys, audit, tenancy
from bitnet_actor.services.errors import ValidationError
from portal.forms import day_start, optional_date, optional_int
from portal.tenancy import OrgPage, org_page
from portal.web import blueprint, render

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["AuditFilters", "csv_cell", "parse_filters"]

PAGE_SIZE: Final = 50
CSV_MAX_ROWS: Final = 50_000
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class AuditFilters:
    """The page's filters, checked: an action, a user id, [since, until) from whole UTC days, a page cursor."""

    def __init__(self, args: Mapping[str, str]) -> None:
        self.action = args.get("action", "").strip()[:100] or None
        raw_actor = args.get("actor", "").strip()
        try:
            self.actor = UUID(raw_actor) if raw_actor else None
        except ValueError:
            raise ValidationError("actor must be one of the listed people", field="actor") from None
        self.since_day = optional_date(args, "from")
        self.until_day = optional_date(args, "to")
        self.before = optional_int(args, "before")
        if self.since_day and self.until_day and self.until_day < self.since_day:
            raise ValidationError("the end date is before the start date", field="to")

    def query(self) -> dict[str, Any]:
        """The keyword arguments of ``audit.list_entries``."""
        return {
            "action": self.action,
            "actor_user_id": self.actor,
            "since": day_start(self.since_day) if self.since_day else None,
            "until": day_start(self.until_day) + timedelta(days=1) if self.until_day else None,
        }

    def args(self) -> dict[str, str]:
        """The filters as query-string values (for links to other pages and the export)."""
        out = {
            "action": self.action or "",
            "actor": str(self.actor) if self.actor else "",
            "from": self.since_day.isoformat() if self.since_day else "",
            "to": self.until_day.isoformat() if self.until_day else "",
        }
        return {k: v for k, v in out.items() if v}


def parse_filters(args: Mapping[str, str]) -> AuditFilters:
    """The filters of a request's query string.

    Raises:
        ValidationError: a malformed filter (``field`` names it).
    """
    return AuditFilters(args)


def csv_cell(value: object) -> str:
    """``value`` as a CSV cell that no spreadsheet runs as a formula."""
    text = "" if value is None else value if isinstance(value, str) else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


async def _names(page: OrgPage) -> tuple[dict[UUID, str], dict[UUID, str]]:
    db = handles().stores.db
    people = {m.user_id: m.email for m in await tenancy.list_members(db, page.org.id)}
    keys = {k.id: f"{k.name} ({k.prefix}…{k.last4})" for k in await api_keys.list_keys(db, page.org.id)}
    return people, keys


@blueprint.get("/orgs/<uuid:org_id>/audit")
@org_page("audit:read")
async def audit_log(page: OrgPage) -> Response:
    """One page of the log with its filters."""
    db = handles().stores.db
    people, keys = await _names(page)
    actions = await audit.list_actions(db, page.org.id)
    try:
        filters = parse_filters(request.args)
    except ValidationError as exc:
        return await render(
            "portal/org/audit.html", status=400, page=page, entries=[], filters=None, error=exc, actions=actions,
            people=people, keys=keys, older=None, args=request.args,
        )  # fmt: skip
    entries = await audit.list_entries(
        db, page.org.id, limit=PAGE_SIZE + 1, before_seq=filters.before, **filters.query()
    )
    older = entries[PAGE_SIZE - 1].seq if len(entries) > PAGE_SIZE else None
    return await render(
        "portal/org/audit.html",
        page=page,
        entries=entries[:PAGE_SIZE],
        filters=filters,
        error=None,
        actions=actions,
        people=people,
        keys=keys,
        older=older,
        args=request.args,
    )


@blueprint.get("/orgs/<uuid:org_id>/audit.csv")
@org_page("audit:read")
async def audit_csv(page: OrgPage) -> Response:
    """Every entry matching the filters (up to ``CSV_MAX_ROWS``), newest first, as CSV."""
    db = handles().stores.db
    filters = parse_filters(request.args)
    people, keys = await _names(page)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["seq", "created_at", "action", "actor_user_id", "actor_email", "actor_key_id", "actor_key",
         "target_type", "target_id", "ip", "user_agent", "details", "hash"]
    )  # fmt: skip
    before = filters.before
    written = 0
    while written < CSV_MAX_ROWS:
        batch = await audit.list_entries(db, page.org.id, limit=500, before_seq=before, **filters.query())
        for e in batch:
            writer.writerow(
                [csv_cell(v) for v in (
                    e.seq, e.created_at.isoformat(), e.action, e.actor_user_id, people.get(e.actor_user_id, "")
                    if e.actor_user_id else "", e.actor_key_id, keys.get(e.actor_key_id, "") if e.actor_key_id else "",
                    e.target_type, e.target_id, e.ip, e.user_agent, json.dumps(e.details, sort_keys=True), e.hash,
                )]
            )  # fmt: skip
        written += len(batch)
        if len(batch) < 500:
            break
        before = batch[-1].seq
    name = f"audit-{page.org.id}.csv"
    return Response(
        out.getvalue(),
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
