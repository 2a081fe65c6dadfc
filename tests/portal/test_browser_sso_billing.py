"""In a real browser (chromium, tests/browser.py) against a served app: Sign in with SSO through the pysaml2
IdP (served on a loopback port here: it reads the AuthnRequest and auto-posts its signed response to our ACS,
as an IdP does), landing on the billing page, then "Upgrade" and "Manage billing" sending the browser to
Stripe's hosts (unreachable from here: the browser's request for them is the proof that nothing held it).

What a test client without a Content-Security-Policy cannot show: browsers hold every redirect of a form to
``form-action`` (so the login page's SSO form leads to a page whose static script follows the link, and the
billing page lists Stripe's origins), the static script runs, and the cookies (``__Host-``, the SAML
binding's ``SameSite=None``) come back where they should."""

from __future__ import annotations

import asyncio
import html
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
import trio_asyncio

from bitnet_actor.services import audit
from bitnet_actor.services.billing import plans
from bitnet_actor.services.saml import SamlConfigUpdate, SamlService
from bitnet_actor.stores.postgres import open_database
from bitnet_actor.stores.redis import open_redis
from tests.api.served import serve
from tests.browser import open_browser, require_browser, screenshot
from tests.saml_idp import TestIdp, require_xmlsec1
from tests.stripe_server import StripeServer

if TYPE_CHECKING:
    from pathlib import Path

TIMEOUT_MS = 15_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def prepare(dsn: str, redis_url: str, org_id: Any, idp: TestIdp, price: str) -> tuple[str, str]:
    """SAML for the served organization (new members get the billing role) and a paid plan: the services, in a
    worker thread with a loop of its own."""
    plan = f"team-{uuid.uuid4().hex[:6]}"

    async def run() -> str:
        async with (
            trio_asyncio.open_loop(),
            open_database(dsn, min_size=1, max_size=1) as db,
            open_redis(redis_url) as redis,
        ):
            saml = SamlService(db, redis, base_url="http://unused.example")
            update = SamlConfigUpdate.check(
                idp_entity_id=idp.entity_id, idp_sso_url=idp.sso_url, idp_certificates=[idp.cert_pem],
                email_attribute="mail", name_attribute="displayName", default_role="billing",
            )  # fmt: skip
            await saml.put_config(org_id, update, actor=audit.SYSTEM_ACTOR)
            await plans.upsert_plan(db, plan, {"display_name": "Team", "stripe_price_id": price})
            name: str = await db.fetchval("SELECT name FROM organizations WHERE id = $1", org_id)
        return name

    return trio.run(run), plan


class IdpServer:
    """``idp``'s single sign-on page on a loopback port (http: the configuration allows it on loopback)."""

    def __init__(self, directory: Path) -> None:
        self.emails: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # quiet
                return

            def do_GET(self) -> None:
                seen = server.idp.read_request(f"http://127.0.0.1:{server.port}{self.path}")
                email = f"ann-{uuid.uuid4().hex[:8]}@acme.example"
                server.emails.append(email)
                answer = server.idp.respond(seen, email=email, name="Ann Browser")
                body = (
                    f'<!DOCTYPE html><html lang="en"><body><form id="f" method="post"'
                    f' action="{html.escape(seen.acs_url)}">'
                    f'<input type="hidden" name="SAMLResponse" value="{html.escape(answer)}">'
                    f'<input type="hidden" name="RelayState" value="{html.escape(seen.relay_state)}"></form>'
                    "<script>document.getElementById('f').submit()</script></body></html>"
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.idp = TestIdp(directory, sso_url=f"http://127.0.0.1:{self.port}/sso")

    def __enter__(self) -> IdpServer:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def journey(base: str, org: str, name: str, plan: str) -> tuple[list[str], list[str]]:
    """The browser's part; returns what the console said and the URLs it asked for."""
    # Playwright's sync API runs an asyncio loop of its own in this thread: a plain one (trio-asyncio's policy
    # is per thread outside trio, so the server's loop is not touched).
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        return _drive(base, org, name, plan)
    finally:
        asyncio.set_event_loop_policy(None)


def _drive(base: str, org: str, name: str, plan: str) -> tuple[list[str], list[str]]:
    said: list[str] = []
    asked: list[str] = []
    with open_browser() as browser:
        context = browser.new_context()
        page = context.new_page()
        page.on("console", lambda message: said.append(message.text))
        page.on("request", lambda request: asked.append(request.url))
        page.goto(f"{base}/portal/login?next=/portal/orgs/{org}/billing")
        page.fill("#sso-organization", name)
        page.click("#sso-submit")
        page.wait_for_url(f"{base}/portal/orgs/{org}/billing", timeout=TIMEOUT_MS)
        assert page.text_content("h1") == "Billing"
        screenshot(page, "sso-billing")
        for button in (f"#upgrade-{plan}", "#manage-billing"):
            with page.expect_event("requestfailed", timeout=TIMEOUT_MS) as failed:
                page.click(button)
            assert failed.value.url.startswith(("https://checkout.stripe.com/", "https://billing.stripe.com/"))
            assert failed.value.failure == "net::ERR_NAME_NOT_RESOLVED", failed.value.failure
            page.wait_for_url("chrome-error://chromewebdata/", timeout=TIMEOUT_MS)  # the browser's error page
            page.goto(f"{base}/portal/orgs/{org}/billing")
        context.close()
    return said, asked


@pytest.mark.slow
async def test_sso_sign_in_then_stripe_in_a_real_browser(pg_dsn: str, redis_url: str, tmp_path: Path) -> None:
    require_browser()
    require_xmlsec1()
    port = free_port()
    base = f"http://localhost:{port}"  # a secure context for the browser, so __Host- cookies are kept
    with StripeServer() as stripe_server, IdpServer(tmp_path) as idp_server:
        async with serve(
            pg_dsn, redis_url, tmp_path / "data", {}, port=port, public_url=base,
            stripe_api_key=stripe_server.api_key, stripe_api_base=stripe_server.url,
            stripe_webhook_secret=stripe_server.webhook_secret,
        ) as served:  # fmt: skip
            org = str(served.org_id)
            idp = idp_server.idp
            name, plan = await trio.to_thread.run_sync(
                prepare, pg_dsn, redis_url, served.org_id, idp, stripe_server.create_price()
            )
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                idp.trust((await http.get(f"/api/v1/saml/{org}/metadata")).text)
            said, asked = await trio.to_thread.run_sync(journey, base, org, name, plan)
    assert not [s for s in said if "Content Security Policy" in s], said
    assert [u.split("?")[0] for u in asked if "/api/v1/saml/" in u] == [
        f"{base}/api/v1/saml/{org}/login",  # followed by leave.js
        f"{base}/api/v1/saml/{org}/acs",
    ]
    assert len(idp_server.emails) == 1
    [session] = stripe_server.checkout_sessions.values()
    assert session["url"] in asked
    assert session["success_url"] == f"{base}/portal/orgs/{org}/billing?checkout=success"
    [portal_session] = stripe_server.portal_sessions.values()
    assert portal_session["url"] in asked
