"""The SAML single sign-on settings on the organization's settings page (portal/views/settings.py): our SP's
URLs for the IdP, the configuration form (each refusal beside its field, nothing saved), changing and
removing it (confirmation page, POST), what the service audit-logs, the same answers as the API, and what
other roles see (whether SSO is on, nothing more)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.portal.conftest import HOSTILE, Browser
from tests.saml_idp import make_certificate

if TYPE_CHECKING:
    from tests.api.conftest import Caller, Harness
    from tests.portal.conftest import Page

CERT = make_certificate("idp-one.example.test")[1]
CERT_2 = make_certificate("idp-two.example.test")[1]
BROKEN_PEM = "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n"


def good_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "enabled": "on",
        "idp_entity_id": "https://idp.acme.example/metadata",
        "idp_sso_url": " https://idp.acme.example/sso\n",  # pasted with spaces
        "idp_certificates": f"{CERT}\n{CERT_2}",
        "email_attribute": "mail",
        "name_attribute": "",
        "allowed_email_domains": "Acme.example, corp.acme.example\nacme.example",
        "default_role": "viewer",
    }
    return {**fields, **changes}


async def api_config(h: Harness, owner: Caller, org: str) -> Any:
    r = await h.call("GET", f"/api/v1/orgs/{org}/sso/saml", owner)
    assert r.status_code == 200
    return (await r.get_json())["config"]


async def audit_actions(h: Harness, owner: Caller, org: str) -> list[str]:
    body = await (await h.call("GET", f"/api/v1/orgs/{org}/audit", owner)).get_json()
    return [e["action"] for e in body["data"]]


async def settings_of(b: Browser, org: str) -> Page:
    page = await b.get(f"/portal/orgs/{org}/settings")
    assert page.status == 200
    return page


async def test_an_owner_sets_up_changes_and_removes_sso(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    b = browser.as_caller(owner)
    page = await settings_of(b, org)
    base = h.system.settings.base_url
    assert page.by_id("sp-entity-id").text() == f"{base}/api/v1/saml/{org}/metadata"
    assert page.by_id("sp-acs-url").text() == f"{base}/api/v1/saml/{org}/acs"
    metadata = await h.call("GET", page.by_id("sp-metadata").attrs["href"].removeprefix(base))
    assert metadata.status_code == 200 and "EntityDescriptor" in await metadata.get_data(as_text=True)
    assert "not set up yet" in page.by_id("sso-status").text()
    assert page.doc.find(id="certs-table") is None and page.doc.find(id="sso-delete") is None
    assert "checked" in page.by_id("sso-enabled").attrs  # a new configuration starts on

    r = await b.submit(page, "sso-form", good_fields())
    assert r.status == 303, r.text
    page = await b.follow(r)
    assert "Single sign-on is saved." in page.by_id("flashes").text()
    config = await api_config(h, owner, org)
    assert config["enabled"] is True and config["idp_sso_url"] == "https://idp.acme.example/sso"
    assert config["allowed_email_domains"] == ["acme.example", "corp.acme.example"]
    assert (config["email_attribute"], config["name_attribute"], config["default_role"]) == ("mail", None, "viewer")
    rows = page.by_id("certs-table").find("tbody").find_all("tr")  # type: ignore[union-attr]
    fingerprints = [c["sha256_fingerprint"] for c in config["idp_certificates"]]
    assert [r.find_all("td")[1].text() for r in rows] == fingerprints and len(rows) == 2
    assert "CN=idp-one.example.test" in rows[0].text()
    assert page.by_id("sso-idp_entity_id").attrs["value"] == "https://idp.acme.example/metadata"
    assert page.by_id("sso-default_role").find("option", value="viewer").attrs.get("selected") == ""  # type: ignore[union-attr]
    assert "is on" in page.by_id("sso-status").text()
    assert (await audit_actions(h, owner, org))[0] == "sso.saml.created"

    # Saved again as the form now stands, switched off: the whole configuration, from its own fields.
    r = await b.submit(page, "sso-form", {"enabled": []})
    page = await b.follow(r)
    assert "turned off" in page.by_id("flashes").text() and "turned off" in page.by_id("sso-status").text()
    after = await api_config(h, owner, org)
    assert after["enabled"] is False and after["idp_certificates"] == config["idp_certificates"]
    assert after["allowed_email_domains"] == config["allowed_email_domains"]
    assert (await audit_actions(h, owner, org))[0] == "sso.saml.updated"

    confirm = await b.get(page.by_id("sso-delete").attrs["href"])
    assert confirm.status == 200 and confirm.h1().startswith("Remove single sign-on")
    r = await b.submit(confirm, "sso-delete-submit-form")
    page = await b.follow(r)
    assert "removed" in page.by_id("flashes").text() and await api_config(h, owner, org) is None
    assert (await audit_actions(h, owner, org))[0] == "sso.saml.deleted"
    assert (await b.get(f"/portal/orgs/{org}/settings/sso/delete")).status == 404
    r = await b.post(f"/portal/orgs/{org}/settings/sso/delete", [("csrf_token", owner.csrf or "")])
    assert r.status == 404


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"idp_entity_id": ""}, "idp_entity_id", "required"),
        ({"idp_entity_id": "not a uri"}, "idp_entity_id", "a URI"),
        ({"idp_sso_url": "http://idp.acme.example/sso"}, "idp_sso_url", "https URL"),
        ({"idp_certificates": ""}, "idp_certificates", "give 1 to 4"),
        ({"idp_certificates": "garbage"}, "idp_certificates", "paste only PEM"),
        ({"idp_certificates": f"{CERT}\nand a note"}, "idp_certificates", "paste only PEM"),
        ({"idp_certificates": BROKEN_PEM}, "idp_certificates", "does not parse"),
        ({"idp_certificates": f"{CERT}{CERT}"}, "idp_certificates", "twice"),
        ({"idp_certificates": CERT * 5}, "idp_certificates", "give 1 to 4"),
        ({"email_attribute": "ma\x01il"}, "email_attribute", "attribute name"),
        ({"allowed_email_domains": "acme.example, not a domain!"}, "allowed_email_domains", "not a domain"),
        ({"default_role": "owner"}, "default_role", "default_role must be one of"),  # a forged option
    ],
)
async def test_a_refusal_is_shown_beside_its_field_and_nothing_is_saved(
    browser: Browser, changes: dict[str, str], field: str, message: str
) -> None:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    b = browser.as_caller(owner)
    r = await b.submit(await settings_of(b, org), "sso-form", good_fields(**changes))
    assert r.status == 400, r.text[:300]
    assert r.by_id(f"sso-{field}").attrs.get("aria-invalid") == "true"
    assert message in r.by_id(f"sso-{field}-error").text() and message in r.by_id("form-error").text()
    invalid = [n.attrs["id"] for n in r.doc.iter() if n.attrs.get("aria-invalid") == "true"]
    assert invalid == [f"sso-{field}"]
    if field != "idp_entity_id":  # what was typed is kept
        assert r.by_id("sso-idp_entity_id").attrs["value"] == "https://idp.acme.example/metadata"
    assert await api_config(h, owner, org) is None


async def test_other_roles_see_whether_sso_is_on_and_nothing_else(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup(org=f"Acme {uuid.uuid4().hex[:6]}")
    org = next(iter(owner.orgs.values()))
    admin = Browser(h).as_caller(await h.invite(owner, org, "admin"))
    assert (await settings_of(admin, org)).by_id("sso-form")
    callers = {role: await h.invite(owner, org, role) for role in ("member", "viewer", "billing")}
    for role, caller in callers.items():
        page = await settings_of(Browser(h).as_caller(caller), org)
        assert "not set up" in page.by_id("sso-status").text(), role
        for hidden in ("sso-form", "sp-facts", "certs-table", "sso-delete"):
            assert page.doc.find(id=hidden) is None, (role, hidden)
    b = Browser(h).as_caller(owner)
    await b.submit(await settings_of(b, org), "sso-form", good_fields())
    member = Browser(h).as_caller(callers["member"])
    page = await settings_of(member, org)
    status = page.by_id("sso-status").text()
    assert "Sign in with SSO" in status and next(iter(owner.orgs)) in status
    assert "idp.acme.example" not in page.text and CERT.splitlines()[1] not in page.text
    token = page.doc.find("input", name="csrf_token").attrs["value"]  # type: ignore[union-attr]
    for path in ("/settings/sso", "/settings/sso/delete"):
        r = await member.post(f"/portal/orgs/{org}{path}", [("csrf_token", token), *good_fields().items()])
        assert r.status == 403, path
    assert (await member.get(f"/portal/orgs/{org}/settings/sso/delete")).status == 403
    assert (await api_config(h, owner, org))["idp_entity_id"] == "https://idp.acme.example/metadata"


async def test_hostile_values_come_out_escaped(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup(org=f"{HOSTILE} {uuid.uuid4().hex[:6]}")
    org = next(iter(owner.orgs.values()))
    b = browser.as_caller(owner)
    hostile_cert = make_certificate("<script>alert(1)</script>")[1]
    entity = "https://idp.example/<script>alert(1)</script>"
    fields = good_fields(idp_entity_id=entity, idp_certificates=hostile_cert, email_attribute=HOSTILE)
    r = await b.submit(await settings_of(b, org), "sso-form", fields)
    assert r.status == 303, r.text[:300]
    page = await settings_of(b, org)
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert page.by_id("sso-idp_entity_id").attrs["value"] == entity
    assert page.by_id("sso-email_attribute").attrs["value"] == HOSTILE
    assert "CN=\\<script\\>alert(1)\\</script\\>" in page.by_id("certs-table").text()  # RFC 4514 escapes
    assert "{{7*7}}" in page.text  # data, never a template
    r = await b.submit(await settings_of(b, org), "sso-form", {"idp_sso_url": "javascript:alert(1)"})
    assert r.status == 400 and r.by_id("sso-idp_sso_url").attrs["value"] == "javascript:alert(1)"
    member = Browser(h).as_caller(await h.invite(owner, org, "member"))
    status = (await settings_of(member, org)).by_id("sso-status")
    assert HOSTILE in status.text()


async def test_without_xmlsec1_the_page_says_sign_ins_are_refused(
    browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await browser.h.signup()
    org = next(iter(owner.orgs.values()))
    b = browser.as_caller(owner)
    saml = b.h.system.auth.saml
    assert saml is not None
    assert ((await settings_of(b, org)).doc.find(id="sso-no-xmlsec") is None) == saml.available
    monkeypatch.setenv("PATH", "/nonexistent")  # the service looks for xmlsec1 on the PATH
    page = await settings_of(b, org)
    assert "xmlsec1" in page.by_id("sso-no-xmlsec").text()
