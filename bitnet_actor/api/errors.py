"""HTTP errors in OpenAI's shape, and the one place that maps exceptions to statuses.

Every 4xx/5xx body is ``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``, so clients
built for OpenAI's API (the ``openai`` package among them) read our errors unchanged.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from quart import Response, request
from werkzeug.exceptions import HTTPException

from bitnet_actor.errors import StoreUnavailableError
from bitnet_actor.services.errors import (
    AuthenticationError,
    ConflictStateError,
    NotFoundError,
    PaymentProviderError,
    PermissionDeniedError,
    ServiceError,
    ThrottledError,
    ValidationError,
)
from bitnet_actor.services.jwt import KeyDecryptionError

if TYPE_CHECKING:
    from quart import Quart

__all__ = ["ApiError", "error_response", "install_error_handlers", "json_body"]

log = logging.getLogger(__name__)

# status -> (OpenAI error type, default code)
_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "insufficient_permissions"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    422: ("invalid_request_error", "invalid_value"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "payment_provider_error"),
    503: ("server_error", "service_unavailable"),
}


class ApiError(Exception):
    """Raise from a handler to answer with an OpenAI-shaped error.

    Args:
        status: the HTTP status.
        message: one sentence for the client; never internals or other tenants' data.
        param: the request field at fault, if any.
        code: a stable machine-readable code; defaults by status.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        default_type, default_code = _TYPES.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        self.code = code or default_code
        self.type = type_ or default_type
        self.headers = headers or {}


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None, type_: str | None = None
) -> dict[str, Any]:
    """The OpenAI-shaped error object for ``status``."""
    default_type, default_code = _TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {
        "error": {
            "message": message,
            "type": type_ or default_type,
            "param": param,
            "code": code or default_code,
        }
    }


def error_response(err: ApiError) -> Response:
    """Render ``err`` as a JSON response."""
    body = error_body(err.status, err.message, param=err.param, code=err.code, type_=err.type)
    response = Response(json.dumps(body), status=err.status, content_type="application/json")
    for name, value in err.headers.items():
        response.headers[name] = value
    return response


async def json_body(*, max_bytes: int | None = None) -> dict[str, Any]:
    """Parse the request body as a JSON object.

    Raises:
        ApiError: 415 for a non-JSON content type, 400 for malformed JSON or a body that is not an object.
    """
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, f"expected a JSON body (Content-Type: application/json), got {mimetype}")
    raw = await request.get_data(as_text=False)
    if max_bytes is not None and len(raw) > max_bytes:
        raise ApiError(413, f"the request body is larger than {max_bytes} bytes")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return value


def service_error(err: ServiceError) -> ApiError:
    """The HTTP form of a domain error (the one status map)."""
    if isinstance(err, NotFoundError):
        return ApiError(404, str(err))
    if isinstance(err, PermissionDeniedError):
        return ApiError(403, str(err))
    if isinstance(err, AuthenticationError):
        return ApiError(401, str(err))
    if isinstance(err, ConflictStateError):
        return ApiError(409, str(err))
    if isinstance(err, ValidationError):
        return ApiError(400, str(err), param=err.field, code="invalid_value")
    if isinstance(err, ThrottledError):
        return ApiError(429, str(err), headers={"Retry-After": str(err.retry_after)})
    if isinstance(err, PaymentProviderError):  # Stripe's answer, not the request, is at fault
        if err.retryable:
            return ApiError(503, str(err), code="payment_provider_unavailable", headers={"Retry-After": "30"})
        return ApiError(502, str(err), code="payment_provider_error")
    return ApiError(400, str(err))


def install_error_handlers(app: Quart) -> None:
    """Make every error response JSON in OpenAI's shape, 404 and 405 included; hide 500 internals."""

    @app.errorhandler(ApiError)
    async def _api_error(err: ApiError) -> Response:
        return error_response(err)

    @app.errorhandler(HTTPException)
    async def _http_error(err: HTTPException) -> Response:
        status = err.code or 500
        messages = {
            404: f"no route for {request.method} {request.path}",
            405: f"method {request.method} is not allowed on {request.path}",
            413: "the request body is too large",
        }
        message = messages.get(status) or (err.description or err.name)
        headers = {}
        allow = err.get_response().headers.get("Allow") if status == 405 else None
        if allow:
            headers["Allow"] = allow
        return error_response(ApiError(status, message, headers=headers))

    @app.errorhandler(ServiceError)
    async def _service_error(err: ServiceError) -> Response:
        return error_response(service_error(err))

    @app.errorhandler(KeyDecryptionError)
    async def _wrong_secret(err: KeyDecryptionError) -> Response:
        log.error("%s; every replica needs the same BITNET_SECRET_KEY", err)
        return error_response(
            ApiError(
                503, "access tokens are unavailable on this server (misconfigured secret key)", code="misconfigured"
            )
        )

    @app.errorhandler(StoreUnavailableError)
    async def _store_down(err: StoreUnavailableError) -> Response:
        log.warning("store unavailable: %s", err)
        return error_response(
            ApiError(503, "a backing service is unavailable; retry shortly", headers={"Retry-After": "5"})
        )

    @app.errorhandler(Exception)
    async def _unexpected(err: Exception) -> Response:
        request_id = getattr(request, "request_id", None) or "-"
        log.error(
            "unhandled error in %s %s",
            request.method,
            request.path,
            exc_info=err,
            extra={"request_id": request_id},
        )
        return error_response(ApiError(500, f"internal error (request id {request_id})"))
