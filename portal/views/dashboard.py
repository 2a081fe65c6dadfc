"""An organization's dashboard: this billing period's requests, tokens, spend and errors, and a chart per
model of its tokens per day.

The figures come from the ledger's daily rollups through the billing services (the period's invoice draft
for the spend, :func:`bitnet_actor.services.billing.summary.period_summary` for the rest), so they match the
usage API and the invoice to the token. They need ``billing:read``, as the usage API does; other roles see
the organization's keys and where to go instead.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from bitnet_actor.api.auth import handles
from bitnet_actor.services import api_keys
from bitnet_actor.services.billing import invoices, summary
from portal.charts import daily_bars
from portal.tenancy import OrgPage, org_page
from portal.web import blueprint, render

if TYPE_CHECKING:
    from quart import Response

    from portal.charts import BarChart

__all__ = ["model_charts"]


def model_charts(period: summary.PeriodSummary) -> list[tuple[str, BarChart]]:
    """One chart per model (alphabetically): its input + output tokens on each day of the period."""
    days = period.calendar()
    out = []
    for model in period.models:
        values: dict[date, int] = {}
        for d in period.days:
            if d.model == model:
                values[d.day] = values.get(d.day, 0) + d.input_tokens + d.output_tokens
        out.append((model, daily_bars(f"Tokens per day, {model}", days, values, unit="tokens")))
    return out


@blueprint.get("/orgs/<uuid:org_id>")
@org_page("org:read")
async def dashboard(page: OrgPage) -> Response:
    """The organization at a glance."""
    db = handles().stores.db
    now = datetime.now(UTC)
    month = date(now.year, now.month, 1)
    start, end = invoices.period_bounds(month)
    period = invoice = None
    charts: list[tuple[str, BarChart]] = []
    if page.can("billing:read"):
        period = await summary.period_summary(db, page.org.id, start, end)
        invoice = await invoices.invoice_for_period(db, page.org.id, month)
        charts = model_charts(period)
    active_keys = None
    if page.can("keys:read"):
        active_keys = sum(1 for k in await api_keys.list_keys(db, page.org.id) if k.active)
    return await render(
        "portal/org/dashboard.html",
        page=page,
        month=month,
        period=period,
        invoice=invoice,
        charts=charts,
        active_keys=active_keys,
    )
