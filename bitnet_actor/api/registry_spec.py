"""The OpenAPI paths of the model registry and uploads (:mod:`bitnet_actor.api.registry`,
:mod:`bitnet_actor.api.uploads`)."""

from __future__ import annotations

from typing import Any

from bitnet_actor.api.spec_tools import ORG, S, body, id_param, ok, path_param, query

__all__ = ["REGISTRY_PATHS"]

_NAME = path_param("name", "model name")
_VERSION = path_param("version")
_ALIAS = path_param("alias")
_UPLOAD = id_param("upload_id")
_MODEL_VERSION = {"type": "object", "description": "a model version (name:version)", "additionalProperties": True}
_UPLOAD_STATE = {"type": "object", "description": "a resumable upload", "additionalProperties": True}
_FILE = {
    "required": True,
    "description": "a GGUF file, or an HF model directory as a tar, tar.gz or zip archive",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}

REGISTRY_PATHS: dict[str, Any] = {
    "/api/v1/orgs/{org_id}/models": {
        "parameters": [ORG],
        "get": {"summary": "The organization's models and the platform's (needs models:read)", "responses": ok("list")},
        "post": {
            "summary": "Upload a model in one streamed body; it is inspected, then published (needs models:write)",
            "parameters": [
                query("name", S, "model name", required=True),
                query("version", S, "version label", required=True),
                query("description", S, "a description"),
            ],
            "requestBody": _FILE,
            "responses": {
                **ok("the published version", _MODEL_VERSION, "201"),
                "413": {"$ref": "#/components/responses/Error"},
            },
        },
    },
    "/api/v1/orgs/{org_id}/models/uploads": {
        "parameters": [ORG],
        "post": {
            "summary": "Start a resumable upload",
            "requestBody": body({"total_bytes": {"type": "integer", "minimum": 0}}, []),
            "responses": {**ok("the upload", _UPLOAD_STATE, "201"), "413": {"$ref": "#/components/responses/Error"}},
        },
    },
    "/api/v1/orgs/{org_id}/models/uploads/{upload_id}": {
        "parameters": [ORG, _UPLOAD],
        "get": {"summary": "Where an upload stands (received_bytes: where to resume)", "responses": ok("upload")},
        "put": {
            "summary": "One byte range (Content-Range: bytes START-END/TOTAL), starting at received_bytes",
            "parameters": [
                {"name": "Content-Range", "in": "header", "required": True, "schema": S},
            ],
            "requestBody": _FILE,
            "responses": {
                **ok("upload", _UPLOAD_STATE),
                "413": {"$ref": "#/components/responses/Error"},
                "416": {"$ref": "#/components/responses/Error"},
            },
        },
        "delete": {"summary": "Abort an upload (its ranges are deleted)", "responses": ok("upload")},
    },
    "/api/v1/orgs/{org_id}/models/uploads/{upload_id}/complete": {
        "parameters": [ORG, _UPLOAD],
        "post": {
            "summary": "Join the ranges, inspect and publish them as name:version",
            "requestBody": body({"name": S, "version": S, "description": S}, ["name", "version"]),
            "responses": ok("the published version", _MODEL_VERSION, "201"),
        },
    },
    "/api/v1/orgs/{org_id}/models/{name}": {
        "parameters": [ORG, _NAME],
        "get": {"summary": "A model's versions and aliases", "responses": ok("model")},
    },
    "/api/v1/orgs/{org_id}/models/{name}/versions/{version}": {
        "parameters": [ORG, _NAME, _VERSION],
        "get": {"summary": "A version", "responses": ok("version", _MODEL_VERSION)},
        "patch": {
            "summary": "Attach eval figures or a description (needs models:write)",
            "requestBody": body({"evals": {"type": "object"}, "description": S}, []),
            "responses": ok("version", _MODEL_VERSION),
        },
        "delete": {"summary": "Delete a version (409 while a route sends it traffic)", "responses": ok("deleted")},
    },
    "/api/v1/orgs/{org_id}/models/{name}/versions/{version}/deprecate": {
        "parameters": [ORG, _NAME, _VERSION],
        "post": {"summary": "Deprecate a published version (it keeps serving)", "responses": ok("version")},
    },
    "/api/v1/orgs/{org_id}/models/{name}/versions/{version}/download": {
        "parameters": [ORG, _NAME, _VERSION],
        "post": {
            "summary": "A short-lived signed URL to download the version's file (needs models:write)",
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"expires_in": {"type": "integer", "minimum": 1, "maximum": 86400}},
                            "additionalProperties": False,
                        }
                    }
                },
            },
            "responses": ok(
                "the link",
                {
                    "type": "object",
                    "properties": {
                        "object": S,
                        "url": S,
                        "expires_at": {"type": "integer"},
                        "model": S,
                        "filename": S,
                        "bytes": {"type": "integer"},
                        "sha256": S,
                    },
                },
            ),
        },
    },
    "/api/v1/model-downloads/{token}": {
        "parameters": [path_param("token", "the signed link's token")],
        "get": {
            "summary": "Download a version's file (decrypted) through a signed link; one byte range at most",
            "security": [],
            "parameters": [
                {"name": "Range", "in": "header", "required": False, "schema": S},
                {"name": "If-Range", "in": "header", "required": False, "schema": S},
            ],
            "responses": {
                "200": {"description": "the file", "content": {"application/octet-stream": {}}},
                "206": {"description": "the byte range asked for", "content": {"application/octet-stream": {}}},
                "403": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"},
                "416": {"$ref": "#/components/responses/Error"},
            },
        },
    },
    "/api/v1/orgs/{org_id}/models/{name}/versions/{version}/lineage": {
        "parameters": [ORG, _NAME, _VERSION],
        "get": {"summary": "The chain of versions to the root and how each was made", "responses": ok("list")},
    },
    "/api/v1/orgs/{org_id}/models/{name}/aliases/{alias}": {
        "parameters": [ORG, _NAME, _ALIAS],
        "put": {
            "summary": "Point name@alias at a published version ('latest' moves by itself)",
            "requestBody": body({"version": S}, ["version"]),
            "responses": ok("alias"),
        },
        "delete": {"summary": "Remove an alias", "responses": ok("deleted")},
    },
}
