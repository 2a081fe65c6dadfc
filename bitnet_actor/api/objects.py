"""Downloads of presigned object URLs when objects live on the filesystem.

S3 serves its own presigned URLs; the filesystem store's URLs point here:
``GET /v1/objects/sha256/<hex>?expires=<unix>&signature=<hmac>``. No other authentication: the signature
is the capability, and it expires.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint, Response, current_app, request

from bitnet_actor.api.errors import ApiError
from bitnet_actor.errors import ObjectNotFoundError
from bitnet_actor.handles import LocalObjectServer

if TYPE_CHECKING:
    from bitnet_actor.handles import Handles

__all__ = ["blueprint"]

blueprint = Blueprint("objects", __name__)


@blueprint.get("/v1/objects/sha256/<string(length=64):digest>")
async def download(digest: str) -> Response:
    """Stream the object if the URL's signature is valid and unexpired."""
    handles: Handles = current_app.config["HANDLES"]
    store = handles.stores.objects
    if not isinstance(store, LocalObjectServer):
        raise ApiError(404, "objects are served by the object store's own presigned URLs")
    key = f"sha256/{digest}"
    try:
        expires = int(request.args.get("expires", ""))
    except ValueError:
        expires = 0
    if not store.verify_url(key, expires, request.args.get("signature", "")):
        raise ApiError(403, "the download link is invalid or has expired", code="invalid_signature")
    stream = store.open_stream(key)
    try:
        await stream.__aenter__()
    except ObjectNotFoundError:
        raise ApiError(404, "no such object") from None
    # Quart iterates the stream and calls its aclose() when done or when the client goes away.
    response = Response(stream, content_type="application/octet-stream")
    response.content_length = stream.size
    response.headers["ETag"] = f'"{digest}"'
    response.headers["Cache-Control"] = "private, max-age=0"
    response.timeout = None  # large artifacts take as long as they take
    return response
