"""Who is calling, and may they: the one place routes authenticate and authorize.

Credentials, in order:
1. ``Authorization: Bearer bnk_live_...``: an API key (bound to one organization, limited by its scopes).
2. ``Authorization: Bearer <JWT>``: an access token of a user (optionally bound to one organization).
3. The portal session cookie (``__Host-bitnet_session``); unsafe methods must then carry the session's CSRF
   token in ``X-CSRF-Token``.

Tenant routes are ``/api/v1/orgs/<org_id>/...``; ``org_access`` resolves the caller's role (or key scopes)
there, and answers 404, not 403, when the caller does not belong to the organization, so nobody learns which
organizations exist. Inside an organization a missing permission is 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from uuid import UUID

from quart import current_app, request

from bitnet_actor.api.errors import ApiError
from bitnet_actor.services import audit, tenancy
from bitnet_actor.services.api_keys import KEY_PREFIX, KeyPrincipal
from bitnet_actor.services.errors import AuthenticationError
from bitnet_actor.services.permissions import Permission, require
from bitnet_actor.services.sessions import COOKIE_NAME, Session

if TYPE_CHECKING:
    from bitnet_actor.system import System

__all__ = ["OrgAccess", "Principal", "authenticate", "org_access", "request_actor", "require_user", "system"]

_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def system() -> System:
    """The running system's handles."""
    handles: System = current_app.config["SYSTEM"]
    return handles


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a user (session or JWT) or an API key."""

    kind: Literal["session", "jwt", "key"]
    user_id: UUID | None = None
    key: KeyPrincipal | None = None
    session: Session | None = None
    token_org: UUID | None = None  # a JWT bound to one organization
    token_scopes: frozenset[str] | None = None


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="bitnet-actor"'})


def client_ip() -> str:
    """The client's address as Hypercorn saw it (put a trusted proxy's X-Forwarded-For handling in front)."""
    return request.remote_addr or ""


def request_actor(principal: Principal | None = None) -> audit.Actor:
    """The audit actor of this request."""
    return audit.Actor(
        user_id=principal.user_id if principal else None,
        key_id=principal.key.key_id if principal and principal.key else None,
        ip=client_ip(),
        user_agent=request.headers.get("User-Agent", "")[:512],
    )


async def authenticate(*, optional: bool = False) -> Principal | None:
    """Resolve the caller from the request's credentials.

    Raises:
        ApiError: 401 for missing (unless ``optional``), malformed, unknown, revoked or expired credentials;
            403 for a cookie-authenticated unsafe request without the CSRF token.
    """
    sys = system()
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise _unauthorized("the Authorization header must be 'Bearer <API key or access token>'")
        if credential.startswith(KEY_PREFIX):
            try:
                key = await sys.auth.keys.authenticate(credential)
            except AuthenticationError as exc:
                raise _unauthorized(str(exc)) from None
            return Principal("key", key=key)
        if sys.auth.jwt is None:
            raise _unauthorized("invalid API key")
        try:
            claims = await sys.auth.jwt.verify_access_token(credential)
        except Exception as exc:  # the token service's errors all mean "not valid"
            if isinstance(exc, ApiError):
                raise
            raise _unauthorized(f"invalid access token: {exc}") from None
        return Principal(
            "jwt",
            user_id=UUID(claims.subject),
            token_org=UUID(claims.org_id) if claims.org_id else None,
            token_scopes=frozenset(claims.scopes) if claims.scopes else None,
        )
    session_id = request.cookies.get(COOKIE_NAME)
    if session_id:
        session = await sys.auth.sessions.get(session_id)
        if session is None:
            raise _unauthorized("your session has expired; sign in again")
        if request.method in _UNSAFE:
            token = request.headers.get("X-CSRF-Token")
            if not session.csrf_ok(token):
                raise ApiError(403, "missing or invalid CSRF token (send X-CSRF-Token)", code="csrf_failed")
        return Principal("session", user_id=UUID(session.user_id), session=session)
    if optional:
        return None
    raise _unauthorized("authentication required: send 'Authorization: Bearer <API key>' or sign in")


async def require_user() -> Principal:
    """A signed-in user (session or JWT), not an API key.

    Raises:
        ApiError: 401 without credentials; 403 for an API key.
    """
    principal = await authenticate()
    assert principal is not None
    if principal.user_id is None:
        raise ApiError(403, "this endpoint needs a signed-in user, not an API key")
    return principal


@dataclass(frozen=True, slots=True)
class OrgAccess:
    """The caller inside one organization."""

    principal: Principal
    org_id: UUID
    role: str | None  # None for API keys

    @property
    def actor(self) -> audit.Actor:
        """The audit actor."""
        return request_actor(self.principal)


async def org_access(org_id: UUID, permission: Permission) -> OrgAccess:
    """Authenticate, resolve the caller's standing in ``org_id`` and check ``permission``.

    Raises:
        ApiError: 401 unauthenticated; 404 not a member / other organization's key; 403 not allowed.
    """
    principal = await authenticate()
    assert principal is not None
    not_found = ApiError(404, "no such organization")
    if principal.key is not None:
        if principal.key.org_id != org_id:
            raise not_found
        _check(permission, scopes=principal.key.scopes)
        return OrgAccess(principal, org_id, None)
    assert principal.user_id is not None
    if principal.token_org is not None and principal.token_org != org_id:
        raise not_found
    role = await tenancy.membership_role(system().stores.db, org_id, principal.user_id)
    if role is None:
        raise not_found
    _check(permission, role=role)
    if principal.token_scopes is not None:
        _check(permission, scopes=principal.token_scopes)
    return OrgAccess(principal, org_id, role)


def _check(permission: Permission, *, role: str | None = None, scopes: frozenset[str] | None = None) -> None:
    from bitnet_actor.services.errors import PermissionDeniedError

    try:
        require(permission=permission, role=role, scopes=scopes)
    except PermissionDeniedError as exc:
        raise ApiError(403, str(exc)) from None
