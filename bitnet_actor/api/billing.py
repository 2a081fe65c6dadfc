"""Usage, costs and invoices under ``/api/v1/orgs/<org>/``, readable with the ``billing:read`` permission.

- ``GET usage/completions`` and ``GET costs``: OpenAI's usage and costs APIs (pages of time buckets), read
  from the ledger's rollups (:mod:`bitnet_actor.services.billing.usage` says how buckets, paging and prices
  work); a malformed parameter is a 400 naming it.
- ``GET invoices``, ``GET invoices/<id>`` and ``GET invoices/<id>.html``: monthly invoices
  (:mod:`bitnet_actor.services.billing.invoices`), the current month's as a draft computed on the fly; the
  ``.html`` form is a printable page rendered here (everything escaped, no script).
- ``POST billing/checkout`` (``{"plan": name}``) and ``POST billing/portal``: a Stripe Checkout Session for a
  paid plan and a Stripe Billing Portal session (:mod:`bitnet_actor.services.billing.checkout`), with
  ``billing:manage`` (owners and billing members, signed in: API keys carry no such scope); the answer's
  ``url`` is Stripe's page, which comes back to the portal's billing page. Without a Stripe key: 404
  ``stripe_not_configured``; Stripe down: 503, Stripe refusing: 502.

``<org>`` is an organization's id or ``current`` (see :mod:`bitnet_actor.api.auth`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, jsonify, request

from bitnet_actor.api.auth import OrgRef, handles, org_access
from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.invoice_page import HTML_HEADERS, render_invoice
from bitnet_actor.api.validate import Field, parse_body
from bitnet_actor.services import tenancy
from bitnet_actor.services.billing import invoices, plans, usage

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.services.billing.checkout import StripeCheckout

__all__ = ["blueprint"]

blueprint = Blueprint("api_v1_billing", __name__, url_prefix="/api/v1")


def _query_args() -> dict[str, list[str]]:
    """The query string as name -> values; ``name[]`` (how some clients send arrays) counts as ``name``."""
    out: dict[str, list[str]] = {}
    for key in request.args:
        out.setdefault(key.removesuffix("[]"), []).extend(request.args.getlist(key))
    return out


def _json(value: Any) -> Response:
    return jsonify(value)


@blueprint.get("/orgs/<org:org_id>/usage/completions")
async def usage_completions(org_id: OrgRef) -> Response:
    """Completions usage per time bucket (OpenAI's ``/organization/usage/completions``)."""
    access = await org_access(org_id, "billing:read")
    query = usage.parse_usage_query(_query_args())
    return _json(await usage.query_usage(handles().stores.db, access.org_id, query))


@blueprint.get("/orgs/<org:org_id>/costs")
async def costs(org_id: OrgRef) -> Response:
    """Costs per day at the organization's plan prices (OpenAI's ``/organization/costs``)."""
    access = await org_access(org_id, "billing:read")
    query = usage.parse_cost_query(_query_args())
    db = handles().stores.db
    plan = (await plans.org_profile(db, access.org_id)).plan
    return _json(await usage.query_costs(db, access.org_id, plan, query))


@blueprint.get("/orgs/<org:org_id>/invoices")
async def list_invoices(org_id: OrgRef) -> Response:
    """Every invoice, newest month first; the current month's is a draft computed now."""
    access = await org_access(org_id, "billing:read")
    found = await invoices.list_invoices(handles().stores.db, access.org_id)
    return _json({"object": "list", "data": [i.to_json() for i in found]})


@blueprint.get("/orgs/<org:org_id>/invoices/<uuid:invoice_id>")
async def get_invoice(org_id: OrgRef, invoice_id: UUID) -> Response:
    """One invoice as JSON."""
    access = await org_access(org_id, "billing:read")
    invoice = await invoices.get_invoice(handles().stores.db, access.org_id, invoice_id)
    return _json(invoice.to_json())


@blueprint.get("/orgs/<org:org_id>/invoices/<uuid:invoice_id>.html")
async def invoice_page(org_id: OrgRef, invoice_id: UUID) -> Response:
    """One invoice as a printable HTML page."""
    access = await org_access(org_id, "billing:read")
    db = handles().stores.db
    invoice = await invoices.get_invoice(db, access.org_id, invoice_id)
    org = await tenancy.get_org(db, access.org_id)
    return Response(render_invoice(invoice, org_name=org.name), status=200, headers=HTML_HEADERS)


def stripe_checkout() -> StripeCheckout:
    """The Checkout service, or a 404 when billing runs locally (no Stripe key)."""
    found = handles().checkout
    if found is None:
        raise ApiError(
            404, "Stripe billing is not configured on this server (billing runs locally)", code="stripe_not_configured"
        )
    return found


def billing_page_url(org_id: UUID, query: str = "") -> str:
    """The absolute URL of the portal's billing page of ``org_id`` (where Stripe's pages come back to)."""
    return f"{handles().settings.base_url}/portal/orgs/{org_id}/billing{query}"


@blueprint.post("/orgs/<org:org_id>/billing/checkout")
async def checkout_session(org_id: OrgRef) -> Response:
    """A Stripe Checkout Session subscribing the organization to a paid plan (``billing:manage``)."""
    access = await org_access(org_id, "billing:manage")
    service = stripe_checkout()
    body = await parse_body({"plan": Field(str, max_len=63)})
    page = await service.start_checkout(
        access.org_id,
        body["plan"],
        success_url=billing_page_url(access.org_id, "?checkout=success"),
        cancel_url=billing_page_url(access.org_id, "?checkout=canceled"),
        actor=access.actor,
    )
    return _json({"object": "checkout.session", "id": page.id, "url": page.url})


@blueprint.post("/orgs/<org:org_id>/billing/portal")
async def billing_portal_session(org_id: OrgRef) -> Response:
    """A Stripe Billing Portal session for the organization's customer (``billing:manage``)."""
    access = await org_access(org_id, "billing:manage")
    page = await stripe_checkout().open_portal(
        access.org_id, return_url=billing_page_url(access.org_id), actor=access.actor
    )
    return _json({"object": "billing_portal.session", "id": page.id, "url": page.url})
