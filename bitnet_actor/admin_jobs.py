"""Operator commands for conversion jobs: ``bitnet-actor jobs list | show | cancel`` (the database only: a
cancel sets the flag the job's worker polls)."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

import trio_asyncio

from bitnet_actor.services import tenancy
from bitnet_actor.services.errors import NotFoundError
from bitnet_actor.services.models import jobs
from bitnet_actor.stores import open_database_only

if TYPE_CHECKING:
    from bitnet_actor.config import Settings

__all__ = ["cancel_job", "list_jobs", "show_job"]


def _id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFoundError(f"no job {raw!r}") from None


async def list_jobs(settings: Settings, *, org: str) -> str:
    """The organization's jobs, one line each (newest first)."""
    async with trio_asyncio.open_loop(), open_database_only(settings) as db:
        found = await jobs.list_jobs(db, await tenancy.org_id_by_name(db, org))
    if not found:
        return f"organization {org} has no jobs"
    lines = []
    for j in found:
        p = j.progress
        done = f"{p.get('tensors_done', 0)}/{p.get('tensors_total', '?')}" if p else "-"
        lines.append(f"{j.id}  {j.state:<9}  {j.target:<10}  {j.output_name}:{j.output_version}  {done}")
    return "\n".join(lines)


async def show_job(settings: Settings, *, org: str, job_id: str) -> str:
    """One job as JSON."""
    async with trio_asyncio.open_loop(), open_database_only(settings) as db:
        job = await jobs.get_job(db, await tenancy.org_id_by_name(db, org), _id(job_id))
    return json.dumps(job.to_json(), indent=2)


async def cancel_job(settings: Settings, *, org: str, job_id: str) -> str:
    """Ask a job to stop; the job as JSON."""
    async with trio_asyncio.open_loop(), open_database_only(settings) as db:
        job = await jobs.request_cancel(db, await tenancy.org_id_by_name(db, org), _id(job_id))
    return json.dumps(job.to_json(), indent=2)
