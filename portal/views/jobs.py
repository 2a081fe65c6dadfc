"""Conversion jobs: the list, starting one from a ready version, a job's page with its progress, cancelling.

Everything goes through :mod:`bitnet_actor.services.models.jobs`, as the JSON API's job routes do, with the
same rules: ``models:read`` sees, ``models:write`` starts and cancels; the job workers take the jobs from
Redis. A job page shows where the job stood when it was served (a "refresh" link reloads it); with
JavaScript, ``job.js`` polls ``GET /api/v1/orgs/<org>/jobs/<id>`` every second and moves the page's
``<progress>`` and status along until the job finishes. A job id of another organization is a 404.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quart import request

from bitnet_actor.api.auth import handles
from bitnet_actor.services.errors import ConflictStateError, NotFoundError, ThrottledError, ValidationError
from bitnet_actor.services.models import jobs as job_service
from bitnet_actor.services.models import registry
from portal.errors import PortalError
from portal.forms import FormState, read_form, text
from portal.tenancy import OrgPage, org_page
from portal.views.models import published_refs
from portal.views.uploads import TARGET_CHOICES
from portal.web import blueprint, flash, render, see_other

if TYPE_CHECKING:
    from uuid import UUID

    from quart import Response

__all__ = ["progress_of"]

_STATUS = {ValidationError: 400, NotFoundError: 404, ConflictStateError: 409, ThrottledError: 429}


def progress_of(job: job_service.Job) -> dict[str, Any]:
    """What a page shows of a job's progress: ``value``/``max`` for ``<progress>`` (None: indeterminate) and
    the counts as text."""
    p = job.progress
    done, total = p.get("tensors_done"), p.get("tensors_total")
    if job.state == "succeeded":
        total = total or 1
        done = total
    if not isinstance(total, int) or total <= 0 or not isinstance(done, int):
        waiting = {"queued": "waiting for a worker", "running": "starting"}
        return {"value": None, "max": None, "text": waiting.get(job.state, "")}
    words = f"{done:,} of {total:,} tensors"
    bytes_done, bytes_total = p.get("bytes_done"), p.get("bytes_total")
    if isinstance(bytes_done, int) and isinstance(bytes_total, int) and bytes_total > 0:
        words += f", {bytes_done:,} of {bytes_total:,} bytes"
    return {"value": min(done, total), "max": total, "text": words}


async def _refs(page: OrgPage) -> dict[UUID, registry.ModelVersion]:
    return {v.id: v for v in await registry.list_versions(handles().stores.db, page.org.id)}


async def _job(page: OrgPage, job_id: UUID) -> job_service.Job:
    try:
        return await job_service.get_job(handles().stores.db, page.org.id, job_id)
    except NotFoundError:
        raise PortalError(404, "There is no such job in this organization.") from None


@blueprint.get("/orgs/<uuid:org_id>/jobs")
@org_page("models:read")
async def jobs(page: OrgPage) -> Response:
    """The organization's jobs, newest first."""
    found = await job_service.list_jobs(handles().stores.db, page.org.id)
    return await render(
        "portal/org/models/jobs.html", page=page, jobs=found, versions=await _refs(page), progress_of=progress_of
    )


async def _new_form(page: OrgPage, state: FormState, *, status: int = 200) -> Response:
    sources = published_refs(await registry.list_versions(handles().stores.db, page.org.id), page.org.id)
    return await render(
        "portal/org/models/job_new.html",
        status=status,
        page=page,
        state=state,
        sources=[(s, s) for s in sources],
        targets=list(TARGET_CHOICES),
    )


@blueprint.get("/orgs/<uuid:org_id>/jobs/new")
@org_page("models:write")
async def job_new(page: OrgPage) -> Response:
    """The form for a new job (``?source=name:version`` picks the source)."""
    source = request.args.get("source", "")
    name = source.partition(":")[0]
    values = {"source": source, "target": "tq2_0", "output_name": name if registry.NAME_RE.match(name) else ""}
    return await _new_form(page, FormState(values=values))


@blueprint.post("/orgs/<uuid:org_id>/jobs")
@org_page("models:write")
async def job_create(page: OrgPage) -> Response:
    """Queue the job; on to its page."""
    form = await read_form()
    h = handles()
    try:
        job = await job_service.create_job(
            h.stores.db, h.stores.redis, page.org.id, source=text(form, "source"), target=text(form, "target"),
            output_name=text(form, "output_name"), output_version=text(form, "output_version"),
            created_by=page.viewer.user.id,
        )  # fmt: skip
    except (ValidationError, NotFoundError, ConflictStateError, ThrottledError) as exc:
        status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
        return await _new_form(page, FormState.refused(form, exc, default_field="source"), status=status)
    await flash(f"The job making {job.output_name}:{job.output_version} is queued.")
    return see_other("portal.job", org_id=page.org.id, job_id=job.id)


@blueprint.get("/orgs/<uuid:org_id>/jobs/<uuid:job_id>")
@org_page("models:read")
async def job(page: OrgPage, job_id: UUID) -> Response:
    """One job as it stands now."""
    found = await _job(page, job_id)
    return await render(
        "portal/org/models/job.html",
        page=page,
        job=found,
        versions=await _refs(page),
        progress=progress_of(found),
        api_url=f"/api/v1/orgs/{page.org.id}/jobs/{found.id}",
    )


@blueprint.post("/orgs/<uuid:org_id>/jobs/<uuid:job_id>/cancel")
@org_page("models:write")
async def job_cancel(page: OrgPage, job_id: UUID) -> Response:
    """Ask the job to stop (a queued one stops at once, a running one between tensors)."""
    before = await _job(page, job_id)
    if before.finished:
        await flash(f"The job had already {before.state}.", "info")
        return see_other("portal.job", org_id=page.org.id, job_id=job_id)
    found = await job_service.request_cancel(handles().stores.db, page.org.id, job_id)
    if found.state == "cancelled":
        await flash("The job is cancelled.")
    elif found.finished:  # it finished meanwhile
        await flash(f"The job had already {found.state}.", "info")
    else:
        await flash("The job stops after the tensor it is converting.")
    return see_other("portal.job", org_id=page.org.id, job_id=job_id)
