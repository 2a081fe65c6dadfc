"""Paying through Stripe's own pages: Checkout (a subscription to a paid plan) and the Billing Portal (payment
methods, invoices, cancelling), for the portal's billing page and ``POST /api/v1/orgs/<org>/billing/...``.

- :meth:`StripeCheckout.options`: what an organization may do now. The paid plans are those with a
  ``stripe_price_id``; an organization with a live subscription changes it in the Billing Portal rather than
  starting a second one, so it is offered no Checkout.
- :meth:`StripeCheckout.start_checkout`: a Checkout Session in ``subscription`` mode for the plan's price,
  for the organization's Stripe customer (created on the way, once: :meth:`StripeBilling.ensure_customer`),
  with the organization in ``client_reference_id`` and the metadata of the session and of the subscription
  it makes. Nothing changes here when the session is created: the plan follows the subscription's webhook
  events (:mod:`.webhooks`), once the customer has paid.
- :meth:`StripeCheckout.open_portal`: a Billing Portal session for the customer.

Both return the Stripe-hosted URL to send the browser to (an ``https`` URL, or :class:`PaymentProviderError`)
and write the audit log (``billing.checkout_started``, ``billing.portal_opened``). Who may call them is the
caller's check: ``billing:manage`` (owners and billing members), as for every billing change. Stripe's errors
arrive classified (:func:`.stripe.classify`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from bitnet_actor.services import audit
from bitnet_actor.services.billing import plans
from bitnet_actor.services.errors import ConflictStateError, NotFoundError, PaymentProviderError, ValidationError

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.services.billing.stripe import StripeBilling
    from bitnet_actor.stores.postgres import Database

__all__ = ["STRIPE_PAGE_ORIGINS", "BillingOptions", "StripeCheckout", "StripePage"]

STRIPE_PAGE_ORIGINS: Final = ("https://checkout.stripe.com", "https://billing.stripe.com")
"""Where Stripe hosts Checkout and the Billing Portal (a page that posts to them lists them in its
Content-Security-Policy's ``form-action``)."""
_ENDED: Final = ("canceled", "incomplete_expired")


@dataclass(frozen=True, slots=True)
class StripePage:
    """A Stripe-hosted page made for one visit: its object id and the URL to send the browser to."""

    id: str
    url: str


@dataclass(frozen=True, slots=True)
class BillingOptions:
    """What an organization may do through Stripe now."""

    current_plan: str
    subscribed: bool
    """A live Stripe subscription: plan changes and cancelling go through the Billing Portal."""
    plans: tuple[plans.Plan, ...]
    """The paid plans it may check out (none while subscribed; never its current plan)."""


def _stripe_page(obj: Any, kind: str) -> StripePage:
    url = str(getattr(obj, "url", "") or "")
    if urlsplit(url).scheme != "https" or not urlsplit(url).hostname:
        raise PaymentProviderError(f"Stripe answered a {kind} without an https URL", retryable=False)
    return StripePage(id=str(obj.id), url=url)


class StripeCheckout:
    """Checkout and Billing Portal sessions for organizations (see the module docstring).

    Args:
        db: organizations, plans and their billing rows, the audit log.
        stripe: the Stripe client (its worker threads, timeout and error classes).
    """

    def __init__(self, db: Database, stripe: StripeBilling) -> None:
        self._db = db
        self._stripe = stripe

    async def _state(self, org_id: UUID) -> tuple[str, bool]:
        async with self._db.transaction(org_id=org_id, readonly=True) as tx:
            row = await tx.fetchrow(
                "SELECT o.plan, b.stripe_subscription_id, b.subscription_status FROM organizations o"
                " LEFT JOIN org_billing b ON b.org_id = o.id WHERE o.id = $1",
                org_id,
            )
        if row is None:
            raise NotFoundError("no such organization")
        live = bool(row["stripe_subscription_id"]) and row["subscription_status"] not in _ENDED
        return str(row["plan"]), live

    async def options(self, org_id: UUID) -> BillingOptions:
        """The organization's plan, whether it has a live subscription, and the paid plans it may check out."""
        current, subscribed = await self._state(org_id)
        offered = () if subscribed else tuple(
            p for p in await plans.list_plans(self._db) if p.stripe_price_id and p.name != current
        )  # fmt: skip
        return BillingOptions(current_plan=current, subscribed=subscribed, plans=offered)

    async def start_checkout(
        self, org_id: UUID, plan_name: str, *, success_url: str, cancel_url: str, actor: audit.Actor
    ) -> StripePage:
        """A Checkout Session subscribing ``org_id`` to the paid plan ``plan_name``.

        Raises:
            ValidationError: no such plan, or one without a Stripe price (``field`` ``plan``).
            ConflictStateError: already on that plan, or subscribed (change it in the Billing Portal).
            PaymentProviderError: Stripe refused or could not be reached.
        """
        try:
            plan = await plans.get_plan(self._db, plan_name)
        except NotFoundError:
            raise ValidationError(f"there is no plan {plan_name!r}", field="plan") from None
        if not plan.stripe_price_id:
            raise ValidationError(f"the {plan.display_name} plan is not sold through Stripe", field="plan")
        current, subscribed = await self._state(org_id)
        if subscribed:
            raise ConflictStateError(
                "the organization has a subscription already: change its plan in the billing portal"
            )
        if current == plan.name:
            raise ConflictStateError(f"the organization is on the {plan.display_name} plan already")
        customer = await self._stripe.ensure_customer(self._db, org_id)
        client = self._stripe.client
        price = await self._stripe.call(partial(client.v1.prices.retrieve, plan.stripe_price_id))
        recurring = getattr(price, "recurring", None)
        item: dict[str, Any] = {"price": plan.stripe_price_id}
        if getattr(recurring, "usage_type", None) != "metered":
            item["quantity"] = 1  # Stripe wants a quantity for licensed prices and refuses one for metered
        metadata = {"org_id": str(org_id), "plan": plan.name}
        params: Any = {
            "mode": "subscription",
            "customer": customer,
            "line_items": [item],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "client_reference_id": str(org_id),
            "metadata": metadata,
            "subscription_data": {"metadata": metadata},
        }
        session = await self._stripe.call(partial(client.v1.checkout.sessions.create, params=params))
        page = _stripe_page(session, "Checkout Session")
        await self._audit(org_id, actor, "billing.checkout_started", {"plan": plan.name, "session": page.id})
        return page

    async def open_portal(self, org_id: UUID, *, return_url: str, actor: audit.Actor) -> StripePage:
        """A Billing Portal session for ``org_id``'s Stripe customer (created when it has none).

        Raises:
            PaymentProviderError: Stripe refused or could not be reached.
        """
        customer = await self._stripe.ensure_customer(self._db, org_id)
        session = await self._stripe.call(
            partial(
                self._stripe.client.v1.billing_portal.sessions.create,
                params={"customer": customer, "return_url": return_url},
            )
        )
        page = _stripe_page(session, "Billing Portal session")
        await self._audit(org_id, actor, "billing.portal_opened", {"session": page.id})
        return page

    async def _audit(self, org_id: UUID, actor: audit.Actor, action: str, details: dict[str, Any]) -> None:
        async with self._db.transaction(org_id=org_id) as tx:
            await audit.record(
                tx, org_id=org_id, actor=actor, action=action, target_type="organization", target_id=org_id,
                details=details,
            )  # fmt: skip
