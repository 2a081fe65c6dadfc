"""The prefix cache on a real server, through the official ``openai`` client: a chat sharing a system prompt
with an earlier one reports ``usage.prompt_tokens_details.cached_tokens`` (the shared full blocks of 16 tokens),
non-streamed and in the streamed usage chunk, on chat and text completions, and ``usage.input_tokens_details``
on the websocket; another organization never hits them (and gets the same text computing them itself) unless the
operator shares blocks platform-wide; the ledger meters the cached tokens as usage reports them; the metrics count
queried and hit tokens."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio

from tests.api.served import _org_with_key, serve
from tests.api.test_openai_api import events_until_done
from tests.api.test_response_cache_served import ledger

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.api.served import Served

openai = pytest.importorskip("openai", reason="the openai client is a test dependency")
pytest.importorskip("transformers", reason="transformers builds the test model")

B = 16
SYSTEM = (
    "You are a careful assistant for a small team of Python developers. Answer briefly, quote the standard "
    "library where it helps, and never invent functions that do not exist."
)


def chat(user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


@pytest.fixture
async def served(
    aio_loop: object, pg_dsn: str, redis_url: str, model_dir: Path, tmp_path: Path
) -> AsyncIterator[Served]:
    async with serve(pg_dsn, redis_url, tmp_path, {"tiny": model_dir}) as s:
        yield s


def client(served: Served, key: str) -> Any:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0, timeout=60)


async def tokens(served: Served, **body: Any) -> list[int]:
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        r = await http.post(
            "/v1/tokenize", json={"model": "tiny", **body}, headers={"Authorization": f"Bearer {served.key}"}
        )
    assert r.status_code == 200, r.text
    return list(r.json()["tokens"])


def shared_blocks(first: list[int], second: list[int]) -> int:
    """The tokens of ``second`` a cache holding ``first``'s full blocks supplies (one token is always left)."""
    same = [a == b for a, b in zip(first, second, strict=False)]
    common = same.index(False) if False in same else len(same)
    return min(common // B, len(first) // B, (len(second) - 1) // B) * B


async def test_cached_tokens_in_usage_everywhere(served: Served, pg_dsn: str) -> None:
    first_ids = await tokens(served, messages=chat("What does json.dumps do?"))
    second_ids = await tokens(served, messages=chat("And textwrap.dedent?"))
    expected = shared_blocks(first_ids, second_ids)
    assert expected >= 3 * B  # the system prompt spans several blocks

    def go() -> Any:
        with client(served, served.key) as c, client(served, served.other_key) as other:
            create = c.chat.completions.create
            first = create(model="tiny", messages=chat("What does json.dumps do?"), max_tokens=6, temperature=0)
            second = create(model="tiny", messages=chat("And textwrap.dedent?"), max_tokens=6, temperature=0)
            chunks = list(
                create(
                    model="tiny",
                    messages=chat("And textwrap.dedent?"),
                    max_tokens=6,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            # Another organization: the same request computes the shared prefix itself (and gets the same text).
            elsewhere = other.chat.completions.create(
                model="tiny", messages=chat("And textwrap.dedent?"), max_tokens=6, temperature=0
            )
            prompt = "def dumps(obj, *, skipkeys=False, ensure_ascii=True, check_circular=True, allow_nan=True):\n"
            text = [c.completions.create(model="tiny", prompt=prompt * 2 + tail, max_tokens=4) for tail in "ab"]
            streamed = list(
                c.completions.create(
                    model="tiny",
                    prompt=prompt * 2 + "c",
                    max_tokens=4,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            return first, second, chunks, elsewhere, text, streamed

    first, second, chunks, elsewhere, text, streamed = await trio.to_thread.run_sync(go)
    assert first.usage.prompt_tokens == len(first_ids)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens == len(second_ids)
    assert second.usage.prompt_tokens_details.cached_tokens == expected
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == (len(second_ids) - 1) // B * B  # all of it
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == second.choices[0].message.content
    assert elsewhere.usage.prompt_tokens_details.cached_tokens == 0  # never the first organization's blocks
    assert elsewhere.choices[0].message.content == second.choices[0].message.content
    assert text[0].usage.prompt_tokens_details.cached_tokens == 0
    assert text[1].usage.prompt_tokens_details.cached_tokens >= 2 * B
    assert streamed[-1].usage.prompt_tokens_details.cached_tokens == text[1].usage.prompt_tokens_details.cached_tokens

    # The ledger meters the cached tokens as the responses reported them.
    rows = await ledger(pg_dsn, served.org_id, 6)
    by_id = {r["request_id"]: r for r in rows}
    assert by_id[first.id]["cached_tokens"] == 0
    assert by_id[second.id]["cached_tokens"] == expected
    assert by_id[text[1].id]["cached_tokens"] == text[1].usage.prompt_tokens_details.cached_tokens

    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        metrics = (await http.get("/metrics")).text

    def value(name: str) -> float:
        (line,) = [line for line in metrics.splitlines() if line.startswith(f'{name}{{model="tiny"}}')]
        return float(line.split()[-1])

    reported = [second, elsewhere, *text]
    hits = sum(r.usage.prompt_tokens_details.cached_tokens for r in [first, *reported])
    hits += (
        chunks[-1].usage.prompt_tokens_details.cached_tokens + streamed[-1].usage.prompt_tokens_details.cached_tokens
    )
    assert value("bitnet_prefix_cache_hit_tokens_total") == hits
    queried = sum(r.usage.prompt_tokens for r in [first, *reported])
    assert (
        value("bitnet_prefix_cache_queried_tokens_total")
        == queried + len(second_ids) + streamed[-1].usage.prompt_tokens
    )
    assert value("bitnet_prefix_cache_bytes") > 0
    assert value("bitnet_prefix_cache_budget_bytes") == 2**30
    assert value("bitnet_prefix_cache_evictions_total") == 0


async def test_websocket_reports_input_tokens_details(served: Served) -> None:
    from websockets.sync.client import connect

    def script() -> list[dict[str, Any]]:
        url = served.url.replace("http://", "ws://") + "/v1/responses"
        done = []
        with connect(url, additional_headers={"Authorization": f"Bearer {served.key}"}, open_timeout=10) as ws:
            for user in ("What does json.dumps do?", "And textwrap.dedent?"):
                request = {
                    "type": "response.create",
                    "model": "tiny",
                    "instructions": SYSTEM,
                    "input": [{"role": "user", "content": user}],
                }
                ws.send(json.dumps({**request, "max_output_tokens": 4, "temperature": 0}))
                done.append(events_until_done(ws)[-1])
        return done

    first, second = await trio.to_thread.run_sync(script)
    assert first["type"] == second["type"] == "response.completed"
    assert first["response"]["usage"]["input_tokens_details"] == {"cached_tokens": 0}
    assert second["response"]["usage"]["input_tokens_details"]["cached_tokens"] >= 3 * B


async def test_platform_scope_shares_blocks_across_organizations(
    aio_loop: object, pg_dsn: str, redis_url: str, model_dir: Path, tmp_path: Path
) -> None:
    async with serve(pg_dsn, redis_url, tmp_path, {"tiny": model_dir}, prefix_cache_scope="platform") as served:
        _, third = await trio.to_thread.run_sync(
            lambda: _org_with_key(pg_dsn, f"third-{uuid.uuid4().hex[:8]}", ["inference"])
        )

        def go() -> list[Any]:
            out = []
            for key, user in ((served.key, "What does json.dumps do?"), (third, "And textwrap.dedent?")):
                with client(served, key) as c:
                    out.append(
                        c.chat.completions.create(model="tiny", messages=chat(user), max_tokens=4, temperature=0)
                    )
            return out

        first, second = await trio.to_thread.run_sync(go)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens >= 3 * B  # another organization's system prompt
