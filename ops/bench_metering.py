"""Benchmark of usage metering and rate limits: correctness first, then the costs.

  (a) correctness: the ledger's totals (events, tokens, rollups, Stripe outbox) equal what the load generator
      sent, duplicates included; and every request a real server answered is in the ledger after it stops;
  (b) a request's rate-limit check (admit + settle, on a plan with rpm/tpm/concurrency limits and a quota)
      in process, against a bare Redis PING on the same client;
  (c) usage events per second the ledger takes through the meter's batches, against one statement per event;
  (d) the latency a /v1/completions request gains from metering + limits: a real server (a subprocess) and a
      real HTTP client, an organization on a plan with limits and a quota ("on") against one on a plan with
      neither ("off": no Redis call; the meter's record() is a channel send, see (c));
  (e) PostgreSQL rows written per request at batch sizes 1/10/100/500.

Each measure is the median of ``--repeats`` runs; ratios are against a baseline measured in the same run.
Embedded PostgreSQL and Redis by default (``--database-url`` / ``--redis-url`` to use others: the benchmark
creates organizations, plans and keys of its own there, and never empties anything).

  python ops/bench_metering.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import trio
import trio.lowlevel
import trio_asyncio

import bitnet_actor
from actors.meter import UsageMeter
from bitnet_actor.services import api_keys, audit, tenancy
from bitnet_actor.services.api_keys import KeyPrincipal
from bitnet_actor.services.billing import plans
from bitnet_actor.services.billing.ledger import UsageEvent, record_batch
from bitnet_actor.services.limits import RequestLimits
from bitnet_actor.services.ratelimit import RateLimiter
from bitnet_actor.stores.embedded import EmbeddedPostgres, EmbeddedRedis
from bitnet_actor.stores.migrate import migrate
from bitnet_actor.stores.postgres import Database, open_database
from bitnet_actor.stores.redis import RedisStore, open_redis

MODEL = "bitnet-demo"
LIMITED = {"rpm": 10_000_000, "tpm": 10_000_000_000, "key_concurrency": 100_000, "monthly_token_quota": 10**12}
OPEN: dict[str, Any] = {"rpm": None, "tpm": None, "key_concurrency": None, "monthly_token_quota": None}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, value: float, unit: str, ratio: str = "") -> None:
        self.rows.append((what, f"{value:,.3f}" if value < 100 else f"{value:,.0f}", unit, ratio))

    def show(self) -> None:
        widths = [max(len(r[i]) for r in [("measure", "median", "unit", "vs baseline"), *self.rows]) for i in range(4)]
        header = ("measure", "median", "unit", "vs baseline")
        for row in [header, tuple("-" * w for w in widths), *self.rows]:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


async def new_org(db: Database, plan: str) -> uuid.UUID:
    org, _, _ = await tenancy.admin_create_org(
        db, name=f"bench-{uuid.uuid4().hex[:10]}", owner_email=f"o-{uuid.uuid4().hex[:8]}@bench.example.com"
    )
    await plans.set_org_plan(db, org.id, plan)
    return org.id


async def ledger_totals(db: Database, org: uuid.UUID) -> tuple[int, int, int, int, int]:
    row = await db.fetchrow(
        "SELECT count(*), coalesce(sum(input_tokens + output_tokens), 0) FROM usage_events WHERE org_id = $1", org
    )
    rolled = await db.fetchrow(
        "SELECT coalesce(sum(requests), 0), coalesce(sum(input_tokens + output_tokens), 0) FROM usage_rollups"
        " WHERE org_id = $1 AND width = '1d'",
        org,
    )
    outbox = await db.fetchval("SELECT coalesce(sum(value), 0) FROM billing_outbox WHERE org_id = $1", org)
    assert row is not None
    assert rolled is not None
    return int(row[0]), int(row[1]), int(rolled[0]), int(rolled[1]), int(outbox)


def events_for(org: uuid.UUID, n: int, rng: random.Random) -> list[UsageEvent]:
    return [
        UsageEvent(
            request_id=f"bench-{uuid.uuid4().hex}",
            org_id=org,
            model=MODEL,
            input_tokens=rng.randint(1, 500),
            output_tokens=rng.randint(0, 200),
            latency_ms=rng.randint(1, 100),
            outcome="completed",
            endpoint="completions",
        )
        for _ in range(n)
    ]


# (a) -----------------------------------------------------------------------------------------------------


async def check_ledger(db: Database, spill: Path, n: int) -> None:
    rng = random.Random(0)
    org = await new_org(db, "bench-open")
    sent = events_for(org, n, rng)
    meter = UsageMeter(db, spill / "a")
    async with trio.open_nursery() as nursery:
        await nursery.start(meter.run)
        for i, e in enumerate(sent):
            meter.record(e)
            if i % 20 == 0:
                meter.record(e)  # a retried request: the same event twice counts once
        assert await meter.flush(60), "the meter did not write its buffer in 60 s"
        nursery.cancel_scope.cancel()
    tokens = sum(e.input_tokens + e.output_tokens for e in sent)
    got = await ledger_totals(db, org)
    assert got == (n, tokens, n, tokens, tokens), f"ledger {got} != sent {(n, tokens, n, tokens, tokens)}"
    print(f"(a) ledger = sent: {n} events, {tokens} tokens (rollups and outbox too), duplicates counted once")


# (b) -----------------------------------------------------------------------------------------------------


async def bench_limits(db: Database, redis: RedisStore, n: int) -> dict[str, list[float]]:
    org = await new_org(db, "bench-limited")
    profile = await plans.org_profile(db, org)
    open_profile = await plans.org_profile(db, await new_org(db, "bench-open"))
    key = KeyPrincipal(uuid.uuid4(), org, "bench", frozenset({"inference"}), None)
    limits = RequestLimits(RateLimiter(redis, prefix=f"bench:{uuid.uuid4().hex[:8]}"), db)
    await limits.admit(profile, key=key, user_id=None, request_id="warm", tokens=10)  # seeds the quota
    ping, admit, settle, both, none = [], [], [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        await redis.run(lambda r: r.ping())
        t1 = time.perf_counter()
        decision = await limits.admit(profile, key=key, user_id=None, request_id=f"r{i}", tokens=100)
        t2 = time.perf_counter()
        await limits.settle(decision, used_tokens=60)
        t3 = time.perf_counter()
        free = await limits.admit(open_profile, key=None, user_id=None, request_id=f"o{i}", tokens=100)
        await limits.settle(free, used_tokens=60)
        t4 = time.perf_counter()
        assert decision.allowed
        assert free.allowed
        ping.append(t1 - t0)
        admit.append(t2 - t1)
        settle.append(t3 - t2)
        both.append(t3 - t1)
        none.append(t4 - t3)
    return {"ping": ping, "admit": admit, "settle": settle, "both": both, "none": none}


# (c) and (e) ---------------------------------------------------------------------------------------------


async def bench_throughput(db: Database, spill: Path, n_batched: int, n_single: int) -> tuple[float, float]:
    rng = random.Random(1)
    org = await new_org(db, "bench-open")
    single = events_for(org, n_single, rng)
    t0 = time.perf_counter()
    for e in single:
        await record_batch(db, [e])
    per_event = n_single / (time.perf_counter() - t0)
    sent = events_for(org, n_batched, rng)
    meter = UsageMeter(db, spill / f"c-{uuid.uuid4().hex[:6]}")
    async with trio.open_nursery() as nursery:
        await nursery.start(meter.run)
        t0 = time.perf_counter()
        for i, e in enumerate(sent):
            meter.record(e)
            if i % 50 == 49:
                await trio.lowlevel.checkpoint()  # requests arrive over time, not in one burst
        assert await meter.flush(120)
        batched = n_batched / (time.perf_counter() - t0)
        nursery.cancel_scope.cancel()
    got = await ledger_totals(db, org)
    assert got[0] == n_single + n_batched, f"ledger has {got[0]} events, {n_single + n_batched} sent"
    return batched, per_event


_TABLES = ("usage_events", "usage_rollups", "billing_outbox")


async def rows_written(db: Database, batch_size: int, n: int) -> float:
    """Rows inserted or updated per event (pg_stat_user_tables, flushed on the writing connection)."""
    rng = random.Random(2)
    org = await new_org(db, "bench-open")
    sent = events_for(org, n, rng)
    query = (
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables"
        " WHERE relname LIKE 'usage_events%' OR relname = ANY($1)"
    )
    async with db.connection() as conn:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        before = int(await conn.fetchval(query, list(_TABLES[1:])))
        for i in range(0, n, batch_size):
            payload = [e.to_dict() for e in sent[i : i + batch_size]]
            await conn.fetchval("SELECT bitnet_record_usage($1::jsonb, true)", payload)
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT 1")
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        after = int(await conn.fetchval(query, list(_TABLES[1:])))
    return (after - before) / n


# (d) -----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def spawn_server(dsn: str, redis_url: str, data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "BITNET_DATA_DIR": str(data), "BITNET_DATABASE_URL": dsn, "BITNET_REDIS_URL": redis_url}
    # The server runs the same checkout as this script (its migrations must match what we applied).
    root = str(Path(bitnet_actor.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    log = (data / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitnet_actor", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); see {data / 'serve.log'}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the server was not ready in 180 s; see {data / 'serve.log'}")


async def new_key(db: Database, org: uuid.UUID) -> str:
    secret, _ = await api_keys.create_key(db, org_id=org, name="bench", scopes=["inference"], actor=audit.SYSTEM_ACTOR)
    return secret


async def bench_http(
    db: Database, dsn: str, redis_url: str, data: Path, n: int, repeats: int
) -> tuple[list[float], list[float]]:
    on_org, off_org = await new_org(db, "bench-limited"), await new_org(db, "bench-open")
    on_key, off_key = await new_key(db, on_org), await new_key(db, off_org)
    proc, url = await trio.to_thread.run_sync(spawn_server, dsn, redis_url, data)
    on_p50: list[float] = []
    off_p50: list[float] = []
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
    sent = {on_org: 0, off_org: 0}
    tokens = {on_org: 0, off_org: 0}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for key in (on_key, off_key):  # warm up: model, key cache, plans, quota seed
                for _ in range(5):
                    r = await http.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
                    assert r.status_code == 200, r.text
                    org = on_org if key == on_key else off_org
                    sent[org] += 1
                    tokens[org] += r.json()["usage"]["total_tokens"]
            for _ in range(repeats):
                times: dict[str, list[float]] = {on_key: [], off_key: []}
                for i in range(2 * n):  # interleaved, so drift hits both alike
                    key = on_key if i % 2 == 0 else off_key
                    t0 = time.perf_counter()
                    r = await http.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
                    times[key].append(time.perf_counter() - t0)
                    assert r.status_code == 200, r.text
                    org = on_org if key == on_key else off_org
                    sent[org] += 1
                    tokens[org] += r.json()["usage"]["total_tokens"]
                on_p50.append(pct(times[on_key], 50))
                off_p50.append(pct(times[off_key], 50))
    finally:
        proc.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(proc.wait, 60)
    for org in (on_org, off_org):
        events, used = (await ledger_totals(db, org))[:2]
        assert (events, used) == (sent[org], tokens[org]), f"ledger {events}/{used} != served {sent[org]}/{tokens[org]}"
    print(f"(a) a stopped server's ledger = its responses: {sent[on_org] + sent[off_org]} requests, tokens equal")
    return on_p50, off_p50


# ---------------------------------------------------------------------------------------------------------


async def amain(args: argparse.Namespace, dsn: str, redis_url: str, work: Path) -> None:
    table = Table()
    async with trio_asyncio.open_loop(), open_database(dsn, max_size=8) as db, open_redis(redis_url) as redis:
        await migrate(db)
        await plans.upsert_plan(db, "bench-limited", {**LIMITED, "quota_mode": "overage"})
        await plans.upsert_plan(db, "bench-open", OPEN)
        await check_ledger(db, work, args.events)

        runs = [await bench_limits(db, redis, args.checks) for _ in range(args.repeats)]
        for name, label in (
            ("ping", "Redis PING (baseline)"),
            ("admit", "admit (limits + quota)"),
            ("settle", "settle"),
            ("both", "admit + settle"),
            ("none", "admit + settle, no limits"),
        ):
            for q in (50, 99):
                value = median([pct(r[name], q) * 1000 for r in runs])
                base = median([pct(r["ping"], q) * 1000 for r in runs])
                table.add(f"(b) {label} p{q}", value, "ms", "" if name == "ping" else f"{value / base:.2f}x PING")

        thr = [await bench_throughput(db, work, args.events, args.single) for _ in range(args.repeats)]
        batched, single = median([t[0] for t in thr]), median([t[1] for t in thr])
        table.add("(c) one statement per event (baseline)", single, "events/s")
        table.add("(c) meter batches", batched, "events/s", f"{batched / single:.1f}x")

        if not args.no_http:
            on, off = await bench_http(db, dsn, redis_url, work / "server", args.requests, args.repeats)
            table.add("(d) /v1/completions p50, off (baseline)", median(off) * 1000, "ms")
            table.add("(d) /v1/completions p50, on", median(on) * 1000, "ms", f"{median(on) / median(off):.3f}x")
            table.add(
                "(d) added per request (on - off)", median([a - b for a, b in zip(on, off, strict=True)]) * 1000, "ms"
            )

        for size in (1, 10, 100, 500):
            rows = [await rows_written(db, size, max(size * 2, args.rows)) for _ in range(args.repeats)]
            table.add(f"(e) rows written per request, batch {size}", median(rows), "rows")
    print()
    table.show()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, one repeat (a smoke test)")
    parser.add_argument("--database-url", help="PostgreSQL to use (default: an embedded one)")
    parser.add_argument("--redis-url", help="Redis to use, e.g. redis://127.0.0.1:6379/9 (default: embedded)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checks", type=int, default=2000, help="rate-limit checks per run")
    parser.add_argument("--events", type=int, default=20000, help="events through the meter per run")
    parser.add_argument("--single", type=int, default=2000, help="events written one statement each per run")
    parser.add_argument("--requests", type=int, default=200, help="HTTP requests per side per run")
    parser.add_argument("--rows", type=int, default=1000, help="events per batch-size measure")
    parser.add_argument("--no-http", action="store_true", help="skip (d), the served requests")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.checks, args.events, args.single, args.requests, args.rows = 1, 200, 1000, 200, 20, 100
    work = Path(tempfile.mkdtemp(prefix="bench-metering-"))
    (work / "server").mkdir()
    os.chmod(work, 0o755)  # as root, the embedded PostgreSQL runs unprivileged and must reach its data dir
    print(f"CPU: {cpu_name()} x{os.cpu_count()}")
    pg = redis_server = None
    try:
        dsn = args.database_url
        if not dsn:
            pg = EmbeddedPostgres(work / "embedded")
            dsn = pg.start()
        redis_url = args.redis_url
        if not redis_url:
            redis_server = EmbeddedRedis(work / "embedded")
            redis_server.spawn()
            redis_server.wait_ready()
            redis_url = redis_server.url
        trio.run(amain, args, dsn, redis_url, work)
    finally:
        if redis_server is not None:
            redis_server.stop()
        if pg is not None:
            pg.stop()
        if os.environ.get("BENCH_KEEP"):
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
