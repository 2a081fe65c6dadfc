"""Paying on Stripe's pages from the billing page (portal/views/billing.py): "Upgrade" per paid plan and
"Manage billing", POST forms with the session's CSRF token answered with a 303 to Stripe (the page's
form-action lists Stripe's origins), back with ``?checkout=``; the plan follows the webhook; billing:manage
only; hidden and 404 without a Stripe key; Stripe's trouble and refusals shown on the page."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from bitnet_actor.services.billing import plans
from portal.security import CONTENT_SECURITY_POLICY
from tests.portal.conftest import BILLING_CSP, HOSTILE, Browser

if TYPE_CHECKING:
    from bitnet_actor.stores.postgres import Database
    from tests.api.conftest import Harness
    from tests.stripe_server import StripeServer


async def paid_plan(db: Database, server: StripeServer, display: str = "Team") -> str:
    name = f"team-{uuid.uuid4().hex[:6]}"
    await plans.upsert_plan(
        db, name, {"display_name": display, "stripe_price_id": server.create_price(), "monthly_fee_cents": 4900}
    )
    return name


async def test_upgrade_then_manage_billing(billed: Harness, db: Database, stripe_server: StripeServer) -> None:
    h, server = billed, stripe_server
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    name = await paid_plan(db, server, display=HOSTILE)
    b = Browser(h).as_caller(owner)
    page = await b.get(f"/portal/orgs/{org}/billing")
    assert page.headers["Content-Security-Policy"] == BILLING_CSP
    assert "form-action 'self' https://checkout.stripe.com https://billing.stripe.com;" in BILLING_CSP
    row = page.by_id(f"plan-{name}")
    assert HOSTILE in row.text() and "$49.00" in row.text()  # the operator's name, as data:
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert page.by_id(f"upgrade-{name}").text() == f"Upgrade to {HOSTILE}"
    assert page.doc.find(id="upgrade-free") is None and page.doc.find(id="upgrade-pro") is None  # no price

    r = await b.submit(page, f"upgrade-{name}-form")
    assert r.status == 303, r.text
    [session] = server.checkout_sessions.values()
    assert r.location == session["url"] == f"https://checkout.stripe.com/c/pay/{session['id']}"
    base = h.system.settings.base_url
    assert session["success_url"] == f"{base}/portal/orgs/{org}/billing?checkout=success"
    assert session["cancel_url"] == f"{base}/portal/orgs/{org}/billing?checkout=canceled"
    canceled = await b.get(f"/portal/orgs/{org}/billing?checkout=canceled")
    assert "nothing changed" in canceled.by_id("checkout-returned").text()

    subscription = server.complete_checkout(session["id"])
    event = server.event("customer.subscription.created", subscription)
    r2 = await h.client.post("/api/v1/stripe/webhook", data=event, headers={"Stripe-Signature": server.sign(event)})
    assert r2.status_code == 200
    back = await b.get(f"/portal/orgs/{org}/billing?checkout=success")
    assert "as soon as Stripe confirms" in back.by_id("checkout-returned").text()
    assert back.by_id("plan-name").text() == HOSTILE
    assert back.by_id("payment-subscribed") and back.doc.find(id="plans-table") is None

    r = await b.submit(back, "manage-billing-form")
    assert r.status == 303
    [portal_session] = server.portal_sessions.values()
    assert r.location == portal_session["url"] and r.location.startswith("https://billing.stripe.com/p/session/")
    assert portal_session["return_url"] == f"{base}/portal/orgs/{org}/billing"
    assert portal_session["customer"] == subscription["customer"]


async def test_who_sees_and_may_use_the_buttons(billed: Harness, db: Database, stripe_server: StripeServer) -> None:
    h = billed
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    name = await paid_plan(db, stripe_server)
    billing = Browser(h).as_caller(await h.invite(owner, org, "billing"))
    page = await billing.get(f"/portal/orgs/{org}/billing")
    assert page.by_id(f"upgrade-{name}") and page.by_id("manage-billing")
    assert (await billing.submit(page, "manage-billing-form")).status == 303
    admin = Browser(h).as_caller(await h.invite(owner, org, "admin"))
    page = await admin.get(f"/portal/orgs/{org}/billing")
    assert page.status == 200 and page.doc.find(id="manage-billing") is None and page.by_id("payment-stripe")
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY  # nothing to post to Stripe
    token = page.doc.find("input", name="csrf_token").attrs["value"]  # type: ignore[union-attr]
    for path in ("checkout", "portal"):
        r = await admin.post(f"/portal/orgs/{org}/billing/{path}", [("csrf_token", token), ("plan", name)])
        assert r.status == 403, path
    member = Browser(h).as_caller(await h.invite(owner, org, "member"))
    assert (await member.get(f"/portal/orgs/{org}/billing")).status == 403
    # A forged form (no token, or another session's) and another organization's owner.
    own = Browser(h).as_caller(owner)
    assert (await own.post(f"/portal/orgs/{org}/billing/portal", [("csrf_token", token)])).status == 403
    assert (await own.post(f"/portal/orgs/{org}/billing/checkout", [("plan", name)])).status == 403
    stranger = await h.signup()
    outsider = Browser(h).as_caller(stranger)
    r = await outsider.post(f"/portal/orgs/{org}/billing/portal", [("csrf_token", stranger.csrf or "")])
    assert r.status == 404
    assert stripe_server.portal_sessions and len(stripe_server.portal_sessions) == 1  # the billing member's only


async def test_refusals_and_stripe_trouble_are_shown(
    billed: Harness, db: Database, stripe_server: StripeServer
) -> None:
    h, server = billed, stripe_server
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    name = await paid_plan(db, server)
    b = Browser(h).as_caller(owner)
    page = await b.get(f"/portal/orgs/{org}/billing")
    r = await b.submit(page, f"upgrade-{name}-form", {"plan": "no-such-plan"})
    assert r.status == 400 and "there is no plan" in r.by_id("form-error").text()
    server.down("503")
    r = await b.submit(page, "manage-billing-form")
    assert r.status == 503 and "could not be reached" in r.by_id("form-error").text()
    server.up()
    server.prices.clear()
    r = await b.submit(page, f"upgrade-{name}-form")
    assert r.status == 502 and "Stripe answered 404" in r.by_id("form-error").text()
    assert r.by_id(f"upgrade-{name}")  # the page, its buttons still there
    server.checkout_host = "pay.acme.example"  # a Checkout custom domain: not in form-action, so a link
    name = await paid_plan(db, server)
    r = await b.submit(await b.get(f"/portal/orgs/{org}/billing"), f"upgrade-{name}-form")
    assert r.status == 200 and r.h1() == "Continue to Stripe"
    link = r.by_id("continue-link").attrs["href"]
    assert link.startswith("https://pay.acme.example/c/pay/cs_test_")
    assert [s.attrs["src"].split(".")[0] for s in r.doc.find_all("script")] == ["/portal/static/leave"]


async def test_without_stripe_no_buttons_and_no_routes(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    b = browser.as_caller(owner)
    page = await b.get(f"/portal/orgs/{org}/billing")
    assert page.by_id("payment-local") and page.doc.find(id="manage-billing") is None
    assert page.doc.find(id="plans-table") is None
    for path in ("checkout", "portal"):
        r = await b.post(f"/portal/orgs/{org}/billing/{path}", [("csrf_token", owner.csrf or ""), ("plan", "pro")])
        assert r.status == 404 and "bills locally" in r.text
