"""``POST /api/v1/stripe/webhook`` on the whole app over real PostgreSQL and Redis, with events signed as
Stripe signs them (tests/stripe_server.py) about customers and subscriptions made on the local Stripe server
through the ``stripe`` package: bad signatures refused and nothing changed, a replayed event applied once,
reordered subscription events ending in the newest state, a failed payment's grace period ending on the free
plan after the outbox's sweep, a deleted subscription dropping to free; without a Stripe key, a clear 404."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from actors.outbox import BillingOutbox
from bitnet_actor.config import Settings
from bitnet_actor.services.billing import plans
from bitnet_actor.services.billing.stripe import StripeBilling
from tests.api.conftest import open_harness
from tests.stripe_server import StripeServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from bitnet_actor.stores.postgres import Database
    from tests.api.conftest import Harness

PATH = "/api/v1/stripe/webhook"


@pytest.fixture
def server() -> Iterator[StripeServer]:
    with StripeServer() as s:
        yield s


@pytest.fixture
async def billed(
    aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path, server: StripeServer
) -> AsyncIterator[Harness]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=pg_dsn,
        redis_url=redis_url,
        stripe_api_key=server.api_key,
        stripe_api_base=server.url,
        stripe_webhook_secret=server.webhook_secret,
        payment_grace_days=7,
    )
    async with open_harness(settings) as h:
        yield h


class Org:
    def __init__(self, org_id: uuid.UUID, customer: str, prices: dict[str, str]) -> None:
        self.id, self.customer, self.prices = org_id, customer, prices


async def paying_org(h: Harness, db: Database, server: StripeServer) -> Org:
    """An organization with a Stripe customer, and two paid plans of this test's own with Stripe prices."""
    owner = await h.signup()
    org_id = uuid.UUID(next(iter(owner.orgs.values())))
    customer = await StripeBilling(server.api_key, api_base=server.url).ensure_customer(h.system.stores.db, org_id)
    prices = {}
    for kind in ("basic", "max"):
        price = server.create_price()
        name = f"{kind}-{uuid.uuid4().hex[:6]}"
        await plans.upsert_plan(db, name, {"stripe_price_id": price})
        prices[name] = price
    return Org(org_id, customer, prices)


async def post(h: Harness, body: bytes, signature: str | None) -> Any:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return await h.client.post(PATH, data=body, headers=headers)


async def deliver(h: Harness, server: StripeServer, body: bytes) -> dict[str, Any]:
    r = await post(h, body, server.sign(body))
    assert r.status_code == 200, await r.get_data()
    answer: dict[str, Any] = await r.get_json()
    return answer


def subscription(server: StripeServer, customer: str, price: str, status: str = "active") -> dict[str, Any]:
    sub_id = f"sub_{uuid.uuid4().hex[:12]}"
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "items": {
            "object": "list",
            "data": [{"id": "si_1", "object": "subscription_item", "price": server.prices[price]}],
        },
    }


async def state(db: Database, org_id: uuid.UUID) -> dict[str, Any]:
    row = await db.fetchrow(
        "SELECT o.plan, b.subscription_status, b.stripe_subscription_id, b.grace_until, b.payment_failed_at,"
        " b.subscription_event_at FROM organizations o LEFT JOIN org_billing b ON b.org_id = o.id WHERE o.id = $1",
        org_id,
    )
    assert row is not None
    return dict(row)


async def test_without_a_stripe_key_the_route_says_billing_is_local(harness: Harness) -> None:
    r = await harness.client.post(PATH, data=b"{}", headers={"Stripe-Signature": "t=1,v1=00"})
    assert r.status_code == 404
    body = await r.get_json()
    assert body["error"]["code"] == "stripe_not_configured" and "locally" in body["error"]["message"]


