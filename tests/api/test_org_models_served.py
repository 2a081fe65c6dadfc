"""Organizations' own models through the OpenAI API on a real server: an uploaded tiny model is listed by
/v1/models as name, name:version and name@alias, serves completions (the response and
x-bitnet-model-version name the version), follows its aliases at request time, is a 404 to every other
organization, and identical uploads of two organizations share one loaded copy."""

from __future__ import annotations

import io
import tarfile
from typing import TYPE_CHECKING

import httpx
import pytest
import trio

from tests.api.served import _org_with_key, serve

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.api.served import Served

pytest.importorskip("transformers", reason="transformers builds the test model")


def tar_bytes(model_dir: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for path in sorted(model_dir.iterdir()):
            tf.add(path, arcname=path.name)
    return buf.getvalue()


@pytest.fixture
async def served(aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    async with serve(pg_dsn, redis_url, tmp_path, {}) as s:
        yield s


async def org_key(pg_dsn: str, name: str) -> str:
    _, key = await trio.to_thread.run_sync(_org_with_key, pg_dsn, name, ["inference", "models:read", "models:write"])
    return key


async def test_an_uploaded_model_serves_through_the_openai_api(
    served: Served, pg_dsn: str, model_dir: Path, tmp_path: Path
) -> None:
    import uuid

    suffix = uuid.uuid4().hex[:6]
    key_a, key_b = await org_key(pg_dsn, f"up-a-{suffix}"), await org_key(pg_dsn, f"up-b-{suffix}")
    data = tar_bytes(model_dir)
    completion = {"prompt": "def f(", "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    async with (
        httpx.AsyncClient(base_url=served.url, headers={"Authorization": f"Bearer {key_a}"}, timeout=120) as a,
        httpx.AsyncClient(base_url=served.url, headers={"Authorization": f"Bearer {key_b}"}, timeout=120) as b,
    ):
        for version in ("1", "2"):
            r = await a.post(f"/api/v1/orgs/current/models?name=coder&version={version}", content=data)
            assert r.status_code == 201, r.text
        r = await a.put("/api/v1/orgs/current/models/coder/aliases/stable", json={"version": "1"})
        assert r.status_code == 200

        ids = {m["id"] for m in (await a.get("/v1/models")).json()["data"]}
        assert {"coder", "coder:1", "coder:2", "coder@latest", "coder@stable"} <= ids
        assert not any(i.startswith("coder") for i in {m["id"] for m in (await b.get("/v1/models")).json()["data"]})

        first = await a.post("/v1/completions", json={"model": "coder", **completion})
        assert first.status_code == 200, first.text
        assert first.json()["model"] == "coder:2" and first.headers["x-bitnet-model-version"] == "coder:2"
        stable = await a.post("/v1/completions", json={"model": "coder@stable", **completion})
        assert stable.json()["model"] == "coder:1"
        assert stable.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]  # the same bytes
        streamed = await a.post("/v1/completions", json={"model": "coder:1", "stream": True, **completion})
        assert streamed.status_code == 200 and streamed.headers["x-bitnet-model-version"] == "coder:1"

        r = await b.post("/v1/completions", json={"model": "coder", **completion})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = await b.post("/api/v1/orgs/current/models?name=mine&version=1", content=data)  # the same bytes
        assert r.status_code == 201
        r = await b.post("/v1/completions", json={"model": "mine", **completion})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]

        metrics = (await a.get("/metrics")).text
    loaded = [line for line in metrics.splitlines() if line.startswith("bitnet_model_loads_total")]
    assert loaded and float(loaded[0].split()[-1]) == 1.0, loaded  # two orgs, three versions: one load
