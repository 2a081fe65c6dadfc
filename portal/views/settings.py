"""Organization settings: its name (renamed with ``org:update``), its id, plan and home region (set by an
operator: ``bitnet-actor admin set-region``), and SAML single sign-on.

Single sign-on is the SAML service's (``handles().auth.saml``, :mod:`bitnet_actor.services.saml`), with the
API's rules (``/api/v1/orgs/<org>/sso/saml``): owners and admins (``org:update``) see our service provider's
entity id, ACS URL and metadata link for their IdP, and set the whole configuration with one form (checked by
:meth:`SamlConfigUpdate.check <bitnet_actor.services.saml.SamlConfigUpdate.check>`; a refusal is shown
beside its field) or remove it after a confirmation page; the service writes the audit log. Every other role
sees whether members can sign in with SSO, nothing of the configuration.

The form's text becomes the service's values here: the certificates box holds one or more PEM certificates
(nothing else), the domains box domains separated by commas, spaces or lines; the entity id, URL and
attribute names are taken without the spaces a paste brings, and an empty attribute means none.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

from bitnet_actor.api.auth import handles
from bitnet_actor.services import tenancy
from bitnet_actor.services.billing import plans
from bitnet_actor.services.errors import ConflictStateError, ValidationError
from bitnet_actor.services.saml import DEFAULT_ROLES, SamlConfigUpdate
from portal.errors import PortalError
from portal.forms import FormState, read_form, text
from portal.tenancy import OrgPage, org_page
from portal.web import blueprint, flash, render, see_other

if TYPE_CHECKING:
    from collections.abc import Mapping

    from quart import Response

    from bitnet_actor.services.saml import SamlConfig, SamlService

__all__ = ["saml_update"]

_PEM: Final = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)
_MAX_CERTIFICATES_TEXT: Final = 80_000  # four certificates of 16 KiB (the service's limit each), and spaces
_MAX_DOMAINS_TEXT: Final = 16_384  # fifty domains of up to 253 characters, and separators
ROLE_OPTIONS: Final = tuple((r, r) for r in DEFAULT_ROLES)


def _certificates(value: str) -> list[str]:
    if len(value) > _MAX_CERTIFICATES_TEXT:
        raise ValidationError("the certificates are too long", field="idp_certificates")
    found = _PEM.findall(value)
    if _PEM.sub("", value).strip():
        raise ValidationError(
            "paste only PEM certificates (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----)",
            field="idp_certificates",
        )
    return found


def _domains(value: str) -> list[str]:
    if len(value) > _MAX_DOMAINS_TEXT:
        raise ValidationError("the list of domains is too long", field="allowed_email_domains")
    return [d for d in re.split(r"[\s,]+", value) if d]


def saml_update(form: Mapping[str, str]) -> SamlConfigUpdate:
    """The configuration the SSO form describes.

    Raises:
        ValidationError: a field is missing or malformed; ``field`` names it (the form's field names are the
            service's).
    """
    return SamlConfigUpdate.check(
        enabled=form.get("enabled") == "on",
        idp_entity_id=text(form, "idp_entity_id").strip(),
        idp_sso_url=text(form, "idp_sso_url").strip(),
        idp_certificates=_certificates(form.get("idp_certificates", "")),
        email_attribute=text(form, "email_attribute", required=False).strip() or None,
        name_attribute=text(form, "name_attribute", required=False).strip() or None,
        allowed_email_domains=_domains(form.get("allowed_email_domains", "")),
        default_role=form.get("default_role", ""),
    )


def _form_values(config: SamlConfig | None) -> dict[str, Any]:
    if config is None:
        return {"enabled": "on", "default_role": "member"}
    return {
        "enabled": "on" if config.enabled else "",
        "idp_entity_id": config.idp_entity_id,
        "idp_sso_url": config.idp_sso_url,
        "idp_certificates": "".join(config.idp_certificates),
        "email_attribute": config.email_attribute or "",
        "name_attribute": config.name_attribute or "",
        "allowed_email_domains": "\n".join(config.allowed_email_domains),
        "default_role": config.default_role,
    }


async def _settings(
    page: OrgPage, state: FormState, *, sso_state: FormState | None = None, status: int = 200
) -> Response:
    profile = await plans.org_profile(handles().stores.db, page.org.id)
    saml = handles().auth.saml
    config = await saml.get_config(page.org.id) if saml is not None else None
    manage = saml is not None and page.can("org:update")
    return await render(
        "portal/org/settings.html",
        status=status,
        page=page,
        profile=profile,
        state=state,
        saml=saml,
        config=config,
        sp=saml.endpoints(page.org.id) if manage and saml is not None else None,
        certificates=config.certificates() if manage and config is not None else [],
        sso_state=sso_state or FormState(values=_form_values(config)),
        role_options=ROLE_OPTIONS,
    )


@blueprint.get("/orgs/<uuid:org_id>/settings")
@org_page("org:read")
async def settings(page: OrgPage) -> Response:
    """The organization's settings."""
    return await _settings(page, FormState(values={"name": page.org.name}))


@blueprint.post("/orgs/<uuid:org_id>/settings/name")
@org_page("org:update")
async def rename(page: OrgPage) -> Response:
    """Rename the organization."""
    form = await read_form()
    try:
        org = await tenancy.update_org(handles().stores.db, page.org.id, name=form.get("name", ""), actor=page.actor)
    except (ValidationError, ConflictStateError) as exc:
        return await _settings(page, FormState.refused(form, exc, default_field="name"), status=400)
    await flash(f"The organization is now called {org.name}.")
    return see_other("portal.settings", org_id=page.org.id)


def _saml() -> SamlService:
    saml = handles().auth.saml
    if saml is None:
        raise PortalError(404, "SAML single sign-on is not enabled on this server.")
    return saml


@blueprint.post("/orgs/<uuid:org_id>/settings/sso")
@org_page("org:update")
async def sso_save(page: OrgPage) -> Response:
    """Create or replace the organization's SAML configuration."""
    saml = _saml()
    form = await read_form()
    try:
        update = saml_update(form)
    except ValidationError as exc:
        state = FormState(values={"name": page.org.name})
        return await _settings(page, state, sso_state=FormState.refused(form, exc), status=400)
    await saml.put_config(page.org.id, update, actor=page.actor)
    await flash("Single sign-on is saved." if update.enabled else "Single sign-on is saved, and turned off.")
    return see_other("portal.settings", org_id=page.org.id)


async def _configured(page: OrgPage) -> SamlService:
    saml = _saml()
    if await saml.get_config(page.org.id) is None:
        raise PortalError(404, "Single sign-on is not configured for this organization.")
    return saml


@blueprint.get("/orgs/<uuid:org_id>/settings/sso/delete")
@org_page("org:update")
async def sso_delete_confirm(page: OrgPage) -> Response:
    """Ask before removing single sign-on."""
    await _configured(page)
    return await render("portal/org/sso_delete.html", page=page)


@blueprint.post("/orgs/<uuid:org_id>/settings/sso/delete")
@org_page("org:update")
async def sso_delete(page: OrgPage) -> Response:
    """Remove the organization's SAML configuration (members keep their accounts and memberships)."""
    saml = await _configured(page)
    if not await saml.delete_config(page.org.id, actor=page.actor):  # removed meanwhile by someone else
        raise PortalError(404, "Single sign-on is not configured for this organization.")
    await flash("Single sign-on is removed.")
    return see_other("portal.settings", org_id=page.org.id)
