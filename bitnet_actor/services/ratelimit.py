"""Rate limits shared by every replica: requests and tokens per minute (GCRA) and a concurrency cap, in Redis.

One admission is one atomic Lua script over all the limits that apply (a key's and its organization's): either
every limit takes the request's cost or none does, so N replicas on one Redis admit exactly the limit, not
N times it. The clock is Redis's (``TIME``), so replicas' clocks do not matter.

GCRA (the generic cell rate algorithm) keeps one number per limit, the *theoretical arrival time* (TAT). A
limit of ``L`` per period ``P`` has an emission interval ``T = P / L``; a request of cost ``c`` is admitted when
``max(TAT, now) + c*T - now <= P``, which allows a burst of ``L`` and then ``L`` per ``P`` on average. Tokens are
reserved at admission (prompt + the most it may generate) and :meth:`RateLimiter.settle` gives back what was not
used (the TAT moves back, never before now), so no reservation outlives its request: an unsettled one simply
ages out with the window. The concurrency cap is a sorted set of request ids scored by their expiry, so a
request that dies without releasing frees its place after ``lease_s``.

A monthly token quota is checked in the same script: a counter per organization and month, seeded from the
ledger when missing (:class:`QuotaSeedNeeded`), grown at settle by what requests really used.
:mod:`bitnet_actor.services.limits` builds the scopes of a request and the Redis-outage policy on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bitnet_actor.stores.redis import RedisStore

__all__ = ["Decision", "LimitState", "Limits", "RateLimiter", "openai_duration"]

_PERIOD_MS = 60_000

# KEYS: per limit a TAT key (requests, tokens), then per concurrency cap a sorted-set key, then the quota key
# when there is a quota.
# ARGV: n_rate, n_conc, request id, lease ms; then per rate limit (limit, cost); then per cap (limit); then
# has_quota (0/1), quota (tokens), hard (0/1).
# Returns {-2} when the quota counter must be seeded, else {allowed (1/0), retry_after_ms, quota_exhausted
# (1/0), quota_used, then per rate limit (remaining, reset_ms), then per cap (in use)}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n_rate, n_conc = tonumber(ARGV[1]), tonumber(ARGV[2])
local rid, lease = ARGV[3], tonumber(ARGV[4])
local period = PERIOD_MS
local allowed, retry, exhausted, used = 1, 0, 0, 0
local new_tats, out = {}, {}
local qbase = 5 + 2 * n_rate + n_conc
if tonumber(ARGV[qbase]) == 1 then
  local value = redis.call('GET', KEYS[n_rate + n_conc + 1])
  if not value then return {-2} end
  used = tonumber(value)
  if tonumber(ARGV[qbase + 2]) == 1 and used >= tonumber(ARGV[qbase + 1]) then
    allowed, exhausted = 0, 1
  end
end
for i = 1, n_rate do
  local limit, cost = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  if limit <= 0 then
    allowed = 0
    retry = math.max(retry, period)
    new_tats[i] = tat
  else
    local interval = period / limit
    local new_tat = tat + cost * interval
    if new_tat - now > period then
      allowed = 0
      retry = math.max(retry, math.ceil(new_tat - now - period))
    end
    new_tats[i] = new_tat
  end
end
local base = 4 + 2 * n_rate
for j = 1, n_conc do
  local key, cap = KEYS[n_rate + j], tonumber(ARGV[base + j])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= cap then
    allowed = 0
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    -- Places free when requests end (usually soon), not only when the oldest lease expires: retry in 1 s.
    local wait = 1000
    if first[2] then wait = math.min(1000, math.max(1, tonumber(first[2]) - now)) end
    retry = math.max(retry, wait)
  end
end
for i = 1, n_rate do
  local limit = tonumber(ARGV[3 + 2 * i])
  local tat = new_tats[i]
  if allowed == 0 then
    tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
  end
  if allowed == 1 then
    redis.call('SET', KEYS[i], tat, 'PX', math.max(1, math.ceil(tat - now)) + period)
  end
  local remaining, reset = 0, math.ceil(tat - now)
  if limit > 0 then
    remaining = math.floor((period - (tat - now)) / (period / limit))
    if remaining < 0 then remaining = 0 end
  end
  out[#out + 1] = remaining
  out[#out + 1] = reset
end
for j = 1, n_conc do
  local key = KEYS[n_rate + j]
  if allowed == 1 then
    redis.call('ZADD', key, now + lease, rid)
    redis.call('PEXPIRE', key, lease + period)
  end
  out[#out + 1] = redis.call('ZCARD', key)
end
local result = {allowed, retry, exhausted, used}
for _, v in ipairs(out) do result[#result + 1] = v end
return result
""".replace("PERIOD_MS", str(_PERIOD_MS))

