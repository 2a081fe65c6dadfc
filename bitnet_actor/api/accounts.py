"""The account and tenancy JSON API under ``/api/v1`` (the portal uses it too).

Every route authenticates through ``bitnet_actor.api.auth`` and checks one permission of the role table in
``bitnet_actor.services.permissions``; bodies are strict (unknown fields are 400s).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from quart import Blueprint, Response, jsonify, request

from bitnet_actor.api.auth import (
    OrgRef,
    authenticate,
    client_ip,
    handles,
    org_access,
    request_actor,
    require_user,
)
from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.validate import Field, parse_body, parse_datetime
from bitnet_actor.services import api_keys, audit, tenancy
from bitnet_actor.services.billing import plans
from bitnet_actor.services.permissions import ROLE_PERMISSIONS, SCOPES, scopes_allowed
from bitnet_actor.services.sessions import COOKIE_NAME

if TYPE_CHECKING:
    from bitnet_actor.services.sessions import Session

__all__ = ["blueprint", "json_ready", "start_session", "with_session_cookie"]

blueprint = Blueprint("api_v1", __name__, url_prefix="/api/v1")


def json_ready(value: Any) -> Any:
    """Dataclasses, UUIDs and datetimes as JSON-friendly values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_ready(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, frozenset, set)):
        return [json_ready(v) for v in value]
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _json(value: Any, status: int = 200) -> Response:
    response = jsonify(json_ready(value))
    response.status_code = status
    return response


def _link_base(path: str) -> str:
    return handles().settings.base_url + path


def with_session_cookie(response: Response, session: Session) -> Response:
    """``response`` setting the session cookie of ``session`` (the portal signs in with it too)."""
    response.set_cookie(
        COOKIE_NAME,
        session.id,
        max_age=handles().auth.sessions.absolute_s,
        path="/",
        secure=True,
        httponly=True,
        samesite="Lax",
    )
    return response


async def start_session(user_id: UUID, body: dict[str, Any], status: int = 200) -> Response:
    """Sign ``user_id`` in: a fresh session (ending the one presented, if any), cookie and CSRF token."""
    sessions = handles().auth.sessions
    session = await sessions.create(user_id, replacing=request.cookies.get(COOKIE_NAME))
    user = await tenancy.get_user(handles().stores.db, user_id)
    return with_session_cookie(_json({**body, "user": user, "csrf_token": session.csrf_token}, status), session)


# ------------------------------------------------------------------ accounts


@blueprint.post("/signup")
async def signup() -> Response:
    """Start a sign-up. The answer is the same whether or not the email has an account."""
    body = await parse_body(
        {
            "email": Field(str, max_len=320),
            "password": Field(str, max_len=1024),
            "organization": Field(str, max_len=200),
            "name": Field(str, required=False, max_len=200),
        }
    )
    await tenancy.signup_start(
        handles().stores.db,
        handles().auth.mailer,
        email=body["email"],
        password=body["password"],
        org_name=body["organization"],
        name=body.get("name", ""),
        link_base=_link_base("/signup/verify"),
    )
    return _json({"status": "verification_sent", "message": "check your email to finish signing up"}, 202)


@blueprint.post("/signup/verify")
async def signup_verify() -> Response:
    """Finish a sign-up from the emailed token; signs the new user in."""
    body = await parse_body({"token": Field(str, max_len=200)})
    user_id, org_id = await tenancy.signup_verify(
        handles().stores.db, token=body["token"], actor=request_actor(), region=handles().settings.region
    )
    org = await tenancy.get_org(handles().stores.db, org_id)
    return await start_session(user_id, {"organization": org}, 201)


@blueprint.post("/password/set")
async def password_set() -> Response:
    """Set a password from an emailed one-time token; signs the user in and ends their other sessions."""
    body = await parse_body({"token": Field(str, max_len=200), "password": Field(str, max_len=1024)})
    user_id = await tenancy.set_password_with_token(handles().stores.db, token=body["token"], password=body["password"])
    await handles().auth.sessions.revoke_user(user_id)
    refresh = handles().auth.refresh
    if refresh is not None:
        await refresh.revoke_user(str(user_id))
    return await start_session(user_id, {})


