"""The response cache on a real server with a real model, Redis and PostgreSQL: off unless an organization
opts in; then a deterministic request is a miss, the identical one a hit (the same content, a new id, streamed
or not, through the openai client too), anything that changes the output (max_tokens, prompt, another
organization, another model version) a miss, and sampling without a seed bypasses it; entries expire; hits
are metered in the ledger (marked) and counted by the rate limits."""

from __future__ import annotations

import json
import shutil
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
import trio_asyncio

from bitnet_actor.services.billing import plans
from bitnet_actor.stores.postgres import open_database
from tests.api.served import _org_with_key, serve

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.api.served import Served

openai = pytest.importorskip("openai", reason="the openai client is a test dependency")
pytest.importorskip("transformers", reason="transformers builds the test model")

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0}


@pytest.fixture
async def served(
    aio_loop: object, pg_dsn: str, redis_url: str, model_dir: Path, tmp_path: Path
) -> AsyncIterator[Served]:
    async with serve(pg_dsn, redis_url, tmp_path, {"tiny": model_dir}) as s:
        yield s


async def org(pg_dsn: str, scopes: tuple[str, ...] = ("inference",), **overrides: Any) -> tuple[Any, str]:
    """A new organization (pro plan) with a key and ``overrides`` (``response_cache_ttl_s``, ``rpm``...), set
    before its first request (the server reads its plan then)."""
    org_id, key = await trio.to_thread.run_sync(_org_with_key, pg_dsn, f"rc-{uuid.uuid4().hex[:8]}", list(scopes))
    if overrides:

        async def change() -> None:
            async with trio_asyncio.open_loop(), open_database(pg_dsn, min_size=1, max_size=1) as db:
                await plans.set_org_overrides(db, org_id, overrides)

        await trio.to_thread.run_sync(trio.run, change)
    return org_id, key


def http(served: Served, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=served.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def sse(text: str) -> list[Any]:
    events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def ledger(pg_dsn: str, org_id: Any, count: int) -> list[dict[str, Any]]:
    """The organization's usage events, once ``count`` are there (the meter writes in batches)."""

    async def fetch() -> list[dict[str, Any]]:
        async with trio_asyncio.open_loop(), open_database(pg_dsn, min_size=1, max_size=1) as db:
            for _ in range(200):
                rows = await db.fetch(
                    "SELECT request_id, input_tokens, output_tokens, cached_tokens, outcome, request_data"
                    " FROM usage_events WHERE org_id = $1 ORDER BY created_at",
                    org_id,
                )
                if len(rows) >= count:
                    return [dict(r) for r in rows]
                await trio.sleep(0.05)
        raise AssertionError(f"{count} usage events never reached the ledger")

    return await trio.to_thread.run_sync(trio.run, fetch)


def data(row: dict[str, Any]) -> dict[str, Any]:
    value = row["request_data"]
    return dict(json.loads(value) if isinstance(value, str) else value)


async def test_off_unless_an_organization_opts_in(served: Served, pg_dsn: str) -> None:
    _, off_key = await org(pg_dsn)
    async with http(served, off_key) as c:
        for _ in range(2):
            r = await c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 200, r.text
            assert "x-bitnet-cache" not in r.headers


async def test_hits_serve_identical_deterministic_requests(served: Served, pg_dsn: str) -> None:
    org_id, key = await org(pg_dsn, response_cache_ttl_s=600)
    _, other_key = await org(pg_dsn, response_cache_ttl_s=600)
    async with http(served, key) as c, http(served, other_key) as other:
        miss = await c.post("/v1/chat/completions", json=CHAT)
        assert miss.status_code == 200 and miss.headers["x-bitnet-cache"] == "miss"
        hit = await c.post("/v1/chat/completions", json=CHAT)
        assert hit.status_code == 200 and hit.headers["x-bitnet-cache"] == "hit"
        assert hit.json()["choices"] == miss.json()["choices"] and hit.json()["choices"][0]["message"]["content"]
        assert hit.json()["id"] != miss.json()["id"] and hit.json()["model"] == "tiny"
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert hit.json()["usage"][name] == miss.json()["usage"][name]
        assert hit.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": miss.json()["usage"]["prompt_tokens"]}
        assert "x-ratelimit-remaining-requests" in hit.headers  # admitted (and counted) like any request

        streamed = await c.post(
            "/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        )
        assert streamed.headers["x-bitnet-cache"] == "hit"
        chunks = sse(streamed.text)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
        assert text == miss.json()["choices"][0]["message"]["content"]
        assert chunks[-2]["choices"][0]["finish_reason"] == miss.json()["choices"][0]["finish_reason"]
        assert (
            chunks[-1]["choices"] == []
            and chunks[-1]["usage"]["completion_tokens"] == miss.json()["usage"]["completion_tokens"]
        )

        # Whatever changes the output is another entry; another organization never sees this one's.
        for changed in ({**CHAT, "max_tokens": 5}, {**CHAT, "messages": [{"role": "user", "content": "ho"}]}):
            r = await c.post("/v1/chat/completions", json=changed)
            assert r.headers["x-bitnet-cache"] == "miss"
        r = await other.post("/v1/chat/completions", json=CHAT)
        assert r.headers["x-bitnet-cache"] == "miss"
        assert r.json()["choices"] == miss.json()["choices"]  # the same model and request: the same answer

        # Sampling: random without a seed bypasses the cache; a seed makes it deterministic.
        sampled = {**CHAT, "temperature": 1.0}
        for _ in range(2):
            r = await c.post("/v1/chat/completions", json=sampled)
            assert r.status_code == 200 and r.headers["x-bitnet-cache"] == "bypass"
        seeded = [await c.post("/v1/chat/completions", json={**sampled, "seed": 11}) for _ in range(2)]
        assert [r.headers["x-bitnet-cache"] for r in seeded] == ["miss", "hit"]
        assert seeded[0].json()["choices"] == seeded[1].json()["choices"]

        # A streamed miss is kept too; text completions have entries of their own.
        completion = {"model": "tiny", "prompt": "def f(", "max_tokens": 4, "temperature": 0, "logprobs": 2}
        first = await c.post("/v1/completions", json={**completion, "stream": True})
        assert first.headers["x-bitnet-cache"] == "miss"
        streamed_text = "".join(ch["choices"][0]["text"] for ch in sse(first.text) if ch["choices"])
        again = await c.post("/v1/completions", json=completion)
        assert again.headers["x-bitnet-cache"] == "hit"
        assert again.json()["choices"][0]["text"] == streamed_text
        assert len(again.json()["choices"][0]["logprobs"]["tokens"]) == again.json()["usage"]["completion_tokens"]

        metrics = (await c.get("/metrics")).text

    def go() -> Any:
        with openai.OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0, timeout=60) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="tiny", messages=CHAT["messages"], max_tokens=6, temperature=0
            )
            return raw.headers.get("x-bitnet-cache"), raw.parse()

    header, parsed = await trio.to_thread.run_sync(go)
    assert header == "hit" and parsed.object == "chat.completion"
    assert parsed.choices[0].message.content == miss.json()["choices"][0]["message"]["content"]
    assert parsed.usage.prompt_tokens_details.cached_tokens == parsed.usage.prompt_tokens

    def counter(name: str) -> float:
        lines = [line for line in metrics.splitlines() if line.startswith(f'{name}{{model="tiny"}}')]
        return float(lines[0].split()[-1]) if lines else 0.0

    assert counter("bitnet_response_cache_hits_total") >= 4  # 4 here (another test's may add more)
    assert counter("bitnet_response_cache_misses_total") >= 6

    # Every hit is metered with the same tokens as its miss, marked as served from the cache.
    rows = await ledger(pg_dsn, org_id, 12)
    hits = [r for r in rows if data(r).get("response_cache") == "hit"]
    assert len(hits) == 5 and all(r["outcome"] == "completed" for r in hits)
    first_hit = next(r for r in rows if r["request_id"] == hit.json()["id"])
    assert (first_hit["input_tokens"], first_hit["output_tokens"]) == (
        miss.json()["usage"]["prompt_tokens"],
        miss.json()["usage"]["completion_tokens"],
    )
    assert first_hit["cached_tokens"] == first_hit["input_tokens"]
    # A miss generates: its cached tokens are only the full prompt blocks of 16 the prefix cache supplied
    assert all(r["cached_tokens"] % 16 == 0 and r["cached_tokens"] < r["input_tokens"] for r in rows if r not in hits)


