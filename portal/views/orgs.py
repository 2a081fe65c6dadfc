"""The portal's start and the organization list: ``/`` and ``/portal``, creating an organization, and the
paths of the links the JSON API mails (they lead to the portal's pages for them)."""

from __future__ import annotations

from quart import Response, request, url_for

from bitnet_actor.api.auth import handles
from bitnet_actor.services import tenancy
from bitnet_actor.services.errors import ConflictStateError, ValidationError
from portal.forms import FormState, read_form
from portal.tenancy import Viewer, current_viewer, signed_in
from portal.web import blueprint, flash, redirect_to, render, root, see_other

__all__: list[str] = []


@root.get("/")
async def landing() -> Response:
    """The site's root: the portal."""
    return redirect_to(url_for("portal.home"), 302)


@root.get("/signup/verify")
async def emailed_signup_link() -> Response:
    """A sign-up link mailed by ``POST /api/v1/signup``: its portal page."""
    return redirect_to(url_for("portal.signup_verify", token=request.args.get("token", "")), 302)


@root.get("/invitations/accept")
async def emailed_invitation_link() -> Response:
    """An invitation link mailed by ``POST /api/v1/orgs/<org>/invitations``: its portal page."""
    return redirect_to(url_for("portal.invitation_accept", token=request.args.get("token", "")), 302)


@blueprint.get("")
async def home() -> Response:
    """The portal's start: the sign-in page; the dashboard of one's only organization; or the list."""
    viewer = await current_viewer()
    if viewer is None:
        return see_other("portal.login")
    if len(viewer.memberships) == 1:
        return see_other("portal.dashboard", org_id=viewer.memberships[0].org.id)
    return await render("portal/orgs.html", viewer=viewer, state=FormState())


@blueprint.get("/orgs")
@signed_in
async def orgs(viewer: Viewer) -> Response:
    """Every organization of the signed-in user, and a form for a new one."""
    return await render("portal/orgs.html", viewer=viewer, state=FormState())


@blueprint.post("/orgs")
@signed_in
async def create_org(viewer: Viewer) -> Response:
    """Create an organization (the signed-in user owns it) at home in this server's region."""
    form = await read_form()
    try:
        org = await tenancy.create_org(
            handles().stores.db,
            name=form.get("name", ""),
            owner=viewer.user.id,
            actor=viewer.actor,
            region=handles().settings.region,
        )
    except (ValidationError, ConflictStateError) as exc:
        state = FormState.refused(form, exc, default_field="name")
        return await render("portal/orgs.html", status=400, viewer=viewer, state=state)
    await flash(f"{org.name} is created; you are its owner.")
    return see_other("portal.dashboard", org_id=org.id)
