"""API keys: the list (with when each was last used), creating one (name, scopes, expiry, limits) whose
secret is shown once, revoking and rotating.

The rules are the services' and the API's: ``keys:read`` lists, ``keys:manage`` changes; a key's scopes never
exceed what its creator's role allows (:func:`~bitnet_actor.services.permissions.scopes_allowed`); its own
limits may tighten the plan's per-key limits, never loosen them (:func:`~bitnet_actor.services.billing.plans
.key_limits`). A key id in the URL is looked up inside the page's organization only (another's is a 404).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from bitnet_actor.api.auth import handles
from bitnet_actor.services import api_keys
from bitnet_actor.services.billing import plans
from bitnet_actor.services.errors import PermissionDeniedError, ValidationError
from bitnet_actor.services.permissions import SCOPES, scopes_allowed
from portal.errors import PortalError
from portal.forms import FormState, day_start, optional_date, optional_int, read_form, text
from portal.tenancy import OrgPage, org_page
from portal.web import blueprint, flash, render, see_other

if TYPE_CHECKING:
    from collections.abc import Mapping
    from uuid import UUID

    from quart import Response

__all__ = ["EXPIRY_CHOICES", "GRACE_CHOICES", "key_status"]

EXPIRY_CHOICES: Final = (
    ("", "Never"),
    ("7", "In 7 days"),
    ("30", "In 30 days"),
    ("90", "In 90 days"),
    ("365", "In a year"),
)
GRACE_CHOICES: Final = (
    ("0", "Stop at once"),
    ("3600", "After an hour"),
    ("86400", "After a day"),
    ("604800", "After a week"),
)


def key_status(key: api_keys.ApiKey) -> str:
    """``revoked``, ``expired``, ``rotating`` (replaced; works until it expires) or ``active``."""
    if key.revoked_at is not None:
        return "revoked"
    if not key.active:
        return "expired"
    return "rotating" if key.rotated_to is not None else "active"


async def _key(page: OrgPage, key_id: UUID) -> api_keys.ApiKey:
    for key in await api_keys.list_keys(handles().stores.db, page.org.id):
        if key.id == key_id:
            return key
    raise PortalError(404, "There is no such API key in this organization.")


async def _profile(page: OrgPage) -> plans.OrgProfile:
    return await handles().tenants.profile(page.org.id)


@blueprint.get("/orgs/<uuid:org_id>/keys")
@org_page("keys:read")
async def keys(page: OrgPage) -> Response:
    """The organization's keys, newest first."""
    found = await api_keys.list_keys(handles().stores.db, page.org.id)
    return await render("portal/org/keys.html", page=page, keys=found, status_of=key_status)


async def _new_form(page: OrgPage, state: FormState, *, status: int = 200) -> Response:
    return await render(
        "portal/org/key_new.html",
        status=status,
        page=page,
        state=state,
        scopes=[s for s in SCOPES if s in scopes_allowed(page.role)],
        expiry_choices=EXPIRY_CHOICES,
        profile=await _profile(page),
    )


@blueprint.get("/orgs/<uuid:org_id>/keys/new")
@org_page("keys:manage")
async def key_new(page: OrgPage) -> Response:
    """The form for a new key."""
    return await _new_form(page, FormState(values={"scopes": ["inference"]}))


def _expiry(form: Mapping[str, str]) -> datetime | None:
    on = optional_date(form, "expires_on")
    if on is not None:
        return day_start(on)
    days = form.get("expires_in", "")
    if not days:
        return None
    if days not in {value for value, _ in EXPIRY_CHOICES}:
        raise ValidationError("choose one of the expiry choices", field="expires_in")
    return datetime.now(UTC) + timedelta(days=int(days))


@blueprint.post("/orgs/<uuid:org_id>/keys")
@org_page("keys:manage")
async def key_create(page: OrgPage) -> Response:
    """Create the key and show its secret, this once."""
    form = await read_form()
    scopes = form.getlist("scopes")
    excess = sorted(set(scopes) - scopes_allowed(page.role))
    if excess and set(scopes) <= set(SCOPES):
        raise PermissionDeniedError(f"you may not create keys with scopes {excess}")
    values = {**form.to_dict(), "scopes": scopes}
    try:
        limits = plans.key_limits(
            await _profile(page), {n: optional_int(form, n) for n in ("rpm", "tpm", "max_concurrency")}
        )
        secret, key = await api_keys.create_key(
            handles().stores.db,
            org_id=page.org.id,
            name=text(form, "name"),
            scopes=scopes,
            actor=page.actor,
            expires_at=_expiry(form),
            **limits,
        )
    except ValidationError as exc:
        return await _new_form(page, FormState.refused(values, exc, default_field="name"), status=400)
    return await render("portal/org/key_secret.html", page=page, key=key, secret=secret, rotated=None)


@blueprint.get("/orgs/<uuid:org_id>/keys/<uuid:key_id>/revoke")
@org_page("keys:manage")
async def key_revoke_confirm(page: OrgPage, key_id: UUID) -> Response:
    """Ask before revoking."""
    return await render("portal/org/key_revoke.html", page=page, key=await _key(page, key_id))


@blueprint.post("/orgs/<uuid:org_id>/keys/<uuid:key_id>/revoke")
@org_page("keys:manage")
async def key_revoke(page: OrgPage, key_id: UUID) -> Response:
    """Revoke the key on every replica."""
    key = await api_keys.revoke_key(
        handles().stores.db,
        handles().stores.redis,
        org_id=page.org.id,
        key_id=key_id,
        actor=page.actor,
        cache=handles().auth.keys,
    )
    await flash(f"The key {key.name} is revoked.")
    return see_other("portal.keys", org_id=page.org.id)


@blueprint.get("/orgs/<uuid:org_id>/keys/<uuid:key_id>/rotate")
@org_page("keys:manage")
async def key_rotate_confirm(page: OrgPage, key_id: UUID) -> Response:
    """Ask before rotating, and how long the old secret keeps working."""
    key = await _key(page, key_id)
    return await render(
        "portal/org/key_rotate.html", page=page, key=key, grace_choices=GRACE_CHOICES, state=FormState()
    )


@blueprint.post("/orgs/<uuid:org_id>/keys/<uuid:key_id>/rotate")
@org_page("keys:manage")
async def key_rotate(page: OrgPage, key_id: UUID) -> Response:
    """Replace the key by a new one with the same name and scopes; show the new secret once."""
    form = await read_form()
    grace = optional_int(form, "grace_seconds")
    secret, new = await api_keys.rotate_key(
        handles().stores.db,
        handles().stores.redis,
        org_id=page.org.id,
        key_id=key_id,
        actor=page.actor,
        grace_s=86400 if grace is None else grace,
        cache=handles().auth.keys,
    )
    return await render("portal/org/key_secret.html", page=page, key=new, secret=secret, rotated=key_id)
