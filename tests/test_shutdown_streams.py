"""SIGTERM while 16 streams run (issue [K] item 2), on a real ``bitnet-actor serve`` process with the test
PostgreSQL and Redis: new connections are refused at once, every stream either finishes or ends with a clean
final event (an SSE error chunk, then ``data: [DONE]``), every admitted request's usage reaches the ledger,
and the process exits 0 within the grace period."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.test_cli import CLI, Server, clean_env, data_dir  # noqa: F401  (the fixture)

STREAMS = 16
GRACE_S = 2
TOKENS = 480  # 16 x 480 tokens of the demo model take longer than the grace period here: the clean cut is tested


def _admin(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([*CLI, "admin", *args], env=env, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def _stream(url: str, key: str, out: list[dict[str, object]], started: threading.Barrier) -> None:
    body = {
        "model": "bitnet-demo",
        "prompt": "Return the",
        "max_tokens": TOKENS,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    record: dict[str, object] = {"chunks": 0, "error": None, "done": False, "finish": None}
    out.append(record)
    try:
        with httpx.stream(
            "POST", f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as r:
            record["status"] = r.status_code
            first = True
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    record["done"] = True
                elif line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        record["error"] = chunk["error"]
                    elif chunk.get("usage"):
                        record["tokens"] = chunk["usage"]["completion_tokens"]
                    else:
                        record["chunks"] = int(record["chunks"]) + 1  # type: ignore[call-overload]
                        record["finish"] = chunk["choices"][0]["finish_reason"] or record["finish"]
                if first:
                    first = False
                    started.wait(timeout=60)
    except httpx.HTTPError as exc:
        record["transport"] = repr(exc)


def _ledger_count(dsn: str) -> int:
    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM usage_events WHERE endpoint = 'completions'"))
        finally:
            await conn.close()

    return asyncio.run(count())


@pytest.mark.slow
def test_sigterm_during_sixteen_streams(data_dir: Path, fresh_dsn_sync: str, redis_url: str) -> None:  # noqa: F811
    env = clean_env(BITNET_DATA_DIR=str(data_dir), BITNET_DATABASE_URL=fresh_dsn_sync, BITNET_REDIS_URL=redis_url)
    server = Server(
        data_dir,
        "--max-batch",
        "32",
        BITNET_DATABASE_URL=fresh_dsn_sync,
        BITNET_REDIS_URL=redis_url,
        BITNET_SHUTDOWN_GRACE=str(GRACE_S),
    )
    try:
        server.wait_ready()
        _admin(env, "create-org", "--name", "shut", "--owner-email", "owner@shut.example.com")
        unlimited = [x for f in ("--rpm", "--tpm", "--key-concurrency", "--monthly-token-quota") for x in (f, "none")]
        _admin(env, "edit-plan", "--name", "shutdown-test", *unlimited, "--max-running", "64")
        _admin(env, "set-plan", "--org", "shut", "--plan", "shutdown-test")
        key = _admin(env, "create-key", "--org", "shut", "--name", "k", "--scopes", "inference").split()[-1]
        results: list[dict[str, object]] = []
        started = threading.Barrier(STREAMS + 1)
        threads = [threading.Thread(target=_stream, args=(server.url, key, results, started)) for _ in range(STREAMS)]
        for t in threads:
            t.start()
        started.wait(timeout=120)  # every stream has its first chunk
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        try:  # no new connection is taken once shutting down (or, at most, readiness says 503)
            readiness: int | str = httpx.get(f"{server.url}/readyz", timeout=2).status_code
        except httpx.HTTPError as exc:
            readiness = type(exc).__name__
        assert readiness in (503, "ConnectError"), readiness
        for t in threads:
            t.join(timeout=GRACE_S + 30)
        code = server.proc.wait(timeout=GRACE_S + 30)
        took = time.monotonic() - signalled
        out = server.output()
        assert code == 0, out
        assert took < GRACE_S + 15, took
        assert "Traceback" not in out
        assert len(results) == STREAMS
        for r in results:
            assert r.get("status") == 200, r
            assert r["done"] is True, (
                r,
                [x.get("transport") for x in results],
            )  # a clean end: [DONE] whether it finished or not
            if r["error"] is None:
                assert r["finish"] == "length" and r.get("tokens") == TOKENS, r
            else:
                assert r["error"]["code"] in ("cancelled", "shutting_down"), r  # type: ignore[index]
        assert any(r["error"] is not None for r in results), "no stream outlasted the grace period"
        assert _ledger_count(fresh_dsn_sync) == STREAMS  # every admitted request metered, once
    finally:
        server.close()
