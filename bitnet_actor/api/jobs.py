"""Conversion jobs under ``/api/v1/orgs/<org>/jobs``: create (``models:write``), list, show and follow as
server-sent events (``models:read``), cancel (``models:write``).

Everything goes through :mod:`bitnet_actor.services.models.jobs`; the job workers (:mod:`actors.jobs`) take
the jobs from Redis. A job of another organization is a 404 like one that does not exist.
"""

from __future__ import annotations

import uuid
from typing import Any

import trio
from quart import Blueprint, Response, jsonify

from bitnet_actor.api.auth import OrgRef, handles, org_access
from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.openai.sse import sse_event, sse_response
from bitnet_actor.api.validate import Field, parse_body
from bitnet_actor.services.models import jobs

__all__ = ["EVENTS_POLL_S", "blueprint"]

blueprint = Blueprint("api_v1_jobs", __name__, url_prefix="/api/v1")

_BASE = "/orgs/<org:org_id>/jobs"
EVENTS_POLL_S = 0.5
"""How often the events stream reads the job's row."""


def _job_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(404, "no such job") from None


@blueprint.post(_BASE)
async def create_job(org_id: OrgRef) -> tuple[Response, int]:
    """Queue a job making a new version from a ready one (``quantize``: tq1_0/tq2_0/i2_s; ``convert``:
    hf-ternary)."""
    access = await org_access(org_id, "models:write")
    body = await parse_body(
        {
            "source": Field(str, max_len=200),
            "target": Field(str, max_len=20),
            "output_name": Field(str, max_len=100),
            "output_version": Field(str, max_len=64),
        }
    )
    h = handles()
    job = await jobs.create_job(
        h.stores.db, h.stores.redis, access.org_id, source=body["source"], target=body["target"],
        output_name=body["output_name"], output_version=body["output_version"],
        created_by=access.principal.user_id,
    )  # fmt: skip
    return jsonify(job.to_json()), 201


@blueprint.get(_BASE)
async def list_jobs(org_id: OrgRef) -> Response:
    """The organization's jobs, newest first."""
    access = await org_access(org_id, "models:read")
    found = await jobs.list_jobs(handles().stores.db, access.org_id)
    return jsonify({"object": "list", "data": [j.to_json() for j in found]})


@blueprint.get(_BASE + "/<job_id>")
async def get_job(org_id: OrgRef, job_id: str) -> Response:
    """One job: state, attempts, progress, error, result version."""
    access = await org_access(org_id, "models:read")
    return jsonify((await jobs.get_job(handles().stores.db, access.org_id, _job_id(job_id))).to_json())


@blueprint.post(_BASE + "/<job_id>/cancel")
async def cancel_job(org_id: OrgRef, job_id: str) -> Response:
    """Ask a job to stop (a queued one stops at once; a running one between tensors)."""
    access = await org_access(org_id, "models:write")
    return jsonify((await jobs.request_cancel(handles().stores.db, access.org_id, _job_id(job_id))).to_json())


@blueprint.get(_BASE + "/<job_id>/events")
async def job_events(org_id: OrgRef, job_id: str) -> Response:
    """The job as server-sent events: one ``data: {job}`` each time it changes, the last in its final state."""
    access = await org_access(org_id, "models:read")
    db = handles().stores.db
    first = await jobs.get_job(db, access.org_id, _job_id(job_id))  # 404 before the stream starts

    return sse_response(_Events(db, access.org_id, first))


class _Events:
    """The events of one job: its view each time it changes, ending after its final state."""

    def __init__(self, db: Any, org_id: uuid.UUID, job: jobs.Job) -> None:
        self.db, self.org_id, self.job = db, org_id, job
        self.last: dict[str, Any] | None = None
        self.ended = False

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> bytes:
        while not self.ended:
            view: dict[str, Any] = self.job.to_json()
            if self.job.finished:
                self.ended = True
            if view != self.last:
                self.last = view
                return sse_event(view)
            await trio.sleep(EVENTS_POLL_S)
            self.job = await jobs.get_job(self.db, self.org_id, self.job.id)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Nothing to release (each poll is its own transaction)."""
