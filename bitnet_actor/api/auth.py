"""Who is calling, and may they: the one place routes authenticate and authorize.

Credentials, in order:
1. ``Authorization: Bearer bnk_live_...``: an API key (bound to one organization, limited by its scopes).
2. ``Authorization: Bearer <JWT>``: an access token of a user (optionally bound to one organization).
3. The portal session cookie (``__Host-bitnet_session``); unsafe methods must then carry the session's CSRF
   token in ``X-CSRF-Token``.

Tenant routes are ``/api/v1/orgs/<org:org_id>/...``: an organization's id, or ``current`` for the caller's
own (an API key's organization; an access token's bound organization; a signed-in user's only organization,
else a 400 asking for the id). ``org_access`` resolves it and the caller's role (or key scopes) there, and
answers 404, not 403, when the caller does not belong to the organization, so nobody learns which
organizations exist. Inside an organization a missing permission is 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal
from uuid import UUID

from quart import current_app, g, request
from werkzeug.routing import BaseConverter

from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.traced import child_span
from bitnet_actor.observability import bind_log_context
from bitnet_actor.services import audit, authn, tenancy
from bitnet_actor.services.authn import Principal
from bitnet_actor.services.errors import AuthenticationError, PermissionDeniedError
from bitnet_actor.services.permissions import Permission, require
from bitnet_actor.services.sessions import COOKIE_NAME

if TYPE_CHECKING:
    from bitnet_actor.handles import Handles

__all__ = [
    "CURRENT",
    "OrgAccess",
    "OrgConverter",
    "OrgRef",
    "Principal",
    "authenticate",
    "bound",
    "check_permission",
    "handles",
    "org_access",
    "org_standing",
    "permit",
    "request_actor",
    "require_user",
]

_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}

CURRENT: Final = "current"
OrgRef = UUID | Literal["current"]


class OrgConverter(BaseConverter):
    """``<org:org_id>``: an organization's UUID, or the literal ``current`` (resolved by ``org_access``)."""

    regex = r"current|[A-Fa-f0-9]{8}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{12}"
    part_isolating = True

    def to_python(self, value: str) -> OrgRef:
        """``current`` as is, anything else as a UUID."""
        return CURRENT if value == CURRENT else UUID(value)

    def to_url(self, value: object) -> str:
        """The id (or ``current``) as text."""
        return str(value)


def handles() -> Handles:
    """The running system's handles (given to ``create_app``)."""
    found: Handles = current_app.config["HANDLES"]
    return found


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
    """Resolve the caller from the request's credentials (an ``auth`` span of the request's trace).

    Raises:
        ApiError: 401 for missing (unless ``optional``), malformed, unknown, revoked or expired credentials;
            403 for a cookie-authenticated unsafe request without the CSRF token.
    """
    with child_span(handles().tracing, "auth"):
        return await _authenticate(optional=optional)


async def _authenticate(*, optional: bool) -> Principal | None:
    auth = handles().auth
    header = request.headers.get("Authorization", "")
    try:
        if header:
            scheme, _, credential = header.partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential:
                raise _unauthorized("the Authorization header must be 'Bearer <API key or access token>'")
            return await authn.from_bearer(auth, credential)
        session_id = request.cookies.get(COOKIE_NAME)
        if session_id:
            unsafe = request.method in _UNSAFE
            return await authn.from_session(
                auth, session_id, unsafe=unsafe, csrf_token=request.headers.get("X-CSRF-Token")
            )
    except AuthenticationError as exc:
        raise _unauthorized(str(exc)) from None
    except authn.CsrfError as exc:
        raise ApiError(403, str(exc), code="csrf_failed") from None
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


async def _resolve(principal: Principal, org: OrgRef) -> UUID:
    if org != CURRENT:
        return org
    if principal.key is not None:
        return principal.key.org_id
    if principal.token_org is not None:
        return principal.token_org
    assert principal.user_id is not None
    memberships = await tenancy.user_memberships(handles().stores.db, principal.user_id)
    if not memberships:
        raise ApiError(404, "you belong to no organization")
    if len(memberships) > 1:
        raise ApiError(
            400,
            "you belong to several organizations: name one by its id instead of 'current'",
            param="org_id",
            code="ambiguous_organization",
        )
    return memberships[0].org.id


async def org_access(org: OrgRef, permission: Permission) -> OrgAccess:
    """Authenticate, resolve ``org`` (an id or ``current``) and the caller's standing there; check ``permission``.

    Routes act on the returned ``OrgAccess.org_id``, never on the raw path value.

    Raises:
        ApiError: 401 unauthenticated; 404 not a member / other organization's key; 403 not allowed;
            400 ``current`` for a user of several organizations.
    """
    principal = await authenticate()
    assert principal is not None
    access = await org_standing(principal, org)
    permit(access, permission)
    return bound(access)


async def org_standing(principal: Principal, org: OrgRef) -> OrgAccess:
    """``principal``'s standing in ``org`` (an id or ``current``): its role there, or its key; no permission
    checked yet (``permit`` does). ``org_access`` is ``authenticate`` + this + ``permit``; the GraphQL layer,
    which asks several permissions of one organization in one request, calls the parts.

    Raises:
        ApiError: 404 not a member / other organization's key or token; 400 ``current`` for a user of several
            organizations.
    """
    org_id = await _resolve(principal, org)
    not_found = ApiError(404, "no such organization")
    if principal.key is not None:
        if principal.key.org_id != org_id:
            raise not_found
        return OrgAccess(principal, org_id, None)
    assert principal.user_id is not None
    if principal.token_org is not None and principal.token_org != org_id:
        raise not_found
    role = await tenancy.membership_role(handles().stores.db, org_id, principal.user_id)
    if role is None:
        raise not_found
    return OrgAccess(principal, org_id, role)


def permit(access: OrgAccess, permission: Permission) -> None:
    """Raise a 403 unless the caller's role (and its token's scopes) or its key's scopes allow ``permission``."""
    principal = access.principal
    if principal.key is not None:
        check_permission(permission, scopes=principal.key.scopes)
        return
    check_permission(permission, role=access.role)
    if principal.token_scopes is not None:
        check_permission(permission, scopes=principal.token_scopes)


def bound(access: OrgAccess) -> OrgAccess:
    """``access``, its organization now named by the request's log lines and trace."""
    g.org_id = access.org_id
    bind_log_context(org_id=str(access.org_id))
    return access


def check_permission(permission: Permission, *, role: str | None = None, scopes: frozenset[str] | None = None) -> None:
    """Raise a 403 unless ``role`` (a member's) or ``scopes`` (a key's or token's) allow ``permission``."""
    try:
        require(permission=permission, role=role, scopes=scopes)
    except PermissionDeniedError as exc:
        raise ApiError(403, str(exc)) from None
