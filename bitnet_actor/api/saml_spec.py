"""The OpenAPI paths of SAML single sign-on (:mod:`bitnet_actor.api.saml`)."""

from __future__ import annotations

from typing import Any

from bitnet_actor.api.spec_tools import ORG, S, body, id_param, ok, query

__all__ = ["SAML_PATHS"]

_ORG_ID = id_param("org_id")
_NULL_S = {"type": ["string", "null"]}
_CONFIG = {
    "type": "object",
    "description": "org_id, available (xmlsec1 installed), sp (entity_id, acs_url, metadata_url, login_url) and"
    " config (null when none: enabled, idp_entity_id, idp_sso_url, idp_certificates with their SHA-256"
    " fingerprints and expiry, email_attribute, name_attribute, allowed_email_domains, default_role)",
    "additionalProperties": True,
}
_PROPERTIES = {
    "enabled": {"type": "boolean", "description": "default true"},
    "idp_entity_id": {**S, "description": "the IdP's entity id (its metadata's entityID)"},
    "idp_sso_url": {**S, "description": "the IdP's SingleSignOnService URL for the HTTP-Redirect binding"},
    "idp_certificates": {
        "type": "array",
        "minItems": 1,
        "maxItems": 4,
        "items": S,
        "description": "the IdP's signing certificates, PEM (several while a rotation overlaps)",
    },
    "email_attribute": {
        **_NULL_S,
        "description": "attribute (Name or FriendlyName) holding the email; null: the NameID",
    },
    "name_attribute": {**_NULL_S, "description": "attribute holding the display name; null: none"},
    "allowed_email_domains": {"type": "array", "maxItems": 50, "items": S, "description": "empty: any domain"},
    "default_role": {
        "type": "string",
        "enum": ["admin", "member", "viewer", "billing"],
        "description": "role of members provisioned at their first sign-in (default member)",
    },
}

SAML_PATHS: dict[str, Any] = {
    "/api/v1/orgs/{org_id}/sso/saml": {
        "parameters": [ORG],
        "get": {
            "summary": "The SAML configuration and our SP's URLs (owners and admins)",
            "responses": ok("config", _CONFIG),
        },
        "put": {
            "summary": "Create or replace the SAML configuration (owners and admins; audit-logged)",
            "requestBody": body(_PROPERTIES, ["idp_entity_id", "idp_sso_url", "idp_certificates"]),
            "responses": ok("config", _CONFIG),
        },
        "delete": {"summary": "Remove the SAML configuration", "responses": ok("deleted", status="204")},
    },
    "/api/v1/saml/{org_id}/metadata": {
        "parameters": [_ORG_ID],
        "get": {
            "summary": "Our SAML SP metadata for the organization",
            "security": [],
            "responses": {
                "200": {"description": "metadata", "content": {"application/samlmetadata+xml": {}}},
                "404": {"$ref": "#/components/responses/Error"},  # no such organization, or no SAML set up
            },
        },
    },
    "/api/v1/saml/{org_id}/login": {
        "parameters": [_ORG_ID, query("return_to", S, "a local path to go to after signing in (default /)")],
        "get": {
            "summary": "Start SAML single sign-on (redirects to the organization's IdP)",
            "security": [],
            "responses": {"302": {"description": "to the IdP"}, **ok("unused")},
        },
    },
    "/api/v1/saml/{org_id}/acs": {
        "parameters": [_ORG_ID],
        "post": {
            "summary": "SAML assertion consumer service (HTTP-POST binding); starts a session",
            "security": [],
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "properties": {"SAMLResponse": S, "RelayState": S},
                            "required": ["SAMLResponse", "RelayState"],
                        }
                    }
                },
            },
            "responses": {"303": {"description": "signed in: to the path given at login"}, **ok("unused")},
        },
    },
}
