"""Monthly invoices, computed from the ledger's daily rollups and stored in ``invoices`` / ``invoice_lines``.

One invoice per organization and calendar month (UTC). Its lines:

1. the plan's base fee (``monthly_fee_cents``), when the plan has one;
2. per model (by name, alphabetically), one line for its input tokens and one for its output tokens (a
   line only when it has tokens), each priced at the organization's plan price for that model (the
   model's own price on the plan, else the plan's default), in cents per 1M tokens.

Rounding: each token line's exact amount, ``quantity * price_per_m / 1,000,000`` cents, is rounded half-up
to a whole cent (0.5 cents up to 1); the total is the sum of the lines' rounded amounts. Nothing else is
rounded, so the total equals the ledger: base fee + the sum, over models and input/output, of the rounded
price of the tokens the ledger recorded in the month.

Every token of the month is priced: a plan whose quota mode is ``overage`` keeps serving past its monthly
quota and the tokens past it are billed on the same lines at the same prices (a hard quota stops serving
instead).

An invoice is a draft until finalized: reading a draft recomputes it from the ledger (events that arrive
late, a plan changed mid-month, all show up). Finalizing (only a month that is over) recomputes it one last
time and fixes it: from then on a database trigger refuses any change to it or its lines, and finalizing
it again returns it unchanged. The plan is the organization's plan when computed (the ledger keeps no
plan history).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import TYPE_CHECKING, Any

from bitnet_actor.services.billing import plans
from bitnet_actor.services.billing.usage import month_usage
from bitnet_actor.services.errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    import uuid

    from bitnet_actor.services.billing.plans import Plan
    from bitnet_actor.services.billing.usage import MonthUsage
    from bitnet_actor.stores.postgres import Connection, Database, Record

__all__ = [
    "Invoice",
    "InvoiceLine",
    "compute_lines",
    "finalize_invoice",
    "get_invoice",
    "invoice_for_period",
    "line_cents",
    "list_invoices",
    "parse_period",
    "period_bounds",
]

_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One line: ``quantity`` tokens (1 for the base fee) at ``unit_price_per_m`` cents per 1M tokens."""

    line_no: int
    kind: str  # input_tokens | output_tokens | base_fee
    model: str
    description: str
    quantity: int
    unit_price_per_m: Decimal
    amount_cents: int

    def to_json(self) -> dict[str, Any]:
        """The line as the API shows it (the price as a decimal string)."""
        return {
            "line_no": self.line_no,
            "kind": self.kind,
            "model": self.model or None,
            "description": self.description,
            "quantity": self.quantity,
            "unit_price_per_m_cents": str(self.unit_price_per_m),
            "amount_cents": self.amount_cents,
        }


@dataclass(frozen=True, slots=True)
class Invoice:
    """An invoice and its lines."""

    id: uuid.UUID
    org_id: uuid.UUID
    period: date
    plan: str
    status: str
    currency: str
    subtotal_cents: int
    total_cents: int
    input_tokens: int
    output_tokens: int
    requests: int
    lines: tuple[InvoiceLine, ...]
    created_at: datetime
    updated_at: datetime
    finalized_at: datetime | None

    @property
    def period_label(self) -> str:
        """``YYYY-MM``."""
        return f"{self.period.year:04d}-{self.period.month:02d}"

    def to_json(self) -> dict[str, Any]:
        """The invoice as the API shows it."""
        start, end = period_bounds(self.period)
        return {
            "object": "invoice",
            "id": str(self.id),
            "org_id": str(self.org_id),
            "period": self.period_label,
            "period_start": int(start.timestamp()),
            "period_end": int(end.timestamp()),
            "plan": self.plan,
            "status": self.status,
            "currency": self.currency,
            "lines": [line.to_json() for line in self.lines],
            "subtotal_cents": self.subtotal_cents,
            "total_cents": self.total_cents,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "requests": self.requests,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "finalized_at": self.finalized_at.isoformat() if self.finalized_at else None,
        }


