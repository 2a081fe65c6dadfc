"""The whole system with Stripe configured (the local Stripe server): the supervised outbox sends an ended
hour's usage as meter events on its first round, and the webhook verifies signatures. Without a key the
webhook route is not there (tests/api/test_stripe_webhook.py covers the rest)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import trio

from bitnet_actor.services.billing.ledger import UsageEvent, record_batch
from bitnet_actor.stores import app_dsn
from bitnet_actor.stores.migrate import migrate
from bitnet_actor.stores.postgres import open_database
from tests.api.served import serve
from tests.stripe_server import StripeServer

if TYPE_CHECKING:
    from pathlib import Path

SECRET = "whsec_served_test"


async def test_the_served_outbox_reports_ended_hours_to_stripe(
    fresh_dsn: str, redis_url: str, model_dir: Path, tmp_path: Path
) -> None:
    an_hour_ago = datetime.now(UTC).replace(minute=5, second=0, microsecond=0) - timedelta(hours=1)
    async with open_database(fresh_dsn, max_size=1) as owner:
        await migrate(owner)
        org = await owner.fetchval(
            "INSERT INTO organizations (name, plan) VALUES ($1, 'pro') RETURNING id", f"o-{uuid.uuid4().hex[:8]}"
        )
    async with open_database(app_dsn(fresh_dsn, "bitnet_app"), max_size=1) as app:
        events = [
            UsageEvent(
                request_id=f"r-{i}",
                org_id=org,
                model="tiny",
                input_tokens=10 + i,
                output_tokens=3,
                latency_ms=1,
                outcome="completed",
                created_at=an_hour_ago,
            )
            for i in range(5)
        ]
        assert await record_batch(app, events) == 5

    with StripeServer() as stripe_server:
        async with serve(
            fresh_dsn,
            redis_url,
            tmp_path,
            {"tiny": model_dir},
            stripe_api_key=stripe_server.api_key,
            stripe_api_base=stripe_server.url,
            stripe_webhook_secret=SECRET,
        ) as served:
            with trio.fail_after(30):
                while stripe_server.meter_total("bitnet_output_tokens") < 15:  # noqa: ASYNC110 - another thread's
                    await trio.sleep(0.1)
            assert stripe_server.meter_total("bitnet_input_tokens") == sum(10 + i for i in range(5))
            assert len(stripe_server.customers) == 1  # the organization's customer, made on the way

            async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
                payload = stripe_server.event("invoice.paid", {"id": "in_1", "customer": "cus_unknown"})
                bad = await http.post(
                    "/api/v1/stripe/webhook",
                    content=payload,
                    headers={"Stripe-Signature": stripe_server.sign(payload, secret="whsec_wrong")},
                )
                assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_signature"
                good = await http.post(
                    "/api/v1/stripe/webhook",
                    content=payload,
                    headers={"Stripe-Signature": stripe_server.sign(payload, secret=SECRET)},
                )
                assert good.status_code == 200, good.text
                metrics = (await http.get("/metrics")).text
            assert "bitnet_billing_outbox_pending 0.0" in metrics
        # every row sent: nothing left to send at shutdown
        assert stripe_server.meter_total("bitnet_output_tokens") == 15
