"""Plans (rows of the ``plans`` table, seeded free / pro / enterprise) and what an organization runs under.

A plan sets the organization-wide requests and tokens per minute, the per-key defaults (requests, tokens,
concurrency), the monthly token quota (a hard stop, or overage billed), the prices (cents per 1M input and
output tokens, with per-model overrides) and the scheduler's share (weight, running sequences). An
organization may override its plan's limits and quota (``org_billing``), and a key its own limits
(``api_keys.rpm / tpm / max_concurrency``). :func:`org_profile` resolves all of it for one organization,
with the organization's own settings kept beside the overrides (``response_cache_ttl_s``: the response cache).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from bitnet_actor.services import audit
from bitnet_actor.services.errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from uuid import UUID

    from bitnet_actor.stores.postgres import Connection, Database, Record

__all__ = [
    "DEFAULT_PLAN",
    "LIMIT_FIELDS",
    "RESPONSE_CACHE_TTL_MAX_S",
    "ModelPrice",
    "OrgProfile",
    "Plan",
    "check_cache_ttl",
    "check_limit",
    "check_price",
    "get_plan",
    "key_limits",
    "list_plans",
    "org_profile",
    "set_org_overrides",
    "set_org_plan",
    "upsert_plan",
]

DEFAULT_PLAN = "free"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_MAX_PRICE = Decimal(100_000_000)  # cents per 1M tokens: a million dollars, far past any real price
_MAX_LIMIT = {
    "rpm": 100_000_000,
    "tpm": 100_000_000_000,
    "key_rpm": 100_000_000,
    "key_tpm": 100_000_000_000,
    "key_concurrency": 100_000,
    "monthly_token_quota": 10**15,
    "max_upload_bytes": 10**15,
}
LIMIT_FIELDS = tuple(k for k in _MAX_LIMIT if k != "max_upload_bytes")  # what organizations may override
RESPONSE_CACHE_TTL_MAX_S = 7 * 24 * 3600
"""The longest an organization may keep cached responses (seconds; migration 0010 checks it too)."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Cents per 1M input and output tokens."""

    input_per_m: Decimal
    output_per_m: Decimal


@dataclass(frozen=True, slots=True)
class Plan:
    """One row of ``plans`` with its per-model prices. Limits are per minute; None: unlimited."""

    name: str
    display_name: str
    rpm: int | None
    tpm: int | None
    key_rpm: int | None
    key_tpm: int | None
    key_concurrency: int | None
    monthly_token_quota: int | None
    quota_mode: str
    input_price_per_m: Decimal
    output_price_per_m: Decimal
    monthly_fee_cents: int
    weight: int
    max_running: int
    stripe_price_id: str | None = None
    custom: bool = True
    model_prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    max_upload_bytes: int | None = None  # None: no limit
    max_active_jobs: int = 4  # unfinished conversion jobs at once

    def price(self, model: str) -> ModelPrice:
        """The price of ``model`` on this plan (its own, else the plan's default)."""
        return self.model_prices.get(model) or ModelPrice(self.input_price_per_m, self.output_price_per_m)

    def to_json(self) -> dict[str, Any]:
        """The plan as the API shows it (prices as decimal strings: cents per 1M tokens)."""
        return {
            "object": "plan",
            "name": self.name,
            "display_name": self.display_name,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "key_rpm": self.key_rpm,
            "key_tpm": self.key_tpm,
            "key_concurrency": self.key_concurrency,
            "monthly_token_quota": self.monthly_token_quota,
            "quota_mode": self.quota_mode,
            "input_price_per_m_cents": str(self.input_price_per_m),
            "output_price_per_m_cents": str(self.output_price_per_m),
            "monthly_fee_cents": self.monthly_fee_cents,
            "model_prices": {
                m: {"input_price_per_m_cents": str(p.input_per_m), "output_price_per_m_cents": str(p.output_per_m)}
                for m, p in sorted(self.model_prices.items())
            },
            "weight": self.weight,
            "max_running": self.max_running,
            "max_upload_bytes": self.max_upload_bytes,
            "max_active_jobs": self.max_active_jobs,
            "custom": self.custom,
        }


