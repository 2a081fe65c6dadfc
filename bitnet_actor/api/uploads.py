"""Model uploads under ``/api/v1/orgs/<org>/models`` (``models:write``):

- ``POST models?name=N&version=V[&description=D]`` with the file as the body (a GGUF, or an HF model
  directory as tar, tar.gz or zip): streamed to disk, inspected, published; 201 with the version;
- ``POST models/uploads`` (``{"total_bytes": n}``, optional) -> an upload id; ``PUT models/uploads/<id>`` with
  ``Content-Range: bytes START-END/TOTAL`` and that range as the body; ``GET models/uploads/<id>`` tells
  ``received_bytes`` (where to resume); ``POST models/uploads/<id>/complete`` with ``{"name", "version"}``;
  ``DELETE models/uploads/<id>`` aborts.

Bodies here are not held by the app's JSON size cap (:class:`StreamingRequest`): they stream to a spool file
under the data dir, and the plan's ``max_upload_bytes`` is enforced while reading. Refusals are 4xx in
OpenAI's error shape with the archive checker's or the engine loader's words (413 over the plan's limit).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, jsonify, request
from quart_trio.wrappers import TrioRequest

from bitnet_actor.api.auth import OrgRef, handles
from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.regions import model_write_access
from bitnet_actor.api.validate import Field, parse_body
from bitnet_actor.services.models import uploads

if TYPE_CHECKING:
    from pathlib import Path
    from uuid import UUID

__all__ = ["StreamingRequest", "blueprint"]

blueprint = Blueprint("api_v1_uploads", __name__, url_prefix="/api/v1")

_UPLOAD_PATH = re.compile(r"^/api/v1/orgs/[^/]+/models(/uploads/[^/]+)?/?$")
_PORTAL_UPLOAD_PATH = re.compile(r"^/portal/orgs/[^/]+/uploads$")  # the portal's upload form (portal.views.uploads)


class StreamingRequest(TrioRequest):
    """A request whose body may exceed the app's cap when it is a model upload (POST .../models or PUT
    .../models/uploads/<id>, or the portal's upload form): those routes stream it and enforce the plan's
    limit themselves."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        api = bool(_UPLOAD_PATH.match(self.path)) and not self.path.endswith("/uploads")
        portal = self.method == "POST" and bool(_PORTAL_UPLOAD_PATH.match(self.path))
        self.streams_body = self.method in ("POST", "PUT") and (api or portal)
        if self.streams_body:
            self.body = self.body_class(self.content_length, None)


def _spool_dir() -> Path:
    return handles().settings.data_dir / "uploads-tmp"


async def _limit(org_id: UUID) -> int | None:
    return (await handles().tenants.profile(org_id)).plan.max_upload_bytes


def _too_large(exc: uploads.TooLargeError) -> ApiError:
    return ApiError(413, str(exc), code="file_too_large")


@blueprint.post("/orgs/<org:org_id>/models")
async def upload_model(org_id: OrgRef) -> Response:
    """One streamed upload: the body is the file; ``name`` and ``version`` in the query."""
    access = await model_write_access(org_id)
    name, version = request.args.get("name"), request.args.get("version")
    if not name:
        raise ApiError(400, "the query needs name=", param="name", code="missing_required_parameter")
    if not version:
        raise ApiError(400, "the query needs version=", param="version", code="missing_required_parameter")
    h = handles()
    limit = await _limit(access.org_id)
    if limit is not None and request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"the upload is larger than this plan's limit of {limit} bytes", code="file_too_large")
    try:
        spooled = await uploads.spool(request.body, _spool_dir(), limit=limit)
        made = await uploads.ingest(
            h.stores.db, h.model_objects, access.org_id, spooled, name=name, version=version,
            temp_root=_spool_dir(), created_by=access.principal.user_id,
            description=request.args.get("description", ""),
        )  # fmt: skip
    except uploads.TooLargeError as exc:
        raise _too_large(exc) from None
    return _created(made.to_json())


def _created(body: dict[str, Any]) -> Response:
    response = jsonify(body)
    response.status_code = 201
    return response


@blueprint.post("/orgs/<org:org_id>/models/uploads")
async def create_upload(org_id: OrgRef) -> Response:
    """Start a resumable upload."""
    access = await model_write_access(org_id)
    body = await parse_body({"total_bytes": Field(int, required=False)})
    try:
        made = await uploads.create_upload(
            handles().stores.db, access.org_id, total_bytes=body.get("total_bytes"),
            limit=await _limit(access.org_id), created_by=access.principal.user_id,
        )  # fmt: skip
    except uploads.TooLargeError as exc:
        raise _too_large(exc) from None
    return _created(made.to_json())


@blueprint.get("/orgs/<org:org_id>/models/uploads/<uuid:upload_id>")
async def get_upload(org_id: OrgRef, upload_id: UUID) -> Response:
    """Where an upload stands (``received_bytes``: where to resume)."""
    access = await model_write_access(org_id)
    return jsonify((await uploads.get_upload(handles().stores.db, access.org_id, upload_id)).to_json())


@blueprint.put("/orgs/<org:org_id>/models/uploads/<uuid:upload_id>")
async def put_range(org_id: OrgRef, upload_id: UUID) -> Response:
    """One byte range, starting at ``received_bytes``."""
    access = await model_write_access(org_id)
    h = handles()
    try:
        state = await uploads.put_range(
            h.stores.db, h.model_objects, access.org_id, upload_id,
            content_range=request.headers.get("Content-Range"), chunks=request.body,
            limit=await _limit(access.org_id),
        )  # fmt: skip
    except uploads.TooLargeError as exc:
        raise _too_large(exc) from None
    except uploads.OutOfOrderError as exc:  # say where the upload stands, as resumable-upload protocols do
        raise ApiError(
            416, str(exc), code="range_not_satisfiable", headers={"Upload-Offset": str(exc.received_bytes)}
        ) from None
    return jsonify(state.to_json())


@blueprint.post("/orgs/<org:org_id>/models/uploads/<uuid:upload_id>/complete")
async def complete_upload(org_id: OrgRef, upload_id: UUID) -> Response:
    """Join the ranges and publish them as ``name:version``."""
    access = await model_write_access(org_id)
    body = await parse_body(
        {"name": Field(str, max_len=100), "version": Field(str, max_len=64),
         "description": Field(str, required=False, max_len=2000)}
    )  # fmt: skip
    h = handles()
    try:
        made = await uploads.complete_upload(
            h.stores.db, h.model_objects, access.org_id, upload_id, name=body["name"], version=body["version"],
            spool_dir=_spool_dir(), limit=await _limit(access.org_id), created_by=access.principal.user_id,
            description=body.get("description", ""),
        )  # fmt: skip
    except uploads.TooLargeError as exc:
        raise _too_large(exc) from None
    return _created(made.to_json())


@blueprint.delete("/orgs/<org:org_id>/models/uploads/<uuid:upload_id>")
async def abort_upload(org_id: OrgRef, upload_id: UUID) -> Response:
    """Abort an open upload; its ranges are deleted."""
    access = await model_write_access(org_id)
    h = handles()
    return jsonify((await uploads.abort_upload(h.stores.db, h.model_objects, access.org_id, upload_id)).to_json())
