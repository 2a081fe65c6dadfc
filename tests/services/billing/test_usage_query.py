"""Usage and cost queries against events written through the real ledger (``record_batch``) on PostgreSQL:
buckets (empty ones too), grouping, filters, paging, the parameters' 400s, plan prices, and speed at 500k
events (read from the rollups)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from bitnet_actor.services.billing import plans, usage
from bitnet_actor.services.billing.ledger import UsageEvent, record_batch
from bitnet_actor.services.errors import ValidationError

if TYPE_CHECKING:
    from bitnet_actor.stores.postgres import Database

BASE = datetime(2024, 3, 10, tzinfo=UTC)
T0 = int(BASE.timestamp())
DAY = 86400


async def new_org(db: Database, plan: str = "free") -> uuid.UUID:
    async with db.transaction() as tx:
        org: uuid.UUID = await tx.fetchval(
            "INSERT INTO organizations (name, plan) VALUES ($1, $2) RETURNING id", f"u-{uuid.uuid4().hex[:8]}", plan
        )
    return org


def event(org: uuid.UUID, at: int, model: str, i: int, o: int, key: uuid.UUID | None = None, **kw: Any) -> UsageEvent:
    return UsageEvent(
        request_id=uuid.uuid4().hex, org_id=org, api_key_id=key, model=model, input_tokens=i, output_tokens=o,
        latency_ms=1, outcome=kw.pop("outcome", "completed"), created_at=datetime.fromtimestamp(at, UTC), **kw,
    )  # fmt: skip


def q(**params: object) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in params.items():
        out[name] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return out


class World:
    def __init__(self, org: uuid.UUID, k1: uuid.UUID, k2: uuid.UUID) -> None:
        self.org, self.k1, self.k2 = org, k1, k2


@pytest.fixture
async def world(db: Database) -> World:
    org, other = await new_org(db), await new_org(db)
    k1, k2 = uuid.uuid4(), uuid.uuid4()
    events = [
        event(org, T0 + 10, "m1", 10, 5, k1),
        event(org, T0 + 30, "m1", 1, 2, k1, outcome="failed"),
        event(org, T0 + 70, "m1", 100, 50, k1),
        event(org, T0 + 3605, "m2", 7, 3, k2),
        event(org, T0 + DAY + 1, "m1", 4, 4),
        event(other, T0 + 5, "m1", 1000, 1000, k1),  # another tenant's: never counted
    ]
    assert await record_batch(db, events) == 6
    assert await record_batch(db, events) == 0  # replayed: nothing counted twice
    return World(org, k1, k2)


def totals(page: dict[str, Any]) -> list[tuple[int, list[tuple[Any, ...]]]]:
    return [
        (b["start_time"], [(r["model"], r["api_key_id"], r["input_tokens"], r["output_tokens"],
                            r["num_model_requests"]) for r in b["results"]])
        for b in page["data"]
    ]  # fmt: skip


async def test_minute_buckets_ungrouped_with_empty_ones(db: Database, world: World) -> None:
    query = usage.parse_usage_query(q(start_time=T0, end_time=T0 + 180, bucket_width="1m"))
    page = await usage.query_usage(db, world.org, query)
    assert page["object"] == "page" and page["has_more"] is False and page["next_page"] is None
    assert totals(page) == [
        (T0, [(None, None, 11, 7, 2)]),
        (T0 + 60, [(None, None, 100, 50, 1)]),
        (T0 + 120, []),  # empty, but present
    ]
    first = page["data"][0]
    assert first["object"] == "bucket" and first["end_time"] == T0 + 60
    assert first["results"][0]["object"] == "organization.usage.completions.result"


async def test_daily_buckets_grouped_by_model_and_key(db: Database, world: World) -> None:
    query = usage.parse_usage_query(
        q(start_time=T0, end_time=T0 + 3 * DAY, bucket_width="1d", group_by="model,api_key_id")
    )
    page = await usage.query_usage(db, world.org, query)
    k1, k2 = str(world.k1), str(world.k2)
    assert totals(page) == [
        (T0, sorted([("m1", k1, 111, 57, 3), ("m2", k2, 7, 3, 1)])),
        (T0 + DAY, [("m1", None, 4, 4, 1)]),
        (T0 + 2 * DAY, []),
    ]
    # Grouped by model only (repeated parameter form): the keys merge and api_key_id is null.
    query = usage.parse_usage_query(q(start_time=T0, end_time=T0 + DAY, group_by=["model"]))
    assert totals(await usage.query_usage(db, world.org, query)) == [
        (T0, [("m1", None, 111, 57, 3), ("m2", None, 7, 3, 1)])
    ]


async def test_filters_by_model_and_key(db: Database, world: World) -> None:
    by_model = usage.parse_usage_query(q(start_time=T0, end_time=T0 + 2 * DAY, models="m2", bucket_width="1h"))
    page = await usage.query_usage(db, world.org, by_model)
    assert len(page["data"]) == 24  # the default limit of 1h: one page of 24 of the 48 buckets
    assert page["has_more"] is True
    nonempty = [(b["start_time"], b["results"]) for b in page["data"] if b["results"]]
    assert [(s, [(r["input_tokens"], r["output_tokens"]) for r in res]) for s, res in nonempty] == [
        (T0 + 3600, [(7, 3)])
    ]
    by_key = usage.parse_usage_query(
        q(start_time=T0, end_time=T0 + 2 * DAY, api_key_ids=str(world.k1), group_by="api_key_id")
    )
    assert totals(await usage.query_usage(db, world.org, by_key)) == [
        (T0, [(None, str(world.k1), 111, 57, 3)]),
        (T0 + DAY, []),
    ]


async def test_paging_walks_every_bucket_once(db: Database, world: World) -> None:
    params = q(start_time=T0, end_time=T0 + 5 * 3600, bucket_width="1h", limit=2)
    starts: list[int] = []
    tokens = 0
    pages = 0
    while True:
        page = await usage.query_usage(db, world.org, usage.parse_usage_query(params))
        pages += 1
        starts += [b["start_time"] for b in page["data"]]
        tokens += sum(r["input_tokens"] for b in page["data"] for r in b["results"])
        if not page["has_more"]:
            assert page["next_page"] is None
            break
        assert isinstance(page["next_page"], str) and str(T0) not in page["next_page"]  # opaque
        params = {**params, "page": [page["next_page"]]}
    assert pages == 3
    assert starts == [T0 + h * 3600 for h in range(5)]
    assert tokens == 118


async def test_times_are_aligned_to_the_width(db: Database, world: World) -> None:
    query = usage.parse_usage_query(q(start_time=T0 + 30, end_time=T0 + 61, bucket_width="1m"))
    assert (query.start, query.end) == (T0, T0 + 120)
    page = await usage.query_usage(db, world.org, query)
    assert [b["start_time"] for b in page["data"]] == [T0, T0 + 60]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"bucket_width": "2h"}, "bucket_width"),
        ({"end_time": T0 - 1}, "end_time"),
        ({"end_time": T0}, "end_time"),
        ({"limit": 32}, "limit"),
        ({"limit": 0}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"bucket_width": "1h", "limit": 169}, "limit"),
        ({"bucket_width": "1m", "limit": 1441}, "limit"),
        ({"group_by": "project_id"}, "group_by"),
        ({"group_by": "model,"}, "group_by"),
        ({"page": "not-a-cursor"}, "page"),
        ({"api_key_ids": "nope"}, "api_key_ids"),
        ({"start_time": "yesterday"}, "start_time"),
        ({"start_time": -5}, "start_time"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_malformed_parameters_name_themselves(params: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as caught:
        usage.parse_usage_query(q(**{"start_time": T0, "end_time": T0 + DAY, **params}))
    assert caught.value.field == param


def test_start_time_is_required_and_limits_have_openai_defaults() -> None:
    with pytest.raises(ValidationError) as caught:
        usage.parse_usage_query({})
    assert caught.value.field == "start_time"
    for width, default, top in [("1d", 7, 31), ("1h", 24, 168), ("1m", 60, 1440)]:
        assert usage.parse_usage_query(q(start_time=T0, bucket_width=width), now=T0 + 10**7).limit == default
        assert usage.parse_usage_query(q(start_time=T0, bucket_width=width, limit=top), now=T0 + 10**7).limit == top


def test_a_cursor_of_another_width_or_range_is_refused() -> None:
    params = q(start_time=T0, end_time=T0 + 10 * 3600, bucket_width="1h", limit=2)
    cursor = usage.parse_usage_query(params).next_page()
    assert cursor is not None
    assert usage.parse_usage_query({**params, "page": [cursor]}).page_start == T0 + 2 * 3600
    with pytest.raises(ValidationError, match="page"):
        usage.parse_usage_query({**params, "bucket_width": ["1m"], "limit": ["2"], "page": [cursor]})
    with pytest.raises(ValidationError, match="page"):
        usage.parse_usage_query({**params, "end_time": [str(T0 + 3600)], "page": [cursor]})


async def test_costs_at_the_plan_prices_per_line_item(db: Database, world: World) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    plan = await plans.upsert_plan(
        db,
        name,
        {
            "input_price_per_m": "10",
            "output_price_per_m": "40",
            "model_prices": {"m1": {"input_price_per_m": "1.5", "output_price_per_m": "3.25"}},
        },
    )
    await plans.set_org_plan(db, world.org, name)
    query = usage.parse_cost_query(q(start_time=T0, end_time=T0 + 2 * DAY, group_by="line_item"))
    page = await usage.query_costs(db, world.org, plan, query)
    day0 = {r["line_item"]: Decimal(str(r["amount"]["value"])) for r in page["data"][0]["results"]}
    # m1 has its own price; m2 the plan's default. Cents per 1M tokens -> dollars: / 10^8.
    assert day0 == {
        "m1, input": Decimal(111) * Decimal("1.5") / 10**8,
        "m1, output": Decimal(57) * Decimal("3.25") / 10**8,
        "m2, input": Decimal(7) * 10 / 10**8,
        "m2, output": Decimal(3) * 40 / 10**8,
    }
    result = page["data"][0]["results"][0]
    assert result["object"] == "organization.costs.result"
    assert result["amount"]["currency"] == "usd" and result["project_id"] is None
    ungrouped = await usage.query_costs(
        db, world.org, plan, usage.parse_cost_query(q(start_time=T0, end_time=T0 + DAY))
    )
    [only] = ungrouped["data"][0]["results"]
    assert only["line_item"] is None
    assert Decimal(str(only["amount"]["value"])) == pytest.approx(sum(day0.values()))
    with pytest.raises(ValidationError) as caught:
        usage.parse_cost_query(q(start_time=T0, bucket_width="1h"))
    assert caught.value.field == "bucket_width"
    with pytest.raises(ValidationError) as caught:
        usage.parse_cost_query(q(start_time=T0, group_by="model"))
    assert caught.value.field == "group_by"
    with pytest.raises(ValidationError) as caught:
        usage.parse_cost_query(q(start_time=T0, limit=181))
    assert caught.value.field == "limit"


@pytest.mark.slow
async def test_fast_at_half_a_million_events(db: Database) -> None:
    """500k events through the ledger; a month of daily usage and a day of minutes answer from the rollups
    quickly (a scan of usage_events would not)."""
    org = await new_org(db)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    batch = 25_000
    for n in range(20):
        events = [
            event(org, int((start + timedelta(seconds=(n * batch + i) * 5)).timestamp()), f"m{i % 3}", 3, 2)
            for i in range(batch)
        ]
        assert await record_batch(db, events, outbox=False) == batch
    end = int(start.timestamp()) + 500_000 * 5
    query = usage.parse_usage_query(q(start_time=int(start.timestamp()), end_time=end, limit=31, group_by="model"))
    began = time.perf_counter()
    page = await usage.query_usage(db, org, query)
    month_s = time.perf_counter() - began
    assert sum(r["num_model_requests"] for b in page["data"] for r in b["results"]) == 500_000
    assert sum(r["input_tokens"] for b in page["data"] for r in b["results"]) == 1_500_000
    minutes = usage.parse_usage_query(
        q(start_time=int(start.timestamp()), end_time=end, bucket_width="1m", limit=1440, group_by="model,api_key_id")
    )
    began = time.perf_counter()
    page = await usage.query_usage(db, org, minutes)
    minute_s = time.perf_counter() - began
    assert len(page["data"]) == 1440 and page["has_more"]
    assert sum(r["num_model_requests"] for b in page["data"] for r in b["results"]) == 1440 * 12
    assert month_s < 1.0 and minute_s < 1.0, (month_s, minute_s)
