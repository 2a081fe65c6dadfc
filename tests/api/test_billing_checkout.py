"""``POST /api/v1/orgs/<org>/billing/checkout`` and ``/billing/portal`` on the whole app over real PostgreSQL
and Redis and the local Stripe server: the sessions' URLs back to the portal's billing page, the plan changed
by the signed webhook once the customer has paid, then 409; ``billing:manage`` only (owners and billing
members; admins, other roles and API keys refused, other organizations 404, CSRF for cookies); without a
Stripe key a clear 404; Stripe down 503, Stripe refusing 502, all in the API's error shape."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

from bitnet_actor.config import Settings
from bitnet_actor.services.billing import plans
from tests.api.conftest import ANON, Caller, Harness, open_harness
from tests.stripe_server import StripeServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from bitnet_actor.stores.postgres import Database

ERROR_KEYS = {"message", "type", "param", "code"}
PUBLIC = "https://bitnet.example"


@pytest.fixture
def server() -> Iterator[StripeServer]:
    with StripeServer() as s:
        yield s


@pytest.fixture
async def billed(
    aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path, server: StripeServer
) -> AsyncIterator[Harness]:
    settings = Settings(
        data_dir=tmp_path, database_url=pg_dsn, redis_url=redis_url, public_url=PUBLIC,
        stripe_api_key=server.api_key, stripe_api_base=server.url, stripe_webhook_secret=server.webhook_secret,
    )  # fmt: skip
    async with open_harness(settings) as h:
        yield h


async def paid_plan(db: Database, server: StripeServer) -> str:
    name = f"team-{uuid.uuid4().hex[:6]}"
    await plans.upsert_plan(db, name, {"display_name": "Team", "stripe_price_id": server.create_price()})
    return name


async def error(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    body = await r.get_json()
    assert r.status_code == status, body
    assert set(body["error"]) == ERROR_KEYS, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return dict(body["error"])


async def test_checkout_then_paid_then_the_portal(billed: Harness, db: Database, server: StripeServer) -> None:
    h = billed
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    plan = await paid_plan(db, server)
    r = await h.call("POST", f"/api/v1/orgs/{org}/billing/checkout", owner, json={"plan": plan})
    assert r.status_code == 200, await r.get_data()
    body = await r.get_json()
    assert body["object"] == "checkout.session" and body["url"] == f"https://checkout.stripe.com/c/pay/{body['id']}"
    session = server.checkout_sessions[body["id"]]
    assert session["success_url"] == f"{PUBLIC}/portal/orgs/{org}/billing?checkout=success"
    assert session["cancel_url"] == f"{PUBLIC}/portal/orgs/{org}/billing?checkout=canceled"
    assert session["client_reference_id"] == org

    subscription = server.complete_checkout(body["id"])  # the customer pays on Stripe's page
    event = server.event("customer.subscription.created", subscription)
    r = await h.client.post("/api/v1/stripe/webhook", data=event, headers={"Stripe-Signature": server.sign(event)})
    assert r.status_code == 200 and (await r.get_json())["effect"] == f"plan {plan}"
    me = await (await h.call("GET", f"/api/v1/orgs/{org}", owner)).get_json()
    assert me["plan"] == plan
    other = await paid_plan(db, server)
    again = await h.call("POST", f"/api/v1/orgs/{org}/billing/checkout", owner, json={"plan": other})
    assert "billing portal" in (await error(again, 409, "conflict"))["message"]

    r = await h.call("POST", f"/api/v1/orgs/{org}/billing/portal", owner)
    assert r.status_code == 200, await r.get_data()
    body = await r.get_json()
    assert body["object"] == "billing_portal.session" and body["url"].startswith("https://billing.stripe.com/")
    assert server.portal_sessions[body["id"]]["return_url"] == f"{PUBLIC}/portal/orgs/{org}/billing"
    assert server.portal_sessions[body["id"]]["customer"] == subscription["customer"]
    audit = await (await h.call("GET", f"/api/v1/orgs/{org}/audit", owner)).get_json()
    actions = [e["action"] for e in audit["data"]]
    assert actions[0] == "billing.portal_opened" and "billing.checkout_started" in actions


async def test_who_may_start_them(billed: Harness, db: Database, server: StripeServer) -> None:
    h = billed
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    plan = await paid_plan(db, server)
    callers: dict[str, Caller] = {"owner": owner}
    for role in ("admin", "member", "viewer", "billing"):
        callers[role] = await h.invite(owner, org, role)
    key, _ = await h.key(owner, org, ["admin", "billing:read"])
    other = await h.signup()
    callers |= {
        "admin key": Caller(bearer=key),
        "other org's owner": other,
        "no CSRF token": Caller(session=owner.session),
        "anonymous": ANON,
    }
    expected = {"owner": 200, "billing": 200, "other org's owner": 404, "anonymous": 401}
    for who, caller in callers.items():
        for path, body in (("checkout", {"plan": plan}), ("portal", None)):
            r = await h.call("POST", f"/api/v1/orgs/{org}/billing/{path}", caller, json=body)
            want = expected.get(who, 403)
            if want == 200:
                assert r.status_code == 200, (who, path, await r.get_data())
            else:
                await error(r, want, "csrf_failed" if who == "no CSRF token" else None)


async def test_bad_requests_and_stripe_trouble(billed: Harness, db: Database, server: StripeServer) -> None:
    h = billed
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    url = f"/api/v1/orgs/{org}/billing/checkout"
    assert (await error(await h.call("POST", url, owner, json={}), 400))["param"] == "plan"
    assert (await error(await h.call("POST", url, owner, json={"plan": "x", "price": "p"}), 400))["param"] == "price"
    unknown = await error(await h.call("POST", url, owner, json={"plan": "no-such-plan"}), 400, "invalid_value")
    assert unknown["param"] == "plan"
    free = await error(await h.call("POST", url, owner, json={"plan": "free"}), 400)
    assert "not sold through Stripe" in free["message"]
    plan = await paid_plan(db, server)
    server.down("503")
    r = await h.call("POST", url, owner, json={"plan": plan})
    await error(r, 503, "payment_provider_unavailable")
    assert r.headers["Retry-After"] == "30"
    server.up()
    server.prices.clear()
    await error(await h.call("POST", url, owner, json={"plan": plan}), 502, "payment_provider_error")
    assert server.checkout_sessions == {}


async def test_without_a_stripe_key_both_say_billing_is_local(harness: Harness) -> None:
    owner = await harness.signup()
    org = next(iter(owner.orgs.values()))
    member = await harness.invite(owner, org, "member")
    for path, body in (("checkout", {"plan": "pro"}), ("portal", None)):
        r = await harness.call("POST", f"/api/v1/orgs/{org}/billing/{path}", owner, json=body)
        assert "locally" in (await error(r, 404, "stripe_not_configured"))["message"]
        await error(await harness.call("POST", f"/api/v1/orgs/{org}/billing/{path}", member, json=body), 403)
