"""Operator commands: ``bitnet-actor admin ...`` and ``bitnet-actor audit verify``.

They use the same configuration as ``serve``: the configured PostgreSQL, or the embedded one of the same
data dir (joining it while a server runs, starting it for the command otherwise). Key revocation is
announced over Redis so running replicas drop the key from their caches at once.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import trio_asyncio

from bitnet_actor.services import api_keys, audit, tenancy
from bitnet_actor.services.billing import invoices, usage
from bitnet_actor.services.errors import NotFoundError, ValidationError
from bitnet_actor.stores import open_database_only, region_stores
from bitnet_actor.stores.embedded import EmbeddedRedis, redis_answers
from bitnet_actor.stores.redis import open_redis

if TYPE_CHECKING:
    from typing import TextIO

    from bitnet_actor.config import Settings
    from bitnet_actor.services.models.relocation import ObjectMoved
    from bitnet_actor.stores.redis import RedisStore

__all__ = ["create_key", "create_org", "invoice_json", "revoke_key", "set_region", "usage_table", "verify_audit"]

log = logging.getLogger(__name__)


def _link(settings: Settings, path: str, token: str) -> str:
    return f"{settings.base_url}{path}?token={token}"


async def create_org(settings: Settings, *, name: str, owner_email: str) -> str:
    """Create an organization and its owner (if new); return the text to print."""
    async with trio_asyncio.open_loop(), open_database_only(settings) as db:
        org, _, token = await tenancy.admin_create_org(db, name=name, owner_email=owner_email, region=settings.region)
    lines = [f"created organization {org.name} ({org.id}) owned by {owner_email}"]
    if token:
        lines.append(f"one-time link to set the owner's password (24 h): {_link(settings, '/password/set', token)}")
    return "\n".join(lines)


def _scopes(raw: str) -> list[str]:
    scopes = [s.strip() for s in raw.split(",") if s.strip()]
    if not scopes:
        raise ValidationError("--scopes needs at least one scope", field="scopes")
    return scopes


async def create_key(
    settings: Settings,
    *,
    org: str,
    name: str,
    scopes: str,
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrency: int | None = None,
) -> str:
    """Create an API key (with its own limits, if given); return the key (the only thing printed)."""
    async with trio_asyncio.open_loop(), open_database_only(settings) as db:
        org_id = await tenancy.org_id_by_name(db, org)
        secret, _ = await api_keys.create_key(
            db,
            org_id=org_id,
            name=name,
            scopes=_scopes(scopes),
            actor=audit.Actor(user_agent="bitnet-actor admin"),
            rpm=rpm,
            tpm=tpm,
            max_concurrency=max_concurrency,
        )
    return secret


async def revoke_key(settings: Settings, *, org: str, name: str) -> str:
    """Revoke every active key called ``name`` in ``org``; announce it to running replicas."""
    async with trio_asyncio.open_loop(), AsyncExitStack() as stack:
        db = await stack.enter_async_context(open_database_only(settings))
        org_id = await tenancy.org_id_by_name(db, org)
        keys = [k for k in await api_keys.list_keys(db, org_id) if k.name == name and k.revoked_at is None]
        if not keys:
            raise NotFoundError(f"organization {org!r} has no active key named {name!r}")
        redis = await _running_redis(settings, stack)
        actor = audit.Actor(user_agent="bitnet-actor admin")
        for key in keys:
            if redis is not None:
                await api_keys.revoke_key(db, redis, org_id=org_id, key_id=key.id, actor=actor)
            else:
                await api_keys.revoke_key_quietly(db, org_id=org_id, key_id=key.id, actor=actor)
    return f"revoked {len(keys)} key{'s' if len(keys) != 1 else ''} named {name} in {org}"


async def set_region(
    settings: Settings, *, org: str, region: str, move_data: bool = False, out: TextIO = sys.stderr
) -> str:
    """Move an organization's home region (refused while it has stored models, unless ``move_data``: then its
    objects move to the new region's store first, a progress line per object on ``out``); return the summary.
    """
    from bitnet_actor.services import regions
    from bitnet_actor.services.models.encrypted import EncryptedObjects
    from bitnet_actor.services.models.keys import LocalKeyProvider

    def progress(moved: ObjectMoved) -> None:
        how = "copied" if moved.copied else "already there"
        print(
            f"[{moved.index}/{moved.total}] {moved.key} ({moved.size} bytes): "
            f"{moved.source or 'default'} -> {moved.target or 'default'} store ({how})",
            file=out,
            flush=True,
        )

    async with trio_asyncio.open_loop(), open_database_only(settings) as db, AsyncExitStack() as stack:
        org_id = await tenancy.org_id_by_name(db, org)
        objects = None
        if move_data:
            stores = region_stores(settings)
            stack.push_async_callback(stores.aclose)
            objects = EncryptedObjects(stores, db, LocalKeyProvider.from_settings(settings))
        change = await regions.set_region(db, org_id, region, objects=objects, on_object=progress)
    moved = ""
    if change.moved is not None:
        cleaned = f", {change.moved.cleaned} leftover old copies deleted" if change.moved.cleaned else ""
        moved = f"; moved {change.moved.moved} object(s), {change.moved.bytes} bytes{cleaned}"
    if change.before == change.after:
        return f"organization {org} is already in region {change.after}{moved}"
    return (
        f"moved organization {org} from region {change.before} to {change.after}{moved}"
        " (replicas follow within a minute)"
    )


async def _running_redis(settings: Settings, stack: AsyncExitStack) -> RedisStore | None:
    # Configured Redis: replicas listen there. Embedded: only a running server's Redis has listeners.
    if settings.redis_url:
        return await stack.enter_async_context(open_redis(settings.redis_url))
    embedded = EmbeddedRedis(settings.data_dir)
    if embedded.socket.exists() and redis_answers(embedded.socket):
        return await stack.enter_async_context(open_redis(embedded.url))
    log.info("no running server on this data dir: nothing to notify")
    return None


async def verify_audit(settings: Settings) -> tuple[bool, str]:
    """Check the audit log's hash chains; return (intact, text to print)."""
    async with trio_asyncio.open_loop(), open_database_only(settings, as_owner=True) as db:
        checked, bad = await audit.verify(db)
    if bad is None:
        return True, f"audit log intact: {checked} rows verified"
    return False, (
        f"audit log tampered: first bad row id={bad.row_id} (organization {bad.org_id}, seq {bad.seq}): {bad.reason}"
    )


