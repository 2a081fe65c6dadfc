"""``POST /api/v1/stripe/webhook``: Stripe's events, authenticated by their signature alone.

The body is verified against ``BITNET_STRIPE_WEBHOOK_SECRET`` by the SDK before anything is read from it; a
missing or wrong signature (or a stale one: five minutes) is a 400 in OpenAI's error shape and changes
nothing. A verified event is applied once (:mod:`bitnet_actor.services.billing.webhooks`) and answered 200,
a replayed one too (Stripe stops retrying on any 2xx). Without a Stripe key the route answers 404
``stripe_not_configured``: billing then runs locally and no Stripe event can concern us.
"""

from __future__ import annotations

from quart import Blueprint, Response, jsonify, request

from bitnet_actor.api.auth import handles
from bitnet_actor.api.errors import ApiError
from bitnet_actor.services.billing import webhooks

__all__ = ["blueprint"]

blueprint = Blueprint("stripe_webhook", __name__)

_MAX_BODY = 1024 * 1024  # Stripe's events are a few KiB; a megabyte is far past any of them


@blueprint.post("/api/v1/stripe/webhook")
async def stripe_webhook() -> Response:
    """Verify and apply one Stripe event."""
    system = handles()
    settings = system.settings
    if not settings.stripe_api_key or not settings.stripe_webhook_secret:
        raise ApiError(
            404, "Stripe billing is not configured on this server (billing runs locally)", code="stripe_not_configured"
        )
    payload = await request.get_data(as_text=False)
    if isinstance(payload, str):  # pragma: no cover - as_text=False gives bytes
        payload = payload.encode()
    if len(payload) > _MAX_BODY:
        raise ApiError(413, f"the request body is larger than {_MAX_BODY} bytes")
    try:
        event = webhooks.verify(payload, request.headers.get("Stripe-Signature"), settings.stripe_webhook_secret)
    except webhooks.WebhookSignatureError as exc:
        raise ApiError(400, str(exc), param=exc.field, code="invalid_signature") from None
    applied = await webhooks.apply_event(system.stores.db, event, grace_days=settings.payment_grace_days)
    if applied.org_id is not None and not applied.duplicate:
        system.tenants.forget(applied.org_id)  # this replica's cached plan; the others refresh within their TTL
    return jsonify({"received": True, "id": applied.event_id, "duplicate": applied.duplicate, "effect": applied.effect})
