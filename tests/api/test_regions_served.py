"""Home regions on real replicas: a replica of region "eu" answers an org of region "us" with 421
Misdirected Request (OpenAI's error shape, naming the region and its base URL from BITNET_REGION_URLS) for
inference, /v1/models, model uploads and route writes, while reads of its registry still answer; the org's own
region serves it."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import httpx
import trio
import trio_asyncio

from bitnet_actor.services import regions
from bitnet_actor.stores.postgres import open_database
from tests.api.served import _org_with_key, serve

if TYPE_CHECKING:
    from pathlib import Path


async def test_other_region_answers_421(aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path) -> None:
    urls = "us=https://us.bitnet.example,eu=https://eu.bitnet.example"
    async with (
        serve(pg_dsn, redis_url, tmp_path / "eu", {}, region="eu", region_urls=urls) as eu,
        serve(pg_dsn, redis_url, tmp_path / "us", {}, region="us", region_urls=urls) as us,
    ):
        org_id, key = await trio.to_thread.run_sync(
            _org_with_key, pg_dsn, f"reg-{uuid.uuid4().hex[:6]}", ["inference", "models:read", "models:write"]
        )

        def move_to_us() -> None:
            async def run() -> None:
                async with trio_asyncio.open_loop(), open_database(pg_dsn, min_size=1, max_size=1) as db:
                    await regions.set_region(db, org_id, "us")

            trio.run(run)

        await trio.to_thread.run_sync(move_to_us)
        auth = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=eu.url, headers=auth, timeout=60) as c:
            for method, path, body in [
                ("POST", "/v1/completions", {"model": "anything", "prompt": "x"}),
                ("POST", "/v1/chat/completions", {"model": "x", "messages": [{"role": "user", "content": "x"}]}),
                ("POST", "/v1/tokenize", {"model": "x", "prompt": "x"}),
                ("GET", "/v1/models", None),
                ("POST", "/api/v1/orgs/current/models/uploads", {"total_bytes": 10}),
                ("PUT", "/api/v1/orgs/current/routes/ab", {"targets": [{"version": "a:1", "weight": 100}]}),
                ("POST", "/api/v1/orgs/current/models/a/versions/1/download", {}),
            ]:
                r = await c.request(method, path, json=body)
                assert r.status_code == 421, (path, r.text)
                error = r.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert error["code"] == "misdirected_request"
                assert "'us'" in error["message"] and "https://us.bitnet.example" in error["message"]
                assert r.headers["x-bitnet-region-url"] == "https://us.bitnet.example"
            assert (await c.get("/api/v1/orgs/current/models")).status_code == 200  # reads answer anywhere
        async with httpx.AsyncClient(base_url=us.url, headers=auth, timeout=60) as c:
            assert (await c.get("/v1/models")).status_code == 200  # its own region serves it
            r = await c.post("/v1/completions", json={"model": "anything", "prompt": "x"})
            assert r.status_code == 404  # past the region check: no such model
