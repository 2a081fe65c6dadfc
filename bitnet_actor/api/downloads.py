"""Downloads of model versions (:mod:`bitnet_actor.services.models.downloads`).

``POST /api/v1/orgs/<org>/models/<name>/versions/<version>/download`` (``models:write``: the weights are the
organization's property, so an inference key, which may list models, may not take them) answers a short-lived
signed URL, ``GET /api/v1/model-downloads/<token>``, which needs no other authentication: it streams the
version's file as uploaded (a GGUF file, or the HF directory's archive), decrypted on the way, with its
length, its SHA-256 as the ETag, and single byte ranges (``Range: bytes=a-b``, 206) so that a broken transfer
resumes. Model bytes live in the organization's home region: a replica of another region answers 421, as
for uploads.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, jsonify, request

from bitnet_actor.api.auth import OrgRef, handles, org_access
from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.regions import check_home_region
from bitnet_actor.api.validate import Field, parse_body
from bitnet_actor.services.models import downloads
from bitnet_actor.services.models.keys import DataKeyDestroyedError, DataKeyNotFoundError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["blueprint"]

blueprint = Blueprint("api_v1_downloads", __name__, url_prefix="/api/v1")

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@blueprint.post("/orgs/<org:org_id>/models/<name>/versions/<version>/download")
async def create_link(org_id: OrgRef, name: str, version: str) -> Response:
    """A signed download URL for one version, valid ``expires_in`` seconds (default 900, at most a day)."""
    access = await org_access(org_id, "models:write")
    h = handles()
    await check_home_region(h, access.org_id)
    has_body = bool((await request.get_data(as_text=False)).strip())  # no body: the defaults
    body = await parse_body({"expires_in": Field(int, required=False)}) if has_body else {}
    download, link = await downloads.make_link(
        h.stores.db, h.link_key, access.org_id, name, version,
        expires_in=body.get("expires_in", downloads.DEFAULT_EXPIRES_S),
    )  # fmt: skip
    return jsonify(
        {
            "object": "model.download",
            "url": f"{h.settings.base_url}/api/v1/model-downloads/{link.token}",
            "expires_at": link.expires_at,
            "model": download.version.ref,
            "filename": download.filename,
            "bytes": download.size,
            "sha256": download.version.sha256,
        }
    )


class _Body:
    """The response body: plaintext bytes ``[start, end)`` as the decryptor yields them (a class, not an async
    generator: flake8-async ASYNC900)."""

    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._pieces)


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``Range`` header, None for the whole file.

    Raises:
        ApiError: 416 for a range outside the file or more than one range.
    """
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise ApiError(416, "only one byte range 'bytes=START-END' is supported", headers=_unsatisfied(size))
    first, last = match.group(1), match.group(2)
    if first == "":  # the last N bytes
        start, end = max(0, size - int(last)), size
    else:
        start, end = int(first), min(size, int(last) + 1) if last else size
    if start >= size or end <= start:
        raise ApiError(416, f"the range is outside the file's {size} bytes", headers=_unsatisfied(size))
    return start, end


def _unsatisfied(size: int) -> dict[str, str]:
    return {"Content-Range": f"bytes */{size}"}


@blueprint.get("/model-downloads/<token>")
async def download(token: str) -> Response:
    """Stream the version a valid, unexpired link names (whole, or the one range asked for)."""
    h = handles()
    found = await downloads.open_link(h.stores.db, h.link_key, token)
    await check_home_region(h, found.org_id)
    try:
        decryptor = await h.model_objects.ranged(found.org_id, found.object_key)
    except (DataKeyNotFoundError, DataKeyDestroyedError):
        raise ApiError(404, f"the file of {found.version.ref} can no longer be read") from None
    size = decryptor.size
    headers: dict[str, Any] = {
        "Content-Disposition": f'attachment; filename="{found.filename}"',
        "ETag": f'"{found.version.sha256}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-store",
    }
    wanted = request.headers.get("Range")
    start, end, status = 0, size, 200
    if wanted and request.headers.get("If-Range", headers["ETag"]) == headers["ETag"]:
        start, end = _byte_range(wanted, size) or (0, size)
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    response = Response(_Body(decryptor.iter_range(start, end)), status=status, content_type="application/octet-stream")
    response.headers.update(headers)
    response.content_length = end - start
    response.timeout = None  # large files take as long as they take
    return response
