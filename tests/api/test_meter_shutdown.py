"""A served app stopped right after its requests still has every request's usage event in the ledger (the
meter drains at shutdown), streamed ones included, with the tokens the responses reported."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import trio

from tests.api.served import serve

if TYPE_CHECKING:
    from bitnet_actor.stores.postgres import Database

pytest.importorskip("transformers", reason="transformers builds the test model")


async def test_a_stopped_server_has_metered_every_request(
    db: Database, pg_dsn: str, redis_url: str, model_dir: Path
) -> None:
    data = Path(tempfile.mkdtemp(prefix="bitnet-meter-"))
    used: dict[str, int] = {}
    try:
        async with serve(pg_dsn, redis_url, data, {"tiny": model_dir}) as served:
            org = served.org_id
            auth = {"Authorization": f"Bearer {served.key}"}

            async def one(i: int, http: httpx.AsyncClient) -> None:
                body = {"model": "tiny", "prompt": f"p{i}", "max_tokens": 3, "temperature": 0}
                if i % 3 == 0:
                    body |= {"stream": True, "stream_options": {"include_usage": True}}
                    async with http.stream("POST", "/v1/completions", json=body, headers=auth) as r:
                        assert r.status_code == 200
                        async for line in r.aiter_lines():
                            if line.startswith("data: {"):
                                chunk = json.loads(line[6:])
                                if chunk.get("usage"):
                                    used[chunk["id"]] = chunk["usage"]["total_tokens"]
                    return
                r = await http.post("/v1/completions", json=body, headers=auth)
                assert r.status_code == 200, r.text
                used[r.json()["id"]] = r.json()["usage"]["total_tokens"]

            async with httpx.AsyncClient(base_url=served.url, timeout=60) as http, trio.open_nursery() as nursery:
                for i in range(14):  # the pro plan holds 16 places a key
                    nursery.start_soon(one, i, http)
        # the server is stopped: whatever the meter held was written (or spilled and replayed) by now
        rows = await db.fetch(
            "SELECT request_id, input_tokens + output_tokens AS t FROM usage_events WHERE org_id = $1", org
        )
        assert len(used) == 14
        assert {r["request_id"]: r["t"] for r in rows} == used
        assert not list((data / "usage-spill").glob("*.jsonl"))
    finally:
        shutil.rmtree(data, ignore_errors=True)
