"""The usage, costs and invoice routes over real PostgreSQL and Redis: ``current`` for a key and a session,
roles and scopes (billing reads, member does not, a key without billing:read is refused), another tenant's
404, 400s naming the parameter in OpenAI's error shape, and an HTML invoice page that escapes everything."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from bitnet_actor.services.billing.ledger import UsageEvent, record_batch
from bitnet_actor.stores.postgres import open_database
from tests.api.conftest import ANON, Caller, Harness

T0 = int(datetime(2024, 3, 10, tzinfo=UTC).timestamp())
DAY = 86400
HOSTILE_ORG = "<script>alert('org')</script> & \"Co\""
HOSTILE_MODEL = "<img src=x onerror=alert(1)>"


def event(org: str, at: int, model: str, i: int, o: int, key: str | None) -> UsageEvent:
    return UsageEvent(
        request_id=uuid.uuid4().hex, org_id=uuid.UUID(org), api_key_id=uuid.UUID(key) if key else None, model=model,
        input_tokens=i, output_tokens=o, latency_ms=1, outcome="completed", created_at=datetime.fromtimestamp(at, UTC),
    )  # fmt: skip


class Org:
    def __init__(self, h: Harness) -> None:
        self.h = h

    async def build(self, name: str | None = None) -> Org:
        h = self.h
        self.owner = await h.signup(org=name)
        self.id = next(iter(self.owner.orgs.values()))
        self.billing_key, self.billing_key_id = await h.key(self.owner, self.id, ["billing:read"], name="bill")
        self.inference_key, self.inference_key_id = await h.key(self.owner, self.id, ["inference"], name="inf")
        self.admin_key, _ = await h.key(self.owner, self.id, ["admin"], name="adm")
        self.billing = await h.invite(self.owner, self.id, "billing")
        self.member = await h.invite(self.owner, self.id, "member")
        return self


async def get(h: Harness, path: str, caller: Caller) -> tuple[int, Any]:
    r = await h.call("GET", path, caller)
    return r.status_code, await r.get_json()


@pytest.fixture
async def org(harness: Harness) -> Org:
    a = await Org(harness).build(f"{HOSTILE_ORG} {uuid.uuid4().hex[:6]}")
    await record_batch(
        harness.system.stores.db,
        [
            event(a.id, T0 + 5, "m1", 10, 5, a.billing_key_id),
            event(a.id, T0 + 65, "m1", 20, 1, a.inference_key_id),
            event(a.id, T0 + DAY + 1, "m2", 7, 3, a.inference_key_id),
        ],
    )
    return a


def usage_path(org: str, query: str = "") -> str:
    return f"/api/v1/orgs/{org}/usage/completions?start_time={T0}&end_time={T0 + 2 * DAY}{query}"


async def test_usage_for_the_calling_key_with_current(harness: Harness, org: Org) -> None:
    key = Caller(bearer=org.billing_key)
    status, page = await get(harness, usage_path("current", "&group_by=model,api_key_id"), key)
    assert status == 200, page
    assert page["object"] == "page" and page["has_more"] is False and page["next_page"] is None
    got = [
        [(r["model"], r["api_key_id"], r["input_tokens"], r["output_tokens"], r["num_model_requests"])
         for r in b["results"]]
        for b in page["data"]
    ]  # fmt: skip
    assert got == [
        sorted([("m1", org.billing_key_id, 10, 5, 1), ("m1", org.inference_key_id, 20, 1, 1)]),
        [("m2", org.inference_key_id, 7, 3, 1)],
    ]
    assert [(b["start_time"], b["end_time"]) for b in page["data"]] == [(T0, T0 + DAY), (T0 + DAY, T0 + 2 * DAY)]
    same = await get(harness, usage_path(org.id, "&group_by=model&group_by=api_key_id"), key)
    assert same == (200, page)  # current is the key's organization
    # Ungrouped: model and api_key_id are null; filters; minute buckets (empty ones present).
    status, page = await get(harness, usage_path("current", f"&api_key_ids={org.inference_key_id}"), key)
    assert [[(r["model"], r["api_key_id"], r["input_tokens"]) for r in b["results"]] for b in page["data"]] == [
        [(None, None, 20)],
        [(None, None, 7)],
    ]
    path = f"/api/v1/orgs/current/usage/completions?start_time={T0}&end_time={T0 + 180}&bucket_width=1m&models=m1"
    status, page = await get(harness, path, key)
    assert [[r["input_tokens"] for r in b["results"]] for b in page["data"]] == [[10], [20], []]


async def test_who_may_read_usage(harness: Harness, org: Org) -> None:
    path = usage_path(org.id)
    assert (await get(harness, path, org.owner))[0] == 200
    assert (await get(harness, path, org.billing))[0] == 200  # the billing role reads
    assert (await get(harness, usage_path("current"), org.billing))[0] == 200  # a session of one organization
    status, body = await get(harness, path, org.member)
    assert status == 403 and body["error"]["type"] == "permission_error"  # a member does not
    status, body = await get(harness, path, Caller(bearer=org.inference_key))
    assert status == 403 and "billing:read" in body["error"]["message"]  # a key without billing:read
    assert (await get(harness, usage_path("current"), Caller(bearer=org.inference_key)))[0] == 403
    assert (await get(harness, path, ANON))[0] == 401
    other = await Org(harness).build()
    for caller in (Caller(bearer=other.billing_key), other.owner):
        status, body = await get(harness, path, caller)
        assert status == 404, body  # another tenant: not found, not forbidden
        assert set(body["error"]) == {"message", "type", "param", "code"}
    status, page = await get(harness, usage_path("current"), Caller(bearer=other.billing_key))
    assert status == 200 and all(b["results"] == [] for b in page["data"])  # its own (empty) usage


async def test_current_for_a_user_of_several_organizations_asks_for_an_id(harness: Harness, org: Org) -> None:
    r = await harness.call("POST", "/api/v1/orgs", org.owner, json={"name": f"second-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 201
    status, body = await get(harness, usage_path("current"), org.owner)
    assert status == 400 and body["error"]["param"] == "org_id"
    assert (await get(harness, usage_path(org.id), org.owner))[0] == 200


async def test_current_on_the_account_routes(harness: Harness, org: Org) -> None:
    admin = Caller(bearer=org.admin_key)
    status, body = await get(harness, "/api/v1/orgs/current", admin)
    assert status == 200 and body["id"] == org.id
    status, body = await get(harness, "/api/v1/orgs/current/keys", admin)
    assert status == 200 and org.billing_key_id in {k["id"] for k in body["data"]}
    status, body = await get(harness, "/api/v1/orgs/current/members", org.member)
    assert status == 200 and len(body["data"]) == 3
    assert (await get(harness, "/api/v1/orgs/current", Caller(bearer=org.billing_key)))[0] == 403  # no org:read
    assert (await get(harness, "/api/v1/orgs/current/audit", org.member))[0] == 403
    assert (await get(harness, "/api/v1/orgs/current", ANON))[0] == 401
    assert (await get(harness, "/api/v1/orgs/currently", admin))[0] == 404  # only the literal


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("&bucket_width=2d", "bucket_width"),
        ("&end_time=1", "end_time"),
        ("&limit=32", "limit"),
        ("&bucket_width=1h&limit=169", "limit"),
        ("&group_by=project_id", "group_by"),
        ("&group_by=user", "group_by"),
        ("&page=abc", "page"),
        ("&api_key_ids=not-a-key", "api_key_ids"),
        ("&start_time=soon", "start_time"),
        ("&bucket=1d", "bucket"),
    ],
)
async def test_malformed_parameters_are_400s_naming_them(harness: Harness, org: Org, query: str, param: str) -> None:
    status, body = await get(harness, usage_path(org.id, query), Caller(bearer=org.billing_key))
    assert status == 400, body
    assert body["error"]["param"] == param
    assert body["error"]["type"] == "invalid_request_error"
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_costs_at_the_plan_prices(harness: Harness, org: Org, pg_dsn: str) -> None:
    async with open_database(pg_dsn, min_size=1, max_size=1) as owner:  # plans are the operator's to set
        await owner.execute("UPDATE organizations SET plan = 'pro' WHERE id = $1", uuid.UUID(org.id))
    key = Caller(bearer=org.billing_key)
    path = f"/api/v1/orgs/current/costs?start_time={T0}&end_time={T0 + 2 * DAY}&group_by=line_item"
    status, page = await get(harness, path, key)
    assert status == 200, page
    day0 = {r["line_item"]: r["amount"]["value"] for r in page["data"][0]["results"]}
    # pro: 10 cents per 1M input tokens, 40 per 1M output; dollars.
    assert day0 == pytest.approx({"m1, input": 30 * 10 / 1e8, "m1, output": 6 * 40 / 1e8})
    assert page["data"][0]["results"][0]["object"] == "organization.costs.result"
    assert page["data"][0]["results"][0]["amount"]["currency"] == "usd"
    status, body = await get(harness, path.replace("line_item", "model"), key)
    assert status == 400 and body["error"]["param"] == "group_by"
    status, body = await get(harness, path + "&bucket_width=1h", key)
    assert status == 400 and body["error"]["param"] == "bucket_width"
    assert (await get(harness, path, org.member))[0] == 403


async def test_invoices_json_and_an_escaped_html_page(harness: Harness, org: Org) -> None:
    now = datetime.now(UTC)
    await record_batch(harness.system.stores.db, [event(org.id, int(now.timestamp()) - 1, HOSTILE_MODEL, 5, 5, None)])
    key = Caller(bearer=org.billing_key)
    status, listed = await get(harness, "/api/v1/orgs/current/invoices", key)
    assert status == 200, listed
    periods = [i["period"] for i in listed["data"]]
    assert periods[0] == f"{now.year:04d}-{now.month:02d}"  # the current month's live draft
    assert "2024-03" in periods  # a month with usage
    live = listed["data"][0]
    assert live["status"] == "draft" and live["object"] == "invoice"
    assert live["total_cents"] == sum(line["amount_cents"] for line in live["lines"])
    assert {line["model"] for line in live["lines"]} == {HOSTILE_MODEL}
    status, one = await get(harness, f"/api/v1/orgs/{org.id}/invoices/{live['id']}", org.billing)
    assert status == 200 and one["id"] == live["id"] and one["lines"] == live["lines"]
    assert Decimal(one["lines"][0]["unit_price_per_m_cents"]) == 0  # the free plan

    r = await harness.call("GET", f"/api/v1/orgs/current/invoices/{live['id']}.html", key)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe-inline" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    page = (await r.get_data()).decode()
    assert "<script" not in page and "<img" not in page and "onerror=alert(1)>" not in page
    assert "&lt;script&gt;alert(&#39;org&#39;)&lt;/script&gt; &amp; &#34;Co&#34;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert live["period"] in page

    other = await Org(harness).build()
    for path in (
        f"/api/v1/orgs/{org.id}/invoices",
        f"/api/v1/orgs/{org.id}/invoices/{live['id']}",
        f"/api/v1/orgs/{org.id}/invoices/{live['id']}.html",
        f"/api/v1/orgs/{other.id}/invoices/{live['id']}",  # its own path, org A's invoice
        f"/api/v1/orgs/current/invoices/{live['id']}.html",
    ):
        r = await harness.call("GET", path, Caller(bearer=other.billing_key))
        assert r.status_code == 404, path
    for caller in (org.member, Caller(bearer=org.inference_key)):
        r = await harness.call("GET", f"/api/v1/orgs/{org.id}/invoices/{live['id']}.html", caller)
        assert r.status_code == 403


@pytest.mark.filterwarnings("ignore:get_jwt_config:DeprecationWarning")
async def test_current_for_an_access_token_bound_to_an_organization(harness: Harness, org: Org) -> None:
    from tests.api.conftest import PASSWORD

    r = await harness.call("POST", "/api/v1/orgs", org.owner, json={"name": f"second-{uuid.uuid4().hex[:6]}"})
    second = (await r.get_json())["id"]
    r = await harness.call(
        "POST",
        "/api/v1/token",
        json={"grant_type": "password", "email": org.owner.email, "password": PASSWORD, "org_id": second},
    )
    assert r.status_code == 200, await r.get_data()
    bearer = Caller(bearer=(await r.get_json())["access_token"])
    status, body = await get(harness, "/api/v1/orgs/current", bearer)
    assert status == 200 and body["id"] == second  # the token's organization, though the user has two
    status, page = await get(harness, usage_path("current"), bearer)
    assert status == 200 and all(b["results"] == [] for b in page["data"])  # not the first org's usage
