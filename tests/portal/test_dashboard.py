"""The dashboard (portal/views/dashboard.py): the period's figures from the ledger, one SVG chart per model."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

from tests.portal.conftest import HOSTILE, Browser
from tests.portal.usage_data import record, today_at


async def test_dashboard_shows_the_period_and_a_chart_per_model(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    db = h.system.stores.db
    days_ago = 1 if datetime.now(UTC).day > 1 else 0  # stay inside this month
    await record(db, org, model="alpha", at=today_at(1, days_ago), n=3)
    await record(db, org, model="alpha", at=today_at(0), outcome="failed", input_tokens=10, output_tokens=0)
    await record(db, org, model=HOSTILE, at=today_at(0), input_tokens=1000, output_tokens=500, n=2)
    page = await browser.as_caller(owner).get(f"/portal/orgs/{org}")
    assert page.status == 200
    assert page.by_id("stat-requests").text() == "6"
    assert page.by_id("stat-input-tokens").text() == f"{3 * 100 + 10 + 2 * 1000:,}"
    assert page.by_id("stat-output-tokens").text() == f"{3 * 50 + 2 * 500:,}"
    assert page.by_id("stat-errors").text() == "1"
    assert page.by_id("stat-spend").text().startswith("$")
    api = await (await h.call("GET", f"/api/v1/orgs/{org}/invoices", owner)).get_json()
    cents = api["data"][0]["total_cents"]
    assert page.by_id("stat-spend").text() == f"${cents // 100:,}.{cents % 100:02d}"  # the invoice draft's
    charts = page.doc.find_all("svg")
    assert len(charts) == 2  # one per model
    titles = [c.find("title").text() for c in charts]  # type: ignore[union-attr]
    assert titles == sorted(titles, key=lambda t: t.rsplit(", ", 1)[1])
    assert f"Tokens per day, {HOSTILE}" in titles
    bars = [r for r in charts[0].find_all("rect") if r.attrs.get("class") == "bar"]
    now = datetime.now(UTC)
    assert len(bars) == calendar.monthrange(now.year, now.month)[1]  # a bar per day of the month
    assert any(float(b.attrs["height"]) > 0 for b in bars)
    assert "<script>alert(1)</script>" not in page.text
    assert page.by_id("daily-table")


async def test_roles_without_billing_read_see_no_figures(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    await record(h.system.stores.db, org, model="alpha", at=today_at(0))
    viewer = Browser(h).as_caller(await h.invite(owner, org, "viewer"))
    page = await viewer.get(f"/portal/orgs/{org}")
    assert page.status == 200 and page.by_id("no-billing-read")
    assert page.doc.find(id="stat-requests") is None and page.doc.find("svg") is None
    nav = {a.attrs["id"] for a in page.doc.find("nav", class_="sections").find_all("a")}  # type: ignore[union-attr]
    assert nav == {"nav-dashboard", "nav-keys", "nav-models", "nav-team", "nav-settings"}
    billing = Browser(h).as_caller(await h.invite(owner, org, "billing"))
    page = await billing.get(f"/portal/orgs/{org}")
    assert page.by_id("stat-requests").text() == "1" and page.doc.find(id="active-keys") is None
    nav = {a.attrs["id"] for a in page.doc.find("nav", class_="sections").find_all("a")}  # type: ignore[union-attr]
    assert nav == {"nav-dashboard", "nav-usage", "nav-billing", "nav-team", "nav-settings"}
