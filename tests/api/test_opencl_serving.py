"""The server with ``--device opencl``: the same completions as on the CPU, through the real HTTP API."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import pytest
import trio

from tests.api.served import Served, build_model_dir, serve
from tests.kernels_opencl.devices import device_params

openai = pytest.importorskip("openai", reason="the openai client is a test dependency")
pytest.importorskip("transformers", reason="transformers builds the test model")


async def _completions(served: Served) -> tuple[str, str, str]:
    def go() -> tuple[str, str, str]:
        with openai.OpenAI(base_url=f"{served.url}/v1", api_key=served.key, max_retries=0, timeout=60) as c:
            one = c.completions.create(model="tiny", prompt="Return the", max_tokens=10, temperature=0)
            chunks = c.completions.create(model="tiny", prompt="Return the", max_tokens=10, temperature=0, stream=True)
            streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
            chat = c.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0
            )
            return one.choices[0].text, streamed, chat.choices[0].message.content or ""

    return await trio.to_thread.run_sync(go)


@pytest.mark.parametrize("selector", device_params())
async def test_opencl_server_answers_as_the_cpu_one(
    aio_loop: object, pg_dsn: str, redis_url: str, model_dir: Path, selector: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="actors.model_cache")
    results = []
    for device in ("cpu", "opencl"):
        data_dir = Path(tempfile.mkdtemp(prefix="bitnet-data-"))
        try:
            async with serve(
                pg_dsn, redis_url, data_dir, {"tiny": model_dir}, device=device, opencl_device=selector
            ) as s:
                results.append(await _completions(s))
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
    cpu, dev = results
    loads = [r.getMessage() for r in caplog.records if "loaded on" in r.getMessage()]
    assert [m.split(" loaded on ")[1].split(":")[0].split(" ")[0] for m in loads] == ["cpu", "opencl"]
    assert cpu[0]  # real text
    assert dev == cpu
    assert dev[1] == dev[0]  # streamed = non-streamed


@pytest.mark.parametrize("selector", device_params())
async def test_a_request_whose_cache_the_device_cannot_hold_gets_503_and_the_rest_go_on(
    aio_loop: object, pg_dsn: str, redis_url: str, selector: str
) -> None:
    import json

    import httpx

    import kernels_opencl

    root = Path(tempfile.mkdtemp(prefix="bitnet-served-"))
    data_dir = Path(tempfile.mkdtemp(prefix="bitnet-data-"))
    try:
        # enough layers (x 2 KV heads x 16 dims x 4 bytes a token) that a million-token K cache, one buffer, is
        # larger than the device's largest allocation (PoCL: a quarter of the memory)
        layers = max(20, kernels_opencl.Context(selector).device.max_mem_alloc_size // (2 * 16 * 4 * 1_000_000) + 1)
        model_dir = build_model_dir(root / "deep", layers=layers)
        tokens = 1_000_000
        cfg = json.loads((model_dir / "config.json").read_text())
        cfg["max_position_embeddings"] = tokens + 100
        (model_dir / "config.json").write_text(json.dumps(cfg))
        async with serve(
            pg_dsn, redis_url, data_dir, {"deep": model_dir}, device="opencl", opencl_device=selector
        ) as s:
            headers = {"Authorization": f"Bearer {s.key}"}
            async with httpx.AsyncClient(timeout=120) as http:
                big = {"model": "deep", "prompt": "Return the", "max_tokens": tokens}
                r = await http.post(f"{s.url}/v1/completions", headers=headers, json=big)
                assert r.status_code == 503, r.text
                error = r.json()["error"]
                assert error["code"] == "overloaded"
                assert "KV cache" in error["message"]
                assert r.headers["Retry-After"]
                ok = {"model": "deep", "prompt": "Return the", "max_tokens": 3, "temperature": 0, "ignore_eos": True}
                r = await http.post(f"{s.url}/v1/completions", headers=headers, json=ok)
                assert r.status_code == 200, r.text
                assert r.json()["usage"]["completion_tokens"] == 3
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
