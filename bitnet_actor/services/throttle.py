"""Failure counters in Redis for login throttling: per account and per client address.

A fixed window per key (``INCR`` + ``EXPIRE`` in one Lua call, atomic across replicas). Only failures
count; ``check`` refuses while a counter is over its limit, so a throttled account can't even be probed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bitnet_actor.services.errors import ThrottledError

if TYPE_CHECKING:
    from bitnet_actor.stores.redis import RedisStore

__all__ = ["LoginThrottle"]

_INCR = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""
_GET = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local ttl = redis.call('TTL', KEYS[1])
return {n, ttl}
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginThrottle:
    """Limits failed logins to ``per_account`` per account and ``per_ip`` per address within ``window_s``."""

    redis: RedisStore
    per_account: int = 5
    per_ip: int = 30
    window_s: int = 900

    def _keys(self, email: str, ip: str) -> list[tuple[str, int]]:
        account = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]  # no emails in Redis
        return [
            (f"bitnet:login-fail:acct:{account}", self.per_account),
            (f"bitnet:login-fail:ip:{ip}", self.per_ip),
        ]

    async def check(self, email: str, ip: str) -> None:
        """Raise ``ThrottledError`` if either counter is at its limit."""
        for key, limit in self._keys(email, ip):
            count, ttl = await self.redis.eval(_GET, [key], [])
            if int(count) >= limit:
                raise ThrottledError("too many failed logins; try again later", retry_after=max(int(ttl), 1))

    async def failed(self, email: str, ip: str) -> None:
        """Count one failure against the account and the address."""
        for key, _ in self._keys(email, ip):
            await self.redis.eval(_INCR, [key], [self.window_s])

    async def succeeded(self, email: str) -> None:
        """Reset the account's counter (not the address's)."""
        key, _ = self._keys(email, "")[0]
        await self.redis.delete(key)
