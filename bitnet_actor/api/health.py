"""Liveness, readiness and metrics: ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio
from quart import Blueprint, Response, current_app, jsonify

from bitnet_actor.api.errors import ApiError
from bitnet_actor.observability import CONTENT_TYPE_LATEST
from bitnet_actor.services.models import jobs as job_service

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from bitnet_actor.handles import Handles

__all__ = ["blueprint"]

blueprint = Blueprint("health", __name__)
log = logging.getLogger(__name__)

_CHECK_TIMEOUT_S = 3.0
_SCRAPE_READ_TIMEOUT_S = 1.0  # a scrape must answer even when Redis does not (the gauge says NaN then)


def _handles() -> Handles:
    found: Handles = current_app.config["HANDLES"]
    return found


@blueprint.get("/healthz")
async def healthz() -> Response:
    """Liveness: the process serves requests. Never touches a backing store."""
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
async def readyz() -> Response:
    """Readiness: the platform models have finished their first load (or failed it), PostgreSQL, Redis and the
    object store answer (and this replica's region store, when ``BITNET_REGION_STORES`` gives its region one
    of its own: its organizations' models live there), and we are not shutting down.

    503 names every failed check, so an operator reading a probe failure knows which dependency to look at.
    A model that failed to load does not hold readiness back (its requests get 503s naming the failure).
    """
    system = _handles()
    if system.readiness.draining.is_set():
        system.metrics.ready.set(0)
        raise ApiError(503, "not ready: shutting down", code="shutting_down")
    if system.readiness.warming:
        system.metrics.ready.set(0)
        names = ", ".join(sorted(system.readiness.warming))
        raise ApiError(503, f"not ready: models: loading {names}", code="not_ready", headers={"Retry-After": "2"})
    checks: dict[str, Callable[[], Awaitable[None]]] = {
        "postgres": system.stores.db.ping,
        "redis": system.stores.redis.ping,
        "object_store": system.stores.objects.ping,
    }
    regions, here = system.stores.regions, system.settings.region
    if regions is not None and here in regions.regions:
        own = regions.for_region(here)
        if own is not system.stores.objects:
            checks[f"object_store_{here}"] = own.ping
    failures: dict[str, str] = {}

    async def run(name: str, check: Callable[[], Awaitable[None]]) -> None:
        try:
            with trio.fail_after(_CHECK_TIMEOUT_S):
                await check()
        except trio.TooSlowError:
            failures[name] = f"no answer within {_CHECK_TIMEOUT_S:g} s"
        except Exception as exc:
            failures[name] = str(exc) or type(exc).__name__

    async with trio.open_nursery() as nursery:
        for name, check in checks.items():
            nursery.start_soon(run, name, check)
    system.metrics.ready.set(0 if failures else 1)
    for name in checks:
        system.metrics.dependency_up.labels(name).set(0 if name in failures else 1)
    if failures:
        detail = "; ".join(f"{name}: {why}" for name, why in sorted(failures.items()))
        raise ApiError(503, f"not ready: {detail}", code="not_ready", headers={"Retry-After": "5"})
    return jsonify({"status": "ready", "checks": dict.fromkeys(checks, "ok")})


@blueprint.get("/metrics")
async def metrics() -> Response:
    """Prometheus text exposition of this instance's registry, with the job queue's depth read now."""
    system = _handles()
    waiting = pending = float("nan")
    with trio.move_on_after(_SCRAPE_READ_TIMEOUT_S):
        try:
            depth = await job_service.queue_depth(system.stores.redis)
        except Exception as exc:
            log.warning("could not read the job queue's depth: %s", exc)
        else:
            waiting, pending = depth.waiting, depth.pending
    system.metrics.jobs_queued.labels("waiting").set(waiting)
    system.metrics.jobs_queued.labels("pending").set(pending)
    return Response(system.metrics.render(), content_type=CONTENT_TYPE_LATEST)