@blueprint.post("/login")
async def login() -> Response:
    """Sign in with email and password; one message for every failure."""
    body = await parse_body({"email": Field(str, max_len=320), "password": Field(str, max_len=1024)})
    user_id = await tenancy.authenticate_password(
        handles().stores.db, handles().auth.throttle, email=body["email"], password=body["password"], ip=client_ip()
    )
    return await start_session(user_id, {})


@blueprint.post("/logout")
async def logout() -> Response:
    """End the current session (a no-op without one)."""
    principal = await authenticate(optional=True)
    if principal is not None and principal.session is not None:
        await handles().auth.sessions.delete(principal.session.id)
    response = Response(b"", status=204)
    response.delete_cookie(COOKIE_NAME, path="/", secure=True, httponly=True, samesite="Lax")
    return response


@blueprint.get("/me")
async def me() -> Response:
    """The signed-in user and their organizations."""
    principal = await require_user()
    assert principal.user_id is not None
    db = handles().stores.db
    user = await tenancy.get_user(db, principal.user_id)
    memberships = await tenancy.user_memberships(db, principal.user_id)
    return _json({"user": user, "organizations": [{**json_ready(m.org), "role": m.role} for m in memberships]})


# ------------------------------------------------------------------ organizations


@blueprint.get("/orgs")
async def list_orgs() -> Response:
    """The caller's organizations."""
    principal = await require_user()
    assert principal.user_id is not None
    memberships = await tenancy.user_memberships(handles().stores.db, principal.user_id)
    return _json({"data": [{**json_ready(m.org), "role": m.role} for m in memberships]})


@blueprint.post("/orgs")
async def create_org() -> Response:
    """Create an organization; the caller becomes its owner."""
    principal = await require_user()
    assert principal.user_id is not None
    body = await parse_body({"name": Field(str, max_len=200)})
    org = await tenancy.create_org(
        handles().stores.db,
        name=body["name"],
        owner=principal.user_id,
        actor=request_actor(principal),
        region=handles().settings.region,
    )
    return _json({**json_ready(org), "role": "owner"}, 201)


async def _org_settings(org_id: UUID) -> dict[str, Any]:
    """The organization's own settings (the response cache's lifetime; null: off)."""
    profile = await plans.org_profile(handles().stores.db, org_id)
    return {"response_cache_ttl_s": profile.response_cache_ttl_s}


@blueprint.get("/orgs/<org:org_id>")
async def get_org(org_id: OrgRef) -> Response:
    """One organization, with its settings."""
    access = await org_access(org_id, "org:read")
    org = await tenancy.get_org(handles().stores.db, access.org_id)
    return _json({**json_ready(org), **await _org_settings(access.org_id), "role": access.role})


@blueprint.patch("/orgs/<org:org_id>")
async def update_org(org_id: OrgRef) -> Response:
    """Rename an organization and / or change its settings: ``response_cache_ttl_s`` (seconds, 1 .. 7 days;
    null or 0 turns the response cache off)."""
    access = await org_access(org_id, "org:update")
    body = await parse_body(
        {"name": Field(str, required=False, max_len=200), "response_cache_ttl_s": Field(int, required=False)}
    )
    raw = await request.get_json(silent=True) or {}  # parse_body drops nulls; a null TTL turns the cache off
    if "name" not in body and "response_cache_ttl_s" not in raw:
        raise ApiError(400, "nothing to change: give name and / or response_cache_ttl_s", code="invalid_value")
    h = handles()
    if "response_cache_ttl_s" in raw:
        await plans.set_org_overrides(
            h.stores.db, access.org_id, {"response_cache_ttl_s": raw["response_cache_ttl_s"]}, actor=access.actor
        )
        h.tenants.forget(access.org_id)  # this replica at once; the others when they next refresh the plan
    if "name" in body:
        org = await tenancy.update_org(h.stores.db, access.org_id, name=body["name"], actor=access.actor)
    else:
        org = await tenancy.get_org(h.stores.db, access.org_id)
    return _json({**json_ready(org), **await _org_settings(access.org_id)})


