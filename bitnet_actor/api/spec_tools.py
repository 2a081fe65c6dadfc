"""Small builders for the OpenAPI document's parts (shared by :mod:`bitnet_actor.api.openapi` and the
per-area path tables such as :mod:`bitnet_actor.api.registry_spec`)."""

from __future__ import annotations

from typing import Any

__all__ = ["LIMIT", "ORG", "S", "body", "id_param", "ok", "path_param", "query", "ref"]


def ref(name: str) -> dict[str, str]:
    """A reference to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A JSON request body of these properties (no others)."""
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def ok(description: str, schema: dict[str, Any] | None = None, status: str = "200") -> dict[str, Any]:
    """A success response and the error responses every route may give."""
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = {"application/json": {"schema": schema}}
    errors = {code: {"$ref": "#/components/responses/Error"} for code in ("400", "401", "403", "404", "409", "429")}
    return {status: response, **errors}


S = {"type": "string"}
LIMIT = {"type": ["integer", "null"], "minimum": 0, "description": "this key's own limit (null: the plan's)"}
ORG = {
    "name": "org_id",
    "in": "path",
    "required": True,
    "description": "an organization's id, or `current`: the calling API key's organization (for a signed-in"
    " user: the access token's organization, else their only one)",
    "schema": {"anyOf": [{"type": "string", "format": "uuid"}, {"type": "string", "const": "current"}]},
}


def id_param(name: str) -> dict[str, Any]:
    """A UUID path parameter."""
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}


def path_param(name: str, description: str = "") -> dict[str, Any]:
    """A string path parameter."""
    return {"name": name, "in": "path", "required": True, "schema": S, "description": description}


def query(name: str, schema: dict[str, Any], description: str, *, required: bool = False) -> dict[str, Any]:
    """A query parameter."""
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}
