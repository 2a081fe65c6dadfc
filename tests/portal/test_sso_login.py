"""Signing in with SAML from the portal's sign-in page (portal/views/account.py) against the pysaml2 IdP of
tests/saml_idp.py: the organization's name, a page whose link goes to the API's SAML login, the IdP, the ACS,
then portal pages in the new session whose forms carry its CSRF token (read from the server-side session:
the ACS hands the browser only the cookie) and whose POSTs work. Then the refusals: unknown names, SSO
switched off, unsafe return paths, a forged form, no xmlsec1."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pytest

from bitnet_actor.api.saml import BINDING_COOKIE
from tests.portal.conftest import Browser
from tests.saml_idp import TestIdp, require_xmlsec1

if TYPE_CHECKING:
    from pathlib import Path

    from tests.api.conftest import Caller, Harness
    from tests.portal.conftest import Page


@pytest.fixture
def xmlsec() -> str:
    return require_xmlsec1()


async def with_sso(h: Harness, tmp_path: Path, **fields: str) -> tuple[Caller, str, str, TestIdp]:
    """An organization whose owner set SAML up on the portal's settings page, and its IdP trusting us."""
    name = f"Acme SSO {uuid.uuid4().hex[:6]}"
    owner = await h.signup(org=name)
    org = owner.orgs[name]
    idp = TestIdp(tmp_path)
    b = Browser(h).as_caller(owner)
    settings = await b.get(f"/portal/orgs/{org}/settings")
    form = {
        "idp_entity_id": idp.entity_id, "idp_sso_url": idp.sso_url, "idp_certificates": idp.cert_pem,
        "email_attribute": "mail", "name_attribute": "displayName", "allowed_email_domains": "acme.example",
        "default_role": "member", **fields,
    }  # fmt: skip
    r = await b.submit(settings, "sso-form", form)
    assert r.status == 303, r.text[:500]
    metadata = await h.call("GET", f"/api/v1/saml/{org}/metadata")
    idp.trust(await metadata.get_data(as_text=True))
    return owner, name, org, idp


def return_to(leave: Page) -> str:
    link = urlsplit(leave.by_id("continue-link").attrs["href"])
    [target] = parse_qs(link.query)["return_to"]
    return target


async def test_sign_in_with_sso_then_use_the_portal(browser: Browser, tmp_path: Path, xmlsec: str) -> None:
    h = browser.h
    _, name, org, idp = await with_sso(h, tmp_path)
    login = await browser.get(f"/portal/login?next=/portal/orgs/{org}/keys")
    leave = await browser.submit(login, "sso-form", {"organization": f" {name.upper()} "})
    assert leave.status == 200 and leave.h1() == "Continue to your identity provider"
    link = leave.by_id("continue-link").attrs["href"]
    assert urlsplit(link).path == f"/api/v1/saml/{org}/login" and return_to(leave) == f"/portal/orgs/{org}/keys"
    assert [s.attrs["src"].split(".")[0] for s in leave.doc.find_all("script")] == ["/portal/static/leave"]

    start = await browser.get(link)
    assert start.status == 302 and start.location.startswith(idp.sso_url + "?")
    assert BINDING_COOKIE in browser.cookies
    request = idp.read_request(start.location)
    address = f"ann-{uuid.uuid4().hex[:8]}@acme.example"
    acs = await browser.post(
        f"/api/v1/saml/{org}/acs",
        {"SAMLResponse": idp.respond(request, email=address, name="Ann Sso"), "RelayState": request.relay_state},
    )
    assert acs.status == 303, acs.text
    assert acs.location == f"/portal/orgs/{org}/keys" and browser.session and BINDING_COOKIE not in browser.cookies
    assert "csrf" not in acs.text.lower()  # the browser got a cookie, no token

    keys = await browser.follow(acs)
    assert keys.status == 200 and keys.h1() == "API keys"
    dashboard = await browser.get(f"/portal/orgs/{org}")
    assert dashboard.h1() == name and dashboard.by_id("signed-in-as").text() == address
    session = await h.system.auth.sessions.get(browser.session or "")
    assert session is not None
    tokens = {n.attrs["value"] for n in dashboard.doc.find_all("input", name="csrf_token")}
    assert tokens == {session.csrf_token}  # every form: the server-side session's token

    new_key = await browser.get(f"/portal/orgs/{org}/keys/new")
    r = await browser.submit(new_key, "key-form", {"name": "made after sso", "scopes": ["inference"]})
    assert r.status == 200 and r.h1() == "Your new API key"
    forged = await browser.post(f"/portal/orgs/{org}/keys", [("name", "forged"), ("scopes", "inference")])
    assert forged.status == 403
    out = await browser.post("/portal/logout", [("csrf_token", session.csrf_token)])
    assert out.status == 303 and out.location == "/portal/login?signed_out=1" and not browser.session
    assert await h.system.auth.sessions.get(session.id) is None


async def test_what_the_sso_form_refuses(
    browser: Browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xmlsec: str
) -> None:
    h = browser.h
    owner, name, org, _ = await with_sso(h, tmp_path)
    login = await browser.get("/portal/login")
    unknown = None
    for typed in (f"nobody-{uuid.uuid4().hex[:6]}", ""):
        r = await browser.submit(login, "sso-form", {"organization": typed})
        assert r.status == 400 and r.by_id("sso-organization").attrs["aria-invalid"] == "true"
        unknown = r.by_id("sso-organization-error").text()
        assert unknown.startswith("There is no single sign-on for an organization of that name")
        assert r.by_id("sso-organization").attrs["value"] == typed  # kept
    r = await browser.submit(login, "sso-form", {"organization": "ann@acme.example"})
    assert r.status == 400 and "not your email address" in r.by_id("sso-organization-error").text()
    # Switched off: the same answer as no organization of that name.
    ob = Browser(h).as_caller(owner)
    await ob.submit(await ob.get(f"/portal/orgs/{org}/settings"), "sso-form", {"enabled": []})
    r = await browser.submit(login, "sso-form", {"organization": name})
    assert r.status == 400 and r.by_id("sso-organization-error").text() == unknown
    await ob.submit(await ob.get(f"/portal/orgs/{org}/settings"), "sso-form", {"enabled": "on"})
    # Where to come back to is a local printable-ASCII path, or the portal's start.
    cases = [("//evil.example/x", "/portal"), ("/portal/caf\u00e9", "/portal"), ("https://evil.example/", "/portal"),
             ("/portal/orgs?x=1", "/portal/orgs?x=1")]  # fmt: skip
    for asked, expected in cases:
        leave = await browser.submit(
            await browser.get("/portal/login"), "sso-form", {"organization": name, "next": asked}
        )
        assert leave.status == 200 and return_to(leave) == expected, asked
    # A forged form: no pre-session token (another site's page posting here).
    r = await Browser(h).post("/portal/login/sso", [("organization", name)])
    assert r.status == 403
    monkeypatch.setenv("PATH", "/nonexistent")  # no xmlsec1: nothing could verify the IdP's answer
    r = await browser.submit(login, "sso-form", {"organization": name})
    assert r.status == 503 and "unavailable" in r.by_id("sso-organization-error").text()
