"""Billing: the plan and its prices, this month's tokens against the quota (an SVG gauge), the invoices, each
linking to its printable page (``GET /api/v1/orgs/<org>/invoices/<id>.html``), and, when Stripe is
configured, paying on Stripe's pages.

Read through the billing services with ``billing:read``, as the API's billing routes; the month's figures are
its invoice draft, recomputed from the ledger as the API's invoice routes do.

With a Stripe key, members with ``billing:manage`` (owners and billing members, as ``POST
/api/v1/orgs/<org>/billing/checkout`` and ``/billing/portal``) get an "Upgrade" button per paid plan on offer
and "Manage billing": each a POST form that makes its session through
:class:`~bitnet_actor.services.billing.checkout.StripeCheckout` and answers with a 303 to Stripe's page. The
page lists Stripe's Checkout and Billing Portal origins in its ``form-action`` (browsers hold the redirect
of a form to it); should Stripe answer with another host, a page with a link to it is shown instead. Stripe
comes back to this page with ``?checkout=success`` or ``?checkout=canceled``. Without a Stripe key the
buttons are not shown and their routes are 404s.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from quart import request, url_for

from bitnet_actor.api.auth import handles
from bitnet_actor.api.errors import service_error
from bitnet_actor.services.billing import invoices, plans
from bitnet_actor.services.billing.checkout import STRIPE_PAGE_ORIGINS
from bitnet_actor.services.errors import ConflictStateError, PaymentProviderError, ValidationError
from portal.charts import gauge
from portal.errors import PortalError
from portal.forms import FormState, read_form
from portal.security import allow_form_targets
from portal.tenancy import OrgPage, org_page
from portal.web import blueprint, redirect_to, render

if TYPE_CHECKING:
    from quart import Response

    from bitnet_actor.services.billing.checkout import StripeCheckout, StripePage

__all__: list[str] = []

_RETURNS: Final = {
    "success": ("success", "Thank you. The plan changes as soon as Stripe confirms the payment."),
    "canceled": ("info", "Checkout was canceled; nothing changed."),
}


async def _billing(page: OrgPage, state: FormState, *, status: int = 200) -> Response:
    db = handles().stores.db
    profile = await plans.org_profile(db, page.org.id)
    found = await invoices.list_invoices(db, page.org.id)
    now = datetime.now(UTC)
    current = next((i for i in found if i.period == date(now.year, now.month, 1)), None)
    used = (current.input_tokens + current.output_tokens) if current else 0
    quota = None
    if profile.monthly_token_quota:
        quota = gauge("Tokens this month", used, profile.monthly_token_quota)
    checkout = handles().checkout
    options = None
    if checkout is not None and page.can("billing:manage"):
        options = await checkout.options(page.org.id)
        allow_form_targets(*STRIPE_PAGE_ORIGINS)
    return await render(
        "portal/org/billing.html",
        status=status,
        page=page,
        profile=profile,
        plan=profile.plan,
        invoices=found,
        used=used,
        quota=quota,
        stripe=checkout is not None,
        options=options,
        state=state,
        returned=_RETURNS.get(request.args.get("checkout", "")),
    )


@blueprint.get("/orgs/<uuid:org_id>/billing")
@org_page("billing:read")
async def billing(page: OrgPage) -> Response:
    """Plan, quota and invoices (and Stripe's pages, for those who manage billing)."""
    return await _billing(page, FormState())


def _checkout_service() -> StripeCheckout:
    found = handles().checkout
    if found is None:
        raise PortalError(404, "This server bills locally: there is no payment provider to go to.")
    return found


def _billing_url(page: OrgPage, query: str = "") -> str:
    return handles().settings.base_url + url_for("portal.billing", org_id=page.org.id) + query


async def _to_stripe(page: OrgPage, stripe_page: StripePage) -> Response:
    parts = urlsplit(stripe_page.url)
    if f"{parts.scheme}://{parts.netloc}" in STRIPE_PAGE_ORIGINS:
        return redirect_to(stripe_page.url)
    # Another host (a custom domain): the billing page's form-action does not cover it, a link does.
    return await render(
        "portal/leave.html",
        page=page,
        title="Continue to Stripe",
        text="Payments are made on Stripe's pages.",
        url=stripe_page.url,
        label="Continue to Stripe",
    )


async def _refused(
    page: OrgPage, form: dict[str, str], exc: ValidationError | ConflictStateError | PaymentProviderError
) -> Response:
    """The billing page again, saying why (Stripe down: 503; Stripe refusing: 502; the request: its 4xx)."""
    state = FormState.refused(form, exc)
    status = service_error(exc).status
    if isinstance(exc, PaymentProviderError) and exc.retryable:
        state.message = "Stripe could not be reached; try again in a moment."
    return await _billing(page, state, status=status)


@blueprint.post("/orgs/<uuid:org_id>/billing/checkout")
@org_page("billing:manage")
async def billing_checkout(page: OrgPage) -> Response:
    """Subscribe to a paid plan on Stripe Checkout."""
    service = _checkout_service()
    form = await read_form()
    try:
        stripe_page = await service.start_checkout(
            page.org.id,
            form.get("plan", ""),
            success_url=_billing_url(page, "?checkout=success"),
            cancel_url=_billing_url(page, "?checkout=canceled"),
            actor=page.actor,
        )
    except (ValidationError, ConflictStateError, PaymentProviderError) as exc:
        return await _refused(page, dict(form), exc)
    return await _to_stripe(page, stripe_page)


@blueprint.post("/orgs/<uuid:org_id>/billing/portal")
@org_page("billing:manage")
async def billing_portal(page: OrgPage) -> Response:
    """Manage payment methods, invoices and the subscription on Stripe's Billing Portal."""
    service = _checkout_service()
    try:
        stripe_page = await service.open_portal(page.org.id, return_url=_billing_url(page), actor=page.actor)
    except PaymentProviderError as exc:
        return await _refused(page, {}, exc)
    return await _to_stripe(page, stripe_page)
