"""ops/loadtest.py: its arrival schedule, statistics, SSE reading and SVG on small inputs, then whole runs (open
loop, closed loop with chat, a key limited to 1 request a minute) against a real server with a tiny model."""

from __future__ import annotations

import json
import math
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio
import trio_asyncio

from bitnet_actor.api.openai.sse import DONE, sse_event
from bitnet_actor.services import api_keys, audit
from bitnet_actor.stores.postgres import open_database
from ops import loadtest
from ops.loadtest import Record, SseDecoder, StreamReader
from tests.api.served import serve

ROOT = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"


# --- arrivals ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "duration", "seed"), [(50.0, 100.0, 1), (3.0, 600.0, 7)])
def test_poisson_schedule_count_and_exponential_gaps(rate: float, duration: float, seed: int) -> None:
    times = loadtest.poisson_schedule(rate, duration, seed)
    expected = rate * duration
    assert abs(len(times) - expected) < 4 * math.sqrt(expected), len(times)  # Poisson: sd = sqrt(mean)
    assert times == sorted(times) and times[0] > 0 and times[-1] < duration
    gaps = np.diff([0.0, *times])
    assert abs(gaps.mean() - 1 / rate) < 4 / rate / math.sqrt(len(gaps))  # exponential: sd = mean
    # Exponential, not just the right mean: P(gap > mean) = 1/e, and the coefficient of variation is 1.
    assert abs((gaps > 1 / rate).mean() - math.exp(-1)) < 0.05
    assert abs(gaps.std() / gaps.mean() - 1) < 0.1


def test_poisson_schedule_is_reproducible_by_seed() -> None:
    assert loadtest.poisson_schedule(5, 20, 3) == loadtest.poisson_schedule(5, 20, 3)
    assert loadtest.poisson_schedule(5, 20, 3) != loadtest.poisson_schedule(5, 20, 4)
    assert loadtest.poisson_schedule(0, 20, 3) == []


# --- statistics ----------------------------------------------------------------------------------------------


def test_percentile_matches_numpy_linear() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 101, 1000):
        values = list(rng.exponential(3.0, n))
        for q in (0, 50, 95, 99, 100):
            got = loadtest.percentile(values, q)
            assert got is not None
            assert math.isclose(got, float(np.percentile(values, q)), rel_tol=1e-12)
    assert loadtest.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert loadtest.percentile([], 50) is None


def _records() -> list[Record]:
    return [
        Record(index=0, start_s=0.1, status=200, outcome="ok", ttft_s=0.1, e2e_s=0.4, itl_s=[0.1, 0.2],
               chunks=3, output_tokens=3, prompt_tokens=5),
        Record(index=1, start_s=0.5, status=200, outcome="ok", ttft_s=0.3, e2e_s=1.0, itl_s=[0.3],
               chunks=2, output_tokens=4),
        Record(index=2, start_s=1.2, status=200, outcome="ok", ttft_s=0.2, e2e_s=0.7, itl_s=[],
               chunks=1, output_tokens=1),
        Record(index=3, start_s=1.5, status=429, outcome="rate_limited", e2e_s=0.01, retry_after="17"),
        Record(index=4, start_s=2.5, status=500, outcome="error", e2e_s=0.05, error="HTTP 500: boom"),
    ]  # fmt: skip


def test_summary_math() -> None:
    s = loadtest.summarize(_records(), 4.0, dropped=2, max_in_flight=3)
    assert (s["sent"], s["ok"], s["rate_limited"], s["errors"], s["dropped"]) == (5, 3, 1, 1, 2)
    assert s["statuses"] == {"200": 3, "429": 1, "500": 1}
    assert s["retry_after"] == ["17"] and s["error_messages"] == ["HTTP 500: boom"]
    assert s["output_tokens"] == 8
    assert math.isclose(s["throughput_rps"], 3 / 4) and math.isclose(s["output_tokens_per_s"], 8 / 4)
    assert s["e2e_ms"]["count"] == 3 and math.isclose(s["e2e_ms"]["p50"], 700.0)  # 429s and errors left out
    assert math.isclose(s["e2e_ms"]["p95"], 700 + 0.9 * 300)
    assert math.isclose(s["ttft_ms"]["mean"], 200.0)
    assert s["itl_ms"]["count"] == 3 and math.isclose(s["itl_ms"]["p50"], 200.0)  # pooled over requests
    assert s["client_lag_ms"]["count"] == 0  # closed loop: no arrival times


def test_timeline_counts_by_second_and_keeps_token_total() -> None:
    records = _records()
    rows = loadtest.timeline(records, 3.2)
    assert [r["second"] for r in rows] == [0, 1, 2, 3]
    assert [r["started"] for r in rows] == [2, 2, 1, 0]
    assert [r["ok"] for r in rows] == [1, 2, 0, 0]  # ends at 0.5, 1.5, 1.9
    assert [r["rate_limited"] for r in rows] == [0, 1, 0, 0] and [r["errors"] for r in rows] == [0, 0, 1, 0]
    assert math.isclose(sum(r["output_tokens"] for r in rows), 8)
    # request 1: chunks at 0.8 and 1.1, 2 tokens each; request 0: 0.2, 0.3, 0.5; request 2: 1.4.
    assert math.isclose(rows[0]["output_tokens"], 3 + 2) and math.isclose(rows[1]["output_tokens"], 2 + 1)


