"""Signing up, in and out: the pages of ``POST /api/v1/signup``, ``/signup/verify``, ``/login``, ``/logout``.

Each calls the same tenancy service as its JSON twin, so the rules are the same: sign-up answers alike
whether or not the address has an account, and mails the link; a sign-up link is used by a POST (a link
scanner opening the mail cannot spend it); failed logins share one message and are throttled; a new session
(a new id) starts at every sign-in; sign-out ends it. Single sign-on starts at the API's OIDC login route,
or, for an organization with SAML, at its SAML login route.

"Sign in with SSO" asks for the organization's name (the service has no lookup by email domain: allowed
domains are not verified, so a domain would let one organization send another's people to its IdP), finds
it through :meth:`SamlService.org_for_sign_in <bitnet_actor.services.saml.SamlService.org_for_sign_in>` (an
unknown name, one without SAML and one switched off get the same answer), and answers with a page whose link
(followed at once by a static script) goes to ``/api/v1/saml/<org>/login?return_to=<next>``: a 303 there would
end at the IdP, which the login page's ``form-action 'self'`` forbids (browsers hold every redirect of a form
to it), and the IdP's origin is not known when the page is served. After the IdP, the ACS starts the session
and 303s to ``next``; portal pages take the session's CSRF token from the server-side session (see
:func:`portal.security.form_token`), so the browser needs nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from quart import Response, g, request, url_for

from bitnet_actor.api.accounts import with_session_cookie
from bitnet_actor.api.auth import client_ip, handles, request_actor
from bitnet_actor.services import tenancy
from bitnet_actor.services.errors import AuthenticationError, ThrottledError, ValidationError
from bitnet_actor.services.saml import SamlNotConfiguredError, SamlUnavailableError, safe_return_to
from bitnet_actor.services.sessions import COOKIE_NAME
from portal.errors import PortalError
from portal.forms import FormState, read_form, text
from portal.security import anonymous_form, safe_next
from portal.web import blueprint, redirect_to, render, see_other

if TYPE_CHECKING:
    from uuid import UUID

__all__ = ["sign_in"]


async def sign_in(user_id: UUID, target: str) -> Response:
    """Start a session for ``user_id`` (a new id; the one presented ends) and go to ``target``."""
    session = await handles().auth.sessions.create(user_id, replacing=request.cookies.get(COOKIE_NAME))
    g.portal_session = session  # flash messages from here on are the new session's
    return with_session_cookie(redirect_to(target), session)


def _sso() -> dict[str, str] | None:
    """The configured OpenID Connect provider's sign-in link, or None."""
    oidc = handles().auth.oidc
    if oidc is None:
        return None
    name = urlsplit(oidc.settings.issuer).hostname or "single sign-on"
    return {"name": name, "url": url_for("tokens.oidc_login", return_to=safe_next(request.args.get("next")))}


async def _login_page(
    state: FormState,
    *,
    sso_state: FormState | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    sso_state = sso_state or FormState()
    return await render(
        "portal/account/login.html",
        status=status,
        headers=headers,
        state=state,
        sso_state=sso_state,
        next=safe_next(state.values.get("next") or sso_state.values.get("next") or request.args.get("next")),
        sso=_sso(),
        saml=handles().auth.saml is not None,
        signed_out=request.args.get("signed_out") == "1",
    )


@blueprint.get("/login")
async def login() -> Response:
    """The sign-in form (email and password, or the identity provider)."""
    return await _login_page(FormState())


@blueprint.post("/login")
@anonymous_form
async def login_post() -> Response:
    """Sign in; back to ``next`` (a local path) or the portal's start."""
    form = await read_form()
    try:
        user_id = await tenancy.authenticate_password(
            handles().stores.db,
            handles().auth.throttle,
            email=form.get("email", ""),
            password=form.get("password", ""),
            ip=client_ip(),
        )
    except ThrottledError as exc:
        state = FormState.refused(form, exc, default_field="email")
        return await _login_page(state, status=429, headers={"Retry-After": str(exc.retry_after)})
    except AuthenticationError as exc:
        return await _login_page(FormState.refused(form, exc, default_field="email"), status=400)
    return await sign_in(user_id, safe_next(form.get("next")))


@blueprint.post("/login/sso")
@anonymous_form
async def login_sso() -> Response:
    """Sign in with the SAML identity provider of the organization named in the form."""
    saml = handles().auth.saml
    if saml is None:
        raise PortalError(404, "SAML single sign-on is not enabled on this server.")
    form = await read_form()
    name = form.get("organization", "")
    try:
        org_id = await saml.org_for_sign_in(name)
    except SamlNotConfiguredError as exc:
        hint = " Give the organization's name, not your email address." if "@" in name else ""
        refusal = ValidationError(f"{str(exc).capitalize()}.{hint}", field="organization")
        return await _login_page(FormState(), sso_state=FormState.refused(form, refusal), status=400)
    except SamlUnavailableError:
        refusal = ValidationError("Single sign-on is unavailable on this server right now.", field="organization")
        return await _login_page(FormState(), sso_state=FormState.refused(form, refusal), status=503)
    target = safe_next(form.get("next"))
    if not safe_return_to(target):  # the SAML service takes printable ASCII paths only
        target = "/portal"
    return await render(
        "portal/leave.html",
        title="Continue to your identity provider",
        text="You sign in at your organization's identity provider, then come back here.",
        url=url_for("saml.login", org_id=org_id, return_to=target),
        label="Continue to sign in",
    )


@blueprint.post("/logout")
async def logout() -> Response:
    """End this session and forget its cookie."""
    session = g.get("portal_session")
    if session is not None:
        await handles().auth.sessions.delete(session.id)
    response = see_other("portal.login", signed_out="1")
    response.delete_cookie(COOKIE_NAME, path="/", secure=True, httponly=True, samesite="Lax")
    return response


@blueprint.get("/signup")
async def signup() -> Response:
    """The sign-up form: email, password, organization name, your name."""
    return await render("portal/account/signup.html", state=FormState())


@blueprint.post("/signup")
@anonymous_form
async def signup_post() -> Response:
    """Start a sign-up: the same answer whether or not the address has an account."""
    form = await read_form()
    try:
        await tenancy.signup_start(
            handles().stores.db,
            handles().auth.mailer,
            email=text(form, "email"),
            password=form.get("password", ""),
            org_name=text(form, "organization"),
            name=text(form, "name", required=False),
            link_base=handles().settings.base_url + url_for("portal.signup_verify"),
        )
    except ValidationError as exc:
        return await render("portal/account/signup.html", status=400, state=FormState.refused(form, exc))
    return await render("portal/account/signup_sent.html", email=form.get("email", ""))


@blueprint.get("/signup/verify")
async def signup_verify() -> Response:
    """The page of the emailed link: a button that finishes the sign-up."""
    return await render("portal/account/verify.html", token=request.args.get("token", ""), state=FormState())


@blueprint.post("/signup/verify")
@anonymous_form
async def signup_verify_post() -> Response:
    """Finish the sign-up: the account, its organization, a session; on to its dashboard."""
    form = await read_form()
    token = form.get("token", "")
    try:
        user_id, org_id = await tenancy.signup_verify(
            handles().stores.db, token=token, actor=request_actor(), region=handles().settings.region
        )
    except (AuthenticationError, ValidationError) as exc:
        return await render(
            "portal/account/verify.html",
            status=400,
            token=token,
            state=FormState.refused(form, exc, default_field="token"),
        )
    return await sign_in(user_id, url_for("portal.dashboard", org_id=org_id))
