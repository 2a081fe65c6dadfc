"""What every portal response and form gets: security headers, CSRF tokens, safe ``next`` targets.

- Headers: a Content-Security-Policy without ``unsafe-inline`` (the pages have no inline script or style, no
  ``style=`` or ``on*=`` attributes; their one stylesheet and few scripts are static files), framing refused
  twice (``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``), no MIME sniffing, no cross-origin referrer,
  and ``Cache-Control: no-store`` on pages (they hold tenant data; static files set their own). A page whose
  forms lead off the site (its buttons to Stripe's Checkout: the POST answers with a redirect there, and
  browsers hold every hop of a form's redirects to ``form-action``) names those origins with
  ``allow_form_targets``; nothing else widens the policy.
- CSRF, synchronizer pattern: every POST form carries ``csrf_token``. For a signed-in browser it is the
  session's own token (:class:`bitnet_actor.services.sessions.Session`, the one the JSON API takes in
  ``X-CSRF-Token``). The forms used before there is a session (sign-in, sign-up, password reset, accepting
  an invitation as a new account; marked ``@anonymous_form``) carry a random value that is also in the
  ``__Host-bitnet_form`` cookie (double submit), so a login cannot be forced from another site either.
  ``check_csrf`` refuses anything else with :class:`CsrfRefusedError` (a 403 page). A form whose body
  streams (the model upload, marked ``@streamed_form``) is not read ahead: its view checks the token, the
  form's first field, with :func:`check_csrf_token` before it reads the file; without a session such a POST
  is refused at once.
- ``safe_next``: where to go after signing in is only ever a local path of this site.
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

from quart import current_app, g, request

from bitnet_actor.services.errors import PermissionDeniedError

if TYPE_CHECKING:
    from collections.abc import Callable

    from quart import Response

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "FORM_COOKIE",
    "SECURITY_HEADERS",
    "CsrfRefusedError",
    "add_security_headers",
    "allow_form_targets",
    "anonymous_form",
    "check_csrf",
    "check_csrf_token",
    "content_security_policy",
    "form_token",
    "safe_next",
    "streamed_form",
]


def content_security_policy(form_targets: tuple[str, ...] = ()) -> str:
    """The pages' Content-Security-Policy; ``form_targets``: origins beside the site's own that its forms (and
    their redirects) may go to."""
    form_action = " ".join(("'self'", *form_targets))
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none';"
        f" form-action {form_action}; base-uri 'none'"
    )


CONTENT_SECURITY_POLICY: Final = content_security_policy()
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # one-time links (?token=) never leave the site in a Referer
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
FORM_COOKIE: Final = "__Host-bitnet_form"
_FORM_COOKIE_MAX_AGE_S = 12 * 3600  # as long as a session may live: a form left open that long still posts
_ANONYMOUS = "_portal_anonymous_form"
_STREAMED = "_portal_streamed_form"
_REFUSED = "This form has expired or did not come from this site. Go back, reload the page and try again."

F = TypeVar("F", bound="Callable[..., Any]")


class CsrfRefusedError(PermissionDeniedError):
    """A POST without the right CSRF token (a forged request, or a form older than its session)."""


def anonymous_form(view: F) -> F:
    """Mark ``view`` as one whose POST may come from a browser without a session (checked by double submit)."""
    setattr(view, _ANONYMOUS, True)
    return view


def streamed_form(view: F) -> F:
    """Mark ``view`` as one that reads its POST body as it streams: ``check_csrf`` leaves the body unread and
    the view calls :func:`check_csrf_token` with the form's first field before it reads any further."""
    setattr(view, _STREAMED, True)
    return view


def form_token() -> str:
    """The CSRF token the page's forms carry: the session's, else this browser's pre-session token."""
    session = g.get("portal_session")
    if session is not None:
        token: str = session.csrf_token
        return token
    token = g.get("portal_form_token") or ""
    if not token:
        cookie = request.cookies.get(FORM_COOKIE, "")
        token = cookie if 32 <= len(cookie) <= 64 else secrets.token_urlsafe(32)
        g.portal_form_token = token
        g.portal_set_form_cookie = token != cookie
    return token


async def check_csrf() -> None:
    """Refuse a POST whose ``csrf_token`` is neither the session's nor, for an ``@anonymous_form`` view, this
    browser's pre-session token. A ``@streamed_form`` view's body is left to the view (refused here only
    when there is no session, so no token could be right).

    Raises:
        CsrfRefusedError: the token is missing or wrong.
    """
    view = current_app.view_functions.get(request.endpoint or "")
    session = g.get("portal_session")
    if getattr(view, _STREAMED, False):
        if session is None:
            raise CsrfRefusedError(_REFUSED)
        return
    form = await request.form
    submitted = form.get("csrf_token", "")
    if session is not None and session.csrf_ok(submitted):
        return
    cookie = request.cookies.get(FORM_COOKIE, "")
    if getattr(view, _ANONYMOUS, False) and cookie and submitted and hmac.compare_digest(cookie, submitted):
        return
    raise CsrfRefusedError(_REFUSED)


def check_csrf_token(submitted: str) -> None:
    """Refuse ``submitted`` unless it is the signed-in session's CSRF token (a ``@streamed_form``'s check).

    Raises:
        CsrfRefusedError: no session, or another token.
    """
    session = g.get("portal_session")
    if session is None or not session.csrf_ok(submitted):
        raise CsrfRefusedError(_REFUSED)


def allow_form_targets(*origins: str) -> None:
    """Let this response's page post forms whose redirects end at ``origins`` (``https://host``, fixed ones)."""
    for origin in origins:
        if not origin.startswith("https://") or any(c in origin for c in " ;,'\"") or origin.count("/") != 2:
            raise ValueError(f"not an https origin: {origin!r}")
    g.portal_form_targets = (*g.get("portal_form_targets", ()), *origins)


def add_security_headers(response: Response) -> Response:
    """Set the portal's security headers on ``response`` (and the pre-session cookie a page handed out)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    if targets := g.get("portal_form_targets"):
        response.headers["Content-Security-Policy"] = content_security_policy(targets)
    response.headers.setdefault("Cache-Control", "no-store")
    if g.get("portal_set_form_cookie"):
        response.set_cookie(
            FORM_COOKIE,
            g.portal_form_token,
            max_age=_FORM_COOKIE_MAX_AGE_S,
            path="/",
            secure=True,
            httponly=True,
            samesite="Lax",
        )
    return response


def safe_next(value: str | None, default: str = "/portal") -> str:
    """``value`` if it is a local path of this site (``/...``, never ``//host``, a scheme or a backslash)."""
    if not value or len(value) > 2000 or not value.startswith("/") or value.startswith("//"):
        return default
    if "\\" in value or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value
