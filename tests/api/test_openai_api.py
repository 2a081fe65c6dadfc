"""The OpenAI-compatible API against a real server on a loopback port, with the official ``openai`` client."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.api.served import Served, build_model_dir, serve

openai = pytest.importorskip("openai", reason="the openai client is a test dependency")
pytest.importorskip("transformers", reason="transformers builds the test model")


@pytest.fixture(scope="module")
def model_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="bitnet-served-"))
    yield build_model_dir(root / "tiny")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def served(aio_loop: object, pg_dsn: str, redis_url: str, model_dir: Path) -> AsyncIterator[Served]:
    data_dir = Path(tempfile.mkdtemp(prefix="bitnet-data-"))
    try:
        async with serve(pg_dsn, redis_url, data_dir, {"tiny": model_dir}) as s:
            yield s
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def client(served: Served, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=key or served.key, max_retries=0, timeout=60)


async def in_thread(fn):  # the sync client in a worker thread: no asyncio inside the trio test
    return await trio.to_thread.run_sync(fn)


async def test_models_and_completion(served: Served) -> None:
    def go():
        with client(served) as c:
            models = [m.id for m in c.models.list().data]
            out = c.completions.create(model="tiny", prompt="Return the", max_tokens=8, temperature=0)
            return models, out

    models, out = await in_thread(go)
    assert models == ["tiny"]
    assert out.object == "text_completion"
    assert out.choices[0].finish_reason in ("stop", "length")
    assert (out.usage.completion_tokens == len(out.choices[0].text) and False) or out.usage.completion_tokens <= 8
    assert out.usage.prompt_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


async def test_chat_stream_and_usage_chunk(served: Served) -> None:
    def go():
        with client(served) as c:
            whole = c.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=12, temperature=0, seed=1
            )
            stream = c.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=12,
                temperature=0,
                seed=1,
                stream=True,
                stream_options={"include_usage": True},
            )
            return whole, list(stream)

    whole, chunks = await in_thread(go)
    assert whole.object == "chat.completion"
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]


async def test_sse_wire_format(served: Served) -> None:
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream(
            "POST",
            f"{served.url}/v1/completions",
            headers={"Authorization": f"Bearer {served.key}"},
            json={"model": "tiny", "prompt": "a", "max_tokens": 3, "stream": True},
        ) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = b"".join([chunk async for chunk in r.aiter_raw()])
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    assert all(e.startswith(b"data: {") for e in events[:-2])


async def test_stop_strings_n_and_seed(served: Served) -> None:
    def go():
        with client(served) as c:
            greedy = c.completions.create(model="tiny", prompt="The", max_tokens=24, temperature=0)
            text = greedy.choices[0].text
            cut = text[len(text) // 2 : len(text) // 2 + 2]
            stopped = c.completions.create(model="tiny", prompt="The", max_tokens=24, temperature=0, stop=[cut])
            n3 = c.completions.create(model="tiny", prompt="The", max_tokens=10, temperature=1.0, n=3, seed=7)
            n3_again = c.completions.create(model="tiny", prompt="The", max_tokens=10, temperature=1.0, n=3, seed=7)
            return text, cut, stopped, n3, n3_again

    text, cut, stopped, n3, n3_again = await in_thread(go)
    if cut.strip():
        assert stopped.choices[0].finish_reason == "stop"
        assert stopped.choices[0].text == text[: text.index(cut)]
    assert [c.index for c in n3.choices] == [0, 1, 2]
    assert [c.text for c in n3.choices] == [c.text for c in n3_again.choices]  # seeded: reproducible
    assert len({c.text for c in n3.choices}) > 1  # and the choices differ


async def test_errors_in_openai_shape(served: Served) -> None:
    def go():
        errors = {}
        with client(served) as c:
            for name, call in {
                "unknown_model": lambda: c.completions.create(model="nope", prompt="x"),
                "tools": lambda: c.chat.completions.create(
                    model="tiny",
                    messages=[{"role": "user", "content": "x"}],
                    tools=[{"type": "function", "function": {"name": "f"}}],
                ),
                "temperature": lambda: c.completions.create(model="tiny", prompt="x", temperature=5),
                "context": lambda: c.completions.create(model="tiny", prompt="x", max_tokens=100_000),
                "json_mode": lambda: c.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "x"}], response_format={"type": "json_object"}
                ),
            }.items():
                try:
                    call()
                except openai.APIStatusError as exc:
                    errors[name] = exc
        with client(served, "bnk_live_" + "x" * 36) as c:
            try:
                c.models.list()
            except openai.AuthenticationError as exc:
                errors["auth"] = exc
        with client(served, served.no_scope_key) as c:
            try:
                c.completions.create(model="tiny", prompt="x")
            except openai.PermissionDeniedError as exc:
                errors["scope"] = exc
        return errors

    errors = await in_thread(go)
    assert errors["unknown_model"].status_code == 404
    assert errors["tools"].status_code == 400 and errors["tools"].body["param"] == "tools"
    assert errors["temperature"].body["param"] == "temperature"
    assert errors["context"].status_code == 400 and errors["context"].body["code"] == "context_length_exceeded"
    assert errors["json_mode"].body["param"] == "response_format"
    assert errors["auth"].status_code == 401
    assert errors["scope"].status_code == 403


async def test_tokenize_detokenize(served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.key}"}
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(
            f"{served.url}/v1/tokenize", headers=headers, json={"model": "tiny", "prompt": "Hello world"}
        )
        tokens = r.json()["tokens"]
        r = await http.post(f"{served.url}/v1/detokenize", headers=headers, json={"model": "tiny", "tokens": tokens})
    assert r.json()["prompt"].endswith("Hello world")


async def test_usage_recorded_server_side(served: Served, pg_dsn: str) -> None:
    def go():
        with client(served) as c:
            return c.completions.create(model="tiny", prompt="count", max_tokens=5, temperature=0)

    out = await in_thread(go)
    import asyncpg

    async def rows():
        conn = await asyncpg.connect(pg_dsn)
        try:
            req = await conn.fetchrow("SELECT * FROM inference_requests WHERE org_id = $1", served.org_id)
            usage = await conn.fetchval(
                "SELECT sum(operation_count) FROM usage_records WHERE org_id = $1", served.org_id
            )
            return req, usage
        finally:
            await conn.close()

    import asyncio

    req, usage = await trio.to_thread.run_sync(asyncio.run, rows())
    assert usage == out.usage.total_tokens
    assert req["model_id"] is not None
    assert req["latency_ms"] >= 0


async def test_client_disconnect_frees_the_slot(served: Served) -> None:
    host, port = served.url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"model": "tiny", "prompt": "a", "max_tokens": 200, "stream": True, "ignore_eos": True})
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {served.key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()  # fmt: skip
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        received = b""
        with trio.fail_after(30):
            while b"data: " not in received:
                received += await stream.receive_some(4096)
    # The socket is closed mid-stream: the server must cancel the sequence and free its slot.
    async with httpx.AsyncClient(timeout=30) as http:
        with trio.fail_after(10):
            while True:
                metrics = (await http.get(f"{served.url}/metrics")).text
                if 'bitnet_requests_running{model="tiny"} 0.0' in metrics:
                    break
                await trio.sleep(0.05)
    assert "bitnet_time_to_first_token_seconds_bucket" in metrics
    assert 'bitnet_requests_finished_total{model="tiny",reason="cancelled"}' in metrics
