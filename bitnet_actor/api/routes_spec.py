"""The OpenAPI paths of A/B routes (:mod:`bitnet_actor.api.routes`)."""

from __future__ import annotations

from typing import Any

from bitnet_actor.api.spec_tools import ORG, body, ok, path_param

__all__ = ["ROUTES_PATHS"]

_PUBLIC = path_param("public_name", "the name requests use (not one of the organization's model names)")
_ROUTE = {"type": "object", "description": "a route: public_name and targets", "additionalProperties": True}
_TARGETS = {
    "type": "array",
    "maxItems": 8,
    "items": {
        "type": "object",
        "properties": {
            "version": {"type": "string", "description": "name:version, a published version"},
            "weight": {"type": "integer", "minimum": 0, "maximum": 100},
        },
        "required": ["version", "weight"],
    },
    "description": "weights sum to 100; a request goes to one target, sticky per user (or API key)",
}

ROUTES_PATHS: dict[str, Any] = {
    "/api/v1/orgs/{org_id}/routes": {
        "parameters": [ORG],
        "get": {"summary": "The organization's A/B routes (needs models:read)", "responses": ok("list")},
    },
    "/api/v1/orgs/{org_id}/routes/{public_name}": {
        "parameters": [ORG, _PUBLIC],
        "get": {"summary": "A route and its targets", "responses": ok("route", _ROUTE)},
        "put": {
            "summary": "Create or replace a route; every replica applies it within seconds (needs models:write)",
            "requestBody": body({"targets": _TARGETS}, ["targets"]),
            "responses": {**ok("route", _ROUTE), "409": {"$ref": "#/components/responses/Error"}},
        },
        "delete": {"summary": "Remove a route", "responses": ok("deleted")},
    },
}
