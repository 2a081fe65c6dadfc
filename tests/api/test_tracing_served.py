"""Traces and logs of a real server: a full run (sign up, verify from the mail folder, create a key, streamed
and plain completions, a refused request) with BITNET_OTEL_ENDPOINT pointing at a local OTLP/HTTP receiver.

The spans arrive over OTLP: the request's SERVER span under the caller's ``traceparent``, its auth and
rate-limit children, the GenAI span with its queue / prefill / decode children in time order; the logs are
one JSON schema per line, carry the request's ids, and contain no prompt, completion, key, password, token
or cookie."""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import TYPE_CHECKING

import httpx
import trio

from bitnet_actor.observability import LOG_KEYS, JsonFormatter
from tests.api.served import serve
from tests.otlp_receiver import OtlpReceiver

if TYPE_CHECKING:
    from pathlib import Path

    from tests.otlp_receiver import ReceivedSpan

PASSWORD = "a long and quite secret passphrase 1729"
PROMPT = "Tell me about the zebra quantum marmalade"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(("httpx", "httpcore")):  # the test's own client
            self.lines.append(self.format(record))


def _mail_token(data_dir: Path, to: str) -> str:
    for path in sorted((data_dir / "mail").glob("*.eml"), reverse=True):
        text = path.read_text()
        if f"To: {to}\n" in text:
            match = re.search(r"token=([A-Za-z0-9_-]+)", text)
            assert match, text
            assert path.stat().st_mode & 0o077 == 0, "mail files are readable by their owner only"
            return match.group(1)
    raise AssertionError(f"no mail to {to}")


def _by_name(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


async def test_traces_over_otlp_and_logs_without_secrets(
    aio_loop: object, pg_dsn: str, redis_url: str, model_dir: Path, tmp_path: Path
) -> None:
    handler = _Lines()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    secrets: list[str] = [PASSWORD, PROMPT]
    try:
        with OtlpReceiver() as receiver:
            data_dir = tmp_path / "data"
            async with serve(pg_dsn, redis_url, data_dir, {"tiny": model_dir}, otel_endpoint=receiver.url) as srv:
                email = f"t-{uuid.uuid4().hex[:8]}@example.com"
                async with httpx.AsyncClient(base_url=srv.url, timeout=120) as c:
                    body = {"email": email, "password": PASSWORD, "organization": f"trace-{uuid.uuid4().hex[:6]}"}
                    assert (await c.post("/api/v1/signup", json=body)).status_code == 202
                    token = await trio.to_thread.run_sync(_mail_token, data_dir, email)
                    r = await c.post("/api/v1/signup/verify", json={"token": token})
                    assert r.status_code == 201, r.text
                    csrf, org = r.json()["csrf_token"], r.json()["organization"]["id"]
                    cookies = dict(r.cookies.items())  # Secure cookies: sent by hand over plain http
                    assert cookies
                    secrets += [token, csrf, *cookies.values()]
                    r = await c.post(
                        f"/api/v1/orgs/{org}/keys",
                        json={"name": "k", "scopes": ["inference"]},
                        headers={"X-CSRF-Token": csrf, "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())},
                    )
                    assert r.status_code == 201, r.text
                    key = r.json()["key"]
                    secrets.append(key)

                    auth = {"Authorization": f"Bearer {key}"}
                    traceparent = f"00-{TRACE_ID}-{PARENT}-01"
                    chat = {
                        "model": "tiny",
                        "messages": [{"role": "user", "content": PROMPT}],
                        "max_tokens": 20,
                        "stream": True,
                    }
                    text = []
                    async with c.stream(
                        "POST", "/v1/chat/completions", json=chat, headers={**auth, "traceparent": traceparent}
                    ) as stream:
                        assert stream.status_code == 200
                        assert stream.headers["traceparent"].split("-")[1] == TRACE_ID
                        async for line in stream.aiter_lines():
                            if line.startswith("data: {"):
                                delta = json.loads(line[6:])["choices"]
                                text += [d["delta"].get("content") or "" for d in delta]
                    completion = "".join(text)
                    r = await c.post(
                        "/v1/completions", json={"model": "tiny", "prompt": PROMPT, "max_tokens": 8}, headers=auth
                    )
                    assert r.status_code == 200
                    own_trace = r.headers["traceparent"].split("-")[1]
                    assert own_trace != TRACE_ID  # no traceparent sent: a new trace
                    secrets += [t for t in (completion, r.json()["choices"][0]["text"]) if len(t.strip()) >= 12]
                    bad = await c.post(
                        "/v1/completions", json={"model": "tiny", "prompt": PROMPT, "n": 0}, headers=auth
                    )
                    assert bad.status_code == 400
            # the server stopped: its spans were flushed at exit
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)

    spans = receiver.spans
    assert receiver.requests >= 1 and spans
    ours = [s for s in spans if s.trace_id == TRACE_ID]
    (server,) = _by_name(ours, "POST /v1/chat/completions")
    assert server.parent_span_id == PARENT and server.kind == 2  # SERVER, under the caller's span
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/v1/chat/completions"
    assert server.resource["service.name"] == "bitnet-actor"
    for name in ("auth", "rate_limit", "chat tiny"):
        (child,) = _by_name(ours, name)
        assert child.parent_span_id == server.span_id, name
    (gen,) = _by_name(ours, "chat tiny")
    assert gen.attributes["gen_ai.operation.name"] == "chat"
    assert gen.attributes["gen_ai.request.model"] == "tiny" and gen.attributes["gen_ai.request.max_tokens"] == 20
    assert gen.attributes["gen_ai.usage.input_tokens"] > 0
    assert 1 <= gen.attributes["gen_ai.usage.output_tokens"] <= 20
    assert [e[0] for e in gen.events][-1] == "stream.end"
    phases = [_by_name(ours, n)[0] for n in ("queue_wait", "prefill", "decode")]
    assert all(p.parent_span_id == gen.span_id for p in phases)
    assert gen.start_ns <= phases[0].start_ns <= phases[0].end_ns <= phases[1].end_ns <= phases[2].end_ns
    assert phases[2].end_ns <= gen.end_ns <= server.end_ns  # the server span ends with the stream's last byte
    (plain,) = [s for s in spans if s.trace_id == own_trace and s.name == "POST /v1/completions"]
    assert plain.parent_span_id == ""
    assert any(s.name == "text_completion tiny" and s.trace_id == own_trace for s in spans)
    refused = [
        s for s in spans if s.name == "POST /v1/completions" and s.attributes.get("http.response.status_code") == 400
    ]
    assert refused

    lines = [json.loads(line) for line in handler.lines]
    assert lines and all(tuple(line) == LOG_KEYS for line in lines), "one schema for every line"
    access = [line for line in lines if line["logger"] == "bitnet_actor.access"]
    chat_line = next(line for line in access if line["attrs"]["route"] == "/v1/chat/completions")
    assert chat_line["trace_id"] == TRACE_ID and chat_line["org_id"] == org and chat_line["request_id"]
    assert chat_line["latency_ms"] > 0 and chat_line["service"] == "bitnet-actor"
    everything = "\n".join(handler.lines)
    for secret in secrets:
        assert secret and secret not in everything, f"a secret or a prompt reached the logs: {secret[:12]}..."
