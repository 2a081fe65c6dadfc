"""Server-side portal sessions in Redis (OWASP session management).

- The cookie carries only a random id (256 bits); Redis keys are its SHA-256, so a Redis dump holds no
  usable session ids.
- Idle timeout (30 min, refreshed on use) and absolute timeout (12 h, from creation, never extended).
- The id is new at every login (``create``); logout deletes it; ``revoke_user`` ends every session of a user.
- Each session has a CSRF token (synchronizer pattern): state-changing requests authenticated by the cookie
  must echo it in ``X-CSRF-Token`` (or the form field ``csrf_token``).
- A session may hold a few one-shot notices for the next page it shows (the portal's flash messages):
  ``add_flash`` / ``pop_flashes``, kept beside the session for a minute at most.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uuid import UUID

    from redis.asyncio import Redis

    from bitnet_actor.stores.redis import RedisStore

__all__ = ["COOKIE_NAME", "Flash", "Session", "SessionStore"]

COOKIE_NAME = "__Host-bitnet_session"
_FLASH_TTL_S = 60  # a notice is for the page right after the action, not for later
_FLASH_MAX = 10  # notices kept per session; older ones are dropped


@dataclass(frozen=True, slots=True)
class Flash:
    """A one-shot notice: ``category`` is ``info``, ``success`` or ``error``; ``text`` is plain text."""

    category: str
    text: str


@dataclass(frozen=True, slots=True)
class Session:
    """A live session."""

    id: str
    user_id: str
    csrf_token: str
    created_at: float

    def csrf_ok(self, token: str | None) -> bool:
        """Constant-time check of a submitted CSRF token."""
        return bool(token) and hmac.compare_digest(self.csrf_token, token or "")


class SessionStore:
    """Sessions of portal users."""

    def __init__(self, redis: RedisStore, *, idle_s: int = 1800, absolute_s: int = 12 * 3600) -> None:
        self.redis = redis
        self.idle_s = idle_s
        self.absolute_s = absolute_s

    @staticmethod
    def _key(session_id: str) -> str:
        return "bitnet:session:" + hashlib.sha256(session_id.encode()).hexdigest()

    async def create(self, user_id: UUID | str, *, replacing: str | None = None) -> Session:
        """Start a session with a fresh id (ending ``replacing``, the pre-login session, if any)."""
        if replacing:
            await self.delete(replacing)
        session = Session(secrets.token_urlsafe(32), str(user_id), secrets.token_urlsafe(32), time.time())
        data = json.dumps({"user_id": session.user_id, "csrf": session.csrf_token, "created": session.created_at})
        user_set = f"bitnet:user-sessions:{session.user_id}"

        async def store(r: Redis) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.set(self._key(session.id), data, ex=self.idle_s)
                pipe.sadd(user_set, self._key(session.id))
                pipe.expire(user_set, self.absolute_s)
                await pipe.execute()

        await self.redis.run(store)
        return session

    async def get(self, session_id: str) -> Session | None:
        """The live session with this id (its idle timer restarts), or None if unknown or expired."""
        if not session_id or len(session_id) > 128:
            return None
        key = self._key(session_id)
        raw = await self.redis.get(key)
        if raw is None:
            return None
        data = json.loads(raw)
        if time.time() - data["created"] > self.absolute_s:
            await self.redis.delete(key)
            return None
        remaining = int(self.absolute_s - (time.time() - data["created"]))
        await self.redis.run(lambda r: r.expire(key, max(1, min(self.idle_s, remaining))))
        return Session(session_id, data["user_id"], data["csrf"], data["created"])

    async def delete(self, session_id: str) -> None:
        """End one session."""
        await self.redis.delete(self._key(session_id))

    async def revoke_user(self, user_id: UUID | str) -> None:
        """End every session of ``user_id`` (password change, account disabled)."""
        user_set = f"bitnet:user-sessions:{user_id}"

        async def drop(r: Redis) -> None:
            keys = await r.smembers(user_set)
            if keys:
                await r.delete(*keys)
            await r.delete(user_set)

        await self.redis.run(drop)

    @staticmethod
    def _flash_key(session_id: str) -> str:
        return "bitnet:session-flash:" + hashlib.sha256(session_id.encode()).hexdigest()

    async def add_flash(self, session_id: str, flash: Flash) -> None:
        """Keep ``flash`` for the next page this session shows."""
        key = self._flash_key(session_id)
        data = json.dumps({"category": flash.category, "text": flash.text[:500]})

        async def push(r: Redis) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.rpush(key, data)
                pipe.ltrim(key, -_FLASH_MAX, -1)
                pipe.expire(key, _FLASH_TTL_S)
                await pipe.execute()

        await self.redis.run(push)

    async def pop_flashes(self, session_id: str) -> list[Flash]:
        """The session's notices, oldest first, removed as they are read."""
        key = self._flash_key(session_id)

        async def pop(r: Redis) -> list[bytes]:
            async with r.pipeline(transaction=True) as pipe:
                pipe.lrange(key, 0, -1)
                pipe.delete(key)
                found, _ = await pipe.execute()
            return list(found)

        out = []
        for raw in await self.redis.run(pop):
            data = json.loads(raw)
            out.append(Flash(str(data["category"]), str(data["text"])))
        return out