# --- SSE -----------------------------------------------------------------------------------------------------


def _chunk(text: str, **extra: Any) -> dict[str, Any]:
    return {"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": text}], **extra}


def _decode(raw: bytes) -> list[str]:
    decoder = SseDecoder()
    events = []
    for line in raw.decode().splitlines():  # as httpx's aiter_lines splits: \n, \r\n and \r
        if (data := decoder.feed(line)) is not None:
            events.append(data)
    if (data := decoder.close()) is not None:
        events.append(data)
    return events


def test_sse_decoder_on_the_servers_encoding() -> None:
    raw = b"".join([sse_event(_chunk("Hel")), b": keep-alive\n\n", sse_event(_chunk("lo")), DONE])
    assert [json.loads(e)["choices"][0]["text"] for e in _decode(raw)[:2]] == ["Hel", "lo"]
    assert _decode(raw)[-1] == "[DONE]"
    # CRLF line ends, an event: field, a data field split over two lines, no space after the colon, a last event
    # without its blank line.
    raw = b'event: message\r\ndata: {"a":\r\ndata:1}\r\n\r\nid: 7\r\ndata: [DONE]'
    assert _decode(raw) == ['{"a":\n1}', "[DONE]"]


def test_stream_reader_outcomes() -> None:
    reader = StreamReader(chat=False, started=1.0)
    for t, data in ((1.5, _chunk("a")), (1.6, _chunk("")), (1.75, _chunk("b")), (2.0, _chunk("c"))):
        reader.event(json.dumps(data), t)
    reader.event(json.dumps({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 5}}), 2.1)
    reader.event("[DONE]", 2.1)
    record = Record(index=0, start_s=1.0)
    reader.fill(record)
    assert record.outcome == "ok" and record.ttft_s == 0.5 and record.chunks == 3
    assert np.allclose(record.itl_s, [0.25, 0.25]) and (record.output_tokens, record.prompt_tokens) == (5, 4)

    chat = StreamReader(chat=True, started=0.0)
    chat.event(json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}), 0.1)
    chat.event(json.dumps({"choices": [{"index": 0, "delta": {"content": "hi"}}]}), 0.3)
    chat.event(json.dumps({"error": {"message": "the model failed", "type": "server_error"}}), 0.4)
    chat.event("[DONE]", 0.4)
    record = Record(index=1, start_s=0.0)
    chat.fill(record)
    assert record.outcome == "error" and record.error == "stream error: the model failed"
    assert record.ttft_s == 0.3 and record.output_tokens == 1  # no usage chunk: text chunks are counted

    cut = StreamReader(chat=False, started=0.0)
    cut.event(json.dumps(_chunk("x")), 0.2)
    record = Record(index=2, start_s=0.0)
    cut.fill(record)
    assert record.outcome == "error" and "without [DONE]" in (record.error or "")


# --- SVG -----------------------------------------------------------------------------------------------------


def _circles(svg: str) -> dict[str, int]:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    assert root.tag == f"{SVG}svg"
    counts: dict[str, int] = {}
    for c in root.iter(f"{SVG}circle"):
        counts[c.get("class", "")] = counts.get(c.get("class", ""), 0) + 1
        assert 0 <= float(c.get("cx", "-1")) <= float(root.get("width", "0"))
        assert 0 <= float(c.get("cy", "-1")) <= float(root.get("height", "0"))
    return counts


def _polyline_points(svg: str, cls: str) -> list[tuple[float, float]]:
    (line,) = [p for p in ET.fromstring(svg).iter(f"{SVG}polyline") if p.get("class") == cls]
    return [tuple(map(float, xy.split(","))) for xy in line.get("points", "").split()]  # type: ignore[misc]


def test_svg_is_well_formed_with_a_point_per_request_and_second() -> None:
    records = _records()
    rows = loadtest.timeline(records, 3.2)
    svg = loadtest.render_svg(records, rows, title="tiny <&> test")
    assert _circles(svg) == {"e2e": 3, "ttft": 3, "rate-limited": 1, "error": 1}
    tokens = _polyline_points(svg, "tokens")
    assert len(tokens) == len(rows) == 4 and len(_polyline_points(svg, "requests")) == 4
    assert [p[0] for p in tokens] == sorted(p[0] for p in tokens)
    assert min(p[1] for p in tokens) == tokens[0][1]  # second 0 streamed the most tokens: highest (smallest y)
    # An empty run still renders.
    assert _circles(loadtest.render_svg([], loadtest.timeline([], 0.0))) == {}


# --- against a real server -----------------------------------------------------------------------------------


