"""Billing: the plan and its prices, this month's tokens against the quota (an SVG gauge), and the invoices,
each linking to its printable page (``GET /api/v1/orgs/<org>/invoices/<id>.html``).

Read through the billing services with ``billing:read``, as the API's billing routes; the month's figures are
its invoice draft, recomputed from the ledger as the API's invoice routes do.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from bitnet_actor.api.auth import handles
from bitnet_actor.services.billing import invoices, plans
from portal.charts import gauge
from portal.tenancy import OrgPage, org_page
from portal.web import blueprint, render

if TYPE_CHECKING:
    from quart import Response

__all__: list[str] = []


@blueprint.get("/orgs/<uuid:org_id>/billing")
@org_page("billing:read")
async def billing(page: OrgPage) -> Response:
    """Plan, quota and invoices."""
    db = handles().stores.db
    profile = await plans.org_profile(db, page.org.id)
    found = await invoices.list_invoices(db, page.org.id)
    now = datetime.now(UTC)
    current = next((i for i in found if i.period == date(now.year, now.month, 1)), None)
    used = (current.input_tokens + current.output_tokens) if current else 0
    quota = None
    if profile.monthly_token_quota:
        quota = gauge("Tokens this month", used, profile.monthly_token_quota)
    return await render(
        "portal/org/billing.html",
        page=page,
        profile=profile,
        plan=profile.plan,
        invoices=found,
        used=used,
        quota=quota,
        stripe=bool(handles().settings.stripe_api_key),
    )
