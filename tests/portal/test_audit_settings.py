"""The audit log (portal/views/audit.py: filters, paging, CSV) and the settings page (settings.py: its single
sign-on part in test_sso_settings.py)."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta

from portal.views.audit import csv_cell
from tests.portal.conftest import Browser


async def test_audit_log_filters_and_exports(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    admin = await h.invite(owner, org, "admin")
    await h.key(owner, org, ["inference"], name='=HYPERLINK("http://evil")')
    await h.key(admin, org, ["inference"], name="by admin")
    b = browser.as_caller(owner)
    page = await b.get(f"/portal/orgs/{org}/audit")
    assert page.h1() == "Audit log"
    actions = [o.attrs["value"] for o in page.by_id("audit-action").find_all("option")]
    assert actions == ["", "api_key.created", "invitation.accepted", "invitation.created", "org.created"]
    created = "api_key.created"
    rows = page.by_id("audit-table").find("tbody").find_all("tr")  # type: ignore[union-attr]
    assert len(rows) >= 5
    page = await b.submit(page, "audit-filters", {"action": created, "actor": admin.user_id})
    rows = page.by_id("audit-table").find("tbody").find_all("tr")  # type: ignore[union-attr]
    assert len(rows) == 1 and admin.email in rows[0].text()
    today = datetime.now(UTC).date()
    page = await b.submit(
        page, "audit-filters", {"action": "", "actor": "", "from": (today + timedelta(days=1)).isoformat()}
    )
    assert page.by_id("no-entries")
    bad = await b.get(f"/portal/orgs/{org}/audit?from=yesterday")
    assert bad.status == 400 and "YYYY-MM-DD" in bad.by_id("form-error").text()
    page = await b.get(f"/portal/orgs/{org}/audit?action={created}")
    export = await b.get(page.by_id("audit-export").attrs["href"])
    assert export.status == 200 and export.headers["Content-Type"].startswith("text/csv")
    assert export.headers["Content-Disposition"] == f'attachment; filename="audit-{org}.csv"'
    table = list(csv.DictReader(io.StringIO(export.text)))
    assert len(table) == 2 and {r["action"] for r in table} == {created}
    assert {r["actor_email"] for r in table} == {owner.email, admin.email}
    details = " ".join(r["details"] for r in table)
    assert "HYPERLINK" in details  # a formula in a cell never starts it
    assert all(not r["details"].startswith("=") for r in table)


async def test_audit_log_pages(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    for i in range(52):
        r = await h.call(
            "POST", f"/api/v1/orgs/{org}/invitations", owner, json={"email": f"p{i}@example.com", "role": "viewer"}
        )
        assert r.status_code == 201
    b = browser.as_caller(owner)
    first = await b.get(f"/portal/orgs/{org}/audit")
    seqs = [int(r.find("td").text()) for r in first.by_id("audit-table").find("tbody").find_all("tr")]  # type: ignore[union-attr]
    assert len(seqs) == 50 and seqs == sorted(seqs, reverse=True)
    second = await b.get(first.by_id("audit-older").attrs["href"])
    more = [int(r.find("td").text()) for r in second.by_id("audit-table").find("tbody").find_all("tr")]  # type: ignore[union-attr]
    assert more == list(range(seqs[-1] - 1, 0, -1))  # 53 entries: org.created and 52 invitations
    assert second.doc.find(id="audit-older") is None


def test_csv_cells_never_start_a_formula() -> None:
    for value in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(value).startswith("'")
    assert csv_cell("fine") == "fine" and csv_cell(None) == "" and csv_cell(7) == "7"


async def test_settings_rename_and_region(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    b = browser.as_caller(owner)
    page = await b.get(f"/portal/orgs/{org}/settings")
    assert page.by_id("org-region").text() == "default" and page.by_id("org-id").text() == org
    assert page.by_id("sso-heading").text() == "Single sign-on (SSO)"
    name = f"Renamed {uuid.uuid4().hex[:6]}"
    r = await b.submit(page, "rename-form", {"name": name})
    page = await b.follow(r)
    assert page.by_id("org-name").text() == name and name in page.by_id("flashes").text()
    r = await b.submit(page, "rename-form", {"name": ""})
    assert r.status == 400 and r.by_id("rename-name").attrs["aria-invalid"] == "true"
    member = Browser(h).as_caller(await h.invite(owner, org, "member"))
    page = await member.get(f"/portal/orgs/{org}/settings")
    assert page.status == 200 and page.doc.find(id="rename-form") is None
    token = page.doc.find("input", name="csrf_token").attrs["value"]  # type: ignore[union-attr]
    r = await member.post(f"/portal/orgs/{org}/settings/name", [("csrf_token", token), ("name", "mine now")])
    assert r.status == 403
