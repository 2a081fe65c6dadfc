"""Stripe: a customer per organization, a subscription per paid plan, and Billing meter events.

A thin layer over ``stripe.StripeClient``: every call is blocking, so it runs in a worker thread
(``trio.to_thread.run_sync``), with the SDK's own retries off (the outbox retries, with the same idempotency
key) and a socket timeout. Every POST carries an ``Idempotency-Key`` derived from what it does (the
organization, the price, the meter event's identifier), so a retry, or two replicas doing the same thing,
creates one object on Stripe's side.

Errors are classified at this boundary into :class:`PaymentProviderError`:

- retryable: no connection or a timeout, 429, 5xx, 409 and ``idempotency_error`` (a request with the same key
  still running), 401 and 403 (the key is wrong or lacks a permission: no row is at fault, and fixing the key
  lets them all through);
- permanent: any other 4xx (the same call would be refused again);
- a meter event whose ``identifier`` Stripe already has is not an error: :meth:`StripeBilling.send_meter_event`
  returns False (it was counted the first time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import stripe
import trio

from bitnet_actor.services.errors import PaymentProviderError

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime
    from uuid import UUID

    from bitnet_actor.stores.postgres import Connection, Database

__all__ = ["DUPLICATE_METER_EVENT_CODES", "METER_EVENT_NAMES", "MeterEvent", "StripeBilling", "classify"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Our outbox meters -> the Stripe meters' event names.
METER_EVENT_NAMES = {"input_tokens": "bitnet_input_tokens", "output_tokens": "bitnet_output_tokens"}
# Codes Stripe answers a meter event whose identifier it already has with (it was counted then).
DUPLICATE_METER_EVENT_CODES = frozenset({"duplicate_meter_event", "meter_event_duplicate"})
_STRIPE_CONCURRENCY = 8  # worker threads in Stripe calls at once, per process


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterEvent:
    """One Billing meter event: ``value`` of ``event_name`` for ``customer_id`` at ``timestamp``."""

    event_name: str
    customer_id: str
    value: int
    identifier: str
    timestamp: datetime


def classify(exc: stripe.StripeError) -> PaymentProviderError:
    """The service error for an SDK error (see the module docstring for what is retryable)."""
    status = exc.http_status
    code = exc.code
    if isinstance(exc, stripe.APIConnectionError) or status is None:
        return PaymentProviderError(f"Stripe unreachable: {exc.user_message or exc}", retryable=True)
    retryable = (
        status >= 500
        or status in (401, 403, 409, 429)
        or isinstance(exc, stripe.IdempotencyError | stripe.RateLimitError | stripe.AuthenticationError)
    )
    message = exc.user_message or str(exc)
    return PaymentProviderError(f"Stripe answered {status}: {message}", retryable=retryable, status=status, code=code)


class StripeBilling:
    """Customers, subscriptions and meter events on Stripe, for the outbox and the webhooks."""

    def __init__(self, api_key: str, *, api_base: str = "", timeout_s: float = 20.0) -> None:
        """Args:
        api_key: the secret key. api_base: another API address (a local Stripe server); empty: Stripe's.
        timeout_s: the socket timeout of each call.
        """
        bases: Any = {"api": api_base.rstrip("/")} if api_base else None
        self.client = stripe.StripeClient(
            api_key,
            base_addresses=bases,
            max_network_retries=0,  # our retries keep the idempotency key; the SDK's would too, but block a thread
            http_client=stripe.RequestsClient(timeout=timeout_s),
        )
        self._limiter = trio.CapacityLimiter(_STRIPE_CONCURRENCY)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run one blocking SDK call (``fn``, made with :attr:`client`) in a worker thread.

        Raises:
            PaymentProviderError: Stripe's error, classified (:func:`classify`).
        """
        return await self._call(fn)

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter, abandon_on_cancel=True)
        except stripe.StripeError as exc:
            raise classify(exc) from exc

    # Customers and subscriptions -------------------------------------------------------------------------

    async def ensure_customer(self, db: Database | Connection, org_id: UUID) -> str:
        """The Stripe customer of ``org_id``, created (once: the idempotency key is the organization) and stored
        in ``org_billing.stripe_customer_id`` when it has none. ``db`` may be a transaction acting for
        ``org_id`` (row-level security).

        Raises:
            PaymentProviderError: Stripe refused or could not be reached.
        """
        from bitnet_actor.stores.postgres import Database as _Db

        if isinstance(db, _Db):
            async with db.transaction(org_id=org_id) as tx:
                return await self.ensure_customer(tx, org_id)
        # The row locked first, so racing callers queue here and the later ones find the customer stored
        # (an upsert alone races on the stripe_customer_id unique index, which is not its arbiter).
        await db.execute("INSERT INTO org_billing (org_id) VALUES ($1) ON CONFLICT (org_id) DO NOTHING", org_id)
        found = await db.fetchval("SELECT stripe_customer_id FROM org_billing WHERE org_id = $1 FOR UPDATE", org_id)
        if found:
            return str(found)
        name = await db.fetchval("SELECT name FROM organizations WHERE id = $1", org_id)
        customer = await self._call(
            partial(
                self.client.v1.customers.create,
                params={"name": str(name or org_id), "metadata": {"org_id": str(org_id)}},
                options={"idempotency_key": f"bitnet-customer-{org_id}"},
            )
        )
        stored: str = await db.fetchval(
            "INSERT INTO org_billing (org_id, stripe_customer_id) VALUES ($1, $2) ON CONFLICT (org_id) DO UPDATE SET"
            " stripe_customer_id = coalesce(org_billing.stripe_customer_id, excluded.stripe_customer_id),"
            " updated_at = now() RETURNING stripe_customer_id",
            org_id,
            customer.id,
        )
        if stored == customer.id:
            log.info("Stripe customer %s created for organization %s", customer.id, org_id)
        return stored

    async def ensure_subscription(self, db: Database | Connection, org_id: UUID) -> str | None:
        """The Stripe subscription of ``org_id``'s plan when the plan is a paid one (it has a
        ``stripe_price_id``): created (once per organization and price) and stored in ``org_billing`` when the
        organization has none. None for a plan without a Stripe price.

        Raises:
            PaymentProviderError: Stripe refused or could not be reached.
        """
        from bitnet_actor.stores.postgres import Database as _Db

        if isinstance(db, _Db):
            async with db.transaction(org_id=org_id) as tx:
                return await self.ensure_subscription(tx, org_id)
        row = await db.fetchrow(
            "SELECT p.stripe_price_id, b.stripe_subscription_id, b.subscription_status"
            " FROM organizations o JOIN plans p ON p.name = o.plan LEFT JOIN org_billing b ON b.org_id = o.id"
            " WHERE o.id = $1",
            org_id,
        )
        if row is None or not row["stripe_price_id"]:
            return None
        if row["stripe_subscription_id"] and row["subscription_status"] not in ("canceled", "incomplete_expired"):
            return str(row["stripe_subscription_id"])
        customer = await self.ensure_customer(db, org_id)
        price = row["stripe_price_id"]
        subscription = await self._call(
            partial(
                self.client.v1.subscriptions.create,
                params={"customer": customer, "items": [{"price": price}], "metadata": {"org_id": str(org_id)}},
                options={"idempotency_key": f"bitnet-subscription-{org_id}-{price}"},
            )
        )
        await db.execute(
            "UPDATE org_billing SET stripe_subscription_id = $2, subscription_status = $3, updated_at = now()"
            " WHERE org_id = $1",
            org_id,
            subscription.id,
            subscription.status,
        )
        log.info("Stripe subscription %s (%s) created for organization %s", subscription.id, price, org_id)
        return str(subscription.id)

    # Meter events ----------------------------------------------------------------------------------------

    async def send_meter_event(self, event: MeterEvent) -> bool:
        """Send ``event`` (its identifier is also the Idempotency-Key). True: Stripe took it now; False: Stripe
        had it already (an earlier attempt got through).

        Raises:
            PaymentProviderError: refused (``retryable`` False) or to be retried.
        """
        params: Any = {
            "event_name": event.event_name,
            "payload": {"stripe_customer_id": event.customer_id, "value": str(event.value)},
            "identifier": event.identifier,
            "timestamp": int(event.timestamp.timestamp()),
        }
        try:
            await self._call(
                partial(
                    self.client.v1.billing.meter_events.create,
                    params=params,
                    options={"idempotency_key": f"bitnet-meter-{event.identifier}"},
                )
            )
        except PaymentProviderError as exc:
            if exc.code in DUPLICATE_METER_EVENT_CODES:
                return False
            raise
        return True