async def test_entries_expire_and_hits_count_against_the_rate_limit(served: Served, pg_dsn: str) -> None:
    _, key = await org(pg_dsn, response_cache_ttl_s=1, rpm=4)
    async with http(served, key) as c:
        states = [(await c.post("/v1/chat/completions", json=CHAT)).headers.get("x-bitnet-cache") for _ in range(2)]
        assert states == ["miss", "hit"]
        await trio.sleep(1.3)
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.headers["x-bitnet-cache"] == "miss"  # expired
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.headers["x-bitnet-cache"] == "hit" and r.headers["x-ratelimit-remaining-requests"] == "0"
        refused = await c.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"


async def test_a_new_model_version_is_a_miss(
    aio_loop: object, pg_dsn: str, redis_url: str, model_dir: Path, tmp_path: Path
) -> None:
    from tests.api.test_org_models_served import tar_bytes

    async with serve(pg_dsn, redis_url, tmp_path / "data", {}) as served:
        _, key = await org(pg_dsn, ("inference", "models:read", "models:write"), response_cache_ttl_s=600)
        other = tmp_path / "other"

        def copy() -> None:  # the same weights in another archive: another content hash
            shutil.copytree(model_dir, other)
            (other / "README.md").write_text("another archive\n")

        await trio.to_thread.run_sync(copy)
        body = {"model": "coder", "prompt": "def f(", "max_tokens": 4, "temperature": 0, "ignore_eos": True}
        async with http(served, key) as c:
            r = await c.post("/api/v1/orgs/current/models?name=coder&version=1", content=tar_bytes(model_dir))
            assert r.status_code == 201, r.text
            states = [(await c.post("/v1/completions", json=body)).headers.get("x-bitnet-cache") for _ in range(2)]
            assert states == ["miss", "hit"]
            r = await c.post("/api/v1/orgs/current/models?name=coder&version=2", content=tar_bytes(other))
            assert r.status_code == 201, r.text
            r = await c.post("/v1/completions", json=body)  # "coder" is version 2 now
            assert r.json()["model"] == "coder:2" and r.headers["x-bitnet-cache"] == "miss"
            r = await c.post("/v1/completions", json={**body, "model": "coder:1"})
            assert r.json()["model"] == "coder:1" and r.headers["x-bitnet-cache"] == "hit"  # keyed by content