def _key_with_rpm(dsn: str, org_id: Any, rpm: int) -> str:
    async def create() -> str:
        async with trio_asyncio.open_loop(), open_database(dsn, min_size=1, max_size=1) as db:
            secret, _ = await api_keys.create_key(
                db, org_id=org_id, name=f"rpm{rpm}", scopes=["inference"], actor=audit.SYSTEM_ACTOR, rpm=rpm
            )
        return secret

    return trio.run(create)


async def _loadtest(out: Path, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITNET_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    cmd = [sys.executable, str(ROOT / "ops" / "loadtest.py"), *args, "--out", str(out)]
    with trio.fail_after(60):
        done = await trio.run_process(cmd, env=env, capture_stdout=True, capture_stderr=True, check=False)
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stdout + stderr
    assert "p95 ms" in stdout and "throughput:" in stdout, stdout
    assert "] sent " in stderr, stderr  # the progress lines
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    svg = (out / "latency.svg").read_text()
    counts = _circles(svg)
    s = results["summary"]
    assert counts.get("e2e", 0) == s["ok"] and counts.get("rate-limited", 0) == s["rate_limited"]
    assert len(_polyline_points(svg, "tokens")) == len(results["timeline"])
    return results


def _assert_ok(req: dict[str, Any]) -> None:
    assert req["status"] == 200 and req["outcome"] == "ok", req
    assert 0 < req["ttft_s"] <= req["e2e_s"]
    assert req["output_tokens"] > 0 and req["chunks"] > 0 and req["prompt_tokens"] > 0
    assert len(req["itl_s"]) == req["chunks"] - 1
    assert req["ttft_s"] + sum(req["itl_s"]) <= req["e2e_s"] + 1e-9


async def test_loadtest_against_a_real_server(
    aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path, model_dir: Path
) -> None:
    async with serve(pg_dsn, redis_url, tmp_path / "data", {"tiny": model_dir}) as served:
        common = ("--url", served.url, "--api-key", served.key, "--model", "tiny", "--max-tokens", "6")

        # The decoder on a real stream: the streamed greedy text is the whole response's.
        body = {"model": "tiny", "prompt": "def f(x):", "max_tokens": 6, "temperature": 0}
        auth = {"Authorization": f"Bearer {served.key}"}
        async with httpx.AsyncClient(base_url=served.url, headers=auth, timeout=60) as http:
            whole = (await http.post("/v1/completions", json=body)).json()
            raw = await http.post("/v1/completions", json={**body, "stream": True})
        reader = StreamReader(chat=False, started=0.0)
        for data in _decode(raw.content):
            reader.event(data, 1.0)
        assert reader.done and reader.error is None and "".join(reader.text) == whole["choices"][0]["text"]

        # Open loop: the seeded Poisson arrivals are what was sent (nothing dropped at this rate).
        results = await _loadtest(tmp_path / "open", *common, "--rate", "4", "--duration", "2", "--seed", "5")
        s = results["summary"]
        assert results["config"]["mode"] == "open"
        assert s["sent"] + s["dropped"] == len(loadtest.poisson_schedule(4, 2, 5)) and s["dropped"] == 0
        assert s["ok"] == s["sent"] > 0 and s["errors"] == s["rate_limited"] == 0
        for req in results["requests"]:
            _assert_ok(req)
            assert req["scheduled_s"] is not None and req["start_s"] >= req["scheduled_s"]
        assert s["output_tokens"] == sum(r["output_tokens"] for r in results["requests"])
        assert s["ttft_ms"]["p50"] <= s["e2e_ms"]["p50"] and s["output_tokens_per_s"] > 0

        # Closed loop on the chat endpoint: 2 workers, 6 requests in all, never more than 2 at once.
        results = await _loadtest(tmp_path / "closed", *common, "--chat", "--concurrency", "2", "--requests", "6")
        s = results["summary"]
        assert results["config"]["endpoint"] == "/v1/chat/completions"
        assert s["sent"] == s["ok"] == 6 and s["max_in_flight"] <= 2
        for req in results["requests"]:
            _assert_ok(req)

        # A key allowed 1 request a minute: the first is served, the others are 429s (not errors), not retried.
        limited = await trio.to_thread.run_sync(_key_with_rpm, pg_dsn, served.org_id, 1)
        args = [*common, "--rate", "6", "--duration", "1", "--seed", "0"]
        args[args.index(served.key)] = limited
        results = await _loadtest(tmp_path / "limited", *args)
        s = results["summary"]
        assert s["sent"] == len(loadtest.poisson_schedule(6, 1, 0)) >= 3
        assert (s["ok"], s["rate_limited"], s["errors"]) == (1, s["sent"] - 1, 0)
        assert s["statuses"] == {"200": 1, "429": s["sent"] - 1}
        assert s["retry_after"] and all(float(v) > 0 for v in s["retry_after"])
        assert results["requests"][0]["outcome"] == "ok"
        assert all(r["retry_after"] for r in results["requests"] if r["outcome"] == "rate_limited")
