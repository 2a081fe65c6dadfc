"""SAML 2.0 single sign-on per organization (:mod:`bitnet_actor.services.saml` does the work).

- ``GET|PUT|DELETE /api/v1/orgs/{org}/sso/saml``: the organization's IdP configuration, for its owners and
  admins (signed in: not API keys; changes are audit-logged). GET shows our SP's URLs too, with or without a
  configuration.
- ``GET /api/v1/saml/{org}/metadata``: our SP metadata for the IdP.
- ``GET /api/v1/saml/{org}/login?return_to=/path``: redirects to the IdP with an AuthnRequest (HTTP-Redirect
  binding) and binds the sign-in to this browser with a short-lived ``__Host-`` cookie (SameSite=None: the
  IdP's POST back is a cross-site request, and a Lax cookie would not come with it).
- ``POST /api/v1/saml/{org}/acs``: the IdP's response (HTTP-POST binding). Verified, the user found or
  provisioned, a session started as for password sign-in (cookie; CSRF token bound to the session), then a
  303 to the path given at ``login``. Refusals are 4xx in the API's error shape, ``code`` ``saml_<reason>``.
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, jsonify, redirect, request

from bitnet_actor.api.accounts import json_ready, start_session
from bitnet_actor.api.auth import OrgRef, handles, org_access, request_actor
from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.validate import Field, parse_body
from bitnet_actor.services.saml import (
    REQUEST_TTL_S,
    SamlAccountError,
    SamlConfigUpdate,
    SamlDisabledError,
    SamlError,
    SamlNotConfiguredError,
    SamlRequestError,
    SamlResponseError,
    SamlService,
    SamlUnavailableError,
)

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.api.auth import OrgAccess
    from bitnet_actor.services.saml import SamlConfig

__all__ = ["BINDING_COOKIE", "blueprint"]

blueprint = Blueprint("saml", __name__, url_prefix="/api/v1")

BINDING_COOKIE = "__Host-bitnet_saml"
_BINDING = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
_MAX_FORM_FIELD = 600 * 1024
_STATUS: tuple[tuple[type[SamlError], int], ...] = (
    (SamlNotConfiguredError, 404),
    (SamlDisabledError, 403),
    (SamlUnavailableError, 503),
    (SamlRequestError, 400),
    (SamlResponseError, 401),
    (SamlAccountError, 403),
)


def _service() -> SamlService:
    saml = handles().auth.saml
    if saml is None:
        raise ApiError(404, "SAML single sign-on is not enabled on this server", code="saml_not_configured")
    return saml


def _api_error(exc: SamlError) -> ApiError:
    status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 400)
    return ApiError(status, f"single sign-on failed: {exc}", code=f"saml_{exc.reason}")


# ------------------------------------------------------------------ configuration (owners and admins)


async def _admin_access(org_id: OrgRef) -> OrgAccess:
    access = await org_access(org_id, "org:update")
    if access.principal.key is not None:
        raise ApiError(403, "single sign-on settings need a signed-in owner or admin, not an API key")
    return access


def _config_json(saml: SamlService, org_id: UUID, config: SamlConfig | None) -> dict[str, Any]:
    sp = saml.endpoints(org_id)
    out: dict[str, Any] = {"org_id": str(org_id), "available": saml.available, "sp": json_ready(sp), "config": None}
    if config is not None:
        certs = [{**json_ready(c), "expired": c.expired} for c in config.certificates()]
        out["config"] = {**json_ready(config), "idp_certificates": certs}
        del out["config"]["org_id"]
    return out


@blueprint.get("/orgs/<org:org_id>/sso/saml")
async def get_config(org_id: OrgRef) -> Response:
    """The organization's SAML configuration (``config`` null when none) and our SP's URLs."""
    access = await _admin_access(org_id)
    saml = _service()
    return jsonify(_config_json(saml, access.org_id, await saml.get_config(access.org_id)))


@blueprint.put("/orgs/<org:org_id>/sso/saml")
async def put_config(org_id: OrgRef) -> Response:
    """Create or replace the organization's SAML configuration."""
    access = await _admin_access(org_id)
    saml = _service()
    body = await parse_body(
        {
            "enabled": Field(bool, required=False),
            "idp_entity_id": Field(str, max_len=1024),
            "idp_sso_url": Field(str, max_len=2048),
            "idp_certificates": Field(list, max_len=4),
            "email_attribute": Field(str, required=False, max_len=256),
            "name_attribute": Field(str, required=False, max_len=256),
            "allowed_email_domains": Field(list, required=False, max_len=50),
            "default_role": Field(str, required=False, max_len=20),
        }
    )
    update = SamlConfigUpdate.check(**body)  # ValidationError -> 400 naming the field
    config = await saml.put_config(access.org_id, update, actor=access.actor)
    return jsonify(_config_json(saml, access.org_id, config))


@blueprint.delete("/orgs/<org:org_id>/sso/saml")
async def delete_config(org_id: OrgRef) -> Response:
    """Remove the organization's SAML configuration (its members keep their accounts and memberships)."""
    access = await _admin_access(org_id)
    if not await _service().delete_config(access.org_id, actor=access.actor):
        raise ApiError(404, "single sign-on is not configured for this organization", code="saml_not_configured")
    return Response(b"", status=204)


# ------------------------------------------------------------------ the sign-in (no credentials: the IdP's)


@blueprint.get("/saml/<uuid:org_id>/metadata")
async def metadata(org_id: UUID) -> Response:
    """Our SP metadata for the organization."""
    xml = await _service().metadata(org_id)
    response = Response(xml, content_type="application/samlmetadata+xml; charset=utf-8")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@blueprint.get("/saml/<uuid:org_id>/login")
async def login(org_id: UUID) -> Any:
    """Redirect to the organization's IdP."""
    existing = request.cookies.get(BINDING_COOKIE, "")
    binding = existing if _BINDING.match(existing) else secrets.token_urlsafe(32)  # several tabs share one
    try:
        url = await _service().begin_login(org_id, return_to=request.args.get("return_to") or "/", binding=binding)
    except SamlError as exc:
        raise _api_error(exc) from None
    response = redirect(url, 302)
    response.headers["Cache-Control"] = "no-store"
    response.set_cookie(
        BINDING_COOKIE, binding, max_age=REQUEST_TTL_S, path="/", secure=True, httponly=True, samesite="None"
    )
    return response


@blueprint.post("/saml/<uuid:org_id>/acs")
async def acs(org_id: UUID) -> Any:
    """The IdP's response: verify, find or provision the user, start a session, go back."""
    form = await request.form
    saml_response, relay_state = form.get("SAMLResponse", ""), form.get("RelayState", "")
    if len(saml_response) > _MAX_FORM_FIELD or len(relay_state) > 1024:
        raise ApiError(413, "the SAML response is too large")
    try:
        done = await _service().complete_login(
            org_id,
            saml_response=saml_response,
            relay_state=relay_state,
            binding=request.cookies.get(BINDING_COOKIE),
            actor=request_actor(),
        )
    except SamlError as exc:
        raise _api_error(exc) from None
    session = await start_session(done.user_id, {})
    target = redirect(done.return_to, 303)  # 303: the browser follows a POST with a GET
    target.headers.add("Set-Cookie", session.headers["Set-Cookie"])
    target.headers["Cache-Control"] = "no-store"
    target.delete_cookie(BINDING_COOKIE, path="/", secure=True, httponly=True, samesite="None")
    return target