# KEYS: TAT keys to adjust, then sorted-set keys to leave, then the quota key when there is one.
# ARGV: n_tokens, n_conc, request id, has_quota, used tokens; then per TAT key (limit, refund). A negative
# refund charges what the request used beyond its reservation. The quota counter only grows when it exists
# (a missing one is seeded from the ledger at the next admission).
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, n_conc, rid = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local period = PERIOD_MS
for i = 1, n do
  local limit, refund = tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat and limit > 0 and refund ~= 0 then
    if tat < now then tat = now end
    tat = tat - refund * (period / limit)
    if tat <= now then redis.call('DEL', KEYS[i])
    else redis.call('SET', KEYS[i], tat, 'PX', math.ceil(tat - now) + period) end
  end
end
for j = n + 1, n + n_conc do redis.call('ZREM', KEYS[j], rid) end
if tonumber(ARGV[4]) == 1 and tonumber(ARGV[5]) > 0 then
  local qkey = KEYS[n + n_conc + 1]
  if redis.call('EXISTS', qkey) == 1 then redis.call('INCRBY', qkey, ARGV[5]) end
end
return 1
""".replace("PERIOD_MS", str(_PERIOD_MS))


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one scope (an API key or an organization); None: no such limit.

    Attributes:
        rpm: requests per minute.
        tpm: tokens per minute (prompt + completion).
        concurrency: requests in flight at once.
    """

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "concurrency"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a whole number >= 0 or None, not {value!r}")


@dataclass(frozen=True, slots=True)
class Quota:
    """A monthly token quota: ``key`` counts the month's tokens in Redis (seeded from the ledger).

    Attributes:
        key: the counter's Redis key (one per organization and month).
        limit: tokens in the month. hard: refuse once reached (else only count: overage is billed).
    """

    key: str
    limit: int
    hard: bool = True


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit after a check: what the headers report.

    Attributes:
        scope: e.g. ``"key:<id>"``. kind: ``"requests"`` or ``"tokens"``.
        limit: per minute. remaining: what could still be admitted now. reset_s: until the window is clear.
    """

    scope: str
    kind: str
    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :meth:`RateLimiter.admit`.

    Attributes:
        allowed: every limit took the cost.
        retry_after_s: when refused, how long until it could be admitted (0 when allowed).
        states: the rate limits' states (for the headers).
        request_id: what :meth:`RateLimiter.settle` needs back.
        reserved_tokens: the tokens reserved.
        quota_exhausted: refused because the monthly quota is used up (not retryable this month).
        quota_used: the month's tokens counted so far (when there is a quota).
        source: ``"redis"`` (shared by every replica) or ``"local"`` (this process, during a Redis outage).
    """

    allowed: bool
    retry_after_s: float
    states: tuple[LimitState, ...]
    request_id: str
    reserved_tokens: int
    quota_exhausted: bool = False
    quota_used: int = 0
    source: str = "redis"
    _token_keys: tuple[tuple[str, int], ...] = ()
    _conc_keys: tuple[str, ...] = ()
    _quota_key: str | None = None

    def tightest(self, kind: str) -> LimitState | None:
        """The limit of ``kind`` with the least remaining (what OpenAI's headers report)."""
        of_kind = [s for s in self.states if s.kind == kind]
        return min(of_kind, key=lambda s: (s.remaining, -s.reset_s)) if of_kind else None

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers, the IETF draft's ``RateLimit-Policy`` / ``RateLimit`` (and
        ``Retry-After`` when refused for a rate; a used-up quota is not retryable)."""
        out: dict[str, str] = {}
        policy: list[str] = []
        current: list[str] = []
        for kind in ("requests", "tokens"):
            state = self.tightest(kind)
            if state is None:
                continue
            out[f"x-ratelimit-limit-{kind}"] = str(state.limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(state.remaining)
            out[f"x-ratelimit-reset-{kind}"] = openai_duration(state.reset_s)
            policy.append(f'"{kind}";q={state.limit};w={_PERIOD_MS // 1000}')
            current.append(f'"{kind}";r={state.remaining};t={math.ceil(state.reset_s)}')
        if policy:
            out["RateLimit-Policy"] = ", ".join(policy)
            out["RateLimit"] = ", ".join(current)
        if not self.allowed and not self.quota_exhausted:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return out


def openai_duration(seconds: float) -> str:
    """A duration as OpenAI's headers write it: ``12ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class QuotaSeedNeeded(Exception):
    """The quota counter is missing from Redis (new month, or Redis lost it): seed it, then admit again."""

    def __init__(self, quota: Quota) -> None:
        super().__init__(quota.key)
        self.quota = quota


def _plan(
    scopes: dict[str, Limits], tokens: int, requests: int
) -> tuple[list[tuple[str, str, int, int]], list[tuple[str, int]]]:
    rate: list[tuple[str, str, int, int]] = []  # (scope, kind, limit, cost)
    caps: list[tuple[str, int]] = []
    for scope, limits in sorted(scopes.items()):
        if limits.rpm is not None:
            rate.append((scope, "requests", limits.rpm, requests))
        if limits.tpm is not None:
            rate.append((scope, "tokens", limits.tpm, tokens))
        if limits.concurrency is not None and requests:
            caps.append((scope, limits.concurrency))
    return rate, caps


