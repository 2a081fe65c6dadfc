"""SAML single sign-on over HTTP: the configuration endpoints (roles, tenants, validation), and SP-initiated
sign-in end to end against a local pysaml2 IdP (tests/saml_idp.py): login redirect, the IdP, the ACS POST,
then the session on /api/v1. Refusals are 4xx in the API's error shape; the service tests cover every check.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from xml.etree import ElementTree as ET

import pytest

from bitnet_actor.api.saml import BINDING_COOKIE
from bitnet_actor.services.sessions import COOKIE_NAME
from tests.api.conftest import ANON, Caller, Harness
from tests.saml_idp import SeenRequest, TestIdp, require_xmlsec1

if TYPE_CHECKING:
    from pathlib import Path

BROKEN_PEM = "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----"
ERROR_KEYS = {"message", "type", "param", "code"}


def config_body(idp: TestIdp, **fields: Any) -> dict[str, Any]:
    return {"idp_entity_id": idp.entity_id, "idp_sso_url": idp.sso_url, "idp_certificates": [idp.cert_pem], **fields}


async def configure(h: Harness, owner: Caller, org_id: str, idp: TestIdp, **fields: Any) -> Any:
    r = await h.call("PUT", f"/api/v1/orgs/{org_id}/sso/saml", owner, json=config_body(idp, **fields))
    assert r.status_code == 200, await r.get_data()
    metadata = await h.call("GET", f"/api/v1/saml/{org_id}/metadata")
    assert metadata.status_code == 200
    idp.trust(await metadata.get_data(as_text=True))
    return await r.get_json()


async def start(h: Harness, org_id: str, idp: TestIdp, return_to: str = "/portal") -> tuple[SeenRequest, str]:
    r = await h.call("GET", f"/api/v1/saml/{org_id}/login?return_to={quote(return_to, safe='')}")
    assert r.status_code == 302, await r.get_data()
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith(f"{BINDING_COOKIE}=")
    assert all(part in cookie for part in ("Secure", "HttpOnly", "SameSite=None", "Path=/")), cookie
    binding = re.match(rf"{re.escape(BINDING_COOKIE)}=([^;]+)", cookie)
    assert binding
    return idp.read_request(r.headers["Location"]), binding.group(1)


async def post_acs(h: Harness, org_id: str, response: str, relay_state: str, binding: str) -> Any:
    return await h.call(
        "POST",
        f"/api/v1/saml/{org_id}/acs",
        form={"SAMLResponse": response, "RelayState": relay_state},
        headers={"Cookie": f"{BINDING_COOKIE}={binding}"},
    )


async def refused(r: Any, status: int, code: str) -> Any:
    body = await r.get_json()
    assert r.status_code == status, body
    assert set(body["error"]) == ERROR_KEYS and body["error"]["code"] == code, body
    assert "Location" not in r.headers and "Traceback" not in body["error"]["message"]
    return body


@pytest.fixture
def xmlsec() -> str:
    return require_xmlsec1()


def email() -> str:
    return f"sso-{uuid.uuid4().hex[:10]}@acme.example"


async def test_sp_initiated_sign_in_end_to_end(harness: Harness, tmp_path: Path, xmlsec: str) -> None:
    h = harness
    owner = await h.signup()
    org_id = next(iter(owner.orgs.values()))
    idp = TestIdp(tmp_path)
    shown = await configure(
        h, owner, org_id, idp, default_role="viewer", email_attribute="mail", name_attribute="displayName",
        allowed_email_domains=["acme.example"],
    )  # fmt: skip
    sp = shown["sp"]
    assert sp["entity_id"] == f"{h.system.settings.base_url}/api/v1/saml/{org_id}/metadata"
    assert sp["acs_url"].endswith(f"/saml/{org_id}/acs") and shown["available"] is True
    [cert] = shown["config"]["idp_certificates"]
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", cert["sha256_fingerprint"]) and cert["expired"] is False
    metadata = await h.call("GET", f"/api/v1/saml/{org_id}/metadata")
    assert metadata.headers["Content-Type"].startswith("application/samlmetadata+xml")
    root = ET.fromstring((await metadata.get_data(as_text=True)).split("?>", 1)[1])
    assert root.get("entityID") == sp["entity_id"]

    request, binding = await start(h, org_id, idp, "/portal/keys?tab=1")
    assert request.acs_url == sp["acs_url"] and request.sp_entity_id == sp["entity_id"]
    address = email()
    r = await post_acs(h, org_id, idp.respond(request, email=address, name="Ann Sso"), request.relay_state, binding)
    assert r.status_code == 303, await r.get_data()
    assert r.headers["Location"] == "/portal/keys?tab=1"
    cookies = r.headers.get_all("Set-Cookie")
    session_cookie = next(c for c in cookies if c.startswith(COOKIE_NAME))
    assert any(c.startswith(f"{BINDING_COOKIE}=;") for c in cookies)  # the binding cookie is cleared

    assert all(part in session_cookie for part in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/")), session_cookie
    session = re.match(rf"{re.escape(COOKIE_NAME)}=([^;]+)", session_cookie)
    assert session
    signed_in = Caller(session=session.group(1))
    me = await h.call("GET", "/api/v1/me", signed_in)
    assert me.status_code == 200, await me.get_data()
    body = await me.get_json()
    assert body["user"]["email"] == address and body["user"]["name"] == "Ann Sso"
    assert [(o["id"], o["role"]) for o in body["organizations"]] == [(org_id, "viewer")]
    # The session is the organization's member's: the viewer may read, not manage.
    assert (await h.call("GET", f"/api/v1/orgs/{org_id}/members", signed_in)).status_code == 200
    assert (await h.call("GET", f"/api/v1/orgs/{org_id}/audit", signed_in)).status_code == 403
    audit = await (await h.call("GET", f"/api/v1/orgs/{org_id}/audit", owner)).get_json()
    actions = [e["action"] for e in audit["data"]]
    assert actions[:3] == ["sso.saml.login", "member.provisioned", "sso.saml.created"]

    # The same response again: refused, and no second session.
    again = await post_acs(h, org_id, idp.respond(request, email=address), request.relay_state, binding)
    await refused(again, 401, "saml_unknown_request")  # the request was spent with the first response


async def test_configuration_roles_and_tenants(harness: Harness, tmp_path: Path) -> None:
    """Owners and admins only, signed in (API keys refused); other organizations get 404. No xmlsec1 needed."""
    h = harness
    owner = await h.signup()
    org_id = next(iter(owner.orgs.values()))
    callers = {"owner": owner}
    for role in ("admin", "member", "viewer", "billing"):
        callers[role] = await h.invite(owner, org_id, role)
    key, _ = await h.key(owner, org_id, ["admin"])
    other = await h.signup()
    other_org = next(iter(other.orgs.values()))
    other_key, _ = await h.key(other, other_org, ["admin"])
    idp = TestIdp(tmp_path)
    expected = {"owner": (200, 200, 204), "admin": (200, 200, 204)}
    every = {
        **{role: expected.get(role, (403, 403, 403)) for role in callers},
        "own admin key": (403, 403, 403),
        "other org's owner": (404, 404, 404),
        "other org's key": (404, 404, 404),
        "anonymous": (401, 401, 401),
    }
    who = {
        **callers,
        "own admin key": Caller(bearer=key),
        "other org's owner": other,
        "other org's key": Caller(bearer=other_key),
        "anonymous": ANON,
    }
    path = f"/api/v1/orgs/{org_id}/sso/saml"
    failures = []
    for name, statuses in every.items():
        await h.call("PUT", path, owner, json=config_body(idp))  # there is one to read and delete
        got = (
            (await h.call("GET", path, who[name])).status_code,
            (await h.call("PUT", path, who[name], json=config_body(idp, default_role="viewer"))).status_code,
            (await h.call("DELETE", path, who[name])).status_code,
        )
        if got != statuses:
            failures.append(f"{name}: {got}, expected {statuses}")
    assert not failures, failures
    r = await h.call("GET", f"/api/v1/orgs/{other_org}/sso/saml", other)
    assert r.status_code == 200 and (await r.get_json())["config"] is None  # B's own: none, and nothing of A's


async def test_configuration_validation(harness: Harness, tmp_path: Path) -> None:
    h = harness
    owner = await h.signup()
    org_id = next(iter(owner.orgs.values()))
    path = f"/api/v1/orgs/{org_id}/sso/saml"
    idp = TestIdp(tmp_path)
    cases = [
        (config_body(idp, idp_certificates=[BROKEN_PEM]), "idp_certificates"),
        (config_body(idp, idp_sso_url="http://idp.example.test/sso"), "idp_sso_url"),
        (config_body(idp, allowed_email_domains=["not a domain"]), "allowed_email_domains"),
        (config_body(idp, default_role="owner"), "default_role"),
        (config_body(idp, surprise=True), "surprise"),
        ({"idp_entity_id": idp.entity_id, "idp_sso_url": idp.sso_url}, "idp_certificates"),
    ]
    for body, param in cases:
        r = await h.call("PUT", path, owner, json=body)
        answer = await r.get_json()
        assert r.status_code == 400 and answer["error"]["param"] == param, answer
    await refused(await h.call("DELETE", path, owner), 404, "saml_not_configured")
    r = await h.call("GET", path, owner)
    assert r.status_code == 200 and (await r.get_json())["config"] is None


async def test_sign_in_refusals_are_4xx_in_the_error_shape(harness: Harness, tmp_path: Path, xmlsec: str) -> None:
    h = harness
    owner = await h.signup()
    org_id = next(iter(owner.orgs.values()))
    idp = TestIdp(tmp_path)
    await configure(h, owner, org_id, idp, allowed_email_domains=["acme.example"])

    request, binding = await start(h, org_id, idp)
    unsigned = idp.craft(request, email=email(), sign="none")
    await refused(await post_acs(h, org_id, unsigned, request.relay_state, binding), 401, "saml_unsigned")
    await refused(await post_acs(h, org_id, "%%%", request.relay_state, binding), 401, "saml_malformed")
    outsider = f"sso-{uuid.uuid4().hex[:8]}@evil.example"
    foreign = idp.craft(request, email=outsider)
    await refused(await post_acs(h, org_id, foreign, request.relay_state, binding), 403, "saml_email_domain")

    request, binding = await start(h, org_id, idp)
    response = idp.craft(request, email=email())
    await refused(await post_acs(h, org_id, response, request.relay_state, "x" * 43), 401, "saml_browser_mismatch")
    assert (await post_acs(h, org_id, response, request.relay_state, binding)).status_code == 303
    await refused(await post_acs(h, org_id, response, request.relay_state, binding), 401, "saml_replayed")

    audit = await (await h.call("GET", f"/api/v1/orgs/{org_id}/audit", owner)).get_json()
    reasons = [e["details"].get("reason") for e in audit["data"] if e["action"] == "sso.saml.login_failed"]
    assert reasons == ["replayed", "browser_mismatch", "email_domain", "malformed", "unsigned"]


async def test_no_open_redirect(harness: Harness, tmp_path: Path, xmlsec: str) -> None:
    h = harness
    owner = await h.signup()
    org_id = next(iter(owner.orgs.values()))
    idp = TestIdp(tmp_path)
    await configure(h, owner, org_id, idp)
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"):
        r = await h.call("GET", f"/api/v1/saml/{org_id}/login?return_to={quote(target, safe='')}")
        await refused(r, 400, "saml_invalid_return_to")
    request, binding = await start(h, org_id, idp, "/portal")
    response = idp.craft(request, email=email())
    for relay_state in ("https://evil.example/", "//evil.example", ""):
        await refused(await post_acs(h, org_id, response, relay_state, binding), 400, "saml_invalid_relay_state")
    r = await post_acs(h, org_id, response, request.relay_state, binding)
    assert r.status_code == 303 and r.headers["Location"] == "/portal"


async def test_unconfigured_disabled_and_other_organizations(harness: Harness, tmp_path: Path, xmlsec: str) -> None:
    h = harness
    owner = await h.signup()
    org_id = next(iter(owner.orgs.values()))
    other = await h.signup()
    other_org = next(iter(other.orgs.values()))
    nowhere = str(uuid.uuid4())
    for org in (other_org, nowhere):  # no configuration, or no such organization: the same answer
        await refused(await h.call("GET", f"/api/v1/saml/{org}/login"), 404, "saml_not_configured")
        await refused(await post_acs(h, org, "x", "y", "z"), 404, "saml_not_configured")
    assert (await h.call("GET", f"/api/v1/saml/{nowhere}/metadata")).status_code == 200  # metadata says nothing

    idp = TestIdp(tmp_path)
    await configure(h, owner, org_id, idp)
    other_idp = TestIdp(tmp_path, entity_id="https://idp.other.test/metadata", name="other")
    await configure(h, other, other_org, other_idp)
    request, binding = await start(h, org_id, idp)
    response = idp.craft(request, email=email())
    # Org A's response at org B's ACS: B trusts another IdP.
    await refused(await post_acs(h, other_org, response, request.relay_state, binding), 401, "saml_bad_signature")
    # Switched off: the sign-in under way is refused, and no new one starts.
    await configure(h, owner, org_id, idp, enabled=False)
    await refused(await post_acs(h, org_id, response, request.relay_state, binding), 403, "saml_disabled")
    await refused(await h.call("GET", f"/api/v1/saml/{org_id}/login"), 403, "saml_disabled")
