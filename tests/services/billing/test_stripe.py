"""The Stripe client over the local Stripe server (tests/stripe_server.py), through the ``stripe`` package:
customers and subscriptions made once per organization, meter events taken once per identifier, the
Idempotency-Key replayed, and the error classes (retryable: down, 503, 429-like; permanent: other 4xx)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
import stripe
import trio

from bitnet_actor.services.billing import plans
from bitnet_actor.services.billing.stripe import MeterEvent, StripeBilling, classify
from bitnet_actor.services.errors import PaymentProviderError
from tests.stripe_server import StripeServer, decode_form

if TYPE_CHECKING:
    from collections.abc import Iterator

    from bitnet_actor.stores.postgres import Database


@pytest.fixture
def server() -> Iterator[StripeServer]:
    with StripeServer() as s:
        yield s


def billing(server: StripeServer, **kw: object) -> StripeBilling:
    return StripeBilling(server.api_key, api_base=server.url, timeout_s=5, **kw)  # type: ignore[arg-type]


async def new_org(db: Database, plan: str = "free") -> uuid.UUID:
    org: uuid.UUID = await db.fetchval(
        "INSERT INTO organizations (name, plan) VALUES ($1, $2) RETURNING id", f"s-{uuid.uuid4().hex[:8]}", plan
    )
    return org


def event(customer: str, value: int = 7, identifier: str | None = None) -> MeterEvent:
    return MeterEvent(
        event_name="bitnet_input_tokens",
        customer_id=customer,
        value=value,
        identifier=identifier or uuid.uuid4().hex,
        timestamp=datetime.now(UTC) - timedelta(hours=1),
    )


def test_the_form_decoder_reads_stripe_brackets() -> None:
    assert decode_form("a=1&payload[value]=2&items[0][price]=p&items[1][price]=q&expand[]=x") == {
        "a": "1",
        "payload": {"value": "2"},
        "items": [{"price": "p"}, {"price": "q"}],
        "expand": ["x"],
    }


async def test_a_customer_is_created_once_per_organization_even_by_racing_callers(
    db: Database, server: StripeServer
) -> None:
    org = await new_org(db)
    client = billing(server)
    found: list[str] = []

    async def ensure() -> None:
        found.append(await client.ensure_customer(db, org))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(ensure)
    assert len(set(found)) == 1
    assert list(server.customers) == found[:1]
    assert server.customers[found[0]]["metadata"] == {"org_id": str(org)}
    stored = await db.fetchval("SELECT stripe_customer_id FROM org_billing WHERE org_id = $1", org)
    assert stored == found[0]
    assert await client.ensure_customer(db, org) == found[0]
    assert sum(1 for r in server.requests if r[1] == "/v1/customers") == 1  # the others waited and found it


async def test_a_subscription_is_made_for_a_paid_plan_only(db: Database, server: StripeServer) -> None:
    price = server.create_price()
    plan = f"paid-{uuid.uuid4().hex[:6]}"
    await plans.upsert_plan(db, plan, {"stripe_price_id": price})
    client = billing(server)
    free = await new_org(db)
    assert await client.ensure_subscription(db, free) is None
    paid = await new_org(db, plan)
    sub = await client.ensure_subscription(db, paid)
    assert sub is not None and server.subscriptions[sub]["items"]["data"][0]["price"]["id"] == price
    assert await client.ensure_subscription(db, paid) == sub
    assert len(server.subscriptions) == 1
    row = await db.fetchrow(
        "SELECT stripe_subscription_id, subscription_status FROM org_billing WHERE org_id = $1", paid
    )
    assert row is not None and tuple(row) == (sub, "active")


async def test_a_meter_event_is_counted_once_per_identifier(db: Database, server: StripeServer) -> None:
    client = billing(server)
    customer = await client.ensure_customer(db, await new_org(db))
    first = event(customer, 7, "org:input_tokens:2026-01-01T00Z:1")
    assert await client.send_meter_event(first) is True
    assert await client.send_meter_event(first) is True  # the same Idempotency-Key: Stripe's first answer again
    assert await client.send_meter_event(dataclasses.replace(first)) is True  # an equal event: the same
    server._idempotency.clear()  # the key expired (24 h): the identifier still dedups
    assert await client.send_meter_event(first) is False
    assert server.meter_total("bitnet_input_tokens", customer) == 7
    sent = [r for r in server.requests if r[1] == "/v1/billing/meter_events"]
    assert all(r[3] == f"bitnet-meter-{first.identifier}" for r in sent)
    assert sent[0][2]["payload"] == {"stripe_customer_id": customer, "value": "7"}
    assert sent[0][2]["identifier"] == first.identifier


async def test_errors_are_classified(db: Database, server: StripeServer) -> None:
    client = billing(server)
    customer = await client.ensure_customer(db, await new_org(db))
    with pytest.raises(PaymentProviderError) as refused:
        await client.send_meter_event(event("cus_nobody"))
    assert not refused.value.retryable and refused.value.status == 400
    too_old = MeterEvent(
        event_name="bitnet_input_tokens",
        customer_id=customer,
        value=1,
        identifier="old",
        timestamp=datetime.now(UTC) - timedelta(days=40),
    )
    with pytest.raises(PaymentProviderError) as old:
        await client.send_meter_event(too_old)
    assert not old.value.retryable
    server.down("503")
    with pytest.raises(PaymentProviderError) as unavailable:
        await client.send_meter_event(event(customer))
    assert unavailable.value.retryable and unavailable.value.status == 503
    server.up()
    server.down("refuse")
    with pytest.raises(PaymentProviderError) as unreachable:
        await client.send_meter_event(event(customer))
    assert unreachable.value.retryable and unreachable.value.status is None
    server.up()
    assert await client.send_meter_event(event(customer, 3)) is True
    assert server.meter_total("bitnet_input_tokens") == 3
    wrong_key = StripeBilling("sk_test_wrong", api_base=server.url, timeout_s=5)
    with pytest.raises(PaymentProviderError) as unauthorized:
        await wrong_key.send_meter_event(event(customer))
    assert unauthorized.value.retryable and unauthorized.value.status == 401  # the key, not the row, is at fault


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (stripe.RateLimitError("slow down", http_status=429), True),
        (stripe.APIError("boom", http_status=500), True),
        (stripe.APIError("in flight", http_status=409), True),
        (stripe.IdempotencyError("other params", http_status=400), True),
        (stripe.InvalidRequestError("bad", "x", http_status=400), False),
        (stripe.InvalidRequestError("gone", "x", http_status=404), False),
        (stripe.APIConnectionError("no route"), True),
    ],
)
def test_classify(error: stripe.StripeError, retryable: bool) -> None:
    assert classify(error).retryable is retryable


async def test_the_same_idempotency_key_with_other_parameters_is_refused(db: Database, server: StripeServer) -> None:
    client = billing(server)
    customer = await client.ensure_customer(db, await new_org(db))
    await client.send_meter_event(event(customer, 1, "same"))
    with pytest.raises(PaymentProviderError) as conflict:
        await client.send_meter_event(event(customer, 2, "same"))  # a bug of ours: never overwritten
    assert conflict.value.status == 400 and conflict.value.retryable
    assert server.meter_total("bitnet_input_tokens") == 1