class RateLimiter:
    """Checks and settles limits in Redis (see the module docstring)."""

    def __init__(self, redis: RedisStore, *, prefix: str = "bitnet:rl", lease_s: float = 900.0) -> None:
        """Args:
        redis: the shared Redis.
        prefix: of every key this limiter writes.
        lease_s: how long a concurrency place is held by a request that never releases it.
        """
        self.redis = redis
        self.prefix = prefix
        self.lease_ms = int(lease_s * 1000)

    async def admit(
        self,
        scopes: dict[str, Limits],
        *,
        request_id: str,
        tokens: int,
        requests: int = 1,
        quota: Quota | None = None,
    ) -> Decision:
        """Take ``requests`` request(s) and ``tokens`` from every limit of every scope, or nothing.

        Args:
            scopes: scope name (``"key:<id>"``, ``"org:<id>"``) -> its limits.
            request_id: unique per request (the concurrency place's name).
            tokens: tokens to reserve (prompt + the most it may generate).
            requests: 1 for a request; 0 to read the limits' state without taking anything (headers of
                routes that cost nothing).
            quota: the organization's monthly quota, checked in the same script.

        Raises:
            QuotaSeedNeeded: ``quota``'s counter is not in Redis; seed it (:meth:`seed_quota`) and retry.
        """
        if tokens < 0 or requests < 0:
            raise ValueError("tokens and requests must be >= 0")
        rate, caps = _plan(scopes, tokens, requests)
        use_quota = quota is not None and requests > 0
        if not rate and not caps and not use_quota:  # nothing is limited: no round trip
            return Decision(allowed=True, retry_after_s=0.0, states=(), request_id=request_id, reserved_tokens=0)
        keys = [f"{self.prefix}:{scope}:{kind}" for scope, kind, _, _ in rate]
        keys += [f"{self.prefix}:{scope}:inflight" for scope, _ in caps]
        args: list[int | str] = [len(rate), len(caps), request_id, self.lease_ms]
        for _, _, limit, cost in rate:
            args += [limit, cost]
        args += [cap for _, cap in caps]
        if use_quota:
            assert quota is not None
            keys.append(quota.key)
            args += [1, quota.limit, 1 if quota.hard else 0]
        else:
            args += [0, 0, 0]
        reply = await self.redis.eval(_ADMIT, keys, args)
        if int(reply[0]) == -2:
            assert quota is not None
            raise QuotaSeedNeeded(quota)
        allowed, retry_ms = int(reply[0]), int(reply[1])
        exhausted, used = bool(int(reply[2])), int(reply[3])
        states = tuple(
            LimitState(scope, kind, limit, int(reply[4 + 2 * i]), int(reply[5 + 2 * i]) / 1000)
            for i, (scope, kind, limit, _) in enumerate(rate)
        )
        token_keys = tuple((keys[i], limit) for i, (_, kind, limit, _) in enumerate(rate) if kind == "tokens")
        taken = bool(allowed) and requests > 0
        return Decision(
            allowed=bool(allowed),
            retry_after_s=retry_ms / 1000 if not allowed else 0.0,
            states=states,
            request_id=request_id,
            reserved_tokens=tokens if taken else 0,
            quota_exhausted=exhausted,
            quota_used=used,
            _token_keys=token_keys if taken else (),
            _conc_keys=tuple(keys[len(rate) : len(rate) + len(caps)]) if taken else (),
            _quota_key=quota.key if taken and use_quota and quota is not None else None,
        )

    async def seed_quota(self, quota: Quota, used: int) -> None:
        """Set ``quota``'s counter to ``used`` (the ledger's count for the month) unless another replica
        has already; it expires after 40 days (the month is over by then)."""
        await self.redis.set(quota.key, max(0, used), ex=40 * 86400, nx=True)

    async def settle(self, decision: Decision, *, used_tokens: int) -> None:
        """End an admitted request: give back the reserved tokens it did not use (or charge what it used
        beyond them), free its concurrency place and count its tokens against the quota.

        Settling a refused decision does nothing; settling twice gives back twice, so call it once.
        """
        if not decision.allowed or not decision.request_id:
            return
        used = max(0, used_tokens)
        refund = decision.reserved_tokens - used
        keys = [k for k, _ in decision._token_keys] + list(decision._conc_keys)
        has_quota = decision._quota_key is not None
        if has_quota:
            assert decision._quota_key is not None
            keys.append(decision._quota_key)
        args: list[int | str] = [
            len(decision._token_keys),
            len(decision._conc_keys),
            decision.request_id,
            1 if has_quota else 0,
            used,
        ]
        for _, limit in decision._token_keys:
            args += [limit, refund]
        if keys:
            await self.redis.eval(_SETTLE, keys, args)
