"""Access tokens, their public keys, and single sign-on.

- ``POST /api/v1/token``: OAuth-style token endpoint. ``grant_type=password`` (email + password, optionally
  bound to one organization) or ``grant_type=refresh_token`` (rotates the refresh token; reusing an old one
  revokes its whole family).
- ``GET /.well-known/jwks.json``: the public keys that verify access tokens, the next one included.
- ``GET /api/v1/oidc/login`` and ``/api/v1/oidc/callback``: authorization code + PKCE with the configured
  OpenID Connect provider; accounts are linked by verified email. The login is bound to the browser that
  started it by a short-lived ``__Host-`` cookie.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any
from uuid import UUID

from quart import Blueprint, Response, jsonify, redirect, request

from bitnet_actor.api.accounts import start_session
from bitnet_actor.api.auth import client_ip, handles
from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.validate import Field, parse_body
from bitnet_actor.services import tenancy
from bitnet_actor.services.jwt import InvalidTokenError
from bitnet_actor.services.oidc import OidcError, link_identity
from bitnet_actor.services.refresh import TokenReuseError

if TYPE_CHECKING:
    from bitnet_actor.services.jwt import JwtService
    from bitnet_actor.services.refresh import RefreshTokens

__all__ = ["blueprint"]

blueprint = Blueprint("tokens", __name__)

_OIDC_COOKIE = "__Host-bitnet_oidc"


def _token_services() -> tuple[JwtService, RefreshTokens]:
    auth = handles().auth
    if auth.jwt is None or auth.refresh is None:
        raise ApiError(404, "access tokens are not enabled on this server")
    return auth.jwt, auth.refresh


async def _issue(user_id: UUID, org_id: UUID | None, refresh_token: str | None = None) -> Response:
    jwt, refresh = _token_services()
    access, expires_in = await jwt.issue_access_token(
        user_id=str(user_id), org_id=str(org_id) if org_id else None, scopes=()
    )
    if refresh_token is None:
        refresh_token = await refresh.issue(user_id=str(user_id), org_id=str(org_id) if org_id else None)
    response = jsonify(
        {"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "refresh_token": refresh_token}
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.post("/api/v1/token")
async def token() -> Response:
    """Exchange credentials or a refresh token for an access token (and a new refresh token)."""
    _token_services()
    body = await parse_body(
        {
            "grant_type": Field(str, max_len=20),
            "email": Field(str, required=False, max_len=320),
            "password": Field(str, required=False, max_len=1024),
            "refresh_token": Field(str, required=False, max_len=512),
            "org_id": Field(str, required=False, max_len=64),
        }
    )
    db = handles().stores.db
    if body["grant_type"] == "password":
        for name in ("email", "password"):
            if name not in body:
                raise ApiError(400, f"missing required field {name!r}", param=name, code="missing_required_parameter")
        user_id = await tenancy.authenticate_password(
            db, handles().auth.throttle, email=body["email"], password=body["password"], ip=client_ip()
        )
        org_id = None
        if "org_id" in body:
            try:
                org_id = UUID(body["org_id"])
            except ValueError:
                raise ApiError(400, "org_id must be a UUID", param="org_id") from None
            if await tenancy.membership_role(db, org_id, user_id) is None:
                raise ApiError(404, "no such organization", param="org_id")
        return await _issue(user_id, org_id)
    if body["grant_type"] == "refresh_token":
        if "refresh_token" not in body:
            raise ApiError(400, "missing required field 'refresh_token'", param="refresh_token")
        _, refresh = _token_services()
        try:
            new_refresh, grant = await refresh.rotate(body["refresh_token"])
        except TokenReuseError:
            raise ApiError(401, "refresh token reuse detected: every token of this login was revoked",
                           code="refresh_token_reused") from None  # fmt: skip
        except InvalidTokenError as exc:
            raise ApiError(401, f"invalid refresh token: {exc}", code="invalid_refresh_token") from None
        org = UUID(grant.org_id) if grant.org_id else None
        return await _issue(UUID(grant.user_id), org, refresh_token=new_refresh)
    raise ApiError(400, "grant_type must be 'password' or 'refresh_token'", param="grant_type")


@blueprint.get("/.well-known/jwks.json")
async def jwks() -> Response:
    """Public keys of access tokens (current, next and not yet retired)."""
    jwt, _ = _token_services()
    response = jsonify(await jwt.jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def _safe_return_to(value: str | None) -> str:
    # Only same-site paths: never an open redirect.
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


@blueprint.get("/api/v1/oidc/login")
async def oidc_login() -> Any:
    """Redirect to the identity provider."""
    oidc = handles().auth.oidc
    if oidc is None:
        raise ApiError(404, "single sign-on is not configured on this server")
    binding = secrets.token_urlsafe(24)
    url = await oidc.begin_login(return_to=_safe_return_to(request.args.get("return_to")), binding=binding)
    response = redirect(url, 302)
    response.set_cookie(_OIDC_COOKIE, binding, max_age=600, path="/", secure=True, httponly=True, samesite="Lax")
    return response


@blueprint.get("/api/v1/oidc/callback")
async def oidc_callback() -> Any:
    """Finish single sign-on: verify, link or create the account, start a session, go back."""
    oidc = handles().auth.oidc
    if oidc is None:
        raise ApiError(404, "single sign-on is not configured on this server")
    if "error" in request.args:
        raise ApiError(401, f"the identity provider refused the login: {request.args.get('error')}")
    state, code = request.args.get("state", ""), request.args.get("code", "")
    if not state or not code:
        raise ApiError(400, "state and code are required", param="state" if not state else "code")
    try:
        identity, return_to = await oidc.complete_login(
            state=state, code=code, binding=request.cookies.get(_OIDC_COOKIE)
        )
        user_id = await link_identity(handles().stores.db, identity)
    except OidcError as exc:
        raise ApiError(401, f"single sign-on failed: {exc}", code="sso_failed") from None
    response = await start_session(UUID(user_id), {})
    target = redirect(_safe_return_to(return_to), 302)
    target.headers.add("Set-Cookie", response.headers["Set-Cookie"])
    target.delete_cookie(_OIDC_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    return target
