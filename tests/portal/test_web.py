"""The portal's foundation (portal/web.py, security.py, errors.py): headers on every answer, hashed static
files, CSRF on every form, the sign-in redirect and its ``next``, error pages, autoescaping."""

from __future__ import annotations

import re

from bitnet_actor.services.sessions import COOKIE_NAME
from portal.security import FORM_COOKIE, safe_next
from portal.web import ASSETS, env
from tests.portal.conftest import Browser, check_security_headers


async def test_root_leads_to_the_portal_and_the_portal_to_sign_in(browser: Browser) -> None:
    r = await browser.get("/")
    assert r.status == 302 and r.location == "/portal"
    r = await browser.follow(r)
    assert r.status == 303 and r.location == "/portal/login"
    r = await browser.follow(r)
    assert r.status == 200 and r.h1() == "Sign in"
    assert r.headers["Cache-Control"] == "no-store"


async def test_static_files_have_hashed_names_and_long_cache(browser: Browser) -> None:
    page = await browser.get("/portal/login")
    href = page.doc.find("link", rel="stylesheet").attrs["href"]  # type: ignore[union-attr]
    assert re.fullmatch(r"/portal/static/portal\.[0-9a-f]{16}\.css", href)
    r = await browser.get(href)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/css")
    assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert r.text == (ASSETS["portal.css"].body.decode())
    check_security_headers(r)
    js = await browser.get(f"/portal/static/{ASSETS['copy.js'].hashed}")
    assert js.status == 200 and "javascript" in js.headers["Content-Type"]
    for wrong in ("portal.css", "portal.0000000000000000.css", "..%2Fweb.py"):
        assert (await browser.get(f"/portal/static/{wrong}")).status == 404


async def test_unknown_pages_are_html_404s_with_the_headers(browser: Browser) -> None:
    for path in (
        "/portal/nope",
        "/portal/orgs/not-a-uuid/keys",
        "/portal/orgs/00000000-0000-0000-0000-000000000000/x/y",
    ):
        r = await browser.get(path)
        assert r.status == 404 and r.is_html and r.h1() == "Page not found", path


async def test_pages_of_an_org_send_strangers_to_sign_in_with_a_local_next(browser: Browser) -> None:
    path = "/portal/orgs/00000000-0000-0000-0000-000000000000/keys?x=1"
    r = await browser.get(path)
    assert r.status == 303
    assert r.location == "/portal/login?next=/portal/orgs/00000000-0000-0000-0000-000000000000/keys?x%3D1"
    page = await browser.follow(r)
    assert page.doc.find("input", name="next").attrs["value"] == path  # type: ignore[union-attr]


def test_safe_next_keeps_only_local_paths() -> None:
    assert safe_next("/portal/orgs/x/keys?a=1") == "/portal/orgs/x/keys?a=1"
    for bad in ("https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)", "", None,
                "/portal\r\nSet-Cookie: x=1", "evil", "/" + "a" * 3000, "http:/portal"):  # fmt: skip
        assert safe_next(bad) == "/portal", bad


async def test_login_sets_the_session_cookie_and_goes_to_a_safe_next(browser: Browser) -> None:
    owner = await browser.h.signup()
    page = await browser.get("/portal/login?next=https://evil.example/")
    assert FORM_COOKIE in browser.cookies  # the pre-session CSRF token
    r = await browser.submit(page, "login-form", {"email": owner.email, "password": "correct horse battery staple"})
    assert r.status == 303 and r.location == "/portal"  # the foreign next was dropped
    cookie = next(c for c in r.headers.getlist("Set-Cookie") if c.startswith(COOKIE_NAME))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    org_id = next(iter(owner.orgs.values()))
    page = await browser.get("/portal/login")
    r = await browser.submit(
        page,
        "login-form",
        {"email": owner.email, "password": "correct horse battery staple", "next": f"/portal/orgs/{org_id}/keys"},
    )
    assert r.location == f"/portal/orgs/{org_id}/keys"
    assert (await browser.follow(r)).status == 200


async def test_every_post_needs_the_csrf_token(browser: Browser) -> None:
    owner = await browser.h.signup()
    org_id = next(iter(owner.orgs.values()))
    # No session, no form cookie: the login form is refused without its token.
    for data in ([("email", owner.email), ("password", "x" * 12)], [("csrf_token", "forged"), ("email", owner.email)]):
        r = await browser.post("/portal/login", data)
        assert r.status == 403 and r.h1() == "Not allowed", r.text
        assert "expired or did not come from this site" in r.text
    # A form cookie and a different token: refused too (double submit).
    await browser.get("/portal/login")
    r = await browser.post("/portal/login", [("csrf_token", "x" * 43), ("email", owner.email), ("password", "y" * 12)])
    assert r.status == 403
    # Signed in: the session's token only; the pre-session token does not do for a signed-in form.
    browser.as_caller(owner)
    for token in ("", "wrong", browser.cookies[FORM_COOKIE]):
        r = await browser.post(f"/portal/orgs/{org_id}/settings/name", [("csrf_token", token), ("name", "renamed")])
        assert r.status == 403, token
    r = await browser.post("/portal/logout", [])
    assert r.status == 403 and browser.session  # still signed in
    r = await browser.post("/portal/logout", [("csrf_token", owner.csrf)])
    assert r.status == 303 and r.location == "/portal/login?signed_out=1"
    assert COOKIE_NAME not in browser.cookies
    page = await browser.follow(r)
    assert page.by_id("signed-out").text() == "You are signed out."
    # The session is over on the server too: the API refuses it.
    me = await browser.h.call("GET", "/api/v1/me", owner)
    assert me.status_code == 401


def test_templates_escape_everything() -> None:
    assert env.autoescape is True
    hostile = "<script>alert(1)</script>\"'{{7*7}}"
    html = env.from_string("<p title='{{ v }}'>{{ v }}</p>").render(v=hostile)
    assert "<script>" not in html and "&lt;script&gt;" in html and "&#39;" in html and "&#34;" in html
    assert "{{7*7}}" in html and "49" not in html