def parse_period(value: object, *, field: str = "period") -> date:
    """A month as ``YYYY-MM`` -> its first day.

    Raises:
        ValidationError: anything else.
    """
    match = _PERIOD.match(value) if isinstance(value, str) else None
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
        raise ValidationError(f"{field} must be a month as YYYY-MM, not {str(value)[:20]!r}", field=field)
    return date(int(match.group(1)), int(match.group(2)), 1)


def period_bounds(period: date) -> tuple[datetime, datetime]:
    """The month's [start, end) in UTC."""
    start = datetime(period.year, period.month, 1, tzinfo=UTC)
    end = datetime(period.year + period.month // 12, period.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _month_of(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


def line_cents(tokens: int, price_per_m: Decimal) -> int:
    """``tokens`` at ``price_per_m`` cents per 1M tokens, rounded half-up to a whole cent."""
    with localcontext() as ctx:
        ctx.prec = 60  # exact: tokens (< 2**63) x price (14 digits) never needs more
        exact = Decimal(tokens) * price_per_m / Decimal(1_000_000)
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def compute_lines(plan: Plan, usage: list[MonthUsage]) -> list[InvoiceLine]:
    """The lines of a month with ``usage`` on ``plan`` (see the module's docstring for the rules)."""
    lines: list[InvoiceLine] = []
    if plan.monthly_fee_cents:
        lines.append(
            InvoiceLine(1, "base_fee", "", f"{plan.display_name} plan, base fee", 1, Decimal(0), plan.monthly_fee_cents)
        )
    for row in sorted(usage, key=lambda u: u.model):
        price = plan.price(row.model)
        for kind, tokens, per_m in (
            ("input_tokens", row.input_tokens, price.input_per_m),
            ("output_tokens", row.output_tokens, price.output_per_m),
        ):
            if tokens:
                words = "input" if kind == "input_tokens" else "output"
                cents = line_cents(tokens, per_m)
                text = f"{row.model}: {words} tokens"
                lines.append(InvoiceLine(len(lines) + 1, kind, row.model, text, tokens, per_m, cents))
    return lines


def _line(r: Record) -> InvoiceLine:
    return InvoiceLine(
        r["line_no"], r["kind"], r["model"], r["description"], r["quantity"], r["unit_price_per_m"], r["amount_cents"]
    )


def _invoice(row: Record, lines: list[Record]) -> Invoice:
    return Invoice(
        id=row["id"],
        org_id=row["org_id"],
        period=row["period"],
        plan=row["plan"],
        status=row["status"],
        currency=row["currency"],
        subtotal_cents=row["subtotal_cents"],
        total_cents=row["total_cents"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        requests=row["requests"],
        lines=tuple(_line(r) for r in lines),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finalized_at=row["finalized_at"],
    )


async def _load(tx: Connection, invoice_id: uuid.UUID) -> Invoice:
    row = await tx.fetchrow("SELECT * FROM invoices WHERE id = $1", invoice_id)
    if row is None:
        raise NotFoundError("no such invoice")
    lines = await tx.fetch("SELECT * FROM invoice_lines WHERE invoice_id = $1 ORDER BY line_no", invoice_id)
    return _invoice(row, lines)


async def _write(db: Database, org_id: uuid.UUID, period: date, *, finalize: bool = False) -> Invoice:
    """Recompute the draft of ``period`` (creating it if need be) and, with ``finalize``, fix it.

    A finalized invoice is returned as stored.
    """
    plan = (await plans.org_profile(db, org_id)).plan
    start, end = period_bounds(period)
    async with db.transaction(org_id=org_id) as tx:
        await tx.execute(
            "INSERT INTO invoices (org_id, period, plan) VALUES ($1, $2, $3) ON CONFLICT (org_id, period) DO NOTHING",
            org_id,
            period,
            plan.name,
        )
        # The row lock serializes concurrent refreshes and finalizations of one invoice.
        row = await tx.fetchrow(
            "SELECT id, status FROM invoices WHERE org_id = $1 AND period = $2 FOR UPDATE", org_id, period
        )
        if row is None:  # pragma: no cover - the row was inserted or existed above
            raise NotFoundError("no such invoice")
        if row["status"] == "finalized":
            return await _load(tx, row["id"])
        usage = await month_usage(tx, org_id, start, end)
        lines = compute_lines(plan, usage)
        total = sum(line.amount_cents for line in lines)
        await tx.execute("DELETE FROM invoice_lines WHERE invoice_id = $1", row["id"])
        if lines:
            await tx.executemany(
                "INSERT INTO invoice_lines (invoice_id, line_no, org_id, kind, model, description, quantity,"
                " unit_price_per_m, amount_cents) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                [
                    (row["id"], ln.line_no, org_id, ln.kind, ln.model, ln.description, ln.quantity,
                     ln.unit_price_per_m, ln.amount_cents)
                    for ln in lines
                ],
            )  # fmt: skip
        await tx.execute(
            "UPDATE invoices SET plan = $2, subtotal_cents = $3, total_cents = $3, input_tokens = $4,"
            " output_tokens = $5, requests = $6, updated_at = now(),"
            " status = CASE WHEN $7 THEN 'finalized' ELSE status END,"
            " finalized_at = CASE WHEN $7 THEN now() ELSE finalized_at END WHERE id = $1",
            row["id"],
            plan.name,
            total,
            sum(u.input_tokens for u in usage),
            sum(u.output_tokens for u in usage),
            sum(u.requests for u in usage),
            finalize,
        )
        return await _load(tx, row["id"])


async def invoice_for_period(db: Database, org_id: uuid.UUID, period: date) -> Invoice:
    """The invoice of ``period``: as stored when finalized, else the draft recomputed (and stored) now."""
    return await _write(db, org_id, period)


async def finalize_invoice(db: Database, org_id: uuid.UUID, period: date, *, now: datetime | None = None) -> Invoice:
    """Compute ``period``'s invoice one last time and fix it; an invoice already final is returned as it is.

    Raises:
        ValidationError: the month is not over yet.
    """
    if period >= _month_of(now or datetime.now(UTC)):
        raise ValidationError("only a month that is over can be finalized", field="period")
    return await _write(db, org_id, period, finalize=True)


async def get_invoice(db: Database, org_id: uuid.UUID, invoice_id: uuid.UUID) -> Invoice:
    """One of ``org_id``'s invoices (a draft recomputed first).

    Raises:
        NotFoundError: no such invoice in ``org_id``.
    """
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        row = await tx.fetchrow("SELECT period, status FROM invoices WHERE id = $1 AND org_id = $2", invoice_id, org_id)
        if row is None:
            raise NotFoundError("no such invoice")
        if row["status"] == "finalized":
            return await _load(tx, invoice_id)
    return await _write(db, org_id, row["period"])


async def list_invoices(db: Database, org_id: uuid.UUID, *, now: datetime | None = None) -> list[Invoice]:
    """Every invoice of ``org_id``, newest month first: the stored ones, a draft for each month with usage
    and none yet, and the current month's draft, computed now (drafts are recomputed)."""
    current = _month_of(now or datetime.now(UTC))
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        stored = {
            r["period"]: r["status"]
            for r in await tx.fetch("SELECT period, status FROM invoices WHERE org_id = $1", org_id)
        }
        used = await tx.fetch(
            "SELECT DISTINCT date_trunc('month', bucket_start AT TIME ZONE 'UTC')::date AS period"
            " FROM usage_rollups WHERE org_id = $1 AND width = '1d'",
            org_id,
        )
    periods = {current} | set(stored) | {r["period"] for r in used}
    out = []
    for period in sorted(periods, reverse=True):
        if stored.get(period) == "finalized":
            async with db.transaction(org_id=org_id, readonly=True) as tx:
                invoice_id = await tx.fetchval(
                    "SELECT id FROM invoices WHERE org_id = $1 AND period = $2", org_id, period
                )
                out.append(await _load(tx, invoice_id))
        else:
            out.append(await _write(db, org_id, period))
    return out
