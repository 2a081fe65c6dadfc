"""A request's limits: the rate limits of its key and organization, its concurrency cap and the monthly quota.

:class:`RequestLimits` turns what an organization runs under (:class:`OrgProfile`) and the calling key into
the scopes :class:`RateLimiter` checks in one Redis script, seeds the quota counter from the ledger when
Redis does not have it, and applies the Redis-outage policy:

- Redis answers: the shared limits, exact across replicas;
- Redis fails (error or no answer within ``redis_timeout_s``): for ``fail_open_s`` seconds (30 by default,
  ``BITNET_RATELIMIT_FAIL_OPEN``) from the first failure each replica limits alone, in process, with the same
  limits (so N replicas admit at most N times a limit while it lasts) and quotas unchecked; after that,
  requests are refused with 503 (``rate_limiter_unavailable``) until Redis answers again.

Scopes: ``org:<id>`` (the plan's rpm/tpm), ``key:<id>`` (the key's own rpm/tpm/concurrency, else the plan's
per-key defaults) or, for a member's access token, ``user:<org>:<id>`` with the per-key defaults.
The tokens reserved are the prompt plus ``max_tokens`` for every choice, capped at the smallest tokens
limit (a request larger than the whole minute's budget is admitted on an empty budget, then its real count
charged at settle).

Settling can leave the response path: ``settle(..., wait=False)`` hands the decision to :meth:`RequestLimits.run`
(the "limits-settler" task) and returns at once; an admission on this replica first waits (at most
``redis_timeout_s``) until the settles handed over before it are done, so a client's next request sees its
previous one settled, as when the response waited for it. A full queue, or no settler running, settles inline.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import trio

from bitnet_actor.errors import StoreError, StoreUnavailableError
from bitnet_actor.services.ratelimit import (
    _PERIOD_MS,
    Decision,
    Limits,
    LimitState,
    Quota,
    QuotaSeedNeeded,
    RateLimiter,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from uuid import UUID

    from bitnet_actor.services.api_keys import KeyPrincipal
    from bitnet_actor.services.billing.plans import OrgProfile
    from bitnet_actor.stores.postgres import Database

__all__ = ["LimiterUnavailableError", "LocalLimiter", "RequestLimits", "month_tokens"]

log = logging.getLogger(__name__)


class LimiterUnavailableError(StoreError):
    """Redis has been unreachable longer than the fail-open window: refuse (503)."""


async def month_tokens(db: Database, org_id: UUID, now: datetime | None = None) -> int:
    """Tokens (input + output) ``org_id`` used this calendar month (UTC), from the ledger's daily rollups."""
    now = now or datetime.now(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        value = await tx.fetchval(
            "SELECT coalesce(sum(input_tokens + output_tokens), 0) FROM usage_rollups"
            " WHERE org_id = $1 AND width = '1d' AND bucket_start >= $2",
            org_id,
            start,
        )
    return int(value)


@dataclass(slots=True)
class LocalLimiter:
    """The same GCRA and concurrency rules in this process only (the Redis-outage fallback)."""

    clock: Callable[[], float] = time.monotonic
    _tats: dict[str, float] = field(default_factory=dict)
    _inflight: dict[str, dict[str, float]] = field(default_factory=dict)
    lease_s: float = 900.0

    def admit(self, scopes: dict[str, Limits], *, request_id: str, tokens: int, requests: int = 1) -> Decision:
        """As :meth:`RateLimiter.admit`, without quota."""
        now = self.clock() * 1000
        allowed, retry = True, 0.0
        rate: list[tuple[str, str, int, int, float]] = []
        for scope, limits in sorted(scopes.items()):
            for kind, limit, cost in (("requests", limits.rpm, requests), ("tokens", limits.tpm, tokens)):
                if limit is None:
                    continue
                key = f"{scope}:{kind}"
                tat = max(self._tats.get(key, now), now)
                new_tat = tat + cost * (_PERIOD_MS / limit) if limit > 0 else math.inf
                if new_tat - now > _PERIOD_MS:
                    allowed = False
                    retry = max(retry, _PERIOD_MS if limit <= 0 else new_tat - now - _PERIOD_MS)
                rate.append((scope, kind, limit, cost, new_tat))
        caps = [(s, lim.concurrency) for s, lim in sorted(scopes.items()) if lim.concurrency is not None and requests]
        for scope, cap in caps:
            places = self._inflight.setdefault(scope, {})
            for rid in [r for r, until in places.items() if until <= now]:
                del places[rid]
            if len(places) >= (cap or 0):
                allowed = False
                retry = max(retry, min(1000.0, min(places.values(), default=now + 1000) - now))
        states = []
        for scope, kind, limit, _, new_tat in rate:
            key = f"{scope}:{kind}"
            tat = new_tat if allowed else max(self._tats.get(key, now), now)
            if allowed:
                self._tats[key] = tat
            remaining = max(0, math.floor((_PERIOD_MS - (tat - now)) / (_PERIOD_MS / limit))) if limit > 0 else 0
            states.append(LimitState(scope, kind, limit, remaining, max(0.0, tat - now) / 1000))
        taken = allowed and requests > 0
        if taken:
            for scope, _ in caps:
                self._inflight[scope][request_id] = now + self.lease_s * 1000
        return Decision(
            allowed=allowed,
            retry_after_s=retry / 1000 if not allowed else 0.0,
            states=tuple(states),
            request_id=request_id,
            reserved_tokens=tokens if taken else 0,
            _token_keys=tuple((f"{s}:{k}", lim) for s, k, lim, _, _ in rate if k == "tokens") if taken else (),
            _conc_keys=tuple(s for s, _ in caps) if taken else (),
            source="local",
        )

    def settle(self, decision: Decision, *, used_tokens: int) -> None:
        """As :meth:`RateLimiter.settle`."""
        if not decision.allowed:
            return
        now = self.clock() * 1000
        refund = decision.reserved_tokens - max(0, used_tokens)
        for key, limit in decision._token_keys:
            if key in self._tats and limit > 0:
                self._tats[key] = max(self._tats[key], now) - refund * (_PERIOD_MS / limit)
        for scope in decision._conc_keys:
            self._inflight.get(scope, {}).pop(decision.request_id, None)


def _scopes(profile: OrgProfile, key: KeyPrincipal | None, user_id: UUID | None) -> dict[str, Limits]:
    scopes = {f"org:{profile.org_id}": Limits(rpm=profile.rpm, tpm=profile.tpm)}
    if key is not None:
        scopes[f"key:{key.key_id}"] = Limits(
            rpm=key.rpm if key.rpm is not None else profile.key_rpm,
            tpm=key.tpm if key.tpm is not None else profile.key_tpm,
            concurrency=key.max_concurrency if key.max_concurrency is not None else profile.key_concurrency,
        )
    elif user_id is not None:
        scopes[f"user:{profile.org_id}:{user_id}"] = Limits(
            rpm=profile.key_rpm, tpm=profile.key_tpm, concurrency=profile.key_concurrency
        )
    return {s: lim for s, lim in scopes.items() if lim != Limits()}


class RequestLimits:
    """Admits and settles requests against every limit that applies (see the module docstring)."""

    def __init__(
        self,
        limiter: RateLimiter,
        db: Database,
        *,
        fail_open_s: float = 30.0,
        redis_timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        self.limiter = limiter
        self.db = db
        self.fail_open_s = fail_open_s
        self.redis_timeout_s = redis_timeout_s
        self.clock = clock
        self.local = LocalLimiter(clock=clock)
        self._outage_since: float | None = None
        self._on_fallback = on_fallback
        # 1024: settles waiting for the settler at once (one Redis round trip each); past it, inline.
        self._settle_send, self._settle_recv = trio.open_memory_channel[tuple[Decision, int]](1024)
        self._settler_running = False
        self._settling = 0
        self._settled = trio.Event()
        self._settled.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The settler: settle what ``settle(..., wait=False)`` handed over, in order, until cancelled; then
        what is left, within a short grace (what is not settled expires with its window and lease)."""
        self._settler_running = True
        try:
            task_status.started()
            async for decision, used in self._settle_recv:
                try:
                    with trio.CancelScope(shield=True):  # taken: finish it (bounded by redis_timeout_s)
                        await self.settle(decision, used_tokens=used)
                finally:
                    self._settle_done()
        finally:
            self._settler_running = False
            with trio.move_on_after(2 * self.redis_timeout_s, shield=True):
                while True:
                    try:
                        decision, used = self._settle_recv.receive_nowait()
                    except trio.WouldBlock:
                        break
                    try:
                        await self.settle(decision, used_tokens=used)
                    finally:
                        self._settle_done()

    def _settle_done(self) -> None:
        self._settling -= 1
        if not self._settling:
            self._settled.set()

    def quota_of(self, profile: OrgProfile, now: datetime | None = None) -> Quota | None:
        """The organization's quota this month (None: unlimited)."""
        if profile.monthly_token_quota is None:
            return None
        now = now or datetime.now(UTC)
        key = f"{self.limiter.prefix}:quota:{profile.org_id}:{now:%Y-%m}"
        return Quota(key, profile.monthly_token_quota, hard=profile.quota_mode == "hard")

    async def admit(
        self,
        profile: OrgProfile,
        *,
        key: KeyPrincipal | None,
        user_id: UUID | None,
        request_id: str,
        tokens: int = 0,
        requests: int = 1,
    ) -> Decision:
        """Check (``requests=1``) or read (``requests=0``) the limits of one request.

        Raises:
            LimiterUnavailableError: Redis has been away longer than the fail-open window.
        """
        if self._settling:  # this replica's earlier settles land first (see the module docstring)
            with trio.move_on_after(self.redis_timeout_s):
                await self._settled.wait()
        scopes = _scopes(profile, key, user_id)
        caps = [lim.tpm for lim in scopes.values() if lim.tpm is not None]
        if caps:
            tokens = min(tokens, max(0, min(caps)))
        quota = self.quota_of(profile)
        try:
            decision = await self._shared(scopes, profile, request_id, tokens, requests, quota)
        except (StoreUnavailableError, trio.TooSlowError) as exc:
            now = self.clock()
            if self._outage_since is None:
                self._outage_since = now
                log.error("rate limiter: Redis unavailable (%s); limiting in process for %gs", exc, self.fail_open_s)
            if now - self._outage_since > self.fail_open_s:
                raise LimiterUnavailableError("the rate limiter is unavailable; retry shortly") from None
            if self._on_fallback is not None:
                self._on_fallback()
            return self.local.admit(scopes, request_id=request_id, tokens=tokens, requests=requests)
        if self._outage_since is not None:
            log.warning("rate limiter: Redis answers again after %.1fs", self.clock() - self._outage_since)
            self._outage_since = None
        return decision

    async def _shared(
        self,
        scopes: dict[str, Limits],
        profile: OrgProfile,
        request_id: str,
        tokens: int,
        requests: int,
        quota: Quota | None,
    ) -> Decision:
        for _ in range(2):
            try:
                with trio.fail_after(self.redis_timeout_s):
                    return await self.limiter.admit(
                        scopes, request_id=request_id, tokens=tokens, requests=requests, quota=quota
                    )
            except QuotaSeedNeeded as need:
                used = await month_tokens(self.db, profile.org_id)
                with trio.fail_after(self.redis_timeout_s):
                    await self.limiter.seed_quota(need.quota, used)
        raise StoreError("the quota counter could not be seeded")

    async def settle(self, decision: Decision, *, used_tokens: int, wait: bool = True) -> None:
        """Settle ``decision`` where it was taken. A Redis failure here is logged, not raised: what it
        would have given back expires with its window and lease. ``wait=False``: hand it to the settler
        (:meth:`run`) when one runs and has room, else settle now."""
        if not wait and self._settler_running and decision.source != "local" and decision.allowed:
            try:
                self._settle_send.send_nowait((decision, used_tokens))
            except trio.WouldBlock:
                pass
            else:
                self._settling += 1
                if self._settled.is_set():
                    self._settled = trio.Event()
                return
        if decision.source == "local":
            self.local.settle(decision, used_tokens=used_tokens)
            return
        try:
            with trio.fail_after(self.redis_timeout_s):
                await self.limiter.settle(decision, used_tokens=used_tokens)
        except (StoreUnavailableError, trio.TooSlowError) as exc:
            log.warning("rate limiter: settle of %s failed (%s); its reservation expires", decision.request_id, exc)
