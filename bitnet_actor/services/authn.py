"""Who is calling: credentials to a principal, the same rules for every surface (HTTP API, websocket, portal).

Bearer credentials are an API key (``bnk_live_...``, bound to one organization, limited by its scopes) or a
user's access token (a JWT, optionally bound to one organization). A session cookie is the portal's; an
unsafe method then needs the session's CSRF token. Errors are service errors: the HTTP API maps them to
OpenAI-shaped JSON, the portal renders them as pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from uuid import UUID

from bitnet_actor.services.api_keys import KEY_PREFIX, KeyPrincipal
from bitnet_actor.services.errors import AuthenticationError, PermissionDeniedError
from bitnet_actor.services.jwt import KeyDecryptionError

if TYPE_CHECKING:
    from bitnet_actor.services.api_keys import KeyAuthority
    from bitnet_actor.services.email import EmailSender
    from bitnet_actor.services.jwt import JwtService
    from bitnet_actor.services.oidc import OidcClient
    from bitnet_actor.services.refresh import RefreshTokens
    from bitnet_actor.services.saml import SamlService
    from bitnet_actor.services.sessions import Session, SessionStore
    from bitnet_actor.services.throttle import LoginThrottle

__all__ = ["AuthServices", "CsrfError", "Principal", "from_bearer", "from_session"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthServices:
    """The authentication services of one running system, built once by ``bitnet_actor.system``."""

    keys: KeyAuthority
    sessions: SessionStore
    throttle: LoginThrottle
    mailer: EmailSender
    jwt: JwtService | None = None
    refresh: RefreshTokens | None = None
    oidc: OidcClient | None = None
    saml: SamlService | None = None


class CsrfError(PermissionDeniedError):
    """A cookie-authenticated unsafe request without the session's CSRF token."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a user (session or JWT) or an API key."""

    kind: Literal["session", "jwt", "key"]
    user_id: UUID | None = None
    key: KeyPrincipal | None = None
    session: Session | None = None
    token_org: UUID | None = None  # a JWT bound to one organization
    token_scopes: frozenset[str] | None = None


async def from_bearer(auth: AuthServices, credential: str) -> Principal:
    """The caller of a ``Bearer`` credential: an API key, else an access token.

    Raises:
        AuthenticationError: unknown, revoked, expired or malformed.
        KeyDecryptionError: this server cannot read its token signing keys (a configuration fault, not the
            caller's).
    """
    if credential.startswith(KEY_PREFIX):
        return Principal("key", key=await auth.keys.authenticate(credential))
    if auth.jwt is None:
        raise AuthenticationError("invalid API key")
    try:
        claims = await auth.jwt.verify_access_token(credential)
    except (KeyDecryptionError, AuthenticationError):
        raise
    except Exception as exc:  # the token service's other errors all mean "not valid"
        raise AuthenticationError(f"invalid access token: {exc}") from None
    return Principal(
        "jwt",
        user_id=UUID(claims.subject),
        token_org=UUID(claims.org_id) if claims.org_id else None,
        token_scopes=frozenset(claims.scopes) if claims.scopes else None,
    )


async def from_session(auth: AuthServices, session_id: str, *, unsafe: bool, csrf_token: str | None) -> Principal:
    """The signed-in user of a session cookie.

    Raises:
        AuthenticationError: the session has expired or does not exist.
        CsrfError: ``unsafe`` and the CSRF token does not match the session's.
    """
    session = await auth.sessions.get(session_id)
    if session is None:
        raise AuthenticationError("your session has expired; sign in again")
    if unsafe and not session.csrf_ok(csrf_token):
        raise CsrfError("missing or invalid CSRF token (send X-CSRF-Token)")
    return Principal("session", user_id=UUID(session.user_id), session=session)
