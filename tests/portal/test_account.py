"""The account pages (portal/views/account.py, password.py, invitations.py): sign-up by email link, sign-in
(password; and single sign-on through the API's OIDC routes), sign-out, password reset, invitations."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from bitnet_actor.config import Settings
from bitnet_actor.services.sessions import COOKIE_NAME
from tests.api.conftest import PASSWORD, Harness, open_harness
from tests.portal.conftest import Browser, token_link

NEW_PASSWORD = "a different long passphrase"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_sign_up_verify_and_land_on_the_new_dashboard(browser: Browser) -> None:
    h = browser.h
    email, org = f"{unique('new')}@example.com", unique("Acme")
    page = await browser.get("/portal/signup")
    assert page.h1() == "Create your account"
    r = await browser.submit(
        page, "signup-form", {"email": email, "password": PASSWORD, "organization": org, "name": "Ada"}
    )
    assert r.status == 200 and r.h1() == "Check your email"
    link = token_link(h, email)
    assert link.startswith("/portal/signup/verify?token=")
    page = await browser.get(link)  # opening the link spends nothing
    page = await browser.get(link)
    assert page.h1() == "Confirm your address"
    r = await browser.submit(page, "verify-form")
    assert r.status == 303 and r.location.startswith("/portal/orgs/") and browser.session
    dashboard = await browser.follow(r)
    assert dashboard.status == 200 and dashboard.h1() == org
    assert dashboard.by_id("signed-in-as").text() == email
    # The link works once.
    other = Browser(h)
    r = await other.submit(await other.get(link), "verify-form")
    assert r.status == 400 and "invalid, used or expired" in r.text


async def test_the_apis_emailed_links_open_their_portal_pages(browser: Browser) -> None:
    h = browser.h
    email = f"{unique('api')}@example.com"
    r = await h.call("POST", "/api/v1/signup", json={"email": email, "password": PASSWORD, "organization": unique("o")})
    assert r.status_code == 202
    link = urlsplit(next(m.body for m in h.mailer.outbox if m.to == email).split(": ", 1)[1].split()[0])
    assert link.path == "/signup/verify"
    r = await browser.get(f"{link.path}?{link.query}")
    assert r.status == 302 and r.location == f"/portal/signup/verify?{link.query}"
    page = await browser.follow(r)
    assert (await browser.submit(page, "verify-form")).status == 303


async def test_sign_up_answers_alike_for_a_registered_address_and_shows_mistakes(browser: Browser) -> None:
    owner = await browser.h.signup()
    page = await browser.get("/portal/signup")
    r = await browser.submit(
        page, "signup-form", {"email": owner.email, "password": PASSWORD, "organization": unique("o")}
    )
    assert r.status == 200 and r.h1() == "Check your email"
    assert browser.h.mailer.outbox[-1].subject == "Sign-up attempt"
    r = await browser.submit(page, "signup-form", {"email": "x@example.com", "password": "short", "organization": "o"})
    assert r.status == 400
    assert r.by_id("f-password").attrs["aria-invalid"] == "true"
    assert "at least 12 characters" in r.by_id("f-password-error").text()
    assert r.by_id("f-email").attrs["value"] == "x@example.com"  # kept; the password never is
    assert "value" not in r.by_id("f-password").attrs


async def test_failed_logins_share_one_message_and_are_throttled(browser: Browser) -> None:
    owner = await browser.h.signup()
    page = await browser.get("/portal/login")
    for email in (owner.email, "nobody@example.com"):
        r = await browser.submit(page, "login-form", {"email": email, "password": "wrong password!"})
        assert r.status == 400 and r.by_id("form-error").text() == "invalid email or password"
        assert COOKIE_NAME not in browser.cookies
    for _ in range(5):
        r = await browser.submit(page, "login-form", {"email": owner.email, "password": "wrong password!"})
    assert r.status == 429 and int(r.headers["Retry-After"]) > 0
    assert "too many failed logins" in r.by_id("form-error").text()


async def test_password_reset_sets_a_new_password_and_ends_other_sessions(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    page = await browser.get("/portal/login")
    page = await browser.get(page.by_id("forgot-link").attrs["href"])
    for email in (owner.email, "nobody@example.com"):
        r = await browser.submit(page, "forgot-form", {"email": email})
        assert r.status == 200 and r.h1() == "Check your email"
    assert not [m for m in h.mailer.outbox if m.to == "nobody@example.com"]
    link = token_link(h, owner.email)
    assert link.startswith("/portal/password/reset?token=")
    page = await browser.get(link)
    r = await browser.submit(page, "reset-form", {"password": NEW_PASSWORD, "password_confirm": "something else!"})
    assert r.status == 400 and "differ" in r.by_id("f-password_confirm-error").text()
    r = await browser.submit(page, "reset-form", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD})
    assert r.status == 303 and browser.session
    landed = await browser.follow(await browser.follow(r))
    assert "Your password is changed" in landed.by_id("flashes").text()
    assert (await h.call("GET", "/api/v1/me", owner)).status_code == 401  # the old session ended
    r = await h.call("POST", "/api/v1/login", json={"email": owner.email, "password": NEW_PASSWORD})
    assert r.status_code == 200
    again = await browser.submit(page, "reset-form", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD})
    assert again.status == 400 and "invalid, used or expired" in again.text


async def test_accept_an_invitation_as_a_new_account(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org_id = next(iter(owner.orgs.values()))
    email = f"{unique('invitee')}@example.com"
    r = await h.call("POST", f"/api/v1/orgs/{org_id}/invitations", owner, json={"email": email, "role": "viewer"})
    assert r.status_code == 201
    link = token_link(h, email)
    assert link.startswith("/invitations/accept?token=")  # the API's link: led to the portal page
    page = await browser.follow(await browser.get(link))
    assert page.h1() == "Accept the invitation"
    sign_in_first = page.by_id("accept-sign-in").attrs["href"]
    assert sign_in_first.startswith("/portal/login?next=/portal/invitations/accept")
    r = await browser.submit(page, "accept-form", {"password": PASSWORD, "password_confirm": PASSWORD})
    assert r.status == 303 and r.location == f"/portal/orgs/{org_id}"
    dashboard = await browser.follow(r)
    assert "You joined" in dashboard.by_id("flashes").text()
    assert "viewer" in dashboard.by_id("org-switcher").text()


async def test_accept_an_invitation_signed_in_and_refuse_another_address(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org_id = next(iter(owner.orgs.values()))
    member = await h.signup()
    r = await h.call(
        "POST", f"/api/v1/orgs/{org_id}/invitations", owner, json={"email": member.email, "role": "member"}
    )
    assert r.status_code == 201
    link = token_link(h, member.email)
    stranger = Browser(h).as_caller(await h.signup())
    page = await stranger.follow(await stranger.get(link))
    r = await stranger.submit(page, "accept-form")
    assert r.status == 400 and "another email address" in r.by_id("form-error").text()
    browser.as_caller(member)
    page = await browser.follow(await browser.get(link))
    assert str(member.email) in page.text
    r = await browser.submit(page, "accept-form")
    assert r.status == 303 and r.location == f"/portal/orgs/{org_id}"
    assert (await browser.follow(r)).status == 200


async def test_signed_in_user_of_several_organizations_sees_the_list_and_creates_one(browser: Browser) -> None:
    owner = await browser.h.signup()
    browser.as_caller(owner)
    r = await browser.get("/portal")
    assert r.status == 303  # one organization: its dashboard
    page = await browser.get("/portal/orgs")
    name = unique("Second")
    r = await browser.submit(page, "new-org-form", {"name": name})
    assert r.status == 303
    dashboard = await browser.follow(r)
    assert dashboard.h1() == name and "owner" in dashboard.text
    home = await browser.get("/portal")
    assert home.status == 200 and home.h1() == "Your organizations"
    assert name in home.by_id("orgs").text()
    taken = await browser.submit(page, "new-org-form", {"name": name})
    assert taken.status == 400 and "already exists" in taken.by_id("form-error").text()


CLIENT_ID = "bitnet-portal-client"
CLIENT_SECRET = "a-portal-secret-that-is-long-enough"


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("ignore")
        from oidc_provider_mock import run_server_in_thread
    with run_server_in_thread(port=0, require_nonce=True) as server:
        yield f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
async def sso(aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path, issuer: str) -> AsyncIterator[Harness]:
    settings = Settings(
        data_dir=tmp_path, database_url=pg_dsn, redis_url=redis_url, public_url="http://localhost:9",
        oidc_issuer=issuer, oidc_client_id=CLIENT_ID, oidc_client_secret=CLIENT_SECRET,
    )  # fmt: skip
    async with open_harness(settings) as h:
        yield h


@pytest.mark.filterwarnings("ignore:get_jwt_config:DeprecationWarning")
async def test_sign_in_with_the_identity_provider(sso: Harness, issuer: str) -> None:
    browser = Browser(sso)
    assert (await Browser(browser.h).get("/portal/login")).doc.find(id="sso-login") is not None
    page = await browser.get("/portal/login?next=/portal/orgs")
    link = page.by_id("sso-login")
    assert link.text() == "Sign in with 127.0.0.1"
    start = await browser.get(link.attrs["href"])
    assert link.attrs["href"] == "/api/v1/oidc/login?return_to=/portal/orgs"
    assert start.status == 302 and start.location.startswith(f"{issuer}/oauth2/authorize?")
    async with httpx.AsyncClient(timeout=10) as idp:
        r = await idp.put(
            f"{issuer}/users/portal-sso", json={"email": f"{unique('sso')}@corp.example", "email_verified": True}
        )
        assert r.status_code == 204
        answer = await idp.post(start.location, data={"sub": "portal-sso"})
    callback = urlsplit(answer.headers["location"])
    done = await browser.get(f"{callback.path}?{callback.query}")
    assert done.status == 302 and done.location == "/portal/orgs" and browser.session
    page = await browser.get(done.location)
    assert page.status == 200 and page.h1() == "Your organizations"


async def test_no_identity_provider_no_sso_link(browser: Browser) -> None:
    page = await browser.get("/portal/login")
    assert page.doc.find(id="sso-login") is None
