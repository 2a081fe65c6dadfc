"""Tenant isolation: the route x role x tenant matrix (and /graphql's field x role x tenant one), and row-level
security underneath it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from bitnet_actor.errors import QueryError
from bitnet_actor.stores.postgres import open_database
from tests.api.conftest import ANON, Caller, Harness

# The roles, and which of them each route lets in, written out here by hand (not read from
# bitnet_actor.services.permissions): a wrong entry in the production table fails this test.
ROLES = ("owner", "admin", "member", "viewer", "billing")
EVERYONE = frozenset(ROLES)
MANAGERS = frozenset({"owner", "admin"})
KEY_READERS = frozenset({"owner", "admin", "member", "viewer"})
KEY_MAKERS = frozenset({"owner", "admin", "member"})
BILLING_READERS = frozenset({"owner", "admin", "billing"})


@dataclass
class World:
    org_a: str
    org_b: str
    a: dict[str, Caller]  # role -> member of org A
    b_owner: Caller
    b_key: str  # an admin-scoped key of org B
    a_key_id: str  # a key of org A
    a_invitation: str


async def build_world(h: Harness) -> World:
    owner = await h.signup()
    org_a = next(iter(owner.orgs.values()))
    members = {"owner": owner}
    for role in ROLES[1:]:
        members[role] = await h.invite(owner, org_a, role)
    b_owner = await h.signup()
    org_b = next(iter(b_owner.orgs.values()))
    b_key, _ = await h.key(b_owner, org_b, ["admin", "inference", "models:write", "billing:read"])
    _, a_key_id = await h.key(owner, org_a, ["inference"], name="a-key")
    r = await h.call(
        "POST", f"/api/v1/orgs/{org_a}/invitations", owner, json={"email": "later@example.com", "role": "member"}
    )
    a_invitation = (await r.get_json())["id"]
    await h.call(
        "POST", f"/api/v1/orgs/{org_b}/invitations", b_owner, json={"email": "b@example.com", "role": "viewer"}
    )
    return World(org_a, org_b, members, b_owner, b_key, a_key_id, a_invitation)


# (method, path template, body factory, roles allowed). Paths use {org}, {key}, {member}, {invitation};
# a `prepare` hook creates a fresh target so destructive calls don't depend on order.
Prepare = Callable[[Harness, World], Awaitable[dict[str, str]]]


async def fresh_key(h: Harness, w: World) -> dict[str, str]:
    _, key_id = await h.key(w.a["owner"], w.org_a, ["inference"], name="victim")
    return {"key": key_id}


async def fresh_member(h: Harness, w: World) -> dict[str, str]:
    victim = await h.invite(w.a["owner"], w.org_a, "viewer")
    assert victim.user_id
    return {"member": victim.user_id}


async def fresh_invitation(h: Harness, w: World) -> dict[str, str]:
    r = await h.call(
        "POST",
        f"/api/v1/orgs/{w.org_a}/invitations",
        w.a["owner"],
        json={"email": f"x-{uuid.uuid4().hex[:6]}@example.com", "role": "viewer"},
    )
    return {"invitation": (await r.get_json())["id"]}


async def an_invoice(h: Harness, w: World) -> dict[str, str]:
    r = await h.call("GET", f"/api/v1/orgs/{w.org_a}/invoices", w.a["owner"])
    return {"invoice": (await r.get_json())["data"][0]["id"]}


async def a_model(h: Harness, w: World) -> dict[str, str]:
    """A fresh published version of a model in org A (no upload route needed: the registry directly)."""
    from bitnet_actor.services.models import registry

    db, org = h.system.stores.db, uuid.UUID(w.org_a)
    name = f"m-{uuid.uuid4().hex[:8]}"
    sha = uuid.uuid4().hex * 2
    async with db.transaction(org_id=org) as tx:
        blob = await tx.fetchval(
            "INSERT INTO model_blobs (org_id, sha256, object_key, bytes, format) VALUES ($1, $2, $3, 1, 'gguf')"
            " RETURNING id",
            org,
            sha,
            f"sha256/{sha}",
        )
    v = await registry.create_version(db, org, name=name, version="1", blob_id=blob, sha256=sha)
    await registry.publish(db, org, v.id, facts={"architecture": "bitnet"})
    return {"model": name}


async def a_route(h: Harness, w: World) -> dict[str, str]:
    """A fresh model of org A and a route over its version 1."""
    from bitnet_actor.services.models import routes

    model = (await a_model(h, w))["model"]
    name = f"r-{uuid.uuid4().hex[:8]}"
    await routes.put_route(h.system.stores.db, uuid.UUID(w.org_a), name, [{"version": f"{model}:1", "weight": 100}])
    return {"model": model, "route": name}


async def an_upload(h: Harness, w: World) -> dict[str, str]:
    r = await h.call("POST", f"/api/v1/orgs/{w.org_a}/models/uploads", w.a["owner"], json={"total_bytes": 10})
    return {"upload": (await r.get_json())["id"]}


async def a_job(h: Harness, w: World) -> dict[str, str]:
    """A finished job of org A (a fresh source model; finished, so its events stream ends at once) and no
    unfinished ones (so creating one is under the limit)."""
    ids = await a_model(h, w)
    db, org = h.system.stores.db, uuid.UUID(w.org_a)
    async with db.transaction(org_id=org) as tx:
        await tx.execute("UPDATE model_jobs SET state = 'cancelled' WHERE state IN ('queued', 'running')")
        job = await tx.fetchval(
            "INSERT INTO model_jobs (org_id, kind, target, output_name, output_version, state)"
            " VALUES ($1, 'quantize', 'tq2_0', 'out', '1', 'cancelled') RETURNING id",
            org,
        )
    return {**ids, "job": str(job)}


async def nothing(h: Harness, w: World) -> dict[str, str]:
    return {}


ROUTES: list[tuple[str, str, dict | str | None, frozenset[str], Prepare]] = [
    ("GET", "/api/v1/orgs/{org}", None, EVERYONE, nothing),
    ("PATCH", "/api/v1/orgs/{org}", "rename", MANAGERS, nothing),
    ("GET", "/api/v1/orgs/{org}/members", None, EVERYONE, nothing),
    ("PATCH", "/api/v1/orgs/{org}/members/{member}", {"role": "member"}, MANAGERS, fresh_member),
    ("DELETE", "/api/v1/orgs/{org}/members/{member}", None, MANAGERS, fresh_member),
    ("GET", "/api/v1/orgs/{org}/invitations", None, MANAGERS, nothing),
    ("POST", "/api/v1/orgs/{org}/invitations", "invite", MANAGERS, nothing),
    ("DELETE", "/api/v1/orgs/{org}/invitations/{invitation}", None, MANAGERS, fresh_invitation),
    ("GET", "/api/v1/orgs/{org}/keys", None, KEY_READERS, nothing),
    ("POST", "/api/v1/orgs/{org}/keys", {"name": "m", "scopes": ["models:read"]}, KEY_MAKERS, nothing),
    ("DELETE", "/api/v1/orgs/{org}/keys/{key}", None, KEY_MAKERS, fresh_key),
    ("POST", "/api/v1/orgs/{org}/keys/{key}/rotate", {"grace_seconds": 0}, KEY_MAKERS, fresh_key),
    ("GET", "/api/v1/orgs/{org}/audit", None, MANAGERS, nothing),
    ("GET", "/api/v1/orgs/{org}/usage/completions?start_time=1700000000", None, BILLING_READERS, nothing),
    ("GET", "/api/v1/orgs/{org}/costs?start_time=1700000000", None, BILLING_READERS, nothing),
    ("GET", "/api/v1/orgs/{org}/invoices", None, BILLING_READERS, nothing),
    ("GET", "/api/v1/orgs/{org}/invoices/{invoice}", None, BILLING_READERS, an_invoice),
    ("GET", "/api/v1/orgs/{org}/invoices/{invoice}.html", None, BILLING_READERS, an_invoice),
    ("GET", "/api/v1/orgs/{org}/models", None, KEY_READERS, nothing),
    ("GET", "/api/v1/orgs/{org}/models/{model}", None, KEY_READERS, a_model),
    ("GET", "/api/v1/orgs/{org}/models/{model}/versions/1", None, KEY_READERS, a_model),
    ("GET", "/api/v1/orgs/{org}/models/{model}/versions/1/lineage", None, KEY_READERS, a_model),
    ("PATCH", "/api/v1/orgs/{org}/models/{model}/versions/1", {"evals": {"x": 1}}, KEY_MAKERS, a_model),
    ("POST", "/api/v1/orgs/{org}/models/{model}/versions/1/deprecate", None, KEY_MAKERS, a_model),
    ("DELETE", "/api/v1/orgs/{org}/models/{model}/versions/1", None, KEY_MAKERS, a_model),
    ("PUT", "/api/v1/orgs/{org}/models/{model}/aliases/stable", {"version": "1"}, KEY_MAKERS, a_model),
    ("POST", "/api/v1/orgs/{org}/models/{model}/versions/1/download", None, KEY_MAKERS, a_model),
    ("POST", "/api/v1/orgs/{org}/models/uploads", {"total_bytes": 10}, KEY_MAKERS, nothing),
    ("GET", "/api/v1/orgs/{org}/routes", None, KEY_READERS, nothing),
    ("GET", "/api/v1/orgs/{org}/routes/{route}", None, KEY_READERS, a_route),
    ("PUT", "/api/v1/orgs/{org}/routes/{route}", "route", KEY_MAKERS, a_route),
    ("DELETE", "/api/v1/orgs/{org}/routes/{route}", None, KEY_MAKERS, a_route),
    ("GET", "/api/v1/orgs/{org}/models/uploads/{upload}", None, KEY_MAKERS, an_upload),
    ("DELETE", "/api/v1/orgs/{org}/models/uploads/{upload}", None, KEY_MAKERS, an_upload),
    ("POST", "/api/v1/orgs/{org}/jobs", "job", KEY_MAKERS, a_job),
    ("GET", "/api/v1/orgs/{org}/jobs", None, KEY_READERS, nothing),
    ("GET", "/api/v1/orgs/{org}/jobs/{job}", None, KEY_READERS, a_job),
    ("GET", "/api/v1/orgs/{org}/jobs/{job}/events", None, KEY_READERS, a_job),
    ("POST", "/api/v1/orgs/{org}/jobs/{job}/cancel", None, KEY_MAKERS, a_job),
]


def body_for(spec: dict | str | None, ids: dict[str, str]) -> dict | None:
    if spec == "route":
        return {"targets": [{"version": f"{ids['model']}:1", "weight": 100}]}
    if spec == "job":
        out = f"out-{uuid.uuid4().hex[:8]}"
        return {"source": f"{ids['model']}:1", "target": "tq2_0", "output_name": out, "output_version": "1"}
    if spec == "rename":
        return {"name": f"renamed-{uuid.uuid4().hex[:8]}"}
    if spec == "invite":
        return {"email": f"i-{uuid.uuid4().hex[:6]}@example.com", "role": "viewer"}
    return spec  # type: ignore[return-value]


@pytest.mark.slow
async def test_route_role_tenant_matrix(harness: Harness) -> None:
    h = harness
    w = await build_world(h)
    failures: list[str] = []
    assert set(w.a) == EVERYONE
    for method, template, body, allowed, prepare in ROUTES:
        for who, caller in [
            *w.a.items(),
            ("org B owner", w.b_owner),
            ("org B key", Caller(bearer=w.b_key)),
            ("anonymous", ANON),
        ]:
            ids = await prepare(h, w)
            path = template.format(org=w.org_a, **ids)
            r = await h.call(method, path, caller, json=body_for(body, ids))
            if who == "anonymous":
                expected = {401}
            elif who.startswith("org B"):
                expected = {404}  # not 403: nothing leaks about org A
            elif who in allowed:
                expected = {200, 201, 204}
            else:
                expected = {403}
            if r.status_code not in expected:
                failures.append(f"{method} {template} as {who}: {r.status_code} (expected {sorted(expected)})")
            if r.status_code >= 400:
                body_json = await r.get_json()
                assert set(body_json["error"]) == {"message", "type", "param", "code"}
    assert not failures, "\n".join(failures)


# /graphql: each field of an organization, and which roles may read it: the same sets as the REST route that
# reads the same thing above. {key}, {job}, {model}, {invoice} are org A's.
GRAPHQL_FIELDS: list[tuple[str, frozenset[str]]] = [
    ("name", EVERYONE),
    ("region", EVERYONE),
    ("members { email }", EVERYONE),
    ("keys { id }", KEY_READERS),
    ('key(id: "{key}") { id }', KEY_READERS),
    ("models { name }", KEY_READERS),
    ('model(name: "{model}") { name }', KEY_READERS),
    ("jobs { id }", KEY_READERS),
    ('job(id: "{job}") { id }', KEY_READERS),
    ("usage(startTime: 1700000000) { hasMore }", BILLING_READERS),
    ("invoices { id }", BILLING_READERS),
    ('invoice(id: "{invoice}") { id }', BILLING_READERS),
]


@pytest.mark.slow
async def test_graphql_field_role_tenant_matrix(harness: Harness) -> None:
    """Every field x every role of org A, org B's owner and key, and nobody: allowed fields answer, others are
    null with FORBIDDEN (REST's 403), org B gets not even org A's id (NOT_FOUND, REST's 404), nobody a 401."""
    h = harness
    w = await build_world(h)
    ids = {**await a_job(h, w), **await an_invoice(h, w), "key": w.a_key_id}
    failures: list[str] = []
    for selection, allowed in GRAPHQL_FIELDS:
        for name, value in ids.items():
            selection = selection.replace("{" + name + "}", value)
        field = selection.split("(")[0].split(" ")[0]
        query = '{ organization(id: "%s") { id %s } }' % (w.org_a, selection)  # noqa: UP031  (GraphQL's braces)
        for who, caller in [
            *w.a.items(),
            ("org B owner", w.b_owner),
            ("org B key", Caller(bearer=w.b_key)),
            ("anonymous", ANON),
        ]:
            r = await h.call("POST", "/graphql", caller, json={"query": query})
            body = await r.get_json()
            errors = [(tuple(e.get("path") or ()), e["extensions"]["code"]) for e in body.get("errors", [])]
            if who == "anonymous":
                ok = r.status_code == 401 and "data" not in body
            elif who.startswith("org B"):
                ok = body.get("data") == {"organization": None} and errors == [(("organization",), "NOT_FOUND")]
            elif who in allowed:
                ok = not errors and body["data"]["organization"][field] is not None
            else:
                ok = body["data"]["organization"] == {"id": w.org_a, field: None} and errors == [
                    (("organization", field), "FORBIDDEN")
                ]
            if not ok:
                failures.append(f"{field} as {who}: {r.status_code} {body}")
    assert not failures, "\n".join(failures)


async def test_foreign_objects_are_404_inside_own_org(harness: Harness) -> None:
    """Org B's owner, acting in org B's own path, cannot reach org A's key by id."""
    w = await build_world(harness)
    for method in ("DELETE",):
        r = await harness.call(method, f"/api/v1/orgs/{w.org_b}/keys/{w.a_key_id}", w.b_owner)
        assert r.status_code == 404
    r = await harness.call("POST", f"/api/v1/orgs/{w.org_b}/keys/{w.a_key_id}/rotate", Caller(bearer=w.b_key), json={})
    assert r.status_code == 404
    r = await harness.call("DELETE", f"/api/v1/orgs/{w.org_b}/invitations/{w.a_invitation}", w.b_owner)
    assert r.status_code == 404
    a_owner_id = w.a["owner"].user_id
    r = await harness.call("PATCH", f"/api/v1/orgs/{w.org_b}/members/{a_owner_id}", w.b_owner, json={"role": "viewer"})
    assert r.status_code == 404
    # And org A's key still works: nothing was changed by those attempts.
    keys = await (await harness.call("GET", f"/api/v1/orgs/{w.org_a}/keys", w.a["owner"])).get_json()
    assert any(k["id"] == w.a_key_id and k["active"] for k in keys["data"])


async def test_org_keeps_an_owner(harness: Harness) -> None:
    owner = await harness.signup()
    org = next(iter(owner.orgs.values()))
    admin = await harness.invite(owner, org, "admin")
    r = await harness.call("PATCH", f"/api/v1/orgs/{org}/members/{owner.user_id}", owner, json={"role": "admin"})
    assert r.status_code == 409
    r = await harness.call("DELETE", f"/api/v1/orgs/{org}/members/{owner.user_id}", owner)
    assert r.status_code == 409
    r = await harness.call("PATCH", f"/api/v1/orgs/{org}/members/{admin.user_id}", admin, json={"role": "owner"})
    assert r.status_code == 403  # an admin cannot make owners
    r = await harness.call("PATCH", f"/api/v1/orgs/{org}/members/{admin.user_id}", owner, json={"role": "owner"})
    assert r.status_code == 200
    r = await harness.call("DELETE", f"/api/v1/orgs/{org}/members/{owner.user_id}", owner)
    assert r.status_code == 204  # now there is another owner


async def test_rls_hides_other_tenants_rows_without_where(harness: Harness, pg_dsn: str) -> None:
    w = await build_world(harness)
    db = harness.system.stores.db  # connected as the service role
    role = await db.fetchval("SELECT current_user")
    assert role == "bitnet_app"
    flags = await db.fetchrow("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
    assert not flags["rolsuper"] and not flags["rolbypassrls"]
    owner = await db.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = 'api_keys'")
    assert owner != role
    forced = await db.fetch("SELECT relname FROM pg_class WHERE relforcerowsecurity AND relkind IN ('r', 'p')")
    assert {r["relname"] for r in forced} >= {
        "organizations",
        "memberships",
        "api_keys",
        "invitations",
        "audit_log",
        "model_versions",
        "model_blobs",
        "model_aliases",
        "model_uploads",
        "model_upload_parts",
        "model_jobs",
        "model_routes",
        "org_billing",
        "usage_events",
        "usage_rollups",
        "invoices",
        "invoice_lines",
    }
    async with db.transaction(org_id=w.org_b) as tx:
        for table in ("api_keys", "memberships", "invitations", "audit_log", "organizations"):
            rows = await tx.fetch(f"SELECT * FROM {table}")  # no WHERE clause at all
            column = "id" if table == "organizations" else "org_id"
            assert rows, table
            assert {str(r[column]) for r in rows} == {w.org_b}, table
        # Writing into another tenant is refused too.
        with pytest.raises(QueryError, match="row-level security"):
            await tx.execute(
                "INSERT INTO api_keys (org_id, name, key_hash, prefix, last4, scopes)"
                " VALUES ($1, 'x', $2, 'p', 'l', '{inference}')",
                uuid.UUID(w.org_a),
                b"\x00" * 32,
            )
    async with db.transaction() as tx:  # no tenant at all: nothing
        assert await tx.fetch("SELECT * FROM api_keys") == []
    # The audit log is append-only for the service role.
    async with db.transaction(org_id=w.org_a) as tx:
        with pytest.raises(QueryError, match="permission denied"):
            await tx.execute("DELETE FROM audit_log")
    async with open_database(pg_dsn) as owner_db:  # the tables' owner sees everything
        assert (
            await owner_db.fetchval(
                "SELECT count(DISTINCT org_id) FROM api_keys WHERE org_id = ANY($1::uuid[])",
                [uuid.UUID(w.org_a), uuid.UUID(w.org_b)],
            )
            == 2
        )


# Routes of an organization that the matrix above leaves out, each with where its roles and tenants are tested.
NOT_IN_MATRIX: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/orgs/{org_id}/models"): "a streamed model upload: tests/api/test_uploads_api.py",
    ("PUT", "/api/v1/orgs/{org_id}/models/uploads/{upload_id}"): "upload bytes: tests/api/test_uploads_api.py",
    ("POST", "/api/v1/orgs/{org_id}/models/uploads/{upload_id}/complete"): "tests/api/test_uploads_api.py",
    ("DELETE", "/api/v1/orgs/{org_id}/models/{name}/aliases/{alias}"): "tests/api/test_registry_api.py",
    ("GET", "/api/v1/orgs/{org_id}/sso/saml"): "its own role x tenant table: tests/api/test_saml_sso.py",
    ("PUT", "/api/v1/orgs/{org_id}/sso/saml"): "its own role x tenant table: tests/api/test_saml_sso.py",
    ("DELETE", "/api/v1/orgs/{org_id}/sso/saml"): "its own role x tenant table: tests/api/test_saml_sso.py",
    ("POST", "/api/v1/orgs/{org_id}/billing/checkout"): "needs Stripe: roles and tenants in test_billing_checkout.py",
    ("POST", "/api/v1/orgs/{org_id}/billing/portal"): "needs Stripe: roles and tenants in test_billing_checkout.py",
}


async def test_every_route_of_an_organization_is_in_the_matrix_or_accounted_for(harness: Harness) -> None:
    """A new /api/v1/orgs/<org> route must join ROUTES (or NOT_IN_MATRIX, saying where it is tested)."""
    app_routes = set()
    for rule in harness.client.app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/orgs/<org:org_id>"):
            path = re.sub(r"<(?:[^:>]+:)?(\w+)>", r"{\1}", rule.rule)
            app_routes |= {(method, path) for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    names = {"{org}": "{org_id}", "{key}": "{key_id}", "{member}": "{user_id}", "{invitation}": "{invitation_id}",
             "{invoice}": "{invoice_id}", "{model}": "{name}", "/versions/1": "/versions/{version}",
             "/aliases/stable": "/aliases/{alias}", "{route}": "{public_name}", "{upload}": "{upload_id}",
             "{job}": "{job_id}"}  # fmt: skip
    covered = set()
    for method, template, *_ in ROUTES:
        template = template.split("?", 1)[0]
        for placeholder, name in names.items():
            template = template.replace(placeholder, name)
        covered.add((method, template))
    missing = app_routes - covered - set(NOT_IN_MATRIX)
    assert not missing, f"routes in neither ROUTES nor NOT_IN_MATRIX: {sorted(missing)}"
    assert not (set(NOT_IN_MATRIX) - app_routes), "NOT_IN_MATRIX names routes the app lacks"
