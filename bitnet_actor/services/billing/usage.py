"""Usage and cost queries in OpenAI's shape, read from the ledger's rollups (never from ``usage_events``).

Both queries answer one page of time buckets (``{"object": "page", "data": [bucket...], "has_more",
"next_page"}``), as OpenAI's ``/v1/organization/usage/completions`` and ``/v1/organization/costs`` do:

- Buckets are aligned to UTC boundaries of their width (``1m``, ``1h``, ``1d``), the rollups' own buckets:
  ``start_time`` is rounded down to the start of its bucket and ``end_time`` (exclusive, default now) up to
  the end of its bucket. Every bucket of the page is present, empty ones too (``results: []``).
- ``limit`` counts buckets per page: per width OpenAI's default and maximum (1d: 7 / 31, 1h: 24 / 168,
  1m: 60 / 1440; costs: 7 / 180). ``page`` is the opaque ``next_page`` cursor of the previous answer.
- Usage results group by any of ``model`` and ``api_key_id`` (a field not grouped by is null) and filter
  with ``models`` / ``api_key_ids``. Cost results group by ``line_item`` (``"<model>, input"`` and
  ``"<model>, output"``); amounts are in US dollars, exact (not rounded to a cent): input and output tokens
  priced separately at the organization's plan prices (the model's own price on the plan, else the plan's
  default), cents per 1M tokens.

Malformed parameters raise :class:`ValidationError` naming the parameter (the API answers 400).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bitnet_actor.services.errors import ValidationError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from bitnet_actor.services.billing.plans import Plan
    from bitnet_actor.stores.postgres import Connection, Database

__all__ = [
    "COST_LIMITS",
    "WIDTHS",
    "BucketQuery",
    "MonthUsage",
    "cost_dollars",
    "month_usage",
    "parse_cost_query",
    "parse_usage_query",
    "query_costs",
    "query_usage",
]

# width -> (seconds, default limit, max limit): OpenAI's usage API's.
WIDTHS: dict[str, tuple[int, int, int]] = {"1m": (60, 60, 1440), "1h": (3600, 24, 168), "1d": (86400, 7, 31)}
COST_LIMITS = (7, 180)  # OpenAI's costs API: 1d buckets only
_USAGE_GROUPS = frozenset({"model", "api_key_id"})
_COST_GROUPS = frozenset({"line_item", "project_id"})  # project_id: accepted, always null (no projects here)
_USAGE_PARAMS = frozenset(
    {"start_time", "end_time", "bucket_width", "group_by", "models", "api_key_ids", "limit", "page"}
)
_COST_PARAMS = frozenset({"start_time", "end_time", "bucket_width", "group_by", "limit", "page", "project_ids"})
_MAX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z
_MAX_FILTER = 100
_CENTS_PER_DOLLAR_PER_M = Decimal(100_000_000)  # cents per 1M tokens -> dollars per token


@dataclass(frozen=True, slots=True)
class BucketQuery:
    """A checked query: bucket-aligned times (Unix seconds), the page's first bucket and its size."""

    width: str
    start: int
    end: int
    page_start: int
    limit: int
    group_by: frozenset[str]
    models: tuple[str, ...] = ()
    api_key_ids: tuple[uuid.UUID, ...] = ()

    @property
    def seconds(self) -> int:
        """The width of one bucket."""
        return WIDTHS[self.width][0]

    @property
    def page_end(self) -> int:
        """The end (exclusive) of this page's last bucket."""
        return min(self.end, self.page_start + self.limit * self.seconds)

    def next_page(self) -> str | None:
        """The cursor of the next page, or None on the last."""
        if self.page_end >= self.end:
            return None
        raw = json.dumps({"v": 1, "w": self.width, "s": self.page_end}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _one(args: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = args.get(name) or []
    if len(values) > 1:
        raise ValidationError(f"{name} may be given once", field=name)
    return values[0] if values else None


def _list(args: Mapping[str, Sequence[str]], name: str) -> list[str]:
    # Repeated (group_by=a&group_by=b) or comma-separated (group_by=a,b): both are what clients send.
    out = [part.strip() for value in args.get(name) or [] for part in value.split(",")]
    if any(not part for part in out):
        raise ValidationError(f"{name} has an empty item", field=name)
    if len(out) > _MAX_FILTER:
        raise ValidationError(f"{name} has more than {_MAX_FILTER} items", field=name)
    return out


def _unix(args: Mapping[str, Sequence[str]], name: str) -> int | None:
    raw = _one(args, name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be a time in Unix seconds, not {raw[:40]!r}", field=name) from None
    if not 0 <= value <= _MAX_TIME:
        raise ValidationError(f"{name} must be a time in Unix seconds between 0 and {_MAX_TIME}", field=name)
    return value


def _parse(
    args: Mapping[str, Sequence[str]],
    *,
    known: frozenset[str],
    groups: frozenset[str],
    widths: Mapping[str, tuple[int, int, int]],
    now: int,
) -> tuple[str, int, int, int, int, frozenset[str]]:
    for name in args:
        if name not in known:
            raise ValidationError(f"unknown parameter {name!r}", field=name)
    width = _one(args, "bucket_width") or "1d"
    if width not in widths:
        raise ValidationError(
            f"bucket_width must be one of {', '.join(widths)}, not {width[:20]!r}", field="bucket_width"
        )
    seconds, default_limit, max_limit = widths[width]
    start_raw = _unix(args, "start_time")
    if start_raw is None:
        raise ValidationError("start_time is required (Unix seconds)", field="start_time")
    end_raw = _unix(args, "end_time")
    end_raw = now if end_raw is None else end_raw
    if end_raw <= start_raw:
        raise ValidationError("end_time must be after start_time", field="end_time")
    start = start_raw - start_raw % seconds
    end = -(-end_raw // seconds) * seconds
    limit_raw = _one(args, "limit")
    if limit_raw is None:
        limit = default_limit
    else:
        try:
            limit = int(limit_raw)
        except ValueError:
            raise ValidationError(f"limit must be a whole number, not {limit_raw[:20]!r}", field="limit") from None
        if not 1 <= limit <= max_limit:
            raise ValidationError(f"limit must be between 1 and {max_limit} for bucket_width {width}", field="limit")
    group_by = frozenset(_list(args, "group_by"))
    if unknown := group_by - groups:
        raise ValidationError(
            f"group_by may hold {', '.join(sorted(groups))}; not {', '.join(sorted(unknown))}", field="group_by"
        )
    page = _one(args, "page")
    page_start = start if page is None else _decode_page(page, width=width, start=start, end=end, seconds=seconds)
    return width, start, end, page_start, limit, group_by


def _decode_page(page: str, *, width: str, start: int, end: int, seconds: int) -> int:
    bad = ValidationError("page is not a cursor of this query (use next_page as given)", field="page")
    try:
        data = json.loads(base64.urlsafe_b64decode(page + "=" * (-len(page) % 4)))
    except (binascii.Error, ValueError):
        raise bad from None
    if not isinstance(data, dict) or data.get("v") != 1 or data.get("w") != width:
        raise bad
    value = data.get("s")
    if isinstance(value, bool) or not isinstance(value, int) or value % seconds or not start <= value < end:
        raise bad
    return value


def parse_usage_query(args: Mapping[str, Sequence[str]], *, now: int | None = None) -> BucketQuery:
    """Check the parameters of a completions usage query (query-string values, each a list).

    Raises:
        ValidationError: a malformed, unknown or out-of-range parameter (``field`` names it).
    """
    now = int(datetime.now(UTC).timestamp()) if now is None else now
    width, start, end, page_start, limit, group_by = _parse(
        args, known=_USAGE_PARAMS, groups=_USAGE_GROUPS, widths=WIDTHS, now=now
    )
    key_ids = []
    for raw in _list(args, "api_key_ids"):
        try:
            key_ids.append(uuid.UUID(raw))
        except ValueError:
            raise ValidationError(f"api_key_ids holds {raw[:40]!r}, not an API key id", field="api_key_ids") from None
    models = _list(args, "models")
    if any(len(m) > 300 for m in models):
        raise ValidationError("models holds a name longer than 300 characters", field="models")
    return BucketQuery(width, start, end, page_start, limit, group_by, tuple(models), tuple(key_ids))


def parse_cost_query(args: Mapping[str, Sequence[str]], *, now: int | None = None) -> BucketQuery:
    """Check the parameters of a costs query (1d buckets only, as OpenAI's).

    Raises:
        ValidationError: a malformed, unknown or out-of-range parameter (``field`` names it).
    """
    now = int(datetime.now(UTC).timestamp()) if now is None else now
    widths = {"1d": (86400, *COST_LIMITS)}
    width, start, end, page_start, limit, group_by = _parse(
        args, known=_COST_PARAMS, groups=_COST_GROUPS, widths=widths, now=now
    )
    _list(args, "project_ids")  # accepted for OpenAI's clients; there are no projects to filter
    return BucketQuery(width, start, end, page_start, limit, group_by)


def _ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _page(q: BucketQuery, results: Mapping[int, list[dict[str, Any]]]) -> dict[str, Any]:
    data = [
        {"object": "bucket", "start_time": s, "end_time": s + q.seconds, "results": results.get(s, [])}
        for s in range(q.page_start, q.page_end, q.seconds)
    ]
    cursor = q.next_page()
    return {"object": "page", "data": data, "has_more": cursor is not None, "next_page": cursor}


async def query_usage(db: Database, org_id: uuid.UUID, q: BucketQuery) -> dict[str, Any]:
    """One page of ``org_id``'s completions usage (OpenAI's shape), from the rollups of ``q.width``."""
    cols = [c for c in ("model", "api_key_id") if c in q.group_by]
    where = ["org_id = $1", "width = $2", "bucket_start >= $3", "bucket_start < $4"]
    params: list[Any] = [org_id, q.width, _ts(q.page_start), _ts(q.page_end)]
    if q.models:
        params.append(list(q.models))
        where.append(f"model = ANY(${len(params)}::text[])")
    if q.api_key_ids:
        params.append(list(q.api_key_ids))
        where.append(f"api_key_id = ANY(${len(params)}::uuid[])")
    group = ", ".join(["bucket_start", *cols])
    sql = (
        f"SELECT {group}, sum(input_tokens)::bigint AS input_tokens, sum(output_tokens)::bigint AS output_tokens,"
        " sum(cached_tokens)::bigint AS cached_tokens, sum(requests)::bigint AS requests"
        f" FROM usage_rollups WHERE {' AND '.join(where)} GROUP BY {group} ORDER BY {group}"
    )
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        rows = await tx.fetch(sql, *params)
    results: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        key_id = r["api_key_id"] if "api_key_id" in cols else None
        results.setdefault(int(r["bucket_start"].timestamp()), []).append(
            {
                "object": "organization.usage.completions.result",
                "input_tokens": int(r["input_tokens"]),
                "output_tokens": int(r["output_tokens"]),
                "input_cached_tokens": int(r["cached_tokens"]),
                "input_audio_tokens": 0,
                "output_audio_tokens": 0,
                "num_model_requests": int(r["requests"]),
                "project_id": None,
                "user_id": None,
                "api_key_id": str(key_id) if key_id is not None else None,
                "model": r["model"] if "model" in cols else None,
                "batch": None,
            }
        )
    return _page(q, results)


def cost_dollars(tokens: int, cents_per_m: Decimal) -> Decimal:
    """The exact price in dollars of ``tokens`` at ``cents_per_m`` cents per 1M tokens."""
    return Decimal(tokens) * cents_per_m / _CENTS_PER_DOLLAR_PER_M


async def query_costs(db: Database, org_id: uuid.UUID, plan: Plan, q: BucketQuery) -> dict[str, Any]:
    """One page of ``org_id``'s costs (OpenAI's shape) at ``plan``'s prices, from the daily rollups."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        rows = await tx.fetch(
            "SELECT bucket_start, model, sum(input_tokens)::bigint AS input_tokens,"
            " sum(output_tokens)::bigint AS output_tokens FROM usage_rollups"
            " WHERE org_id = $1 AND width = '1d' AND bucket_start >= $2 AND bucket_start < $3"
            " GROUP BY bucket_start, model ORDER BY bucket_start, model",
            org_id,
            _ts(q.page_start),
            _ts(q.page_end),
        )
    by_item = "line_item" in q.group_by
    amounts: dict[int, dict[str | None, Decimal]] = {}
    for r in rows:
        price = plan.price(r["model"])
        bucket = amounts.setdefault(int(r["bucket_start"].timestamp()), {})
        for kind, tokens, per_m in (
            ("input", int(r["input_tokens"]), price.input_per_m),
            ("output", int(r["output_tokens"]), price.output_per_m),
        ):
            if tokens == 0:
                continue
            item = f"{r['model']}, {kind}" if by_item else None
            bucket[item] = bucket.get(item, Decimal(0)) + cost_dollars(tokens, per_m)
    results = {
        start: [
            {
                "object": "organization.costs.result",
                "amount": {"value": float(value), "currency": "usd"},
                "line_item": item,
                "project_id": None,
            }
            for item, value in items.items()
        ]
        for start, items in amounts.items()
    }
    return _page(q, results)


@dataclass(frozen=True, slots=True)
class MonthUsage:
    """One model's usage in a month."""

    model: str
    input_tokens: int
    output_tokens: int
    requests: int


async def month_usage(db: Database | Connection, org_id: uuid.UUID, start: datetime, end: datetime) -> list[MonthUsage]:
    """Per model (by name), ``org_id``'s usage in [start, end) (whole UTC days), from the daily rollups.

    ``db`` may be a connection in a transaction already acting for ``org_id``.
    """
    from bitnet_actor.stores.postgres import Database as _Db

    if isinstance(db, _Db):
        async with db.transaction(org_id=org_id, readonly=True) as tx:
            return await month_usage(tx, org_id, start, end)
    rows = await db.fetch(
        "SELECT model, sum(input_tokens)::bigint AS i, sum(output_tokens)::bigint AS o,"
        " sum(requests)::bigint AS n FROM usage_rollups"
        " WHERE org_id = $1 AND width = '1d' AND bucket_start >= $2 AND bucket_start < $3"
        " GROUP BY model ORDER BY model",
        org_id,
        start,
        end,
    )
    return [MonthUsage(r["model"], int(r["i"]), int(r["o"]), int(r["n"])) for r in rows]