# ------------------------------------------------------------------ usage and invoices


def _when(value: str | None, *, flag: str) -> datetime | None:
    """``--start`` / ``--end``: an ISO 8601 date or time (UTC when it names no zone)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"{flag} must be an ISO 8601 date or time, not {value!r}", field=flag) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def usage_table(
    settings: Settings, *, org: str, start: str | None = None, end: str | None = None, width: str = "1d"
) -> str:
    """The organization's usage per bucket and model as a text table (default: the width's default page,
    ending now)."""
    if width not in usage.WIDTHS:
        raise ValidationError(f"--width must be one of {', '.join(usage.WIDTHS)}, not {width!r}", field="width")
    seconds, default_limit, max_limit = usage.WIDTHS[width]
    end_at = _when(end, flag="--end") or datetime.now(UTC)
    start_at = _when(start, flag="--start") or end_at - timedelta(seconds=seconds * default_limit)
    if end_at <= start_at:
        raise ValidationError("--end must be after --start", field="end")
    args = {
        "start_time": [str(int(start_at.timestamp()))],
        "end_time": [str(-(-int(end_at.timestamp() * 1_000_000) // 1_000_000))],
        "bucket_width": [width],
        "group_by": ["model"],
        "limit": [str(max_limit)],
    }
    rows: list[tuple[str, str, int, int, int]] = []
    async with trio_asyncio.open_loop(), open_database_only(settings) as db:
        org_id = await tenancy.org_id_by_name(db, org)
        page: str | None = None
        while True:
            query = usage.parse_usage_query({**args, **({"page": [page]} if page else {})})
            answer = await usage.query_usage(db, org_id, query)
            for bucket in answer["data"]:
                stamp = datetime.fromtimestamp(bucket["start_time"], UTC).strftime("%Y-%m-%d %H:%M")
                for r in bucket["results"]:
                    rows.append((stamp, r["model"], r["input_tokens"], r["output_tokens"], r["num_model_requests"]))
            page = answer["next_page"]
            if page is None:
                break
    span = f"{start_at.isoformat()} to {end_at.isoformat()}"
    if not rows:
        return f"no usage in {org} from {span} ({width} buckets)"
    header = ("bucket (UTC)", "model", "input_tokens", "output_tokens", "requests")
    totals = ("total", "", sum(r[2] for r in rows), sum(r[3] for r in rows), sum(r[4] for r in rows))
    table = [header, *[tuple(map(str, r)) for r in rows], tuple(map(str, totals))]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def fmt(row: tuple[str, ...]) -> str:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [f"usage of {org} from {span} ({width} buckets)", fmt(header), rule]
    lines += [fmt(row) for row in table[1:-1]] + [rule, fmt(table[-1])]
    return "\n".join(lines)


async def invoice_json(settings: Settings, *, org: str, period: str, finalize: bool = False) -> str:
    """The organization's invoice of ``period`` (YYYY-MM) as JSON; with ``finalize``, fixed first (only a
    month that is over; finalizing again changes nothing)."""
    month = invoices.parse_period(period, field="period")
    async with trio_asyncio.open_loop(), open_database_only(settings) as db:
        org_id = await tenancy.org_id_by_name(db, org)
        if finalize:
            found = await invoices.finalize_invoice(db, org_id, month)
        else:
            found = await invoices.invoice_for_period(db, org_id, month)
    return json.dumps(found.to_json(), indent=2)
