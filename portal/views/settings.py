"""Organization settings: its name (renamed with ``org:update``), its id, plan and home region (set by an
operator: ``bitnet-actor admin set-region``), and single sign-on (configured through the API for now)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bitnet_actor.api.auth import handles
from bitnet_actor.services import tenancy
from bitnet_actor.services.billing import plans
from bitnet_actor.services.errors import ConflictStateError, ValidationError
from portal.forms import FormState, read_form
from portal.tenancy import OrgPage, org_page
from portal.web import blueprint, flash, render, see_other

if TYPE_CHECKING:
    from quart import Response

__all__: list[str] = []


async def _settings(page: OrgPage, state: FormState, *, status: int = 200) -> Response:
    profile = await plans.org_profile(handles().stores.db, page.org.id)
    return await render("portal/org/settings.html", status=status, page=page, profile=profile, state=state)


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