@dataclass(frozen=True, slots=True)
class OrgProfile:
    """What an organization's requests run under: its plan with the organization's overrides applied."""

    org_id: UUID
    plan: Plan
    rpm: int | None
    tpm: int | None
    key_rpm: int | None
    key_tpm: int | None
    key_concurrency: int | None
    monthly_token_quota: int | None
    quota_mode: str
    stripe_customer_id: str | None = None
    region: str = "default"
    """The organization's home region (its inference runs on that region's replicas)."""
    response_cache_ttl_s: int | None = None
    """How long deterministic responses stay cached (None: the response cache is off)."""

    @property
    def weight(self) -> int:
        """Requests admitted per round-robin turn."""
        return self.plan.weight

    @property
    def max_running(self) -> int:
        """Running sequences at most."""
        return self.plan.max_running


def _plan(row: Record, prices: Mapping[str, ModelPrice]) -> Plan:
    return Plan(
        name=row["name"],
        display_name=row["display_name"],
        rpm=row["rpm"],
        tpm=row["tpm"],
        key_rpm=row["key_rpm"],
        key_tpm=row["key_tpm"],
        key_concurrency=row["key_concurrency"],
        monthly_token_quota=row["monthly_token_quota"],
        quota_mode=row["quota_mode"],
        input_price_per_m=row["input_price_per_m"],
        output_price_per_m=row["output_price_per_m"],
        monthly_fee_cents=row["monthly_fee_cents"],
        weight=row["weight"],
        max_running=row["max_running"],
        stripe_price_id=row["stripe_price_id"],
        custom=row["custom"],
        model_prices=prices,
        max_upload_bytes=row["max_upload_bytes"],
        max_active_jobs=row["max_active_jobs"],
    )


async def _prices(conn: Connection | Database, plan: str) -> dict[str, ModelPrice]:
    rows = await conn.fetch(
        "SELECT model, input_price_per_m, output_price_per_m FROM plan_model_prices WHERE plan = $1", plan
    )
    return {r["model"]: ModelPrice(r["input_price_per_m"], r["output_price_per_m"]) for r in rows}


async def get_plan(db: Database | Connection, name: str) -> Plan:
    """The plan ``name``.

    Raises:
        NotFoundError: no such plan.
    """
    row = await db.fetchrow("SELECT * FROM plans WHERE name = $1", name)
    if row is None:
        raise NotFoundError(f"there is no plan {name!r}")
    return _plan(row, await _prices(db, name))


async def list_plans(db: Database) -> list[Plan]:
    """Every plan, the built-in ones first."""
    rows = await db.fetch("SELECT * FROM plans ORDER BY custom, name")
    return [_plan(r, await _prices(db, r["name"])) for r in rows]


async def org_profile(db: Database, org_id: UUID) -> OrgProfile:
    """The plan and overrides of ``org_id`` (the default plan's when the organization does not exist)."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        row = await tx.fetchrow(
            "SELECT o.plan, b.rpm, b.tpm, b.key_rpm, b.key_tpm, b.key_concurrency, b.monthly_token_quota,"
            " b.quota_mode, b.stripe_customer_id, o.region, b.response_cache_ttl_s"
            " FROM organizations o LEFT JOIN org_billing b ON b.org_id = o.id WHERE o.id = $1",
            org_id,
        )
        plan = await get_plan(tx, row["plan"] if row else DEFAULT_PLAN)

    def pick(name: str) -> Any:
        value = row[name] if row else None
        return value if value is not None else getattr(plan, name)

    return OrgProfile(
        org_id=org_id,
        plan=plan,
        rpm=pick("rpm"),
        tpm=pick("tpm"),
        key_rpm=pick("key_rpm"),
        key_tpm=pick("key_tpm"),
        key_concurrency=pick("key_concurrency"),
        monthly_token_quota=pick("monthly_token_quota"),
        quota_mode=pick("quota_mode"),
        stripe_customer_id=row["stripe_customer_id"] if row else None,
        region=row["region"] if row else "default",
        response_cache_ttl_s=row["response_cache_ttl_s"] if row else None,
    )


def check_limit(name: str, value: object) -> int | None:
    """A limit as given by a person (None or a whole number in range).

    Raises:
        ValidationError: negative, fractional, not a number or absurdly large.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be a whole number or null", field=name)
    top = _MAX_LIMIT.get(name, 100_000_000)
    if not 0 <= value <= top:
        raise ValidationError(f"{name} must be between 0 and {top}, not {value}", field=name)
    return value


