"""Hostile names (organization, key, user, invited address, model) come out escaped on every page."""

from __future__ import annotations

import csv
import io
import json
import uuid

from tests.api.conftest import PASSWORD
from tests.portal.conftest import HOSTILE, Browser, token_link
from tests.portal.usage_data import record, today_at

RAW = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
HOSTILE_EMAIL = "<svg/onload=alert(1)>@evil.example"


async def test_hostile_names_are_escaped_everywhere(browser: Browser) -> None:
    h = browser.h
    email = f"hostile-{uuid.uuid4().hex[:8]}@example.com"
    org_name = f"{HOSTILE} {uuid.uuid4().hex[:6]}"
    page = await browser.get("/portal/signup")
    await browser.submit(
        page, "signup-form", {"email": email, "password": PASSWORD, "organization": org_name, "name": HOSTILE}
    )
    verify = await browser.get(token_link(h, email))
    r = await browser.submit(verify, "verify-form")
    org = r.location.rsplit("/", 1)[1]
    form = await browser.get(f"/portal/orgs/{org}/keys/new")
    secret_page = await browser.submit(form, "key-form", {"name": HOSTILE, "scopes": ["inference"]})
    team = await browser.get(f"/portal/orgs/{org}/team")
    invited = await browser.submit(team, "invite-form", {"email": HOSTILE_EMAIL, "role": "viewer"})
    assert invited.status == 303, invited.text
    await record(h.system.stores.db, org, model=HOSTILE, at=today_at(0))
    pages = [secret_page, await browser.get("/portal/orgs")]
    for section in ("", "/keys", "/team", "/audit", "/settings", "/usage", "/billing"):
        pages.append(await browser.get(f"/portal/orgs/{org}{section}"))
    for page in pages:
        assert page.status == 200, page.path
        assert RAW not in page.text and "<svg/onload" not in page.text, page.path
        assert ESCAPED in page.text, page.path
        assert "{{7*7}}" in page.text, page.path  # data, never a template
        assert len(page.doc.find_all("script")) <= 1, page.path  # at most the static copy script
    # The names reached the pages they belong on (escaped, not dropped).
    keys = pages[3]
    assert HOSTILE in keys.doc.find("td", class_="key-name").text()  # type: ignore[union-attr]
    assert HOSTILE_EMAIL in pages[4].by_id("invitations-table").text()
    assert f"{HOSTILE}" in pages[4].by_id("members-table").text()  # the user's name
    # The CSV exports carry the names as data too.
    audit_csv = await browser.get(f"/portal/orgs/{org}/audit.csv")
    rows = {r["action"]: r for r in csv.DictReader(io.StringIO(audit_csv.text))}
    assert json.loads(rows["org.created"]["details"])["name"] == org_name
