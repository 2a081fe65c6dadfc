"""A browser over the portal: the API tests' harness (the whole app on real PostgreSQL and Redis, an
in-memory mailer) driven with cookies and HTML forms, with every page checked as it arrives."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from bitnet_actor.config import Settings
from bitnet_actor.services.billing.checkout import STRIPE_PAGE_ORIGINS
from bitnet_actor.services.sessions import COOKIE_NAME
from portal.security import CONTENT_SECURITY_POLICY, content_security_policy
from tests.api.conftest import Caller, Harness, harness, model_dir, open_harness  # noqa: F401  (the fixtures)
from tests.portal.html import Node, a11y_problems, csp_problems, form_fields, parse
from tests.stripe_server import StripeServer

HOSTILE = "<script>alert(1)</script>\"'{{7*7}}&amp;"


@dataclass
class Page:
    status: int
    headers: Any
    text: str
    path: str

    @cached_property
    def doc(self) -> Node:
        return parse(self.text)

    @property
    def location(self) -> str:
        return str(self.headers.get("Location", ""))

    @property
    def is_html(self) -> bool:
        return str(self.headers.get("Content-Type", "")).startswith("text/html")

    def h1(self) -> str:
        return self.doc.find("h1").text()  # type: ignore[union-attr]

    def by_id(self, element_id: str) -> Node:
        return self.doc.by_id(element_id)


# The one page allowed more in form-action: billing, whose buttons' redirects go to Stripe's pages.
BILLING_CSP = content_security_policy(STRIPE_PAGE_ORIGINS)


def check_security_headers(page: Page) -> None:
    h = page.headers
    allowed = {CONTENT_SECURITY_POLICY}
    if re.fullmatch(r"/portal/orgs/[0-9a-f-]{36}/billing(/checkout|/portal)?(\?.*)?", page.path):
        allowed.add(BILLING_CSP)
    assert h.get("Content-Security-Policy") in allowed, page.path
    assert "unsafe-inline" not in h["Content-Security-Policy"]
    assert h.get("X-Frame-Options") == "DENY", page.path
    assert h.get("X-Content-Type-Options") == "nosniff", page.path
    assert h.get("Referrer-Policy") == "same-origin", page.path
    assert h.get("Cache-Control"), page.path


def check_page(page: Page) -> None:
    """What every portal page keeps: the headers, and for HTML the accessibility and CSP rules."""
    check_security_headers(page)
    if page.is_html and page.text and not 300 <= page.status < 400:
        problems = a11y_problems(page.doc) + csp_problems(page.doc)
        assert not problems, f"{page.path} ({page.status}): {problems}"


@dataclass
class Browser:
    """Cookies kept between requests like a browser's; every answer checked by ``check_page``."""

    h: Harness
    cookies: dict[str, str] = field(default_factory=dict)

    def as_caller(self, caller: Caller) -> Browser:
        assert caller.session
        self.cookies[COOKIE_NAME] = caller.session
        return self

    @property
    def session(self) -> str | None:
        return self.cookies.get(COOKIE_NAME)

    async def request(self, method: str, path: str, data: Any = None, *, check: bool = True) -> Page:
        headers = {"User-Agent": "portal-tests"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if data is not None:
            body = urlencode(data, doseq=True)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        r = await self.h.client.open(path, method=method, headers=headers, data=body)
        for cookie in r.headers.getlist("Set-Cookie"):
            name, _, rest = cookie.partition("=")
            value = rest.split(";")[0]
            if re.search(r"(?i)max-age=0|expires=thu, 01 jan 1970", cookie) or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        page = Page(r.status_code, r.headers, await r.get_data(as_text=True), path)
        if check and (urlsplit(path).path.startswith("/portal") or path == "/"):
            check_page(page)
        return page

    async def get(self, path: str, **kw: Any) -> Page:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, data: Any, **kw: Any) -> Page:
        return await self.request("POST", path, data, **kw)

    async def follow(self, page: Page) -> Page:
        assert page.status in {301, 302, 303, 307, 308}, (page.status, page.text[:500])
        return await self.get(page.location)

    async def submit(self, page: Page, form_id: str, fields: dict[str, Any] | None = None, **kw: Any) -> Page:
        """Fill the form ``form_id`` of ``page`` (its defaults, then ``fields``; a list value sets every value
        of a multi-valued field) and submit it as a browser would."""
        form = page.by_id(form_id)
        data: list[tuple[str, str]] = []
        overridden = set(fields or {})
        for name, value in form_fields(form):
            if name not in overridden:
                data.append((name, value))
        for name, value in (fields or {}).items():
            data += [(name, v) for v in value] if isinstance(value, list) else [(name, str(value))]
        action = form.attrs.get("action") or page.path
        method = form.attrs.get("method", "get").upper()
        if method == "GET":
            return await self.get(f"{action}?{urlencode(data)}", **kw)
        return await self.post(action, data, **kw)


@pytest.fixture
def browser(harness: Harness) -> Browser:  # noqa: F811
    return Browser(harness)


@pytest.fixture
def stripe_server() -> Iterator[StripeServer]:
    with StripeServer() as server:
        yield server


@pytest.fixture
async def billed(
    aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path, stripe_server: StripeServer
) -> AsyncIterator[Harness]:
    """The app with Stripe configured (the local Stripe server)."""
    settings = Settings(
        data_dir=tmp_path, database_url=pg_dsn, redis_url=redis_url, stripe_api_key=stripe_server.api_key,
        stripe_api_base=stripe_server.url, stripe_webhook_secret=stripe_server.webhook_secret,
    )  # fmt: skip
    async with open_harness(settings) as h:
        yield h


def token_link(h: Harness, to: str | None) -> str:
    """The path of the last link mailed to ``to``."""
    for message in reversed(h.mailer.outbox):
        if message.to == to:
            match = re.search(r"https?://[^/\s]+(/\S*token=[A-Za-z0-9_-]+)", message.body)
            assert match, message.body
            return match.group(1)
    raise AssertionError(f"no mail to {to}")