def key_limits(profile: OrgProfile, requested: Mapping[str, object]) -> dict[str, int]:
    """A new key's own limits (``rpm``, ``tpm``, ``max_concurrency``; absent or None: the plan's), checked.

    They may tighten ``profile``'s per-key limits, never loosen them (an operator raises them with
    ``bitnet-actor admin create-key``).

    Raises:
        ValidationError: a malformed value, or one past the plan's per-key limit (``field`` names it).
    """
    caps = {"rpm": profile.key_rpm, "tpm": profile.key_tpm, "max_concurrency": profile.key_concurrency}
    out: dict[str, int] = {}
    for name, cap in caps.items():
        if requested.get(name) is None:
            continue
        try:
            value = check_limit("key_concurrency" if name == "max_concurrency" else name, requested[name])
        except ValidationError as exc:
            raise ValidationError(str(exc).replace("key_concurrency", name), field=name) from None
        assert value is not None
        if cap is not None and value > cap:
            raise ValidationError(f"{name} may not exceed the plan's per-key limit of {cap}", field=name)
        out[name] = value
    return out


def check_cache_ttl(value: object) -> int | None:
    """A response cache lifetime as given by a person: None or 0 (off), else 1 s .. 7 days.

    Raises:
        ValidationError: not a whole number, negative or longer than 7 days.
    """
    name = "response_cache_ttl_s"
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= RESPONSE_CACHE_TTL_MAX_S:
        raise ValidationError(
            f"{name} must be a whole number of seconds between 1 and {RESPONSE_CACHE_TTL_MAX_S}"
            " (7 days), or null / 0 to turn the response cache off",
            field=name,
        )
    return value


