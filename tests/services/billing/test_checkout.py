"""Stripe Checkout and Billing Portal sessions (services/billing/checkout.py) over the local Stripe server
(tests/stripe_server.py, which checks their parameters as Stripe does): a subscription-mode session for the
plan's price and the organization's customer, no quantity for a metered price, the plan changed only by the
subscription's webhook event once the customer has paid, then no second Checkout; the refusals; a Billing
Portal session; the audit log; Stripe's errors classified."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

from bitnet_actor.services import audit
from bitnet_actor.services.billing import plans, webhooks
from bitnet_actor.services.billing.checkout import StripeCheckout, _stripe_page
from bitnet_actor.services.billing.stripe import StripeBilling
from bitnet_actor.services.errors import ConflictStateError, PaymentProviderError, ValidationError
from tests.stripe_server import StripeServer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from bitnet_actor.stores.postgres import Database

ACTOR = audit.Actor(user_id=None, ip="192.0.2.7", user_agent="checkout-tests")
SUCCESS = "https://portal.example/portal/orgs/o/billing?checkout=success"
CANCEL = "https://portal.example/portal/orgs/o/billing?checkout=canceled"


@pytest.fixture
def server() -> Iterator[StripeServer]:
    with StripeServer() as s:
        yield s


def checkout(db: Database, server: StripeServer) -> StripeCheckout:
    return StripeCheckout(db, StripeBilling(server.api_key, api_base=server.url, timeout_s=5))


async def new_org(db: Database) -> uuid.UUID:
    org: uuid.UUID = await db.fetchval(
        "INSERT INTO organizations (name) VALUES ($1) RETURNING id", f"c-{uuid.uuid4().hex[:8]}"
    )
    return org


async def paid_plan(db: Database, server: StripeServer, *, metered: bool = False) -> tuple[str, str]:
    price = server.create_price(unit_amount=4900, metered=metered)
    name = f"paid-{uuid.uuid4().hex[:6]}"
    await plans.upsert_plan(db, name, {"display_name": f"Paid {name}", "stripe_price_id": price})
    return name, price


async def actions(db: Database, org: uuid.UUID) -> list[tuple[str, dict[str, object]]]:
    return [(e.action, e.details) for e in await audit.list_entries(db, org)]


async def test_a_checkout_session_subscribes_the_organizations_customer_to_the_plans_price(
    db: Database, server: StripeServer
) -> None:
    org = await new_org(db)
    name, price = await paid_plan(db, server)
    service = checkout(db, server)
    offered = await service.options(org)
    assert offered.current_plan == "free" and not offered.subscribed
    assert name in [p.name for p in offered.plans] and "free" not in [p.name for p in offered.plans]

    page = await service.start_checkout(org, name, success_url=SUCCESS, cancel_url=CANCEL, actor=ACTOR)
    assert page.url == f"https://checkout.stripe.com/c/pay/{page.id}"
    customer = await db.fetchval("SELECT stripe_customer_id FROM org_billing WHERE org_id = $1", org)
    session = server.checkout_sessions[page.id]
    assert session["customer"] == customer and session["mode"] == "subscription"
    assert session["_line_items"] == [{"price": price, "quantity": "1"}]
    assert (session["success_url"], session["cancel_url"]) == (SUCCESS, CANCEL)
    assert session["client_reference_id"] == str(org)
    assert session["metadata"] == {"org_id": str(org), "plan": name}
    assert session["_subscription_data"] == {"metadata": {"org_id": str(org), "plan": name}}
    assert (await actions(db, org))[0] == ("billing.checkout_started", {"plan": name, "session": page.id})
    # Creating the session changed nothing: the plan waits for Stripe's word that the customer paid.
    assert (await plans.org_profile(db, org)).plan.name == "free"

    subscription = server.complete_checkout(page.id)
    event = json.loads(server.event("customer.subscription.created", subscription))
    applied = await webhooks.apply_event(db, event, grace_days=7)
    assert applied.effect == f"plan {name}"
    assert (await plans.org_profile(db, org)).plan.name == name
    after = await service.options(org)
    assert after.subscribed and after.plans == ()
    other, _ = await paid_plan(db, server)
    with pytest.raises(ConflictStateError, match="billing portal"):
        await service.start_checkout(org, other, success_url=SUCCESS, cancel_url=CANCEL, actor=ACTOR)
    assert len(server.checkout_sessions) == 1


async def test_a_metered_price_is_checked_out_without_a_quantity(db: Database, server: StripeServer) -> None:
    org = await new_org(db)
    name, price = await paid_plan(db, server, metered=True)
    page = await checkout(db, server).start_checkout(org, name, success_url=SUCCESS, cancel_url=CANCEL, actor=ACTOR)
    assert server.checkout_sessions[page.id]["_line_items"] == [{"price": price}]


async def test_refusals_name_the_plan(db: Database, server: StripeServer) -> None:
    org = await new_org(db)
    service = checkout(db, server)
    unpriced = f"local-{uuid.uuid4().hex[:6]}"
    await plans.upsert_plan(db, unpriced, {"display_name": "Local only"})
    for plan_name, message in ((f"nope-{uuid.uuid4().hex[:6]}", "there is no plan"), (unpriced, "not sold")):
        with pytest.raises(ValidationError, match=message) as refused:
            await service.start_checkout(org, plan_name, success_url=SUCCESS, cancel_url=CANCEL, actor=ACTOR)
        assert refused.value.field == "plan"
    name, _ = await paid_plan(db, server)
    await plans.set_org_plan(db, org, name)  # an operator's doing, no subscription
    with pytest.raises(ConflictStateError, match="already"):
        await service.start_checkout(org, name, success_url=SUCCESS, cancel_url=CANCEL, actor=ACTOR)
    assert name not in [p.name for p in (await service.options(org)).plans]
    assert server.checkout_sessions == {} and server.customers == {}  # refused before Stripe was asked


async def test_a_billing_portal_session_for_the_customer(db: Database, server: StripeServer) -> None:
    org = await new_org(db)
    back = "https://portal.example/portal/orgs/o/billing"
    page = await checkout(db, server).open_portal(org, return_url=back, actor=ACTOR)
    assert page.url.startswith("https://billing.stripe.com/p/session/")
    customer = await db.fetchval("SELECT stripe_customer_id FROM org_billing WHERE org_id = $1", org)
    session = server.portal_sessions[page.id]
    assert (session["customer"], session["return_url"]) == (customer, back)
    assert list(server.customers) == [customer]
    assert (await actions(db, org))[0] == ("billing.portal_opened", {"session": page.id})


async def test_stripes_errors_arrive_classified(db: Database, server: StripeServer) -> None:
    org = await new_org(db)
    name, _ = await paid_plan(db, server)
    service = checkout(db, server)
    server.down("503")
    with pytest.raises(PaymentProviderError) as unavailable:
        await service.open_portal(org, return_url=SUCCESS, actor=ACTOR)
    assert unavailable.value.retryable
    server.up()
    server.prices.clear()  # the plan's price is gone on Stripe's side
    with pytest.raises(PaymentProviderError) as refused:
        await service.start_checkout(org, name, success_url=SUCCESS, cancel_url=CANCEL, actor=ACTOR)
    assert not refused.value.retryable and refused.value.status == 404
    assert [a for a, _ in await actions(db, org)] == []  # nothing was started


def test_only_an_https_page_is_followed() -> None:
    assert _stripe_page(SimpleNamespace(id="cs_1", url="https://checkout.stripe.com/c/pay/cs_1"), "x").id == "cs_1"
    for url in ("http://checkout.stripe.com/x", "javascript:alert(1)", "", None, "https:///nohost"):
        with pytest.raises(PaymentProviderError):
            _stripe_page(SimpleNamespace(id="cs_1", url=url), "x")