async def test_a_bad_signature_is_400_and_changes_nothing(billed: Harness, db: Database, server: StripeServer) -> None:
    org = await paying_org(billed, db, server)
    body = server.event("invoice.payment_failed", {"object": "invoice", "id": "in_1", "customer": org.customer})
    before = await state(db, org.id)
    events = await db.fetchval("SELECT count(*) FROM stripe_events")
    tampered = body.replace(b'"in_1"', b'"in_2"')
    for signature in (
        None,  # missing
        "",
        "garbage",
        server.sign(body, secret="whsec_someone_else"),  # wrong secret
        server.sign(body, timestamp=int(time.time()) - 3600),  # replayed an hour later
        server.sign(body),  # signed, then the body altered
    ):
        r = await post(billed, tampered if signature == server.sign(body) else body, signature)
        assert r.status_code == 400, (signature, await r.get_data())
        error = (await r.get_json())["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_signature"
    assert await db.fetchval("SELECT count(*) FROM stripe_events") == events
    assert await state(db, org.id) == before
    assert (await deliver(billed, server, body))["effect"] == "grace started"  # the same body, signed: taken


async def test_a_replayed_event_is_applied_once(billed: Harness, db: Database, server: StripeServer) -> None:
    org = await paying_org(billed, db, server)
    failed = server.event("invoice.payment_failed", {"object": "invoice", "customer": org.customer})
    paid = server.event("invoice.paid", {"object": "invoice", "customer": org.customer})
    first = await deliver(billed, server, failed)
    assert (first["duplicate"], first["effect"]) == (False, "grace started")
    grace = (await state(db, org.id))["grace_until"]
    assert grace is not None
    assert (await deliver(billed, server, paid))["effect"] == "grace cleared"
    again = await deliver(billed, server, failed)  # Stripe redelivers (our 200 was lost)
    assert (again["duplicate"], again["effect"]) == (True, "duplicate")
    assert (await state(db, org.id))["grace_until"] is None  # the replay did not restart the grace period
    event_id = json.loads(failed)["id"]
    assert await db.fetchval("SELECT count(*) FROM stripe_events WHERE id = $1", event_id) == 1


async def test_reordered_subscription_events_end_in_the_newest_state(
    billed: Harness, db: Database, server: StripeServer
) -> None:
    org = await paying_org(billed, db, server)
    (basic, basic_price), (top, top_price) = org.prices.items()
    sub = subscription(server, org.customer, basic_price)
    now = int(time.time())
    created = server.event("customer.subscription.created", sub, created=now - 300)
    upgraded = server.event(
        "customer.subscription.updated",
        {**sub, "items": subscription(server, org.customer, top_price)["items"]},
        created=now - 100,
    )
    past_due = server.event("customer.subscription.updated", {**sub, "status": "past_due"}, created=now - 200)
    assert (await deliver(billed, server, upgraded))["effect"] == f"plan {top}"
    assert (await deliver(billed, server, created))["effect"] == "stale"
    assert (await deliver(billed, server, past_due))["effect"] == "stale"
    now_state = await state(db, org.id)
    assert (now_state["plan"], now_state["subscription_status"], now_state["stripe_subscription_id"]) == (
        top,
        "active",
        sub["id"],
    )
    assert int(now_state["subscription_event_at"].timestamp()) == now - 100
    downgraded = server.event("customer.subscription.updated", sub, created=now)
    assert (await deliver(billed, server, downgraded))["effect"] == f"plan {basic}"
    assert (await state(db, org.id))["plan"] == basic
    profile = await billed.system.tenants.profile(org.id)
    assert profile.plan.name == basic  # this replica's cached plan was dropped


async def test_a_deleted_subscription_drops_to_free(billed: Harness, db: Database, server: StripeServer) -> None:
    org = await paying_org(billed, db, server)
    name, price = next(iter(org.prices.items()))
    sub = subscription(server, org.customer, price)
    now = int(time.time())
    await deliver(billed, server, server.event("customer.subscription.created", sub, created=now - 10))
    assert (await state(db, org.id))["plan"] == name
    other = subscription(server, org.customer, price)  # an older subscription of theirs, replaced
    stale = server.event("customer.subscription.deleted", {**other, "status": "canceled"}, created=now - 5)
    assert (await deliver(billed, server, stale))["effect"] == "not the current subscription"
    assert (await state(db, org.id))["plan"] == name
    deleted = server.event("customer.subscription.deleted", {**sub, "status": "canceled"}, created=now)
    assert (await deliver(billed, server, deleted))["effect"] == "plan free"
    final = await state(db, org.id)
    assert (final["plan"], final["subscription_status"]) == ("free", "canceled")


async def test_a_failed_payment_ends_on_the_free_plan_after_the_grace_period(
    billed: Harness, db: Database, server: StripeServer
) -> None:
    org = await paying_org(billed, db, server)
    name, price = next(iter(org.prices.items()))
    sub = subscription(server, org.customer, price)
    await deliver(billed, server, server.event("customer.subscription.created", sub, created=int(time.time()) - 60))
    await deliver(
        billed, server, server.event("invoice.payment_failed", {"object": "invoice", "customer": org.customer})
    )
    during = await state(db, org.id)
    assert during["plan"] == name and during["payment_failed_at"] is not None
    days = (during["grace_until"] - during["payment_failed_at"]).total_seconds() / 86400
    assert 6.9 < days < 7.1
    sweeper = BillingOutbox(billed.system.stores.db, StripeBilling(server.api_key, api_base=server.url))
    assert await sweeper.sweep_grace() == 0  # still in grace
    assert (await state(db, org.id))["plan"] == name
    await db.execute("UPDATE org_billing SET grace_until = now() - interval '1 second' WHERE org_id = $1", org.id)
    assert await sweeper.sweep_grace() == 1
    after = await state(db, org.id)
    assert (after["plan"], after["grace_until"], after["payment_failed_at"]) == ("free", None, None)


async def test_events_about_unknown_customers_are_recorded_and_ignored(
    billed: Harness, db: Database, server: StripeServer
) -> None:
    body = server.event("invoice.payment_failed", {"object": "invoice", "customer": "cus_not_ours"})
    answer = await deliver(billed, server, body)
    assert (answer["duplicate"], answer["effect"]) == (False, "unknown customer")
    assert (await deliver(billed, server, server.event("charge.refunded", {"object": "charge"})))["effect"] == "ignored"
    assert await db.fetchval("SELECT org_id FROM stripe_events WHERE id = $1", answer["id"]) is None
