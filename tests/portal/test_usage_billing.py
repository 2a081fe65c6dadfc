"""The usage page (portal/views/usage.py: the usage API's own query, filters, CSV) and billing (billing.py:
plan, quota gauge, invoices with their printable pages)."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta

from bitnet_actor.services.billing import plans
from tests.api.conftest import Caller
from tests.portal.conftest import Browser
from tests.portal.usage_data import record, today_at


def table_rows(page: object) -> list[list[str]]:
    body = page.by_id("usage-table").find("tbody")  # type: ignore[attr-defined]
    return [[td.text() for td in tr.find_all("td")] for tr in body.find_all("tr")]


async def seeded(browser: Browser) -> tuple[Browser, str, str, Caller]:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    _, key_a = await h.key(owner, org, ["inference"], name="key A")
    db = h.system.stores.db
    await record(db, org, model="alpha", at=today_at(0), key_id=key_a, n=3)
    await record(db, org, model="beta", at=today_at(0), input_tokens=7, output_tokens=3)
    await record(db, org, model="alpha", at=today_at(1, days_ago=2), key_id=key_a, input_tokens=1, output_tokens=1)
    await record(db, org, model="alpha", at=today_at(1, days_ago=20), key_id=key_a)  # outside the default week
    return browser.as_caller(owner), org, key_a, owner


async def test_usage_table_matches_the_usage_api(browser: Browser) -> None:
    b, org, key_a, owner = await seeded(browser)
    page = await b.get(f"/portal/orgs/{org}/usage")
    assert page.h1() == "Usage"
    today = datetime.now(UTC).date()
    two_days_ago = (today - timedelta(days=2)).isoformat()
    rows = table_rows(page)
    assert [r[:2] for r in rows] == [[two_days_ago, "alpha"], [today.isoformat(), "alpha"], [today.isoformat(), "beta"]]
    assert rows[0][2].startswith("key A (") and rows[2][2] == "(signed-in user)"
    assert rows[0][3:] == ["1", "1", "1", "0"] and rows[1][3:] == ["3", "300", "150", "0"]
    assert page.by_id("total-requests").text() == "5" and page.by_id("total-input").text() == f"{1 + 300 + 7:,}"
    # The API's answer over the same days, summed, is the same.
    start = int(datetime(*(today - timedelta(days=6)).timetuple()[:3], tzinfo=UTC).timestamp())
    r = await b.h.call("GET", f"/api/v1/orgs/{org}/usage/completions?start_time={start}&bucket_width=1d", owner)
    api = await r.get_json()
    assert sum(x["num_model_requests"] for bucket in api["data"] for x in bucket["results"]) == 5
    # Filters: a model, a key, a range.
    page = await b.submit(page, "usage-filters", {"model": "beta"})
    assert [r[1] for r in table_rows(page)] == ["beta"]
    page = await b.get(f"/portal/orgs/{org}/usage?key={key_a}&from={(today - timedelta(days=30)).isoformat()}")
    assert [r[3] for r in table_rows(page)] == ["1", "1", "3"] and page.by_id("total-requests").text() == "5"
    export = await b.get(page.by_id("usage-export").attrs["href"])
    assert export.status == 200 and export.headers["Content-Type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(export.text)))
    assert [int(x["requests"]) for x in lines] == [1, 1, 3] and {x["api_key_id"] for x in lines} == {key_a}
    assert {x["api_key"] for x in lines} == {next(r[2] for r in table_rows(page))}


async def test_usage_filter_mistakes_and_roles(browser: Browser) -> None:
    b, org, key_a, owner = await seeded(browser)
    mistakes = [
        ("from=2026-13-01", "YYYY-MM-DD"),
        ("from=2026-02-01&to=2026-01-01", "before the start"),
        ("from=2020-01-01&to=2026-01-01", "at most 366 days"),
        ("key=nope", "API key id"),
    ]
    for query, field in mistakes:
        r = await b.get(f"/portal/orgs/{org}/usage?{query}")
        assert r.status == 400 and field in r.by_id("form-error").text(), query
    h = b.h
    billing = Browser(h).as_caller(await h.invite(owner, org, "billing"))
    page = await billing.get(f"/portal/orgs/{org}/usage")
    assert page.status == 200 and page.by_id("usage-key").tag == "input"  # no key names for a role without keys:read
    assert any(r[2] == key_a for r in table_rows(page))
    member = Browser(h).as_caller(await h.invite(owner, org, "member"))
    assert (await member.get(f"/portal/orgs/{org}/usage")).status == 403
    assert (await member.get(f"/portal/orgs/{org}/usage.csv")).status == 403


async def test_billing_page_plan_quota_and_invoices(browser: Browser) -> None:
    b, org, _, owner = await seeded(browser)
    db = b.h.system.stores.db
    await plans.set_org_overrides(db, uuid.UUID(org), {"monthly_token_quota": 1000})
    page = await b.get(f"/portal/orgs/{org}/billing")
    assert page.h1() == "Billing" and page.by_id("plan-name").text()
    used = int(page.by_id("tokens-used").text().replace(",", ""))
    assert used > 0
    gauge = page.by_id("quota-gauge")
    fill = next(r for r in gauge.find_all("rect") if r.attrs["class"] == "gauge-fill")
    assert float(fill.attrs["width"]) == round(400 * min(used / 1000, 1.0), 2)
    assert f"{round(100 * used / 1000, 1)}% of the quota" in gauge.text()
    links = list(page.by_id("invoices-table").find_all("a"))
    assert links
    invoice = await b.h.call("GET", links[0].attrs["href"], owner)
    assert invoice.status_code == 200 and "Invoice" in await invoice.get_data(as_text=True)
    assert page.by_id("payment-local")
