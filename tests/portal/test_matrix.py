"""The route x role x tenant matrix of tests/api/test_isolation.py, extended to the portal's pages and forms:
each route as each role of organization A, as organization B's owner (a 404: nothing about A leaks), and
signed out (GET: to the sign-in page; POST: refused for want of a CSRF token). Every answer also passes the
checks of every page (security headers, accessibility basics, nothing the CSP would block). The app runs with
Stripe configured (the local Stripe server), so the billing forms do their work."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

from bitnet_actor.services.billing import plans
from tests.api.conftest import ANON, Caller, Harness
from tests.api.test_isolation import (
    BILLING_READERS,
    EVERYONE,
    KEY_MAKERS,
    KEY_READERS,
    MANAGERS,
    Prepare,
    World,
    a_job,
    a_model,
    a_route,
    build_world,
    fresh_invitation,
    fresh_key,
    fresh_member,
    nothing,
)
from tests.portal.conftest import Browser
from tests.portal.uploading import DEMO_MODEL, post_multipart, tar_of
from tests.saml_idp import make_certificate

MODEL_READERS, MODEL_WRITERS = KEY_READERS, KEY_MAKERS  # models:read, models:write (the same roles)


async def a_version(h: Harness, w: World) -> dict[str, str]:
    """A fresh published version ``{model}:{version}`` of org A."""
    return {**await a_model(h, w), "version": "1"}


async def an_alias(h: Harness, w: World) -> dict[str, str]:
    """A fresh model of org A with the alias ``stable``."""
    from bitnet_actor.services.models import registry

    ids = await a_model(h, w)
    await registry.set_alias(h.system.stores.db, uuid.UUID(w.org_a), ids["model"], "stable", "1")
    return {**ids, "alias": "stable"}


if TYPE_CHECKING:
    from bitnet_actor.stores.postgres import Database
    from tests.stripe_server import StripeServer

# Written out by hand, as test_isolation's sets: billing:manage is the owners' and billing members'.
BILLING_MANAGERS = frozenset({"owner", "billing"})
MATRIX_PLAN = "portal-matrix-paid"  # given this run's Stripe price by the test
CERT = make_certificate("idp.a.example")[1]


async def a_paid_plan(h: Harness, w: World) -> dict[str, str]:
    return {"plan": MATRIX_PLAN}


async def fresh_saml(h: Harness, w: World) -> dict[str, str]:
    """Organization A with a SAML configuration (a destructive call may have removed the last one)."""
    body = {"idp_entity_id": "https://idp.a.example/metadata", "idp_sso_url": "https://idp.a.example/sso",
            "idp_certificates": [CERT]}  # fmt: skip
    r = await h.call("PUT", f"/api/v1/orgs/{w.org_a}/sso/saml", w.a["owner"], json=body)
    assert r.status_code == 200, await r.get_data()
    return {}


ORG = "/portal/orgs/{org}"
DEMO_TAR = tar_of(DEMO_MODEL)
# (method, path template, form fields, roles allowed, prepare)
ROUTES: list[tuple[str, str, dict[str, Any] | str | None, frozenset[str], Prepare]] = [
    ("GET", ORG, None, EVERYONE, nothing),
    ("GET", ORG + "/keys", None, KEY_READERS, nothing),
    ("GET", ORG + "/keys/new", None, KEY_MAKERS, nothing),
    ("POST", ORG + "/keys", {"name": "m", "scopes": "models:read"}, KEY_MAKERS, nothing),
    ("GET", ORG + "/keys/{key}/revoke", None, KEY_MAKERS, fresh_key),
    ("POST", ORG + "/keys/{key}/revoke", {}, KEY_MAKERS, fresh_key),
    ("GET", ORG + "/keys/{key}/rotate", None, KEY_MAKERS, fresh_key),
    ("POST", ORG + "/keys/{key}/rotate", {"grace_seconds": "0"}, KEY_MAKERS, fresh_key),
    ("GET", ORG + "/playground", None, KEY_MAKERS, nothing),  # inference: owner, admin, member
    ("GET", ORG + "/usage", None, BILLING_READERS, nothing),
    ("GET", ORG + "/usage.csv", None, BILLING_READERS, nothing),
    ("GET", ORG + "/billing", None, BILLING_READERS, nothing),
    ("POST", ORG + "/billing/checkout", "checkout", BILLING_MANAGERS, a_paid_plan),
    ("POST", ORG + "/billing/portal", {}, BILLING_MANAGERS, nothing),
    ("GET", ORG + "/team", None, EVERYONE, nothing),
    ("POST", ORG + "/team/members/{member}/role", {"role": "member"}, MANAGERS, fresh_member),
    ("POST", ORG + "/team/members/{member}/remove", {}, MANAGERS, fresh_member),
    ("POST", ORG + "/team/invitations", "invite", MANAGERS, nothing),
    ("POST", ORG + "/team/invitations/{invitation}/revoke", {}, MANAGERS, fresh_invitation),
    ("GET", ORG + "/audit", None, MANAGERS, nothing),
    ("GET", ORG + "/audit.csv", None, MANAGERS, nothing),
    ("GET", ORG + "/settings", None, EVERYONE, nothing),
    ("POST", ORG + "/settings/name", "rename", MANAGERS, nothing),
    ("GET", ORG + "/models", None, MODEL_READERS, nothing),
    ("GET", ORG + "/models/{model}", None, MODEL_READERS, a_model),
    ("POST", ORG + "/models/{model}/aliases", {"alias": "beta", "version": "1"}, MODEL_WRITERS, a_model),
    ("POST", ORG + "/models/{model}/aliases/{alias}/remove", {}, MODEL_WRITERS, an_alias),
    ("GET", ORG + "/models/{model}/versions/{version}", None, MODEL_READERS, a_version),
    ("POST", ORG + "/models/{model}/versions/{version}/download", {}, MODEL_WRITERS, a_version),
    ("POST", ORG + "/models/{model}/versions/{version}/deprecate", {}, MODEL_WRITERS, a_version),
    ("GET", ORG + "/models/{model}/versions/{version}/delete", None, MODEL_WRITERS, a_version),
    ("POST", ORG + "/models/{model}/versions/{version}/delete", {}, MODEL_WRITERS, a_version),
    ("GET", ORG + "/uploads/new", None, MODEL_WRITERS, nothing),
    ("POST", ORG + "/uploads", "upload", MODEL_WRITERS, nothing),
    ("GET", ORG + "/jobs", None, MODEL_READERS, nothing),
    ("GET", ORG + "/jobs/new", None, MODEL_WRITERS, nothing),
    ("POST", ORG + "/jobs", "job", MODEL_WRITERS, a_job),
    ("GET", ORG + "/jobs/{job}", None, MODEL_READERS, a_job),
    ("POST", ORG + "/jobs/{job}/cancel", {}, MODEL_WRITERS, a_job),
    ("GET", ORG + "/routes", None, MODEL_READERS, nothing),
    ("GET", ORG + "/routes/new", None, MODEL_WRITERS, nothing),
    ("POST", ORG + "/routes", "new-route", MODEL_WRITERS, a_model),
    ("GET", ORG + "/routes/{route}/edit", None, MODEL_WRITERS, a_route),
    ("POST", ORG + "/routes/{route}", "route", MODEL_WRITERS, a_route),
    ("GET", ORG + "/routes/{route}/delete", None, MODEL_WRITERS, a_route),
    ("POST", ORG + "/routes/{route}/delete", {}, MODEL_WRITERS, a_route),
    ("POST", ORG + "/settings/sso", "sso", MANAGERS, nothing),
    ("GET", ORG + "/settings/sso/delete", None, MANAGERS, fresh_saml),
    ("POST", ORG + "/settings/sso/delete", {}, MANAGERS, fresh_saml),
]


def form_for(spec: dict[str, Any] | str | None, ids: dict[str, str]) -> dict[str, Any]:
    if spec == "job":
        return {"source": f"{ids['model']}:1", "target": "tq2_0", "output_name": f"out-{uuid.uuid4().hex[:8]}",
                "output_version": "1"}  # fmt: skip
    if spec == "new-route":
        return {"public_name": f"r-{uuid.uuid4().hex[:8]}", "version-0": f"{ids['model']}:1", "weight-0": "100"}
    if spec == "route":
        return {"version-0": f"{ids['model']}:1", "weight-0": "100"}
    if spec == "checkout":
        return {"plan": ids["plan"]}
    if spec == "sso":
        entity = f"https://idp-{uuid.uuid4().hex[:6]}.example/metadata"
        return {"enabled": "on", "idp_entity_id": entity, "idp_sso_url": "https://idp.a.example/sso",
                "idp_certificates": CERT, "default_role": "member"}  # fmt: skip
    if spec == "invite":
        return {"email": f"i-{uuid.uuid4().hex[:6]}@example.com", "role": "viewer"}
    if spec == "rename":
        return {"name": f"renamed-{uuid.uuid4().hex[:8]}"}
    assert isinstance(spec, dict)
    return spec


async def run_matrix(h: Harness, w: World) -> list[str]:
    failures: list[str] = []
    callers: list[tuple[str, Caller]] = [*w.a.items(), ("org B owner", w.b_owner), ("anonymous", ANON)]
    for method, template, form, allowed, prepare in ROUTES:
        for who, caller in callers:
            ids = await prepare(h, w)
            path = template.format(org=w.org_a, **ids)
            browser = Browser(h) if caller is ANON else Browser(h).as_caller(caller)
            if method == "GET":
                r = await browser.get(path)
            elif form == "upload":  # a multipart form streamed into the upload service: a real model
                fields = [("csrf_token", caller.csrf or ""), ("name", f"up-{uuid.uuid4().hex[:8]}"), ("version", "1")]
                r = await post_multipart(browser, path, fields, ("file", "demo.tar", DEMO_TAR))
            else:
                data = {**form_for(form, ids), "csrf_token": caller.csrf or ""}
                r = await browser.post(path, list(data.items()))
            if who == "anonymous":
                expected = {303} if method == "GET" else {403}
            elif who.startswith("org B"):
                expected = {404}
            elif who in allowed:
                expected = {200} if method == "GET" else {200, 303}
            else:
                expected = {403}
            if r.status not in expected:
                failures.append(f"{method} {template} as {who}: {r.status} (expected {sorted(expected)})")
            elif (
                who == "anonymous" and method == "GET" and not r.location.startswith("/portal/login?next=/portal/orgs/")
            ):
                failures.append(f"{method} {template} signed out: to {r.location!r}, not the sign-in page")
    return failures


@pytest.mark.slow
async def test_portal_route_role_tenant_matrix(billed: Harness, db: Database, stripe_server: StripeServer) -> None:
    await plans.upsert_plan(db, MATRIX_PLAN, {"stripe_price_id": stripe_server.create_price()})
    w = await build_world(billed)
    assert set(w.a) == EVERYONE
    failures = await run_matrix(billed, w)
    assert not failures, "\n".join(failures)


def test_every_portal_route_of_an_organization_is_in_the_matrix() -> None:
    from quart import Quart

    import portal.views  # noqa: F401  (registers the routes)
    from portal.web import blueprint

    app = Quart("probe")
    app.register_blueprint(blueprint)
    routes = {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/portal/orgs/<uuid:org_id>")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    names = {"{org}": "<uuid:org_id>", "{key}": "<uuid:key_id>", "{member}": "<uuid:user_id>",
             "{invitation}": "<uuid:invitation_id>", "{model}": "<name>", "{version}": "<version>",
             "{alias}": "<alias>", "{job}": "<uuid:job_id>", "{route}": "<public_name>"}  # fmt: skip
    covered = set()
    for method, template, *_ in ROUTES:
        for placeholder, converter in names.items():
            template = template.replace(placeholder, converter)
        covered.add((method, template))
    assert routes == covered
