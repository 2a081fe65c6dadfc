"""The response cache: deterministic completions kept in Redis for a while, per organization (opt-in).

An organization turns it on with a lifetime (``org_billing.response_cache_ttl_s``, 1 s .. 7 days; NULL: off).
A request is *cacheable* when its output is a function of its inputs: ``temperature`` 0 (greedy), or a
fixed ``seed`` (choice ``i`` samples with ``seed + i``). Its :func:`cache_key` is a SHA-256 over

- the organization (and the Redis key carries it too: another organization's identical request is a miss),
- what was loaded to serve it (``Lease.identity``: a registry version's content hash; a platform model's
  name and file fingerprint), after any A/B route was resolved for the caller, so a new version never
  answers with an old one's text,
- the endpoint (``chat`` / ``completions``), the prompt's token ids (after the chat template),
- every parameter that changes the output: the sampling parameters (temperature, top_p, top_k, min_p, the
  penalties, seed, stop, logit_bias, ignore_eos, the resolved max_tokens), n and logprobs / top_logprobs.

The value is the response body without its ``id`` and ``created`` (OpenAI's non-streamed JSON: choices and
usage), stored only for a completed, error-free response with ``SET ... EX ttl``. Redis being slow or away
is a miss (each call is bounded by a short timeout and every failure is swallowed and logged): the cache
never fails a request.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from uuid import UUID

    from bitnet_actor.stores.redis import RedisStore

__all__ = ["KEY_PREFIX", "MAX_VALUE_BYTES", "ResponseCache", "cache_key", "deterministic"]

log = logging.getLogger(__name__)

KEY_PREFIX = "bitnet:rcache:v1"
"""Redis keys: ``{KEY_PREFIX}:{org id}:{sha256}`` (v1: the key's recipe; a new recipe bumps it)."""
MAX_VALUE_BYTES = 1 << 20  # a larger response is served but not kept: Redis holds small things
_TIMEOUT_S = 0.25  # a lookup or store slower than this counts as a miss / is dropped


def deterministic(params: Mapping[str, Any]) -> bool:
    """Whether sampling with ``params`` always gives the same output: greedy, or seeded."""
    return params.get("temperature") == 0 or params.get("seed") is not None


def cache_key(
    *,
    org_id: UUID,
    identity: str,
    endpoint: str,
    prompt_ids: Sequence[int],
    params: Mapping[str, Any],
    n: int,
    logprobs: int | None,
) -> str:
    """The Redis key of a request (see the module docstring for what goes in)."""
    recipe = {
        "org": str(org_id),
        "model": identity,
        "endpoint": endpoint,
        "prompt": list(prompt_ids),
        "params": {k: _plain(v) for k, v in sorted(params.items())},
        "n": n,
        "logprobs": logprobs,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{KEY_PREFIX}:{org_id}:{digest}"


def _plain(value: Any) -> Any:
    digest = getattr(value, "digest", None)  # a constrained-decoding grammar: its hash stands for it
    if isinstance(digest, str):
        return digest
    if isinstance(value, dict):  # logit_bias: token id -> bias (JSON keys are strings: sort them as numbers)
        return [[k, value[k]] for k in sorted(value)]
    if isinstance(value, (tuple, list)):
        return list(value)
    return value


class ResponseCache:
    """Cached response bodies in Redis. Every call is bounded and never raises (a failure is a miss)."""

    def __init__(self, redis: RedisStore, *, timeout_s: float = _TIMEOUT_S) -> None:
        self._redis = redis
        self.timeout_s = timeout_s

    async def get(self, key: str) -> dict[str, Any] | None:
        """The stored body under ``key``, or None (absent, expired, unreadable, or Redis slow or away)."""
        raw: bytes | None = None
        with trio.move_on_after(self.timeout_s):
            try:
                raw = await self._redis.get(key)
            except Exception as exc:  # the cache never fails a request: a miss
                log.warning("response cache lookup failed (a miss): %s", exc)
        if raw is None:
            return None
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("response cache entry %s is damaged (a miss)", key)
            return None
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            log.warning("response cache entry %s is not a response (a miss)", key)
            return None
        return dict(body)

    async def put(self, key: str, body: Mapping[str, Any], ttl_s: int) -> bool:
        """Keep ``body`` (without ``id`` / ``created``) under ``key`` for ``ttl_s`` seconds; whether it was."""
        value = json.dumps(
            {k: v for k, v in body.items() if k not in ("id", "created")}, separators=(",", ":"), ensure_ascii=False
        ).encode()
        if len(value) > MAX_VALUE_BYTES:
            return False
        with trio.move_on_after(self.timeout_s):
            try:
                return await self._redis.set(key, value, ex=ttl_s)
            except Exception as exc:  # the cache never fails a request: not kept
                log.warning("response cache store failed (not kept): %s", exc)
        return False
