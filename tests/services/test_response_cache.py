"""The response cache on a real Redis: the key's recipe (organization, loaded weights, endpoint, prompt, every
output parameter), what is kept and for how long, and a Redis that is away or damaged being a miss."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
import trio

from actors.model_cache import _identity
from bitnet_actor.services.billing.plans import check_cache_ttl
from bitnet_actor.services.errors import ValidationError
from bitnet_actor.services.response_cache import KEY_PREFIX, MAX_VALUE_BYTES, ResponseCache, cache_key, deterministic
from bitnet_actor.stores.redis import RedisStore

if TYPE_CHECKING:
    from pathlib import Path

ORG = uuid.uuid4()
PARAMS: dict[str, Any] = {
    "temperature": 0.0,
    "top_p": 1.0,
    "min_p": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "top_k": 0,
    "seed": None,
    "stop": (),
    "logit_bias": {},
    "logprobs": False,
    "top_logprobs": 0,
    "ignore_eos": False,
    "max_tokens": 8,
}


def key(params: dict[str, Any] | None = None, **change: Any) -> str:
    args: dict[str, Any] = {
        "org_id": ORG,
        "identity": "sha256:aa",
        "endpoint": "chat",
        "prompt_ids": (1, 2, 3),
        "params": {**PARAMS, **(params or {})},
        "n": 1,
        "logprobs": None,
    }
    return cache_key(**{**args, **change})


def test_the_key_changes_with_everything_that_changes_the_output() -> None:
    base = key()
    assert base == key() and base.startswith(f"{KEY_PREFIX}:{ORG}:")
    variants = [
        key(org_id=uuid.uuid4()),
        key(identity="sha256:bb"),
        key(endpoint="completions"),
        key(prompt_ids=(1, 2, 4)),
        key(n=2),
        key(logprobs=2),
        key({"max_tokens": 9}),
        key({"stop": ("\n",)}),
        key({"seed": 1}),
        key({"top_k": 5}),
        key({"top_p": 0.5}),
        key({"min_p": 0.1}),
        key({"presence_penalty": 0.5}),
        key({"frequency_penalty": 0.5}),
        key({"repetition_penalty": 1.1}),
        key({"logit_bias": {5: 1.0}}),
        key({"logprobs": True, "top_logprobs": 2}),
        key({"ignore_eos": True}),
        key({"temperature": 0.5, "seed": 3}),
    ]
    assert base not in variants and len(set(variants)) == len(variants)
    assert key({"logit_bias": {5: 1.0, 7: -1.0}}) == key({"logit_bias": {7: -1.0, 5: 1.0}})  # the same bias, any order


def test_only_greedy_or_seeded_sampling_is_deterministic() -> None:
    assert deterministic({"temperature": 0.0, "seed": None})
    assert deterministic({"temperature": 1.3, "seed": 7})
    assert not deterministic({"temperature": 0.7, "seed": None})


def test_the_lifetime_is_bounded() -> None:
    assert check_cache_ttl(None) is None and check_cache_ttl(0) is None
    assert check_cache_ttl(1) == 1 and check_cache_ttl(7 * 24 * 3600) == 7 * 24 * 3600
    for bad in (-1, 7 * 24 * 3600 + 1, 1.5, "60", True):
        with pytest.raises(ValidationError, match="7 days"):
            check_cache_ttl(bad)


def test_a_platform_model_is_named_by_its_files(tmp_path: Path) -> None:
    import os

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    first = _identity("tiny", str(tmp_path))
    assert first == _identity("tiny", str(tmp_path)) and first.startswith("tiny@")
    assert _identity("other", str(tmp_path)) != first
    (tmp_path / "model.safetensors").write_bytes(b"new weights")
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))
    assert _identity("tiny", str(tmp_path)) != first
    assert _identity("sha256:abc", str(tmp_path)) == "sha256:abc"  # a registry version: its content hash


async def test_kept_for_the_lifetime_without_id_or_created(redis: RedisStore) -> None:
    cache = ResponseCache(redis)
    k = key(org_id=uuid.uuid4())
    assert await cache.get(k) is None
    body = {"id": "chatcmpl-1", "created": 5, "object": "chat.completion", "choices": [{"index": 0}], "usage": {}}
    assert await cache.put(k, body, 60)
    assert await cache.get(k) == {"object": "chat.completion", "choices": [{"index": 0}], "usage": {}}
    ttl = await redis.run(lambda r: r.pttl(k))
    assert 0 < ttl <= 60_000
    short = key(org_id=uuid.uuid4())
    assert await cache.put(short, body, 1)
    await trio.sleep(1.2)
    assert await cache.get(short) is None


async def test_too_large_or_damaged_entries_are_misses(redis: RedisStore) -> None:
    cache = ResponseCache(redis)
    k = key(org_id=uuid.uuid4())
    huge = {"choices": [{"text": "x" * MAX_VALUE_BYTES}]}
    assert not await cache.put(k, huge, 60)
    assert await redis.get(k) is None
    for damaged in (b"\xff\xfe", b"{not json", json.dumps({"choices": "no"}).encode(), b"[1]", b'{"choices": [1]}'):
        await redis.set(k, damaged, ex=60)
        assert await cache.get(k) is None


async def test_redis_away_is_a_miss_within_the_timeout(aio_loop: object, tmp_path: Path) -> None:
    client = aioredis.Redis(unix_socket_path=str(tmp_path / "nobody.sock"), socket_connect_timeout=0.1)
    try:
        cache = ResponseCache(RedisStore(client, "redis://away"))
        with trio.fail_after(2):
            assert await cache.get(key()) is None
            assert not await cache.put(key(), {"choices": []}, 60)
    finally:
        await trio_aclose(client)


async def test_slow_redis_is_a_miss_at_the_timeout(aio_loop: object, redis: RedisStore) -> None:
    """A Redis that accepts the connection and never answers (a hung server, a blackholed link): the lookup
    gives up at the cache's timeout and the request is a miss."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    client = aioredis.Redis(host="127.0.0.1", port=port)  # no socket timeout of its own
    try:
        slow = ResponseCache(RedisStore(client, f"redis://127.0.0.1:{port}"), timeout_s=0.05)
        started = trio.current_time()
        assert await slow.get(key()) is None
        assert not await slow.put(key(), {"choices": []}, 60)
        assert trio.current_time() - started < 0.8
    finally:
        listener.close()
        await trio_aclose(client)
    k = key(org_id=uuid.uuid4())
    await redis.set(k, json.dumps({"choices": []}), ex=60)
    assert await ResponseCache(redis, timeout_s=0.05).get(k) == {"choices": []}  # a server that answers: a hit


async def trio_aclose(client: aioredis.Redis) -> None:
    from trio_asyncio import aio_as_trio

    await aio_as_trio(client.aclose)()
