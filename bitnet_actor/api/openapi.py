"""The OpenAPI 3.1 description of ``/api/v1`` and ``/v1`` (served at ``/api/v1/openapi.json``).

The inference part (``/v1/*``) lives in :mod:`bitnet_actor.api.openai.spec`, built from the request protocol.

Written by hand, next to the routes; a test checks that every route of the app is described here and that
nothing here is missing from the app.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify

from bitnet_actor import __version__
from bitnet_actor.api.jobs_spec import JOBS_PATHS
from bitnet_actor.api.openai.spec import V1_PATHS, V1_SCHEMAS
from bitnet_actor.api.registry_spec import REGISTRY_PATHS
from bitnet_actor.api.routes_spec import ROUTES_PATHS
from bitnet_actor.api.saml_spec import SAML_PATHS
from bitnet_actor.api.spec_tools import LIMIT as _LIMIT
from bitnet_actor.api.spec_tools import ORG as _ORG
from bitnet_actor.api.spec_tools import S as _S
from bitnet_actor.api.spec_tools import body as _body
from bitnet_actor.api.spec_tools import id_param as _id
from bitnet_actor.api.spec_tools import ok as _ok
from bitnet_actor.api.spec_tools import query as _q
from bitnet_actor.api.spec_tools import ref as _ref

__all__ = ["SPEC", "blueprint"]

blueprint = Blueprint("openapi", __name__)


_ROLE = {"type": "string", "enum": ["owner", "admin", "member", "viewer", "billing"]}
_SCOPES = {
    "type": "array",
    "items": {"type": "string", "enum": ["inference", "models:read", "models:write", "billing:read", "admin"]},
}


_INT = {"type": "integer"}
_NULL_S = {"type": ["string", "null"]}
_BUCKET_PARAMS = [
    _q("start_time", _INT, "Unix seconds, inclusive (rounded down to its bucket's start)", required=True),
    _q("end_time", _INT, "Unix seconds, exclusive (rounded up to a bucket's end); default now"),
    _q("limit", _INT, "buckets per page (1d: default 7, max 31; 1h: 24, 168; 1m: 60, 1440; costs: 7, 180)"),
    _q("page", _S, "the next_page cursor of the previous page"),
]
_ARRAY = {"type": "array", "items": _S}
_STRIPE_PAGE = {
    "type": "object",
    "properties": {
        "object": {"type": "string", "enum": ["checkout.session", "billing_portal.session"]},
        "id": _S,
        "url": {**_S, "description": "Stripe's page (https); it returns to the portal's billing page"},
    },
}


def _page_of(result: dict[str, Any]) -> dict[str, Any]:
    bucket = {
        "type": "object",
        "properties": {
            "object": {"const": "bucket"},
            "start_time": _INT,
            "end_time": _INT,
            "results": {"type": "array", "items": result},
        },
    }
    return {
        "type": "object",
        "properties": {
            "object": {"const": "page"},
            "data": {"type": "array", "items": bucket},
            "has_more": {"type": "boolean"},
            "next_page": _NULL_S,
        },
    }


_USAGE_RESULT = {
    "type": "object",
    "properties": {
        "object": {"const": "organization.usage.completions.result"},
        "input_tokens": _INT,
        "output_tokens": _INT,
        "input_cached_tokens": _INT,
        "num_model_requests": _INT,
        "model": _NULL_S,
        "api_key_id": _NULL_S,
        "project_id": {"type": "null"},
        "user_id": {"type": "null"},
    },
}
_COST_RESULT = {
    "type": "object",
    "properties": {
        "object": {"const": "organization.costs.result"},
        "amount": {"type": "object", "properties": {"value": {"type": "number"}, "currency": {"const": "usd"}}},
        "line_item": _NULL_S,
        "project_id": {"type": "null"},
    },
}
_INVOICE_ID = {"name": "invoice_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
BILLING_PATHS: dict[str, Any] = {
    "/api/v1/orgs/{org_id}/usage/completions": {
        "parameters": [
            _ORG,
            *_BUCKET_PARAMS,
            _q("bucket_width", {"type": "string", "enum": ["1m", "1h", "1d"]}, "bucket width; default 1d"),
            _q("group_by", {"type": "array", "items": {"enum": ["model", "api_key_id"]}}, "group results by"),
            _q("models", _ARRAY, "only these models"),
            _q("api_key_ids", _ARRAY, "only these API keys"),
        ],
        "get": {
            "summary": "Completions usage per time bucket (OpenAI's usage API; needs billing:read)",
            "responses": _ok("a page of buckets", _page_of(_USAGE_RESULT)),
        },
    },
    "/api/v1/orgs/{org_id}/costs": {
        "parameters": [
            _ORG,
            *_BUCKET_PARAMS,
            _q("bucket_width", {"type": "string", "enum": ["1d"]}, "bucket width (1d only)"),
            _q("group_by", {"type": "array", "items": {"enum": ["line_item", "project_id"]}}, "group results by"),
        ],
        "get": {
            "summary": "Costs per day at the plan's prices, in dollars (OpenAI's costs API; needs billing:read)",
            "responses": _ok("a page of buckets", _page_of(_COST_RESULT)),
        },
    },
    "/api/v1/orgs/{org_id}/invoices": {
        "parameters": [_ORG],
        "get": {
            "summary": "Invoices, newest month first (the current month's a draft computed now)",
            "responses": _ok(
                "list", {"type": "object", "properties": {"data": {"type": "array", "items": _ref("Invoice")}}}
            ),
        },
    },
    "/api/v1/orgs/{org_id}/invoices/{invoice_id}": {
        "parameters": [_ORG, _INVOICE_ID],
        "get": {"summary": "An invoice", "responses": _ok("invoice", _ref("Invoice"))},
    },
    "/api/v1/orgs/{org_id}/billing/checkout": {
        "parameters": [_ORG],
        "post": {
            "summary": "A Stripe Checkout Session subscribing to a paid plan (billing:manage; 404 without Stripe;"
            " 409 when on the plan or subscribed already; 502/503 when Stripe refuses or is down)",
            "requestBody": _body({"plan": {**_S, "description": "a plan with a Stripe price"}}, ["plan"]),
            "responses": {
                **_ok("the session: send the browser to its url", _STRIPE_PAGE),
                **{c: {"$ref": "#/components/responses/Error"} for c in ("502", "503")},
            },
        },
    },
    "/api/v1/orgs/{org_id}/billing/portal": {
        "parameters": [_ORG],
        "post": {
            "summary": "A Stripe Billing Portal session for the organization's customer (billing:manage)",
            "responses": {
                **_ok("the session: send the browser to its url", _STRIPE_PAGE),
                **{c: {"$ref": "#/components/responses/Error"} for c in ("502", "503")},
            },
        },
    },
    "/api/v1/orgs/{org_id}/invoices/{invoice_id}.html": {
        "parameters": [_ORG, _INVOICE_ID],
        "get": {
            "summary": "An invoice as a printable HTML page",
            "responses": {
                "200": {"description": "the page", "content": {"text/html": {"schema": _S}}},
                **{c: {"$ref": "#/components/responses/Error"} for c in ("401", "403", "404")},
            },
        },
    },
}
_INVOICE_SCHEMA = {
    "type": "object",
    "properties": {
        "object": {"const": "invoice"},
        "id": _S,
        "org_id": _S,
        "period": {"type": "string", "description": "YYYY-MM"},
        "period_start": _INT,
        "period_end": _INT,
        "plan": _S,
        "status": {"type": "string", "enum": ["draft", "finalized"]},
        "currency": _S,
        "lines": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "line_no": _INT,
                    "kind": {"type": "string", "enum": ["base_fee", "input_tokens", "output_tokens"]},
                    "model": _NULL_S,
                    "description": _S,
                    "quantity": _INT,
                    "unit_price_per_m_cents": {"type": "string", "description": "cents per 1M tokens, decimal"},
                    "amount_cents": _INT,
                },
            },
        },
        "subtotal_cents": _INT,
        "total_cents": _INT,
        "input_tokens": _INT,
        "output_tokens": _INT,
        "requests": _INT,
        "finalized_at": _NULL_S,
    },
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "bitnet-actor API",
        "version": __version__,
        "description": "The account API (/api/v1) and the OpenAI-compatible inference API (/v1).",
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "API key (bnk_live_...) or access token"},
            "session": {
                "type": "apiKey",
                "in": "cookie",
                "name": "__Host-bitnet_session",
                "description": "portal session; unsafe methods need X-CSRF-Token",
            },
        },
        "responses": {
            "Error": {"description": "OpenAI-shaped error", "content": {"application/json": {"schema": _ref("Error")}}}
        },
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "message": _S,
                            "type": _S,
                            "param": {"type": ["string", "null"]},
                            "code": {"type": ["string", "null"]},
                        },
                    }
                },
            },
            "Organization": {
                "type": "object",
                "properties": {
                    "id": _S,
                    "name": _S,
                    "plan": _S,
                    "created_at": _S,
                    "role": {**_ROLE, "type": ["string", "null"], "enum": [*_ROLE["enum"], None]},  # null: a key
                    "response_cache_ttl_s": {"type": ["integer", "null"]},
                },
            },
            "Member": {
                "type": "object",
                "properties": {"user_id": _S, "email": _S, "name": _S, "role": _ROLE, "joined_at": _S},
            },
            "ApiKey": {
                "type": "object",
                "properties": {
                    "id": _S,
                    "name": _S,
                    "prefix": _S,
                    "last4": _S,
                    "scopes": _SCOPES,
                    "active": {"type": "boolean"},
                    "expires_at": {"type": ["string", "null"]},
                    "revoked_at": {"type": ["string", "null"]},
                    "last_used_at": {"type": ["string", "null"]},
                    "rpm": _LIMIT,
                    "tpm": _LIMIT,
                    "max_concurrency": _LIMIT,
                    "key": {"type": "string", "description": "the secret; only in create/rotate responses"},
                },
            },
            "Invoice": _INVOICE_SCHEMA,
            "AuditEntry": {
                "type": "object",
                "properties": {
                    "seq": {"type": "integer"},
                    "created_at": _S,
                    "action": _S,
                    "actor_user_id": _S,
                    "actor_key_id": _S,
                    "target_type": _S,
                    "target_id": _S,
                    "ip": _S,
                    "user_agent": _S,
                    "details": {"type": "object"},
                    "hash": _S,
                },
            },
        },
    },
    "security": [{"bearer": []}, {"session": []}],
    "paths": {
        "/api/v1/signup": {
            "post": {
                "summary": "Start a sign-up (mails a verification link)",
                "security": [],
                "requestBody": _body(
                    {"email": _S, "password": _S, "organization": _S, "name": _S}, ["email", "password", "organization"]
                ),
                "responses": _ok("always the same answer", status="202"),
            }
        },
        "/api/v1/signup/verify": {
            "post": {
                "summary": "Finish a sign-up; starts a session",
                "security": [],
                "requestBody": _body({"token": _S}, ["token"]),
                "responses": _ok("signed in", status="201"),
            }
        },
        "/api/v1/password/set": {
            "post": {
                "summary": "Set a password from a one-time link",
                "security": [],
                "requestBody": _body({"token": _S, "password": _S}, ["token", "password"]),
                "responses": _ok("signed in"),
            }
        },
        "/api/v1/login": {
            "post": {
                "summary": "Sign in; sets the session cookie",
                "security": [],
                "requestBody": _body({"email": _S, "password": _S}, ["email", "password"]),
                "responses": _ok("signed in"),
            }
        },
        "/api/v1/logout": {"post": {"summary": "End the session", "responses": _ok("signed out", status="204")}},
        "/api/v1/token": {
            "post": {
                "summary": "OAuth-style token endpoint: password or refresh_token grant",
                "security": [],
                "requestBody": _body(
                    {
                        "grant_type": {"type": "string", "enum": ["password", "refresh_token"]},
                        "email": _S,
                        "password": _S,
                        "refresh_token": _S,
                        "org_id": _S,
                    },
                    ["grant_type"],
                ),
                "responses": _ok("access and refresh token"),
            }
        },
        "/api/v1/me": {"get": {"summary": "The signed-in user and their organizations", "responses": _ok("user")}},
        "/api/v1/roles": {"get": {"summary": "What each role may do", "responses": _ok("role table")}},
        "/api/v1/orgs": {
            "get": {"summary": "My organizations", "responses": _ok("list")},
            "post": {
                "summary": "Create an organization",
                "requestBody": _body({"name": _S}, ["name"]),
                "responses": _ok("created", _ref("Organization"), "201"),
            },
        },
        "/api/v1/orgs/{org_id}": {
            "parameters": [_ORG],
            "get": {"summary": "An organization", "responses": _ok("organization", _ref("Organization"))},
            "patch": {
                "summary": "Rename, or change the settings (owner, admin)",
                "requestBody": _body(
                    {
                        "name": _S,
                        "response_cache_ttl_s": {
                            "type": ["integer", "null"],
                            "minimum": 0,
                            "maximum": 604800,
                            "description": "keep deterministic completions (temperature 0 or a seed) this many"
                            " seconds for identical requests; null or 0: the response cache is off",
                        },
                    },
                    [],
                ),
                "responses": _ok("changed", _ref("Organization")),
            },
        },
        "/api/v1/orgs/{org_id}/members": {
            "parameters": [_ORG],
            "get": {"summary": "Members", "responses": _ok("list")},
        },
        "/api/v1/orgs/{org_id}/members/{user_id}": {
            "parameters": [_ORG, _id("user_id")],
            "patch": {
                "summary": "Change a role",
                "requestBody": _body({"role": _ROLE}, ["role"]),
                "responses": _ok("changed", _ref("Member")),
            },
            "delete": {"summary": "Remove a member (or leave)", "responses": _ok("removed", status="204")},
        },
        "/api/v1/orgs/{org_id}/invitations": {
            "parameters": [_ORG],
            "get": {"summary": "Invitations", "responses": _ok("list")},
            "post": {
                "summary": "Invite by email",
                "requestBody": _body({"email": _S, "role": _ROLE}, ["email", "role"]),
                "responses": _ok("invited", status="201"),
            },
        },
        "/api/v1/orgs/{org_id}/invitations/{invitation_id}": {
            "parameters": [_ORG, _id("invitation_id")],
            "delete": {"summary": "Withdraw an invitation", "responses": _ok("withdrawn", status="204")},
        },
        "/api/v1/invitations/accept": {
            "post": {
                "summary": "Accept an invitation",
                "security": [{"session": []}, {}],
                "requestBody": _body({"token": _S, "password": _S}, ["token"]),
                "responses": _ok("joined", status="201"),
            }
        },
        "/api/v1/orgs/{org_id}/keys": {
            "parameters": [_ORG],
            "get": {"summary": "API keys", "responses": _ok("list")},
            "post": {
                "summary": "Create an API key (the secret is shown once)",
                "requestBody": _body(
                    {
                        "name": _S,
                        "scopes": _SCOPES,
                        "expires_at": _S,
                        "rpm": _LIMIT,
                        "tpm": _LIMIT,
                        "max_concurrency": _LIMIT,
                    },
                    ["name", "scopes"],
                ),
                "responses": _ok("created", _ref("ApiKey"), "201"),
            },
        },
        "/api/v1/orgs/{org_id}/keys/{key_id}": {
            "parameters": [_ORG, _id("key_id")],
            "delete": {"summary": "Revoke on every replica", "responses": _ok("revoked", _ref("ApiKey"))},
        },
        "/api/v1/orgs/{org_id}/keys/{key_id}/rotate": {
            "parameters": [_ORG, _id("key_id")],
            "post": {
                "summary": "Replace a key; the old one works for grace_seconds",
                "requestBody": _body({"grace_seconds": {"type": "integer"}}, []),
                "responses": _ok("new key", _ref("ApiKey"), "201"),
            },
        },
        "/api/v1/orgs/{org_id}/audit": {
            "parameters": [
                _ORG,
                {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                {"name": "before", "in": "query", "schema": {"type": "integer"}},
            ],
            "get": {"summary": "Audit log, newest first", "responses": _ok("entries")},
        },
        **BILLING_PATHS,
        **REGISTRY_PATHS,
        **ROUTES_PATHS,
        **JOBS_PATHS,
        **SAML_PATHS,
        "/api/v1/oidc/login": {
            "get": {
                "summary": "Start single sign-on (redirects to the provider)",
                "security": [],
                "responses": {
                    "302": {"description": "to the provider"},
                    "404": {"$ref": "#/components/responses/Error"},
                },  # 404: SSO not configured
            }
        },
        "/api/v1/oidc/callback": {
            "get": {
                "summary": "Single sign-on callback; starts a session",
                "security": [],
                "responses": {"302": {"description": "signed in"}, "404": {"$ref": "#/components/responses/Error"}},
            }
        },
        "/.well-known/jwks.json": {
            "get": {
                "summary": "Public keys of access tokens",
                "security": [],
                "responses": {"200": {"description": "JWKS"}},
            }
        },
        "/api/v1/stripe/webhook": {
            "post": {
                "summary": "Stripe webhook events (authenticated by the Stripe-Signature header alone)",
                "security": [],
                "parameters": [{"name": "Stripe-Signature", "in": "header", "required": True, "schema": _S}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object", "description": "a Stripe event"}}},
                },
                "responses": {
                    "200": {
                        "description": "received (applied now, or already before)",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "received": {"type": "boolean"},
                                        "id": _S,
                                        "duplicate": {"type": "boolean"},
                                        "effect": _S,
                                    },
                                }
                            }
                        },
                    },
                    "400": {"$ref": "#/components/responses/Error"},
                    "404": {"$ref": "#/components/responses/Error"},
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI"}}}
        },
    },
}


SPEC["paths"].update(V1_PATHS)
SPEC["components"]["schemas"].update(V1_SCHEMAS)


@blueprint.get("/api/v1/openapi.json")
async def openapi() -> Response:
    """The OpenAPI document."""
    return jsonify(SPEC)
