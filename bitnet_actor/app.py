"""``create_app(handles)``: the Quart-Trio application, given the running system's handles.

The app never starts actors or opens stores: ``bitnet_actor.system`` does, and passes ``Handles`` in. This module
adds what every request gets: a request id (``X-Request-ID`` echoed or generated), one JSON access-log line,
HTTP metrics by route template, OpenAI-shaped errors, and the rate-limit headers the /v1 routes' admission
left in ``g`` (so a streamed response has them before its first byte).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import TYPE_CHECKING

from quart import Response, g, request
from quart_trio import QuartTrio

from bitnet_actor.api import (
    accounts,
    billing,
    downloads,
    graphql,
    health,
    jobs,
    objects,
    openai,
    openapi,
    registry,
    routes,
    saml,
    stripe_webhook,
    tokens,
    traced,
    uploads,
)
from bitnet_actor.api.auth import OrgConverter
from bitnet_actor.api.errors import install_error_handlers
from bitnet_actor.observability import clear_log_context
from portal import install as install_portal

if TYPE_CHECKING:
    from bitnet_actor.handles import Handles

__all__ = ["MAX_BODY_BYTES", "create_app"]

access_log = logging.getLogger("bitnet_actor.access")

MAX_BODY_BYTES = 16 * 1024 * 1024  # JSON API bodies; model uploads stream through their own route
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_app(handles: Handles) -> QuartTrio:
    """Build the HTTP application around ``handles`` (stores, metrics, actor handles)."""
    app = QuartTrio("bitnet_actor")
    app.request_class = uploads.StreamingRequest  # model uploads stream past the JSON body cap
    app.config.update(
        HANDLES=handles,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        RESPONSE_TIMEOUT=None,  # SSE streams run as long as generation does
        BODY_TIMEOUT=60,
        JSON_SORT_KEYS=False,
        PROVIDE_AUTOMATIC_OPTIONS=True,
    )
    app.url_map.converters["org"] = OrgConverter  # before any blueprint's rules are bound
    install_error_handlers(app)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(objects.blueprint)
    app.register_blueprint(accounts.blueprint)
    app.register_blueprint(billing.blueprint)
    app.register_blueprint(uploads.blueprint)  # before registry: /models/uploads is not a model name
    app.register_blueprint(registry.blueprint)
    app.register_blueprint(downloads.blueprint)
    app.register_blueprint(routes.blueprint)
    app.register_blueprint(jobs.blueprint)
    app.register_blueprint(openapi.blueprint)
    app.register_blueprint(tokens.blueprint)
    app.register_blueprint(saml.blueprint)
    app.register_blueprint(stripe_webhook.blueprint)
    app.register_blueprint(graphql.blueprint)
    for blueprint in openai.BLUEPRINTS:
        app.register_blueprint(blueprint)
    install_portal(app)  # /portal pages and the site root
    metrics = handles.metrics

    @app.before_request
    async def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = g.request_id  # type: ignore[attr-defined]  # for the 500 handler
        g.started = time.perf_counter()
        metrics.http_in_flight.inc()
        g.counted = True
        clear_log_context()

    traced.install(app, handles.tracing)  # its hooks: after _start (the request id), before _finish (the ids)

    @app.after_request
    async def _finish(response: Response) -> Response:
        await _settle_body(response)
        request_id = g.get("request_id") or uuid.uuid4().hex
        response.headers["X-Request-ID"] = request_id
        for name, value in (g.get("ratelimit_headers") or {}).items():  # set by the /v1 routes' admission
            response.headers.setdefault(name, value)
        if g.get("model_version"):  # a registry model served this request
            response.headers.setdefault("x-bitnet-model-version", g.model_version)
        if g.get("response_cache"):  # hit / miss / bypass: the organization's response cache is on
            response.headers.setdefault("x-bitnet-cache", g.response_cache)
        started = g.get("started")
        latency = time.perf_counter() - started if started is not None else 0.0
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.http_requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.http_latency.labels(request.method, route).observe(latency)
        access_log.info(
            "%s %s %d",
            request.method,
            route,
            response.status_code,
            extra={
                "request_id": request_id,
                "method": request.method,
                "route": route,
                "path": request.path,
                "status": response.status_code,
                "latency_ms": round(latency * 1000, 3),
            },
        )
        return response

    @app.teardown_request
    async def _teardown(exc: BaseException | None) -> None:
        # Runs even when the client went away mid-response, unlike after_request.
        if g.pop("counted", False):
            metrics.http_in_flight.dec()

    return app


async def _settle_body(response: Response) -> None:
    """Leave the connection ready for its next request when the handler answered without reading the body.

    Hypercorn stalls a keep-alive connection whose request body nobody received: the client's next request on
    it never gets an answer (found by schemathesis: a 403 before the body was read, then a hang). A capped body
    is read and dropped here; a streamed upload's, which may be gigabytes, closes the connection instead.
    """
    if getattr(request, "streams_body", False):
        if response.status_code >= 400:
            response.headers["Connection"] = "close"
        return
    try:
        await request.get_data(cache=False)
    except Exception:  # over the cap, or the client went away: this connection cannot be reused
        response.headers["Connection"] = "close"