def check_price(name: str, value: object) -> Decimal:
    """A price in cents per 1M tokens (a number or decimal string, >= 0, at most 4 decimals).

    Raises:
        ValidationError: negative, not a number, too precise or absurdly large.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValidationError(f"{name} must be a number of cents per 1M tokens", field=name)
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise ValidationError(f"{name} must be a number of cents per 1M tokens, not {value!r}", field=name) from None
    if not price.is_finite() or price < 0 or price > _MAX_PRICE:
        raise ValidationError(f"{name} must be between 0 and {_MAX_PRICE} cents per 1M tokens", field=name)
    if price != price.quantize(Decimal("0.0001")):
        raise ValidationError(f"{name} has more than 4 decimals", field=name)
    return price


async def upsert_plan(db: Database, name: str, values: Mapping[str, Any]) -> Plan:
    """Create or change the plan ``name`` (``values``: any of the plan's columns, ``model_prices`` a mapping
    model -> {input_price_per_m, output_price_per_m}). Needs the tables' owner (the service role only reads
    plans): the admin CLI calls it.

    Raises:
        ValidationError: a bad name, limit or price.
    """
    if not _NAME.match(name):
        raise ValidationError("a plan name is 1-63 lowercase letters, digits, '-' or '_'", field="plan")
    cols: dict[str, Any] = {}
    for key, value in values.items():
        if key in LIMIT_FIELDS or key == "max_upload_bytes":
            cols[key] = check_limit(key, value)
        elif key in ("input_price_per_m", "output_price_per_m"):
            cols[key] = check_price(key, value)
        elif key == "quota_mode":
            if value not in ("hard", "overage"):
                raise ValidationError("quota_mode must be hard or overage", field=key)
            cols[key] = value
        elif key in ("weight", "max_running", "monthly_fee_cents", "max_active_jobs"):
            top = {"weight": 100, "max_running": 4096, "monthly_fee_cents": 100_000_000_000, "max_active_jobs": 1000}[
                key
            ]
            low = 0 if key == "monthly_fee_cents" else 1
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= top:
                raise ValidationError(f"{key} must be a whole number between {low} and {top}", field=key)
            cols[key] = value
        elif key in ("display_name", "stripe_price_id"):
            if value is not None and (not isinstance(value, str) or not 1 <= len(value) <= 100):
                raise ValidationError(f"{key} must be 1 to 100 characters", field=key)
            cols[key] = value
        elif key != "model_prices":
            raise ValidationError(f"unknown plan field {key!r}", field=key)
    prices = values.get("model_prices") or {}
    checked_prices = {
        str(model): (
            check_price("input_price_per_m", p.get("input_price_per_m", 0)),
            check_price("output_price_per_m", p.get("output_price_per_m", 0)),
        )
        for model, p in dict(prices).items()
    }
    async with db.transaction() as tx:
        exists = await tx.fetchval("SELECT 1 FROM plans WHERE name = $1", name)
        if exists:
            if cols:
                sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(cols))
                await tx.execute(f"UPDATE plans SET {sets} WHERE name = $1", name, *cols.values())
        else:
            cols.setdefault("display_name", name)
            names = ", ".join(["name", *cols])
            marks = ", ".join(f"${i + 1}" for i in range(len(cols) + 1))
            await tx.execute(f"INSERT INTO plans ({names}) VALUES ({marks})", name, *cols.values())
        for model, (inp, out) in checked_prices.items():
            await tx.execute(
                "INSERT INTO plan_model_prices (plan, model, input_price_per_m, output_price_per_m)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (plan, model) DO UPDATE SET"
                " input_price_per_m = excluded.input_price_per_m, output_price_per_m = excluded.output_price_per_m",
                name,
                model,
                inp,
                out,
            )
        return await get_plan(tx, name)


async def set_org_plan(
    db: Database | Connection, org_id: UUID, plan: str, *, actor: audit.Actor = audit.SYSTEM_ACTOR
) -> None:
    """Put ``org_id`` on ``plan`` (and end any payment grace period); the change is in the audit log.

    ``db`` may be a connection in a transaction already acting for ``org_id``. Running replicas apply it
    when they next refresh the organization (``actors.tenant``: within a minute).

    Raises:
        NotFoundError: no such plan or organization.
    """
    from bitnet_actor.stores.postgres import Database as _Db

    if isinstance(db, _Db):
        async with db.transaction(org_id=org_id) as tx:
            await set_org_plan(tx, org_id, plan, actor=actor)
        return
    if not await db.fetchval("SELECT 1 FROM plans WHERE name = $1", plan):
        raise NotFoundError(f"there is no plan {plan!r}")
    before = await db.fetchval("SELECT plan FROM organizations WHERE id = $1", org_id)
    if before is None:
        raise NotFoundError("no such organization")
    await db.execute("UPDATE organizations SET plan = $2 WHERE id = $1", org_id, plan)
    await audit.record(
        db,
        org_id=org_id,
        actor=actor,
        action="billing.plan_changed",
        target_type="organization",
        target_id=org_id,
        details={"from": before, "to": plan},
    )
    await db.execute(
        "UPDATE org_billing SET payment_failed_at = NULL, grace_until = NULL, updated_at = now() WHERE org_id = $1",
        org_id,
    )


async def set_org_overrides(
    db: Database, org_id: UUID, values: Mapping[str, Any], *, actor: audit.Actor = audit.SYSTEM_ACTOR
) -> None:
    """Override ``org_id``'s plan limits / quota (``values``: any of LIMIT_FIELDS and ``quota_mode``; None
    clears an override) and set its response cache (``response_cache_ttl_s``: seconds, None or 0: off).

    Raises:
        ValidationError: a bad value.
    """
    cols: dict[str, Any] = {}
    for key, value in values.items():
        if key in LIMIT_FIELDS:
            cols[key] = check_limit(key, value)
        elif key == "quota_mode":
            if value not in ("hard", "overage", None):
                raise ValidationError("quota_mode must be hard or overage", field=key)
            cols[key] = value
        elif key == "response_cache_ttl_s":
            cols[key] = check_cache_ttl(value)
        else:
            raise ValidationError(f"unknown override {key!r}", field=key)
    if not cols:
        return
    names = ", ".join(cols)
    marks = ", ".join(f"${i + 2}" for i in range(len(cols)))
    updates = ", ".join(f"{c} = excluded.{c}" for c in cols)
    async with db.transaction(org_id=org_id) as tx:
        await tx.execute(
            f"INSERT INTO org_billing (org_id, {names}) VALUES ($1, {marks})"
            f" ON CONFLICT (org_id) DO UPDATE SET {updates}, updated_at = now()",
            org_id,
            *cols.values(),
        )
        await audit.record(
            tx,
            org_id=org_id,
            actor=actor,
            action="billing.limits_changed",
            target_type="organization",
            target_id=org_id,
            details=dict(cols),
        )
