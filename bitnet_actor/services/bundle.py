"""The authentication services of one running system, built once by ``bitnet_actor.system``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bitnet_actor.services.api_keys import KeyCache
    from bitnet_actor.services.email import EmailSender
    from bitnet_actor.services.jwt import JwtService
    from bitnet_actor.services.oidc import OidcClient
    from bitnet_actor.services.refresh import RefreshTokens
    from bitnet_actor.services.sessions import SessionStore
    from bitnet_actor.services.throttle import LoginThrottle

__all__ = ["AuthServices"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthServices:
    """Handles the web layer uses to authenticate callers."""

    keys: KeyCache
    sessions: SessionStore
    throttle: LoginThrottle
    mailer: EmailSender
    jwt: JwtService | None = None
    refresh: RefreshTokens | None = None
    oidc: OidcClient | None = None