# ------------------------------------------------------------------ members and invitations


@blueprint.get("/orgs/<org:org_id>/members")
async def list_members(org_id: OrgRef) -> Response:
    """Members and their roles."""
    access = await org_access(org_id, "members:read")
    return _json({"data": await tenancy.list_members(handles().stores.db, access.org_id)})


@blueprint.patch("/orgs/<org:org_id>/members/<uuid:user_id>")
async def change_member(org_id: OrgRef, user_id: UUID) -> Response:
    """Change a member's role."""
    access = await org_access(org_id, "members:manage")
    body = await parse_body({"role": Field(str, max_len=20)})
    member = await tenancy.change_role(
        handles().stores.db,
        access.org_id,
        user_id,
        role=body["role"],
        actor_role=access.role or "admin",
        actor=access.actor,
    )
    return _json(member)


@blueprint.delete("/orgs/<org:org_id>/members/<uuid:user_id>")
async def remove_member(org_id: OrgRef, user_id: UUID) -> Response:
    """Remove a member (anyone may leave; removing others needs members:manage)."""
    access = await org_access(org_id, "org:read")
    if access.principal.user_id != user_id:
        access = await org_access(org_id, "members:manage")
    await tenancy.remove_member(
        handles().stores.db, access.org_id, user_id, actor_role=access.role or "admin", actor=access.actor
    )
    return Response(b"", status=204)


@blueprint.get("/orgs/<org:org_id>/invitations")
async def list_invitations(org_id: OrgRef) -> Response:
    """Invitations and their status."""
    access = await org_access(org_id, "members:manage")
    return _json({"data": await tenancy.list_invitations(handles().stores.db, access.org_id)})


@blueprint.post("/orgs/<org:org_id>/invitations")
async def invite(org_id: OrgRef) -> Response:
    """Invite someone by email (the link is mailed, never returned)."""
    access = await org_access(org_id, "members:manage")
    body = await parse_body({"email": Field(str, max_len=320), "role": Field(str, max_len=20)})
    invitation = await tenancy.create_invitation(
        handles().stores.db,
        handles().auth.mailer,
        access.org_id,
        email=body["email"],
        role=body["role"],
        actor_role=access.role or "admin",
        actor=access.actor,
        link_base=_link_base("/invitations/accept"),
    )
    return _json(invitation, 201)


@blueprint.delete("/orgs/<org:org_id>/invitations/<uuid:invitation_id>")
async def revoke_invitation(org_id: OrgRef, invitation_id: UUID) -> Response:
    """Withdraw a pending invitation."""
    access = await org_access(org_id, "members:manage")
    await tenancy.revoke_invitation(handles().stores.db, access.org_id, invitation_id, actor=access.actor)
    return Response(b"", status=204)


@blueprint.post("/invitations/accept")
async def accept_invitation() -> Response:
    """Accept an invitation: signed in as the invited email, or creating the account with a password."""
    principal = await authenticate(optional=True)
    body = await parse_body({"token": Field(str, max_len=200), "password": Field(str, required=False, max_len=1024)})
    user_id = principal.user_id if principal is not None else None
    if principal is not None and principal.key is not None:
        raise ApiError(403, "this endpoint needs a signed-in user, not an API key")
    new_user, org_id = await tenancy.accept_invitation(
        handles().stores.db,
        token=body["token"],
        user_id=user_id,
        password=body.get("password"),
        actor=request_actor(principal),
    )
    org = await tenancy.get_org(handles().stores.db, org_id)
    if user_id is None:
        return await start_session(new_user, {"organization": org}, 201)
    return _json({"organization": org}, 201)


# ------------------------------------------------------------------ API keys


def _key_json(key: api_keys.ApiKey) -> dict[str, Any]:
    out: dict[str, Any] = json_ready(key)
    out["active"] = key.active
    return out


@blueprint.get("/orgs/<org:org_id>/keys")
async def list_keys(org_id: OrgRef) -> Response:
    """The organization's API keys (never their secrets)."""
    access = await org_access(org_id, "keys:read")
    return _json({"data": [_key_json(k) for k in await api_keys.list_keys(handles().stores.db, access.org_id)]})


