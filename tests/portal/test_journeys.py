"""The portal's journeys in a real browser (Debian's chromium through Playwright, tests/browser.py) against a
real server on a loopback port with a real model, PostgreSQL and Redis:

sign up -> verify the email -> create an API key -> the playground streams tokens -> the usage page shows
them (and the key's traffic) -> revoke the key -> the key is refused.

Each page is saved as a screenshot under test-artifacts/screenshots/; keyboard focus is checked on the way
(the first Tab reaches the skip link, which moves focus to the main content).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.api.served import Served, serve
from tests.browser import in_browser_process, open_browser, require_browser, screenshot

openai = pytest.importorskip("openai", reason="the openai client is a test dependency")


@pytest.fixture
async def served(aio_loop: object, pg_dsn: str, redis_url: str, model_dir: Path) -> AsyncIterator[tuple[Served, Path]]:
    require_browser()
    data_dir = Path(tempfile.mkdtemp(prefix="bitnet-portal-"))
    try:
        async with serve(pg_dsn, redis_url, data_dir, {"tiny": model_dir}) as s:
            yield s, data_dir
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _mailed_token(mail: Path, to: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted(mail.glob("*.eml")) if mail.exists() else []:
            text = path.read_text(encoding="utf-8")
            if f"To: {to}" in text:
                found = re.search(r"token=([A-Za-z0-9_\-]+)", text)
                assert found, text
                return found.group(1)
        time.sleep(0.1)
    raise AssertionError(f"no mail to {to} in {mail}")


def _tab_reaches_skip_link(page: Any) -> None:
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"


def _journey(url: str, mail: Path) -> dict[str, Any]:
    from playwright.sync_api import expect

    email = f"jo-{uuid.uuid4().hex[:8]}@example.com"
    seen: dict[str, Any] = {}
    with open_browser() as browser:
        context = browser.new_context(base_url=url)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)

        page.goto("/portal/signup")
        _tab_reaches_skip_link(page)
        page.fill("#f-email", email)
        page.fill("#f-password", "correct horse battery staple 9")
        page.fill("#f-organization", "Journey Co")
        screenshot(page, "01-signup")
        page.click("#signup-submit")
        screenshot(page, "02-signup-sent")

        page.goto(f"/portal/signup/verify?token={_mailed_token(mail, email)}")
        screenshot(page, "03-verify")
        page.click("#verify-submit")
        page.wait_for_selector("#period-stats, #page-title")
        screenshot(page, "04-dashboard")
        seen["dashboard_h1"] = page.inner_text("h1")

        page.click("#nav-keys")
        page.click("#new-key")
        page.fill("#f-name", "journey key")
        page.check("#scope-inference")
        screenshot(page, "05-key-new")
        page.click("#key-submit")
        seen["secret"] = page.input_value("#new-key-secret")
        screenshot(page, "06-key-secret")

        page.click("#nav-playground")
        page.select_option("#pg-model", "tiny")
        page.fill("#pg-message", "Write a short docstring.")
        page.fill("#pg-max-tokens", "12")
        page.fill("#pg-temperature", "0")
        seen["curl"] = page.inner_text("#pg-curl")
        page.click("#pg-send")
        expect(page.locator("#pg-status")).to_have_text("Done.", timeout=60_000)  # no eval: the CSP forbids it
        seen["playground_output"] = page.inner_text("#pg-output")
        seen["playground_tokens"] = page.inner_text("#pg-output-tokens")
        seen["playground_ttft"] = page.inner_text("#pg-ttft")
        screenshot(page, "07-playground")

        # the key's own traffic, from outside the browser
        with openai.OpenAI(base_url=f"{url}/v1", api_key=seen["secret"], max_retries=0, timeout=60) as client:
            out = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
            )
            seen["api_tokens"] = out.usage.completion_tokens

        expected = int(seen["playground_tokens"]) + seen["api_tokens"]
        for _ in range(100):  # the meter writes in batches, a moment after each response
            page.click("#nav-usage")
            total = (
                int(page.inner_text("#total-output").replace(",", "")) if page.query_selector("#total-output") else 0
            )
            if total >= expected:
                break
            time.sleep(0.2)
        seen["usage_output"] = total
        seen["usage_text"] = page.inner_text("#usage-table") if page.query_selector("#usage-table") else ""
        screenshot(page, "08-usage")

        page.click("#nav-keys")
        page.click("[id^=revoke-]:not(#revoke-cancel)")
        screenshot(page, "09-key-revoke")
        page.click("#revoke-submit")
        screenshot(page, "10-keys-after-revoke")
        with openai.OpenAI(base_url=f"{url}/v1", api_key=seen["secret"], max_retries=0, timeout=60) as client:
            try:
                client.models.list()
                seen["after_revoke"] = "accepted"
            except openai.AuthenticationError as exc:
                seen["after_revoke"] = exc.status_code
        for i, nav in enumerate(("nav-dashboard", "nav-billing", "nav-team", "nav-audit", "nav-settings")):
            page.click(f"#{nav}")
            _tab_reaches_skip_link(page)
            screenshot(page, f"{11 + i:02d}-{nav.removeprefix('nav-')}")
        seen["console_errors"] = errors
        context.close()
    return seen


async def test_signup_key_playground_usage_revoke(served: tuple[Served, Path]) -> None:
    server, data_dir = served
    seen = await trio.to_thread.run_sync(in_browser_process, _journey, server.url, data_dir / "mail")
    assert seen["dashboard_h1"] == "Journey Co"
    assert seen["secret"].startswith("bnk_")
    assert seen["playground_output"].strip(), "the playground streamed nothing"
    assert int(seen["playground_tokens"]) > 0 and seen["playground_ttft"].endswith("ms")
    assert '"model":"tiny"' in seen["curl"] and "Write a short docstring." in seen["curl"]
    assert seen["usage_output"] >= int(seen["playground_tokens"]) + seen["api_tokens"]
    assert "tiny" in seen["usage_text"] and "journey key" in seen["usage_text"]  # API-key traffic included
    assert seen["after_revoke"] == 401
    assert seen["console_errors"] == []  # nothing refused by the CSP, no script errors
