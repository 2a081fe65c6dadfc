"""Benchmark of the portal's usage page over a large ledger: correctness first, then server time.

Seeds one organization with ``--rows`` usage events (default 500,000) over the last 30 days, 5 models and
20 API keys (and some calls without a key), written the way the usage meter writes them (``record_batch``:
events plus their rollups). Then:

  (a) correctness: the usage page's CSV export over the 30 days equals the generated events grouped by day,
      model and key, row for row; the page's totals equal their sums; a model filter keeps only that model;
  (b) server time (the app in process, no network), median of ``--repeats`` runs, of the usage page (7 and
      30 days, 30 days for one model), its CSV export and the dashboard, against two baselines measured in
      the same run: the JSON usage API over the same 30 days (``GET /api/v1/orgs/<org>/usage/completions``,
      the same query) and the same grouping computed from ``usage_events`` itself (what the page would cost
      without the rollups). The goal: a usage page under 300 ms.

Embedded PostgreSQL and Redis by default (``--database-url`` / ``--redis-url`` to use others: the benchmark
creates an organization of its own there and never empties anything).

  python ops/bench_portal_usage.py [--rows 500000] [--repeats 7] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from actors.key_cache import KeyCache
from actors.tenant import Tenants
from bitnet_actor.app import create_app
from bitnet_actor.config import Settings
from bitnet_actor.observability import Metrics
from bitnet_actor.services import api_keys, audit, tenancy
from bitnet_actor.services.billing.ledger import UsageEvent, record_batch
from bitnet_actor.services.email import MemoryEmailSender
from bitnet_actor.services.sessions import COOKIE_NAME
from bitnet_actor.stores import open_stores
from bitnet_actor.stores.embedded import EmbeddedPostgres, EmbeddedRedis
from bitnet_actor.system import build_auth, build_handles, build_model_cache

MODELS = ("bitnet-2b", "bitnet-700m", "falcon3-1.58", "llama3-8b-1.58", "tiny")
KEYS = 20
DAYS = 30
BATCH = 10_000
GOAL_MS = 300.0

Group = tuple[str, str, str]  # day, model, key id ("" for none)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def generate(org: uuid.UUID, keys: list[uuid.UUID], n: int, today: date, rng: random.Random) -> list[UsageEvent]:
    """``n`` events over the 30 days ending today (none after now), random models, keys, sizes."""
    now = datetime.now(UTC)
    first = datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(days=DAYS - 1)
    span = max(1, int((now - first).total_seconds()) - 1)
    out = []
    for _ in range(n):
        key = rng.choice(keys) if rng.random() < 0.9 else None
        out.append(
            UsageEvent(
                request_id=f"bench-{uuid.uuid4().hex}",
                org_id=org,
                model=rng.choice(MODELS),
                input_tokens=rng.randint(1, 2000),
                output_tokens=rng.randint(0, 500),
                latency_ms=rng.randint(5, 900),
                outcome="completed" if rng.random() < 0.98 else "failed",
                api_key_id=key,
                endpoint="chat",
                created_at=first + timedelta(seconds=rng.randrange(span)),
            )
        )
    return out


def expected_groups(events: list[UsageEvent]) -> dict[Group, list[int]]:
    groups: dict[Group, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for e in events:
        g = groups[(e.created_at.date().isoformat(), e.model, str(e.api_key_id) if e.api_key_id else "")]
        g[0] += 1
        g[1] += e.input_tokens
        g[2] += e.output_tokens
        g[3] += e.cached_tokens
    return dict(groups)


def csv_groups(text: str) -> dict[Group, list[int]]:
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        key = (row["day"], row["model"], row["api_key_id"])
        assert key not in out, f"row {key} twice"
        out[key] = [
            int(row["requests"]),
            int(row["input_tokens"]),
            int(row["output_tokens"]),
            int(row["cached_tokens"]),
        ]
    return out


def cell(html: str, element_id: str) -> int:
    match = re.search(rf'id="{element_id}">([0-9,]+)<', html)
    assert match, f"no #{element_id} in the page"
    return int(match.group(1).replace(",", ""))


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, *row: str) -> None:
        self.rows.append(row)

    def show(self) -> None:
        header = ("measure", "median ms", "vs usage API", "vs events scan", "goal")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(len(header))]
        for row in [header, tuple("-" * w for w in widths), *self.rows]:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


async def timed(fn: Any, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def amain(args: argparse.Namespace, settings: Settings) -> None:
    async with trio_asyncio.open_loop(), open_stores(settings) as stores:
        keys_cache = KeyCache(stores.db, stores.redis)
        auth = build_auth(settings, stores, b"k" * 32, mailer=MemoryEmailSender(), keys=keys_cache)
        metrics = Metrics()
        system = build_handles(
            settings,
            stores,
            metrics=metrics,
            auth=auth,
            cache=build_model_cache(settings, metrics, {}),
            tenants=Tenants(stores.db),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(keys_cache.run)
            app = create_app(system)
            async with app.test_app():
                await run(args, system, app.test_client(use_cookies=False))
            nursery.cancel_scope.cancel()


async def run(args: argparse.Namespace, system: Any, client: Any) -> None:
    db = system.stores.db
    org, user_id, _ = await tenancy.admin_create_org(
        db, name=f"bench-portal-{uuid.uuid4().hex[:8]}", owner_email=f"bench-{uuid.uuid4().hex[:8]}@bench.example.com"
    )
    keys = []
    for i in range(KEYS):
        _, key = await api_keys.create_key(
            db, org_id=org.id, name=f"key {i}", scopes=["inference"], actor=audit.Actor()
        )
        keys.append(key.id)
    session = await system.auth.sessions.create(user_id)
    headers = {"Cookie": f"{COOKIE_NAME}={session.id}"}
    today = datetime.now(UTC).date()
    rng = random.Random(args.seed)
    events = generate(org.id, keys, args.rows, today, rng)
    started = time.perf_counter()
    for i in range(0, len(events), BATCH):
        await record_batch(db, events[i : i + BATCH], outbox=False)
    print(f"seeded {len(events):,} ledger rows in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    first = today - timedelta(days=DAYS - 1)
    base = f"/portal/orgs/{org.id}"
    month = f"from={first.isoformat()}&to={today.isoformat()}"

    async def get(path: str) -> str:
        r = await client.get(path, headers=headers)
        body: str = await r.get_data(as_text=True)
        assert r.status_code == 200, (path, r.status_code, body[:500])
        return body

    # (a) correctness before any timing.
    want = expected_groups(events)
    got = csv_groups(await get(f"{base}/usage.csv?{month}"))
    assert got == want, f"CSV export differs from the generated events ({len(got)} vs {len(want)} groups)"
    page = await get(f"{base}/usage?{month}")
    totals = [sum(v[i] for v in want.values()) for i in range(3)]
    assert [cell(page, "total-requests"), cell(page, "total-input"), cell(page, "total-output")] == totals
    assert page.count("<tr><td>") == len(want), "one table row per day x model x key"
    one = csv_groups(await get(f"{base}/usage.csv?{month}&model={MODELS[0]}"))
    assert one == {k: v for k, v in want.items() if k[1] == MODELS[0]}
    print(
        f"(a) correctness: the usage CSV = the {len(events):,} generated events in {len(want):,} day x model x key"
        f" groups; page totals {totals[0]:,} requests, {totals[1]:,} + {totals[2]:,} tokens; the model filter keeps"
        " only its model"
    )

    # (b) timing.
    start_ts = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp())
    api = (
        f"/api/v1/orgs/{org.id}/usage/completions?start_time={start_ts}&bucket_width=1d&limit=31"
        "&group_by=model,api_key_id"
    )
    end = datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(days=1)

    async def scan() -> None:
        async with db.transaction(org_id=org.id, readonly=True) as tx:
            rows = await tx.fetch(
                "SELECT date_trunc('day', created_at) AS d, model, api_key_id, count(*), sum(input_tokens),"
                " sum(output_tokens) FROM usage_events WHERE org_id = $1 AND created_at >= $2 AND created_at < $3"
                " GROUP BY 1, 2, 3",
                org.id,
                end - timedelta(days=DAYS),
                end,
            )
        assert len(rows) == len(want)

    api_ms = await timed(lambda: get(api), args.repeats)
    scan_ms = await timed(scan, args.repeats)
    table = Table()
    table.add("baseline: usage API, 30 days (JSON)", f"{api_ms:.1f}", "1.00", f"{api_ms / scan_ms:.2f}", "")
    table.add("baseline: usage_events scan, 30 days", f"{scan_ms:.1f}", f"{scan_ms / api_ms:.2f}", "1.00", "")
    measures = [
        ("usage page, 7 days (default)", f"{base}/usage", True),
        ("usage page, 30 days", f"{base}/usage?{month}", True),
        ("usage page, 30 days, one model", f"{base}/usage?{month}&model={MODELS[0]}", True),
        ("usage CSV export, 30 days", f"{base}/usage.csv?{month}", False),
        ("dashboard (this month)", base, False),
    ]
    failed = []
    for label, path, has_goal in measures:
        ms = await timed(lambda path=path: get(path), args.repeats)
        verdict = ("PASS" if ms < GOAL_MS else "FAIL") + f" < {GOAL_MS:.0f} ms" if has_goal else ""
        if has_goal and ms >= GOAL_MS:
            failed.append(label)
        table.add(label, f"{ms:.1f}", f"{ms / api_ms:.2f}", f"{ms / scan_ms:.2f}", verdict)
    print(
        f"\n{len(events):,} ledger rows, {KEYS} keys, {len(MODELS)} models, {DAYS} days;"
        f" CPU: {cpu_name()} x{os.cpu_count()}"
    )
    print(f"medians of {args.repeats} runs, server time in process (Quart test client, no network)\n")
    table.show()
    if failed and not args.quick:
        raise SystemExit(f"over the {GOAL_MS:.0f} ms goal: {', '.join(failed)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000, help="ledger rows (usage events) to seed")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="20,000 rows, 3 repeats (a smoke test)")
    parser.add_argument("--database-url", help="PostgreSQL to use (default: an embedded one)")
    parser.add_argument("--redis-url", help="Redis to use (default: an embedded one)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = 20_000, 3
    work = Path(tempfile.mkdtemp(prefix="bench-portal-"))
    os.chmod(work, 0o755)  # as root, the embedded PostgreSQL runs unprivileged and must reach its data dir
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
        (work / "data").mkdir()
        settings = Settings(data_dir=work / "data", database_url=dsn, redis_url=redis_url, no_demo_model=True)
        trio.run(amain, args, settings)
    finally:
        if redis_server is not None:
            redis_server.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