@blueprint.post("/orgs/<org:org_id>/keys")
async def create_key(org_id: OrgRef) -> Response:
    """Create a key; the secret is in this response only."""
    access = await org_access(org_id, "keys:manage")
    body = await parse_body(
        {
            "name": Field(str, max_len=100),
            "scopes": Field(list, max_len=10),
            "expires_at": Field((str, int), required=False, max_len=64),
            "rpm": Field(int, required=False),
            "tpm": Field(int, required=False),
            "max_concurrency": Field(int, required=False),
        }
    )
    limits = await _key_limits(access.org_id, body)
    allowed = scopes_allowed(access.role) if access.role else access.principal.key.scopes  # type: ignore[union-attr]
    excess = sorted(set(body["scopes"]) - allowed)
    if excess and set(body["scopes"]) <= set(SCOPES):
        raise ApiError(403, f"you may not create keys with scopes {excess}", param="scopes")
    expires = parse_datetime(body["expires_at"], param="expires_at") if "expires_at" in body else None
    secret, key = await api_keys.create_key(
        handles().stores.db,
        org_id=access.org_id,
        name=body["name"],
        scopes=body["scopes"],
        actor=access.actor,
        expires_at=expires,
        **limits,
    )
    return _json({**_key_json(key), "key": secret}, 201)


async def _key_limits(org_id: UUID, body: dict[str, Any]) -> dict[str, int]:
    """A new key's own limits from ``body`` (:func:`bitnet_actor.services.billing.plans.key_limits`; a bad
    value is a 400 naming it)."""
    return plans.key_limits(await handles().tenants.profile(org_id), body)


@blueprint.delete("/orgs/<org:org_id>/keys/<uuid:key_id>")
async def revoke_key(org_id: OrgRef, key_id: UUID) -> Response:
    """Revoke a key on every replica."""
    access = await org_access(org_id, "keys:manage")
    key = await api_keys.revoke_key(
        handles().stores.db,
        handles().stores.redis,
        org_id=access.org_id,
        key_id=key_id,
        actor=access.actor,
        cache=handles().auth.keys,
    )
    return _json(_key_json(key))


@blueprint.post("/orgs/<org:org_id>/keys/<uuid:key_id>/rotate")
async def rotate_key(org_id: OrgRef, key_id: UUID) -> Response:
    """Replace a key; the old one keeps working for ``grace_seconds`` (default one day)."""
    access = await org_access(org_id, "keys:manage")
    body = await parse_body({"grace_seconds": Field(int, required=False)})
    secret, key = await api_keys.rotate_key(
        handles().stores.db,
        handles().stores.redis,
        org_id=access.org_id,
        key_id=key_id,
        actor=access.actor,
        grace_s=body.get("grace_seconds", 86400),
        cache=handles().auth.keys,
    )
    return _json({**_key_json(key), "key": secret}, 201)


# ------------------------------------------------------------------ audit log


@blueprint.get("/orgs/<org:org_id>/audit")
async def audit_log(org_id: OrgRef) -> Response:
    """The organization's audit log, newest first; page with ``before`` (a ``seq``)."""
    access = await org_access(org_id, "audit:read")
    try:
        limit = min(max(int(request.args.get("limit", "100")), 1), 500)
        before = int(request.args["before"]) if "before" in request.args else None
    except ValueError:
        raise ApiError(400, "limit and before must be integers", param="limit") from None
    if before is not None and not 0 <= before < 2**63:  # a seq is a bigint: PostgreSQL refuses the rest
        raise ApiError(400, "before must be a seq, 0 to 2**63-1", param="before", code="invalid_value")
    entries = await audit.list_entries(handles().stores.db, access.org_id, limit=limit, before_seq=before)
    return _json({"data": entries, "next_before": entries[-1].seq if len(entries) == limit else None})


@blueprint.get("/roles")
async def roles() -> Response:
    """The role table: what each role may do."""
    return _json({"data": {role: sorted(perms) for role, perms in ROLE_PERMISSIONS.items()}})
