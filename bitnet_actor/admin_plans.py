"""Operator commands for plans and limits: ``bitnet-actor admin plans | edit-plan | set-plan | set-limits``.

Plans are rows of the ``plans`` table (see :mod:`bitnet_actor.services.billing.plans`); the service role only
reads them, so ``edit-plan`` connects as the tables' owner. Every value goes through the same checks as the
API's (negative, fractional or absurd limits and prices are refused with a message naming the field).
Running replicas pick a change up when they next refresh the organization (within a minute).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import trio_asyncio

from bitnet_actor.services import audit, tenancy
from bitnet_actor.services.billing import plans
from bitnet_actor.services.errors import ValidationError
from bitnet_actor.stores import open_database_only

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from bitnet_actor.config import Settings

__all__ = ["edit_plan", "list_plans", "parse_limit", "parse_model_prices", "set_limits", "set_plan"]

ADMIN_ACTOR = audit.Actor(user_agent="bitnet-actor admin")
UNLIMITED = ("none", "unlimited", "null")


def parse_limit(name: str, raw: str) -> int | None:
    """A limit from the command line: a whole number, or ``none`` (unlimited / back to the plan's).

    Raises:
        ValidationError: anything else.
    """
    text = raw.strip().lower().replace("_", "")
    if text in UNLIMITED:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValidationError(f"--{name.replace('_', '-')} must be a whole number or 'none', not {raw!r}") from None
    return plans.check_limit(name, value)


def parse_model_prices(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``MODEL=INPUT,OUTPUT`` (cents per 1M tokens) pairs, as :func:`plans.upsert_plan` takes them.

    Raises:
        ValidationError: a malformed pair or price.
    """
    out: dict[str, dict[str, str]] = {}
    for item in items:
        model, sep, prices = item.partition("=")
        inp, comma, outp = prices.partition(",")
        if not sep or not comma or not model.strip():
            raise ValidationError(f"--model-price takes MODEL=INPUT,OUTPUT (cents per 1M tokens), not {item!r}")
        out[model.strip()] = {
            "input_price_per_m": str(plans.check_price("input_price_per_m", inp.strip())),
            "output_price_per_m": str(plans.check_price("output_price_per_m", outp.strip())),
        }
    return out


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


async def list_plans(settings: Settings) -> str:
    """The plans as a table ('-' is unlimited; prices in cents per 1M tokens)."""
    async with trio_asyncio.open_loop(), open_database_only(settings) as db:
        rows = await plans.list_plans(db)
    header = ("plan", "rpm", "tpm", "key rpm", "key tpm", "key conc", "quota/month", "mode", "in c/1M",
              "out c/1M", "fee c/month", "models priced")  # fmt: skip
    return _table(
        [
            (
                p.name,
                p.rpm,
                p.tpm,
                p.key_rpm,
                p.key_tpm,
                p.key_concurrency,
                p.monthly_token_quota,
                p.quota_mode,
                p.input_price_per_m,
                p.output_price_per_m,
                p.monthly_fee_cents,
                len(p.model_prices),
            )
            for p in rows
        ],
        header,
    )


async def edit_plan(settings: Settings, name: str, values: Mapping[str, Any]) -> str:
    """Create or change plan ``name``; return it as JSON."""
    if not values:
        raise ValidationError("edit-plan needs at least one value to set (see --help)")
    async with trio_asyncio.open_loop(), open_database_only(settings, as_owner=True) as db:
        plan = await plans.upsert_plan(db, name, values)
    return json.dumps(plan.to_json(), indent=2)


async def set_plan(settings: Settings, *, org: str, plan: str) -> str:
    """Put the organization called ``org`` on ``plan``."""
    async with trio_asyncio.open_loop(), open_database_only(settings) as db:
        org_id = await tenancy.org_id_by_name(db, org)
        await plans.set_org_plan(db, org_id, plan, actor=ADMIN_ACTOR)
    return f"organization {org} is on plan {plan}"


async def set_limits(settings: Settings, *, org: str, values: Mapping[str, Any]) -> str:
    """Override the organization's plan limits (None clears an override); return the effective limits."""
    if not values:
        raise ValidationError("set-limits needs at least one limit to set (see --help)")
    async with trio_asyncio.open_loop(), open_database_only(settings) as db:
        org_id = await tenancy.org_id_by_name(db, org)
        await plans.set_org_overrides(db, org_id, values, actor=ADMIN_ACTOR)
        profile = await plans.org_profile(db, org_id)
    limits = {name: getattr(profile, name) for name in (*plans.LIMIT_FIELDS, "quota_mode", "response_cache_ttl_s")}
    return json.dumps({"organization": org, "plan": profile.plan.name, "limits": limits}, indent=2)
