"""Rate limits and quotas through the API, on two real servers (replicas) sharing PostgreSQL and Redis: exact
limits with parallel clients on both, headers on streamed, non-streamed and refused responses, reservations
given back when a client drops its stream, the quota's hard stop, and a zero limit refused at once."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import trio

from tests.api.served import Served, _org_with_key, serve

pytest.importorskip("transformers", reason="transformers builds the test model")

HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "ratelimit-policy",
    "ratelimit",
)


@dataclass
class Replicas:
    one: Served
    two: Served
    pg_dsn: str

    async def org(self, **overrides: Any) -> tuple[uuid.UUID, str]:
        """A new organization on the free plan with ``overrides`` of its limits, and an inference key."""
        org_id, key = await trio.to_thread.run_sync(
            _org_with_key, self.pg_dsn, f"rl-{uuid.uuid4().hex[:8]}", ["inference"], "free"
        )
        if overrides:
            await owner_sql(
                self.pg_dsn,
                f"INSERT INTO org_billing (org_id, {', '.join(overrides)}) VALUES"
                f" ($1, {', '.join(f'${i + 2}' for i in range(len(overrides)))})",
                org_id,
                *overrides.values(),
            )
        return org_id, key


async def owner_sql(dsn: str, query: str, *args: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return await trio.to_thread.run_sync(asyncio.run, go())


@pytest.fixture(scope="module")
def replicas_dirs() -> AsyncIterator[tuple[Path, Path]]:
    dirs = (Path(tempfile.mkdtemp(prefix="bitnet-r1-")), Path(tempfile.mkdtemp(prefix="bitnet-r2-")))
    yield dirs
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def replicas(
    aio_loop: object, pg_dsn: str, redis_url: str, model_dir: Path, replicas_dirs: tuple[Path, Path]
) -> AsyncIterator[Replicas]:
    models = {"tiny": model_dir}
    async with (
        serve(pg_dsn, redis_url, replicas_dirs[0], models) as one,
        serve(pg_dsn, redis_url, replicas_dirs[1], models) as two,
    ):
        yield Replicas(one, two, pg_dsn)


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": "a", "max_tokens": 1, "temperature": 0, **extra}


async def test_two_replicas_admit_exactly_the_limit(replicas: Replicas) -> None:
    _, key = await replicas.org(rpm=6, key_concurrency=100)
    statuses: list[int] = []
    refusals: list[httpx.Response] = []

    async def one(i: int) -> None:
        server = replicas.one if i % 2 else replicas.two
        async with httpx.AsyncClient(timeout=60) as http:
            r = await http.post(f"{server.url}/v1/completions", headers={"Authorization": f"Bearer {key}"}, json=body())
        statuses.append(r.status_code)
        if r.status_code == 429:
            refusals.append(r)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(one, i)
    assert statuses.count(200) == 6, statuses
    assert statuses.count(429) == 14
    for r in refusals:
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert "requests per min" in error["message"]
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert all(h in r.headers for h in HEADERS if "tokens" not in h and h != "ratelimit-policy")


async def test_headers_on_plain_streamed_and_free_responses(replicas: Replicas) -> None:
    _, key = await replicas.org(rpm=50, tpm=50_000)
    auth = {"Authorization": f"Bearer {key}"}
    url = replicas.one.url
    async with httpx.AsyncClient(timeout=60) as http:
        plain = await http.post(f"{url}/v1/completions", headers=auth, json=body(max_tokens=4))
        assert plain.status_code == 200
        for name in HEADERS:
            assert name in plain.headers, name
        assert plain.headers["x-ratelimit-limit-requests"] == "50"
        assert plain.headers["x-ratelimit-remaining-requests"] == "49"
        assert plain.headers["x-ratelimit-limit-tokens"] == "50000"
        assert plain.headers["ratelimit-policy"] == '"requests";q=50;w=60, "tokens";q=50000;w=60'
        async with http.stream("POST", f"{url}/v1/chat/completions", headers=auth, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True,
        }) as streamed:  # fmt: skip
            # The headers arrive with the status line, before the first SSE byte is read.
            assert streamed.status_code == 200
            assert streamed.headers["content-type"].startswith("text/event-stream")
            assert streamed.headers["x-ratelimit-remaining-requests"] == "48"
            assert "x-ratelimit-reset-tokens" in streamed.headers
            await streamed.aread()
        models = await http.get(f"{url}/v1/models", headers=auth)  # costs nothing, still reports the state
        assert models.status_code == 200
        assert models.headers["x-ratelimit-remaining-requests"] == "48"


async def test_a_dropped_stream_gives_its_reservation_back(replicas: Replicas) -> None:
    # tpm 400: a request of up to 200 tokens reserves 202; dropped after its first token, it settles with
    # what it really used, so a request reserving 252 fits right after (it would not if the 202 leaked).
    _, key = await replicas.org(tpm=400, rpm=None)
    auth = {"Authorization": f"Bearer {key}"}
    url = replicas.one.url
    payload = json.dumps(body(max_tokens=200, ignore_eos=True, stream=True))
    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n{payload}"
    ).encode()
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        received = b""
        with trio.fail_after(30):
            while b"data: " not in received:
                received += await stream.receive_some(4096)
    assert b" 200 " in received.split(b"\r\n", 1)[0]  # admitted; the socket closes mid-stream
    async with httpx.AsyncClient(timeout=60) as http:
        remaining = 0
        with trio.fail_after(20):
            while remaining < 380:  # the server notices the dropped connection, cancels and settles
                await trio.sleep(0.1)
                peek = await http.get(f"{url}/v1/models", headers=auth)
                remaining = int(peek.headers["x-ratelimit-remaining-tokens"])
        after = await http.post(f"{url}/v1/completions", headers=auth, json=body(max_tokens=250))
        assert after.status_code == 200, after.text


async def test_the_monthly_quota_stops_an_org_and_is_not_a_rate_limit(replicas: Replicas) -> None:
    _, key = await replicas.org(monthly_token_quota=20, rpm=None, tpm=None)
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60) as http:
        first = await http.post(
            f"{replicas.one.url}/v1/completions", headers=auth, json=body(max_tokens=30, ignore_eos=True)
        )
        assert first.status_code == 200  # admitted with the quota unused; its 31 tokens overrun it
        refused = await http.post(f"{replicas.two.url}/v1/completions", headers=auth, json=body())
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert "retry-after" not in refused.headers


async def test_a_zero_limit_refuses_at_once(replicas: Replicas) -> None:
    _, key = await replicas.org(key_concurrency=0)
    async with httpx.AsyncClient(timeout=10) as http:
        with trio.fail_after(5):
            r = await http.post(
                f"{replicas.one.url}/v1/completions", headers={"Authorization": f"Bearer {key}"}, json=body()
            )
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert "in flight" in r.json()["error"]["message"]
