"""Accepting an invitation: the page of the emailed link (``POST /api/v1/invitations/accept``'s twin).

Signed in, the invitation is accepted as that user (it must name their email); otherwise the page creates
the invited account with a password, or offers to sign in first and come back. The link is spent by the
form's POST, never by opening it.
"""

from __future__ import annotations

from quart import Response, request, url_for

from bitnet_actor.api.auth import handles, request_actor
from bitnet_actor.services import tenancy
from bitnet_actor.services.errors import AuthenticationError, ValidationError
from portal.forms import FormState, read_form
from portal.security import anonymous_form
from portal.tenancy import current_viewer
from portal.views.account import sign_in
from portal.web import blueprint, flash, render, see_other

__all__: list[str] = []


async def _page(token: str, state: FormState, *, status: int = 200) -> Response:
    here = url_for("portal.invitation_accept", token=token)
    return await render("portal/account/invitation.html", status=status, token=token, state=state, here=here)


@blueprint.get("/invitations/accept")
async def invitation_accept() -> Response:
    """The invitation's page: accept as the signed-in user, or create the invited account."""
    return await _page(request.args.get("token", ""), FormState())


@blueprint.post("/invitations/accept")
@anonymous_form
async def invitation_accept_post() -> Response:
    """Accept: join the organization (creating the account if no one is signed in); on to its dashboard."""
    form = await read_form()
    token = form.get("token", "")
    viewer = await current_viewer()
    try:
        if viewer is None and form.get("password", "") != form.get("password_confirm", ""):
            raise ValidationError("the two passwords differ", field="password_confirm")
        user_id, org_id = await tenancy.accept_invitation(
            handles().stores.db,
            token=token,
            user_id=viewer.user.id if viewer is not None else None,
            password=form.get("password") if viewer is None else None,
            actor=request_actor(),
        )
    except (AuthenticationError, ValidationError) as exc:
        return await _page(token, FormState.refused(form, exc, default_field="token"), status=400)
    org = await tenancy.get_org(handles().stores.db, org_id)
    if viewer is None:
        response = await sign_in(user_id, url_for("portal.dashboard", org_id=org_id))
    else:
        response = see_other("portal.dashboard", org_id=org_id)
    await flash(f"You joined {org.name}.")
    return response
