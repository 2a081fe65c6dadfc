"""Uploading a model: a form that works without JavaScript, and a progress bar with it.

Without JavaScript the form is a ``multipart/form-data`` POST to this page's route, read as it streams
(:class:`portal.multipart.StreamedForm`: the CSRF token, the first field, is checked before a byte of the
file is read) into the same upload service as ``POST /api/v1/orgs/<org>/models``
(:func:`bitnet_actor.services.models.uploads.spool` then ``ingest``), with the plan's
``max_upload_bytes`` enforced while reading. With JavaScript, ``upload.js`` sends the file to that API route
itself (the session cookie and the ``X-CSRF-Token`` header), showing the bytes sent, then the server's
check of the model, then, when a conversion was chosen, the conversion job (``POST /api/v1/orgs/<org>/jobs``)
on its page. Either way an optional conversion makes ``<name>:<version>-<target>`` from the new version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from quart import request

from bitnet_actor.api.auth import handles
from bitnet_actor.services.errors import ConflictStateError, ServiceError, ValidationError
from bitnet_actor.services.models import jobs, registry, uploads
from portal.errors import PortalError
from portal.forms import FormState, text
from portal.multipart import StreamedForm
from portal.security import check_csrf_token, streamed_form
from portal.tenancy import OrgPage, org_page
from portal.views.models import home_region, size_text
from portal.web import blueprint, flash, render, see_other

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from quart import Response

__all__ = ["FORM_SLACK_BYTES", "TARGET_CHOICES", "conversion_output"]

FORM_SLACK_BYTES: Final = 256 * 1024
"""What a multipart body may carry beyond the file (boundaries, part headers, the text fields)."""
TARGET_CHOICES: Final = (
    ("tq2_0", "GGUF TQ2_0 (ternary, 2 bits a weight)"),
    ("tq1_0", "GGUF TQ1_0 (ternary, 1.69 bits a weight)"),
    ("i2_s", "GGUF I2_S (bitnet.cpp's layout)"),
    ("hf-ternary", "Packed ternary Hugging Face directory"),
)
assert {t for t, _ in TARGET_CHOICES} == set(jobs.TARGETS)


def conversion_output(name: str, version: str, target: str) -> tuple[str, str]:
    """The version a conversion chosen on the upload form makes: ``name:version-target``."""
    return name, f"{version}-{target}"[:64]


def _spool_dir() -> Path:
    return handles().settings.data_dir / "uploads-tmp"  # the API's spool directory


async def _limit(page: OrgPage) -> int | None:
    return (await handles().tenants.profile(page.org.id)).plan.max_upload_bytes


async def _form(page: OrgPage, state: FormState, *, status: int = 200) -> Response:
    limit = await _limit(page)
    return await render(
        "portal/org/models/upload.html",
        status=status,
        page=page,
        state=state,
        limit=limit,
        limit_text=size_text(limit) if limit is not None else "",
        targets=[("", "No conversion"), *TARGET_CHOICES],
    )


@blueprint.get("/orgs/<uuid:org_id>/uploads/new")
@org_page("models:write")
async def upload_form(page: OrgPage) -> Response:
    """The upload form (``?name=`` fills in the model's name, for a new version)."""
    name = request.args.get("name", "")
    return await _form(page, FormState(values={"name": name if registry.NAME_RE.match(name) else ""}))


def _target(fields: Mapping[str, str]) -> str:
    target = fields.get("convert_to", "")
    if target and target not in jobs.TARGETS:
        raise ValidationError("choose one of the conversions offered", field="convert_to")
    return target


@blueprint.post("/orgs/<uuid:org_id>/uploads")
@org_page("models:write")
@streamed_form
async def upload_post(page: OrgPage) -> Response:
    """Stream the file into the upload service; on to the new version's page (or its conversion job's)."""
    await home_region(page)
    limit = await _limit(page)
    if limit is not None and request.content_length is not None and request.content_length > limit + FORM_SLACK_BYTES:
        message = f"the upload is larger than this plan's limit of {limit} bytes"
        return await _form(page, FormState(errors={"file": message}, message=message), status=413)
    try:
        form = StreamedForm(request.body, request.headers.get("Content-Type", ""))
        fields = await form.read_fields()
    except ValidationError as exc:
        raise PortalError(400, str(exc)) from None
    check_csrf_token(fields.get("csrf_token", ""))  # before a byte of the file is read
    values = {k: v for k, v in fields.items() if k != "csrf_token"}
    h = handles()
    try:
        name = registry.check_name(text(fields, "name"))
        version = registry.check_version(text(fields, "version"))
        description = fields.get("description", "")
        target = _target(fields)
        if form.file_field != "file" or not form.filename:
            raise ValidationError("choose the model file to upload", field="file")
        spooled = await uploads.spool(form, _spool_dir(), limit=limit)
        made = await uploads.ingest(
            h.stores.db, h.model_objects, page.org.id, spooled, name=name, version=version,
            temp_root=_spool_dir(), created_by=page.viewer.user.id, description=description,
        )  # fmt: skip
    except uploads.TooLargeError as exc:
        return await _form(page, FormState.refused(values, exc, default_field="file"), status=413)
    except (ValidationError, ConflictStateError) as exc:
        status = 409 if isinstance(exc, ConflictStateError) else 400
        return await _form(page, FormState.refused(values, exc, default_field="file"), status=status)
    await flash(f"{made.ref} is uploaded and {made.state}.")
    if not target:
        return see_other("portal.model_version", org_id=page.org.id, name=made.name, version=made.version)
    output_name, output_version = conversion_output(made.name, made.version, target)
    try:
        job = await jobs.create_job(
            h.stores.db, h.stores.redis, page.org.id, source=made.ref, target=target, output_name=output_name,
            output_version=output_version, created_by=page.viewer.user.id,
        )  # fmt: skip
    except ServiceError as exc:  # over the plan's job limit, say: the upload itself stands
        await flash(f"The conversion did not start: {exc}", "error")
        return see_other("portal.model_version", org_id=page.org.id, name=made.name, version=made.version)
    return see_other("portal.job", org_id=page.org.id, job_id=job.id)
