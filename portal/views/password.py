"""Password reset: ask for a link by email, then set a new password from it.

The request page answers the same whether or not the address has an account
(:func:`bitnet_actor.services.tenancy.request_password_reset`). Setting the password
(:func:`~bitnet_actor.services.tenancy.set_password_with_token`, as ``POST /api/v1/password/set`` does) ends
every other session and refresh token of the user, then signs this browser in.
"""

from __future__ import annotations

from quart import Response, request, url_for

from bitnet_actor.api.auth import handles
from bitnet_actor.services import tenancy
from bitnet_actor.services.errors import AuthenticationError, ValidationError
from portal.forms import FormState, read_form, text
from portal.security import anonymous_form
from portal.views.account import sign_in
from portal.web import blueprint, flash, render

__all__: list[str] = []


@blueprint.get("/password/forgot")
async def password_forgot() -> Response:
    """The form asking for a reset link."""
    return await render("portal/account/password_forgot.html", state=FormState())


@blueprint.post("/password/forgot")
@anonymous_form
async def password_forgot_post() -> Response:
    """Mail a reset link if the address has an account; the same page either way."""
    form = await read_form()
    try:
        await tenancy.request_password_reset(
            handles().stores.db,
            handles().auth.mailer,
            email=text(form, "email"),
            link_base=handles().settings.base_url + url_for("portal.password_reset"),
        )
    except ValidationError as exc:
        return await render("portal/account/password_forgot.html", status=400, state=FormState.refused(form, exc))
    return await render("portal/account/password_sent.html")


@blueprint.get("/password/reset")
async def password_reset() -> Response:
    """The page of the emailed link: the new password's form."""
    return await render("portal/account/password_reset.html", token=request.args.get("token", ""), state=FormState())


@blueprint.post("/password/reset")
@anonymous_form
async def password_reset_post() -> Response:
    """Set the password, end the user's other sessions and sign this browser in."""
    form = await read_form()
    token = form.get("token", "")
    try:
        if form.get("password", "") != form.get("password_confirm", ""):
            raise ValidationError("the two passwords differ", field="password_confirm")
        user_id = await tenancy.set_password_with_token(
            handles().stores.db, token=token, password=form.get("password", "")
        )
    except (AuthenticationError, ValidationError) as exc:
        state = FormState.refused(form, exc, default_field="password")
        return await render("portal/account/password_reset.html", status=400, token=token, state=state)
    auth = handles().auth
    await auth.sessions.revoke_user(user_id)
    if auth.refresh is not None:
        await auth.refresh.revoke_user(str(user_id))
    response = await sign_in(user_id, url_for("portal.home"))
    await flash("Your password is changed; you are signed in.")
    return response
