"""Errors as pages: the portal's answer to what the JSON API answers in OpenAI's error shape.

The tree::

    PortalError             a page to show with an HTTP status (404 for another tenant's ids, 403, ...)

Domain errors (:class:`bitnet_actor.services.errors.ServiceError`) get their status from the API's one
status map (:func:`bitnet_actor.api.errors.service_error`), so a rule refused by a service looks the same
through both surfaces; their message is safe to show. Anything unexpected is a 500 page naming the request
id, with the details in the log only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from quart import g, request
from werkzeug.exceptions import HTTPException

from bitnet_actor.api.errors import service_error
from bitnet_actor.errors import StoreUnavailableError
from bitnet_actor.services.errors import ServiceError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from quart import Blueprint, Response

__all__ = ["TITLES", "PortalError", "install_error_pages"]

log = logging.getLogger(__name__)

TITLES: Final = {
    400: "That did not work",
    401: "Please sign in",
    403: "Not allowed",
    404: "Page not found",
    405: "Not allowed",
    409: "That conflicts with the current state",
    413: "Too large",
    421: "Served in another region",
    429: "Too many attempts",
    500: "Something went wrong",
    502: "The payment provider refused",
    503: "Temporarily unavailable",
}


class PortalError(Exception):
    """Answer with the error page of ``status``; ``message`` is shown (plain text, escaped)."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def install_error_pages(
    blueprint: Blueprint, render_error: Callable[[int, str, dict[str, str]], Awaitable[Response]]
) -> None:
    """Render the errors of ``blueprint``'s views as pages through ``render_error(status, message, headers)``."""

    @blueprint.errorhandler(PortalError)
    async def _portal(err: PortalError) -> Response:
        return await render_error(err.status, err.message, {})

    @blueprint.errorhandler(ServiceError)
    async def _service(err: ServiceError) -> Response:
        mapped = service_error(err)
        return await render_error(mapped.status, mapped.message, mapped.headers)

    @blueprint.errorhandler(HTTPException)
    async def _http(err: HTTPException) -> Response:
        status = err.code or 500
        messages = {404: "There is no such page.", 405: f"This page does not take {request.method} requests."}
        headers = {}
        if status == 405 and (allow := err.get_response().headers.get("Allow")):
            headers["Allow"] = allow
        return await render_error(status, messages.get(status, err.description or ""), headers)

    @blueprint.errorhandler(StoreUnavailableError)
    async def _store_down(err: StoreUnavailableError) -> Response:
        log.warning("store unavailable: %s", err)
        return await render_error(503, "A backing service is unavailable; try again in a moment.", {"Retry-After": "5"})

    @blueprint.errorhandler(Exception)
    async def _unexpected(err: Exception) -> Response:
        request_id = g.get("request_id") or "-"
        log.error(
            "unhandled error in %s %s", request.method, request.path, exc_info=err, extra={"request_id": request_id}
        )
        return await render_error(500, f"The error was logged with request id {request_id}.", {})
