"""Refresh tokens, rotated on every use, with reuse detection.

A login starts a *family* (one session) and its first token. ``rotate`` spends a token and returns its
successor in the same family; the spent token stays on record (as SHA-256 only, like every token here). A
spent token presented again means two parties hold the family's tokens (a thief and the user, in some order): the
whole family is revoked, so the newest token, whoever holds it, stops working too, and ``TokenReuseError``
tells the caller to log it. Two concurrent refreshes with the same token count as reuse as well: clients must
refresh one at a time.

Every token expires ``ttl_s`` after it was issued (an idle session ends) and never after its family's
``max_lifetime_s`` (a session ends however active it is). Times come from the injectable clock.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from bitnet_actor.services.jwt import InvalidTokenError

if TYPE_CHECKING:
    from collections.abc import Callable

    from bitnet_actor.stores.postgres import Database

__all__ = ["TOKEN_PREFIX", "InvalidTokenError", "RefreshGrant", "RefreshTokens", "TokenReuseError"]

TOKEN_PREFIX: Final = "bnr_"  # lets secret scanners and people recognise our refresh tokens
_TOKEN_BYTES = 32
_TOKEN_LENGTH = len(TOKEN_PREFIX) + 43  # base64url of 32 bytes, unpadded


class TokenReuseError(InvalidTokenError):
    """A refresh token was presented after it had been used: its whole family is now revoked."""

    def __init__(self, message: str, *, user_id: str, family_id: str) -> None:
        super().__init__(message)
        self.user_id = user_id
        self.family_id = family_id


@dataclass(frozen=True, slots=True)
class RefreshGrant:
    """Who a rotated refresh token belongs to.

    Attributes:
        user_id: the user the session belongs to.
        org_id: the organization the session was opened for, or None.
        family_id: the session (the family of tokens); ``revoke_family`` ends it.
        expires_at: when the new token expires, seconds since the epoch.
    """

    user_id: str
    org_id: str | None
    family_id: str
    expires_at: float


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def _well_formed(token: str) -> bool:
    return isinstance(token, str) and len(token) == _TOKEN_LENGTH and token.startswith(TOKEN_PREFIX)


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


class RefreshTokens:
    """Issues, rotates and revokes refresh tokens.

    Args:
        db: the database holding ``refresh_token_families`` and ``refresh_tokens``.
        ttl_s: how long an unused token stays valid (idle timeout of a session).
        max_lifetime_s: the longest a family (session) lives, however often it is refreshed.
        clock: seconds since the epoch; injectable for tests.
    """

    def __init__(
        self,
        db: Database,
        *,
        ttl_s: int = 30 * 86400,
        max_lifetime_s: int = 90 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s <= 0 or max_lifetime_s < ttl_s:
            raise ValueError("ttl_s must be positive and max_lifetime_s at least ttl_s")
        self._db = db
        self.ttl_s = ttl_s
        self.max_lifetime_s = max_lifetime_s
        self._clock = clock

    async def issue(self, *, user_id: str, org_id: str | None) -> str:
        """Start a new family (a login) and return its first token."""
        now = self._clock()
        token = _new_token()
        async with self._db.transaction() as conn:
            family_id = await conn.fetchval(
                "INSERT INTO refresh_token_families (user_id, org_id, created_at, expires_at)"
                " VALUES ($1, $2, $3, $4) RETURNING id",
                uuid.UUID(str(user_id)),
                None if org_id is None else uuid.UUID(str(org_id)),
                _ts(now),
                _ts(now + self.max_lifetime_s),
            )
            await conn.execute(
                "INSERT INTO refresh_tokens (token_hash, family_id, generation, issued_at, expires_at)"
                " VALUES ($1, $2, 1, $3, $4)",
                _hash(token),
                family_id,
                _ts(now),
                _ts(now + self.ttl_s),
            )
        return token

    async def rotate(self, token: str) -> tuple[str, RefreshGrant]:
        """Spend ``token`` and return its successor with what it grants.

        Raises:
            TokenReuseError: ``token`` was already used; its family is now revoked.
            InvalidTokenError: ``token`` is unknown, malformed, expired, revoked, or its user is disabled.
        """
        if not _well_formed(token):
            raise InvalidTokenError("malformed refresh token")
        token_hash = _hash(token)
        now = self._clock()
        successor = _new_token()
        reused: tuple[str, str] | None = None
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                "SELECT t.family_id, t.generation, t.expires_at, t.used_at, f.user_id, f.org_id,"
                " f.expires_at AS family_expires_at, f.revoked_at, u.disabled_at"
                " FROM refresh_tokens t JOIN refresh_token_families f ON f.id = t.family_id"
                " JOIN users u ON u.id = f.user_id"
                " WHERE t.token_hash = $1 FOR UPDATE OF t, f",
                token_hash,
            )
            if row is None:
                raise InvalidTokenError("unknown refresh token")
            if row["revoked_at"] is not None:
                raise InvalidTokenError("refresh token revoked")
            family_expires = row["family_expires_at"].timestamp()
            if now >= family_expires:
                raise InvalidTokenError("refresh token expired")
            if row["used_at"] is not None:
                await conn.execute(
                    "UPDATE refresh_token_families SET revoked_at = $2, revoke_reason = 'reuse' WHERE id = $1",
                    row["family_id"],
                    _ts(now),
                )
                reused = (str(row["user_id"]), str(row["family_id"]))
            else:
                if now >= row["expires_at"].timestamp():
                    raise InvalidTokenError("refresh token expired")
                if row["disabled_at"] is not None:
                    raise InvalidTokenError("user disabled")
                expires_at = min(now + self.ttl_s, family_expires)
                await conn.execute("UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1", token_hash, _ts(now))
                await conn.execute(
                    "INSERT INTO refresh_tokens (token_hash, family_id, generation, issued_at, expires_at)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    _hash(successor),
                    row["family_id"],
                    row["generation"] + 1,
                    _ts(now),
                    _ts(expires_at),
                )
        if reused is not None:  # raised after the commit, so the revocation sticks
            raise TokenReuseError("refresh token reused", user_id=reused[0], family_id=reused[1])
        org_id = row["org_id"]
        return successor, RefreshGrant(
            user_id=str(row["user_id"]),
            org_id=None if org_id is None else str(org_id),
            family_id=str(row["family_id"]),
            expires_at=expires_at,
        )

    async def revoke(self, token: str) -> None:
        """Revoke the family of ``token`` (logout). Unknown or malformed tokens are ignored."""
        if not _well_formed(token):
            return
        await self._db.execute(
            "UPDATE refresh_token_families f SET revoked_at = $2, revoke_reason = 'logout'"
            " FROM refresh_tokens t WHERE t.token_hash = $1 AND f.id = t.family_id AND f.revoked_at IS NULL",
            _hash(token),
            _ts(self._clock()),
        )

    async def revoke_family(self, family_id: str, *, reason: str = "admin") -> bool:
        """Revoke one session by its family id; True if it was live. ``reason``: logout, user or admin."""
        if reason not in ("logout", "user", "admin"):
            raise ValueError(f"bad revoke reason {reason!r}")
        status = await self._db.execute(
            "UPDATE refresh_token_families SET revoked_at = $2, revoke_reason = $3"
            " WHERE id = $1 AND revoked_at IS NULL",
            uuid.UUID(str(family_id)),
            _ts(self._clock()),
            reason,
        )
        return status.split()[-1] != "0"

    async def revoke_user(self, user_id: str) -> int:
        """Revoke every live session of a user (password change, account disabled); return how many."""
        status = await self._db.execute(
            "UPDATE refresh_token_families SET revoked_at = $2, revoke_reason = 'user'"
            " WHERE user_id = $1 AND revoked_at IS NULL",
            uuid.UUID(str(user_id)),
            _ts(self._clock()),
        )
        return int(status.split()[-1])

    async def purge(self, *, keep_s: int = 7 * 86400) -> int:
        """Delete families (and their tokens) expired or revoked more than ``keep_s`` ago; return how many.

        Run it periodically. ``keep_s`` keeps recently ended families around for investigation.
        """
        cutoff = _ts(self._clock() - keep_s)
        status = await self._db.execute(
            "DELETE FROM refresh_token_families WHERE expires_at < $1 OR revoked_at < $1", cutoff
        )
        return int(status.split()[-1])
