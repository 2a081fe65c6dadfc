"""A real browser for the portal's journeys: Debian's chromium driven by Playwright (nothing downloaded).

``ops/install_test_tools.sh`` installs chromium; without it (or without the ``playwright`` package) the
browser tests skip saying so, and fail instead under ``BITNET_TEST_REQUIRE_OPS_TOOLS=1`` (CI). Playwright's
sync API runs an asyncio loop of its own, which trio-asyncio's loop policy refuses in a test process: call
:func:`open_browser` in a child process (``multiprocessing``'s spawn context).

Screenshots go to ``test-artifacts/screenshots/`` at the repository root (ignored by git; CI keeps them).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.ops._tools import require

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium() -> str | None:
    """Debian's chromium, if installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"
    return found


def require_browser() -> str:
    """The chromium path; skips (fails under CI) when chromium or playwright is missing."""
    path = chromium()
    require(path, "chromium is not installed (bash ops/install_test_tools.sh)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        require(False, "the playwright package is not installed (a test dependency)")
    assert path is not None
    return path


@contextmanager
def open_browser() -> Iterator[Any]:
    """A headless chromium (Playwright's ``Browser``); call in a child process (see the module docstring)."""
    from playwright.sync_api import sync_playwright

    path = require_browser()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as ``test-artifacts/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def in_browser_process(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` (a module-level function that uses :func:`open_browser`) in a fresh Python process, with
    asyncio's default loop policy there (see the module docstring); call from a worker thread."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_with_default_policy, (fn, *args))


def _with_default_policy(fn: Any, *args: Any) -> Any:
    import asyncio

    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())  # importing trio-asyncio replaced it
    return fn(*args)
