"""Stripe's webhook events: verified with the SDK, each applied once, out-of-order safe.

:func:`verify` checks the ``Stripe-Signature`` header with ``stripe.Webhook.construct_event`` (HMAC-SHA256 of
``"<t>.<body>"`` under the endpoint's secret, the timestamp within ``tolerance_s``); nothing is read from an
event that fails it. :func:`apply_event` then, in one transaction acting for the event's organization (found
by its Stripe customer), records the event id in ``stripe_events`` (``ON CONFLICT DO NOTHING``: a replayed
event does nothing) and applies its effect:

- ``invoice.payment_failed``: the payment grace period starts (``grace_until`` = now + ``grace_days``; a
  second failure does not extend it); ``invoice.paid`` / ``invoice.payment_succeeded`` end it. When it runs
  out, the outbox's sweep moves the organization to the free plan;
- ``customer.subscription.created`` / ``updated`` / ``deleted``: the plan whose ``stripe_price_id`` is the
  subscription's price (canceled or deleted: the free plan). An event older than the last one applied
  (``org_billing.subscription_event_at``) is recorded and ignored, so reordered deliveries end in the newest
  state; the deletion of a subscription that is no longer the organization's current one is ignored too.

Other event types, and events about customers we do not know, are recorded and ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import stripe

from bitnet_actor.services.billing.plans import DEFAULT_PLAN, set_org_plan
from bitnet_actor.services.errors import ValidationError

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.stores.postgres import Connection, Database

__all__ = ["Applied", "WebhookSignatureError", "apply_event", "verify"]

log = logging.getLogger(__name__)

TOLERANCE_S = 300  # Stripe's own default: a signature older than five minutes is refused (replays)
_SUBSCRIPTION_EVENTS = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
)
_PAID_EVENTS = ("invoice.paid", "invoice.payment_succeeded")
_ENDED = ("canceled", "incomplete_expired")


class WebhookSignatureError(ValidationError):
    """The body is not a Stripe event signed with our endpoint's secret within the tolerance."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What one event did: ``effect`` is a short word for logs and the response."""

    event_id: str
    type: str
    org_id: UUID | None
    duplicate: bool
    effect: str


def verify(payload: bytes, signature: str | None, secret: str, *, tolerance_s: int = TOLERANCE_S) -> dict[str, Any]:
    """The event in ``payload`` once its ``Stripe-Signature`` checks out.

    Raises:
        WebhookSignatureError: no signature, a wrong or stale one, or a body that is not a Stripe event.
    """
    if not signature:
        raise WebhookSignatureError("the Stripe-Signature header is missing", field="Stripe-Signature")
    try:
        event = stripe.Webhook.construct_event(payload, signature, secret, tolerance_s)
    except stripe.SignatureVerificationError:
        raise WebhookSignatureError(
            "the Stripe-Signature header does not match the body (wrong secret, altered body or too old)",
            field="Stripe-Signature",
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise WebhookSignatureError("the body is not a Stripe event") from None
    data: dict[str, Any] = event.to_dict()
    if not isinstance(data.get("id"), str) or not isinstance(data.get("type"), str):
        raise WebhookSignatureError("the body is not a Stripe event")
    return data


def _customer_of(obj: dict[str, Any], type_: str) -> str | None:
    customer = obj.get("id") if type_.startswith("customer.") and obj.get("object") == "customer" else None
    customer = customer or obj.get("customer")
    if isinstance(customer, dict):  # expanded
        customer = customer.get("id")
    return customer if isinstance(customer, str) else None


async def apply_event(db: Database, event: dict[str, Any], *, grace_days: float) -> Applied:
    """Apply a verified event once (see the module docstring)."""
    event_id, type_ = str(event["id"]), str(event["type"])
    created = datetime.fromtimestamp(int(event.get("created") or 0), UTC)
    obj = (event.get("data") or {}).get("object") or {}
    customer = _customer_of(obj, type_)
    org_id: UUID | None = None
    if customer:
        org_id = await db.fetchval("SELECT bitnet_org_by_stripe_customer($1)", customer)
    async with db.transaction(org_id=org_id) as tx:
        new = await tx.fetchval(
            "INSERT INTO stripe_events (id, type, created, org_id) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (id) DO NOTHING RETURNING true",
            event_id,
            type_,
            created,
            org_id,
        )
        if not new:
            return Applied(event_id, type_, org_id, duplicate=True, effect="duplicate")
        if org_id is None:
            effect = "unknown customer" if customer else "ignored"
        elif type_ == "invoice.payment_failed":
            effect = await _payment_failed(tx, org_id, created, grace_days)
        elif type_ in _PAID_EVENTS:
            await tx.execute(
                "UPDATE org_billing SET payment_failed_at = NULL, grace_until = NULL, updated_at = now()"
                " WHERE org_id = $1",
                org_id,
            )
            effect = "grace cleared"
        elif type_ in _SUBSCRIPTION_EVENTS:
            effect = await _subscription(tx, org_id, type_, obj, created)
        else:
            effect = "ignored"
    log.info("Stripe event %s (%s): %s", event_id, type_, effect, extra={"org_id": str(org_id) if org_id else None})
    return Applied(event_id, type_, org_id, duplicate=False, effect=effect)


async def _payment_failed(tx: Connection, org_id: UUID, created: datetime, grace_days: float) -> str:
    until = datetime.now(UTC) + timedelta(days=grace_days)
    await tx.execute(
        "UPDATE org_billing SET payment_failed_at = coalesce(payment_failed_at, $2),"
        " grace_until = coalesce(grace_until, $3), updated_at = now() WHERE org_id = $1",
        org_id,
        created,
        until,
    )
    return "grace started"


async def _subscription(tx: Connection, org_id: UUID, type_: str, obj: dict[str, Any], created: datetime) -> str:
    row = await tx.fetchrow(
        "SELECT b.subscription_event_at, b.stripe_subscription_id, o.plan FROM org_billing b"
        " JOIN organizations o ON o.id = b.org_id WHERE b.org_id = $1 FOR UPDATE OF b",
        org_id,
    )
    if row is None:  # pragma: no cover - the customer lookup found this row
        return "ignored"
    if row["subscription_event_at"] is not None and created < row["subscription_event_at"]:
        return "stale"
    sub_id, status = obj.get("id"), obj.get("status")
    ended = type_ == "customer.subscription.deleted" or status in _ENDED
    if ended and row["stripe_subscription_id"] and sub_id != row["stripe_subscription_id"]:
        return "not the current subscription"
    plan: str | None = DEFAULT_PLAN
    if not ended:
        items = (obj.get("items") or {}).get("data") or []
        price = (items[0].get("price") or {}) if items else {}
        price_id = price.get("id") if isinstance(price, dict) else price
        plan = await tx.fetchval("SELECT name FROM plans WHERE stripe_price_id = $1 ORDER BY name LIMIT 1", price_id)
        if plan is None:
            log.warning(
                "Stripe subscription %s of organization %s has price %s, which no plan has", sub_id, org_id, price_id
            )
    await tx.execute(
        "UPDATE org_billing SET stripe_subscription_id = $2, subscription_status = $3, subscription_event_at = $4,"
        " updated_at = now() WHERE org_id = $1",
        org_id,
        sub_id,
        "canceled" if type_ == "customer.subscription.deleted" else status,
        created,
    )
    if plan is None:
        return "unknown price"
    if plan != row["plan"]:
        await set_org_plan(tx, org_id, plan)
        return f"plan {plan}"
    return "unchanged"
