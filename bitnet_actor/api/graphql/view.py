"""``/graphql``: GraphQL over HTTP, read-only, with ``/api/v1``'s authentication.

- ``POST /graphql`` with ``Content-Type: application/json`` and ``{"query", "variables", "operationName"}``
  (``extensions`` ignored); a JSON array (a batch) is refused. ``GET /graphql?query=...&variables=<JSON>
  &operationName=...`` runs queries only: a document with any other operation is a 405 (there are none in
  the schema anyway).
- Credentials as ``/api/v1`` takes them (:func:`~bitnet_actor.api.auth.authenticate`): an API key, a
  user's access token, or the portal session cookie (a cookie ``POST`` carries ``X-CSRF-Token``). Nothing
  is parsed for an anonymous caller: 401. So introspection, too, is for authenticated callers only; it
  shows the schema, which holds no tenant's data (README.md documents it anyway).
- Answers are ``{"data": ..., "errors": [...]}`` with ``application/json``. A request error (malformed JSON,
  no query, a parse or validation error, a limit of :mod:`.limits`, bad variables) is a 400 with ``errors``
  only; the body past :data:`~.limits.MAX_BODY_BYTES` is a 413; unauthenticated a 401, a cookie ``POST``
  without its CSRF token a 403. An executed query is a 200 even when some fields were refused: each such
  error's ``extensions`` hold ``code`` and the ``status`` REST answers for the same read (403 FORBIDDEN,
  404 NOT_FOUND for another tenant's object, 400 BAD_REQUEST), and its field is null.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Final

from graphql import GraphQLError, OperationDefinitionNode, OperationType, execute_sync, parse, validate
from quart import Blueprint, Response, g, request

from bitnet_actor.api.auth import OrgAccess, authenticate, bound, handles
from bitnet_actor.api.errors import ApiError, service_error
from bitnet_actor.api.graphql import limits
from bitnet_actor.api.graphql.context import MAX_ROUNDS, GraphContext
from bitnet_actor.api.graphql.schema import GRAPHQL_SCHEMA
from bitnet_actor.services.errors import ServiceError

if TYPE_CHECKING:
    from graphql import DocumentNode, ExecutionResult

__all__ = ["blueprint"]

log = logging.getLogger(__name__)

blueprint = Blueprint("graphql", __name__)

MAX_VALIDATION_ERRORS: Final = 20
_CODES: Final = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "REQUEST_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMITED",
}


def _answer(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers, content_type="application/json")


def _refuse(status: int, message: str, *, headers: dict[str, str] | None = None) -> Response:
    error = {"message": message, "extensions": {"code": _CODES.get(status, "BAD_REQUEST"), "status": status}}
    return _answer({"errors": [error]}, status, headers)


def _format(error: GraphQLError, default_code: str) -> dict[str, Any]:
    """One error as the response shows it: domain refusals with their REST status, internals hidden."""
    out: dict[str, Any] = dict(error.formatted)
    original: BaseException | None = error.original_error
    if isinstance(original, ServiceError):
        original = service_error(original)
    if isinstance(original, ApiError):
        out["message"] = original.message
        extensions: dict[str, Any] = {"code": _CODES.get(original.status, "BAD_REQUEST"), "status": original.status}
        if original.param:
            extensions["param"] = original.param
        out["extensions"] = extensions
    elif original is not None:
        request_id = g.get("request_id") or "-"
        log.error("GraphQL resolver failed", exc_info=original, extra={"request_id": request_id})
        out["message"] = f"internal error (request id {request_id})"
        out["extensions"] = {"code": "INTERNAL_SERVER_ERROR", "status": 500}
    else:
        out.setdefault("extensions", {}).setdefault("code", default_code)
    return out


def _request_errors(errors: list[GraphQLError], code: str) -> Response:
    return _answer({"errors": [_format(e, code) for e in errors]}, 400)


class _Params:
    def __init__(self, query: object, variables: object, operation_name: object) -> None:
        if not isinstance(query, str) or not query.strip():
            raise ApiError(400, "give the GraphQL document as a non-empty string in 'query'", param="query")
        if variables is not None and not isinstance(variables, dict):
            raise ApiError(400, "'variables' must be a JSON object", param="variables")
        if operation_name is not None and not isinstance(operation_name, str):
            raise ApiError(400, "'operationName' must be a string", param="operationName")
        if len(query.encode()) > limits.MAX_QUERY_BYTES:
            raise ApiError(400, f"the query is longer than {limits.MAX_QUERY_BYTES} bytes")
        self.query: str = query
        self.variables: dict[str, Any] = variables or {}
        self.operation_name: str | None = operation_name


async def _params() -> _Params:
    """The request's query, variables and operation name (GET's query string, or POST's JSON body).

    Raises:
        ApiError: 400 malformed or a batch; 413 too large; 415 not JSON.
    """
    if request.method == "GET":
        raw_variables = request.args.get("variables")
        try:
            variables = json.loads(raw_variables) if raw_variables else None
        except json.JSONDecodeError:
            raise ApiError(400, "'variables' must be a JSON object", param="variables") from None
        return _Params(request.args.get("query"), variables, request.args.get("operationName"))
    mimetype = request.mimetype
    if mimetype != "application/json":
        raise ApiError(415, f"send the query as application/json, not {mimetype or 'nothing'}")
    if (request.content_length or 0) > limits.MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is larger than {limits.MAX_BODY_BYTES} bytes")
    raw = await request.get_data(as_text=False)
    if len(raw) > limits.MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is larger than {limits.MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if isinstance(body, list):
        raise ApiError(400, "batched operations are not supported: send one operation per request")
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object {query, variables, operationName}")
    return _Params(body.get("query"), body.get("variables"), body.get("operationName"))


async def _execute(ctx: GraphContext, document: DocumentNode, params: _Params) -> ExecutionResult:
    """Execute ``document`` in rounds until one wants nothing new (see :mod:`.context`)."""
    for _ in range(MAX_ROUNDS):
        result = execute_sync(
            GRAPHQL_SCHEMA,
            document,
            context_value=ctx,
            variable_values=params.variables,
            operation_name=params.operation_name,
        )
        if not await ctx.fetch_wanted():
            return result
    raise RuntimeError(f"a GraphQL query still wanted fetches after {MAX_ROUNDS} rounds")


@blueprint.route("/graphql", methods=["GET", "POST"])
async def graphql() -> Response:
    """Run one read-only GraphQL operation for the authenticated caller."""
    try:
        principal = await authenticate()
        assert principal is not None
        params = await _params()
    except ApiError as err:
        return _refuse(err.status, err.message, headers=err.headers)
    try:
        # allow_empty_selection_sets: graphql-core 3.3's experiment; the spec refuses `{ }`
        document = parse(params.query, max_tokens=limits.MAX_TOKENS, allow_empty_selection_sets=False)
    except GraphQLError as err:
        return _request_errors([err], "GRAPHQL_PARSE_FAILED")
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if request.method == "GET" and any(op.operation is not OperationType.QUERY for op in operations):
        return _refuse(405, "GET runs queries only; send other operations with POST", headers={"Allow": "POST"})
    errors = validate(GRAPHQL_SCHEMA, document, max_errors=MAX_VALIDATION_ERRORS, allow_empty_selection_sets=False)
    if errors:
        return _request_errors(errors, "GRAPHQL_VALIDATION_FAILED")
    errors = limits.check(GRAPHQL_SCHEMA, document, params.variables)
    if errors:
        return _request_errors(errors, "QUERY_TOO_COMPLEX")
    ctx = GraphContext(handles(), principal)
    result = await _execute(ctx, document, params)
    standings = ctx.fetched_of(OrgAccess)
    if len({s.org_id for s in standings}) == 1:
        bound(standings[0])  # one organization asked for: the request's log line and trace name it, as REST's
    if result.data is None:  # nothing ran: bad variables, no such operation
        return _request_errors(list(result.errors or ()), "BAD_REQUEST")
    body: dict[str, Any] = {"data": result.data}
    if result.errors:
        body["errors"] = [_format(e, "INTERNAL_SERVER_ERROR") for e in result.errors]
    return _answer(body)
