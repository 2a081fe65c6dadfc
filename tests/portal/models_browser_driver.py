"""The browser half of tests/portal/test_models_browser.py, run in a process of its own: Playwright's sync
API makes its event loop through asyncio's policy, and importing trio-asyncio (as the system does) installs a
policy whose loops refuse Playwright ("You can't nest calls to run_until_complete()"), so the browser cannot
share the test's process, and this module imports nothing that imports trio-asyncio.
``python -m tests.portal.models_browser_driver URL DATA_DIR DSN TAR`` prints what the pages showed as JSON."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.browser import open_browser, screenshot

PASSWORD = "correct horse battery staple"  # tests.api.conftest's (importing it would import trio-asyncio)


def sql(dsn: str, statement: str, *args: Any) -> Any:
    """Run one statement as the tables' owner (asyncpg on a loop of its own, off the browser's thread)."""
    import asyncpg

    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(statement, *args)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def mailed_link(mail: Path, to: str) -> str:
    for _ in range(200):
        for path in mail.glob("*.eml") if mail.exists() else []:
            text = path.read_text()
            if f"To: {to}" in text and (found := re.search(r"https?://[^/\s]+(/\S*token=[A-Za-z0-9_-]+)", text)):
                return found.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no mail to {to}")


OBSERVE = """() => {
  for (const id of ["upload-status", "job-status", "job-detail"]) {
    const el = document.getElementById(id);
    if (el) new MutationObserver(() => window.seen(id, el.textContent,
        (document.getElementById(id.startsWith("upload") ? "upload-progress" : "job-progress") || {}).value))
      .observe(el, {childList: true, characterData: true, subtree: true});
  }
}"""


def drive(url: str, data_dir: Path, dsn: str, tar: Path) -> dict[str, Any]:
    """Sign up, upload with a conversion, then watch a job move; what the pages showed."""
    seen: list[tuple[str, str, Any]] = []
    problems: list[str] = []
    posts: list[str] = []
    polls: list[str] = []
    with open_browser() as browser:
        context = browser.new_context(base_url=url)
        page = context.new_page()
        page.expose_function("seen", lambda *a: seen.append(tuple(a)))
        page.on(
            "console",
            lambda m: (
                problems.append(f"{m.text} ({m.location.get('url')})") if m.type in ("error", "warning") else None
            ),
        )
        page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        page.on("request", lambda r: polls.append(r.url) if "/api/v1/orgs/" in r.url and "/jobs/" in r.url else None)
        email = f"js-{uuid.uuid4().hex[:8]}@example.com"
        page.goto("/portal/signup")
        page.fill("#f-email", email)
        page.fill("#f-password", PASSWORD)
        page.fill("#f-organization", f"js-{uuid.uuid4().hex[:6]}")
        page.click("#signup-submit")
        page.goto(mailed_link(data_dir / "mail", email))
        page.click("#verify-submit")
        page.wait_for_url(re.compile(r".*/portal/orgs/[0-9a-f-]{36}$"))
        org = page.url.rsplit("/", 1)[1]

        page.goto(f"/portal/orgs/{org}/uploads/new")
        page.evaluate(OBSERVE)
        page.fill("#upload-name", "demo")
        page.fill("#upload-version", "1")
        page.select_option("#upload-convert_to", "hf-ternary")
        page.set_input_files("#upload-file", str(tar))
        page.click("#upload-submit")
        page.wait_for_url(re.compile(r".*/portal/orgs/.*/jobs/[0-9a-f-]{36}$"), timeout=60_000)
        page.locator("#job-status", has_text="succeeded").wait_for(timeout=60_000)  # (the CSP forbids eval)
        assert page.is_visible("#job-result-link")
        screenshot(page, "models-upload-job")

        # A job that runs as slowly as we like: its row, moved along here (no worker holds it).
        source = sql(dsn, "SELECT id FROM model_versions WHERE org_id = $1 AND name = 'demo' AND version = '1'",
                     uuid.UUID(org))  # fmt: skip
        made = sql(dsn, "SELECT id FROM model_versions WHERE org_id = $1 AND version = '1-hf-ternary'", uuid.UUID(org))
        job = sql(
            dsn,
            "INSERT INTO model_jobs (org_id, kind, source_version_id, target, output_name, output_version, state,"
            " attempts, progress, worker, lease_until, started_at) VALUES ($1, 'quantize', $2, 'tq2_0', 'demo',"
            " 'slow', 'running', 1, '{\"tensors_done\": 3, \"tensors_total\": 10}', 'ghost',"
            " now() + interval '1 hour', now()) RETURNING id",
            uuid.UUID(org),
            source,
        )
        page.goto(f"/portal/orgs/{org}/jobs/{job}")
        page.evaluate(OBSERVE)
        assert page.get_attribute("#job-progress", "value") == "3"
        sql(dsn, 'UPDATE model_jobs SET progress = \'{"tensors_done": 7, "tensors_total": 10}\' WHERE id = $1', job)
        page.locator("#job-detail", has_text="7 of 10 tensors").wait_for(timeout=10_000)
        sql(dsn, "UPDATE model_jobs SET state = 'succeeded', finished_at = now(), result_version_id = $2,"
                 " progress = '{\"tensors_done\": 10, \"tensors_total\": 10}' WHERE id = $1", job, made)  # fmt: skip
        page.locator("#job-status", has_text="succeeded").wait_for(timeout=10_000)
        out = {
            "result_visible": page.is_visible("#job-result-link"),
            "cancel_visible": page.is_visible("#job-cancel-section"),
            "bar": (
                page.evaluate("document.getElementById('job-progress').value"),
                page.evaluate("document.getElementById('job-progress').max"),
            ),
            "polls_at_end": len([p for p in polls if str(job) in p]),
        }
        time.sleep(2.5)  # two poll intervals: a finished job is not polled again
        out["polls_later"] = len([p for p in polls if str(job) in p])
        screenshot(page, "models-job-followed")

        # ... and serve it: the uploaded model answers in the playground (the websocket API, the session's)
        page.goto(f"/portal/orgs/{org}/playground")
        page.select_option("#pg-model", "demo")
        page.fill("#pg-message", "Return the")
        page.fill("#pg-max-tokens", "8")
        page.fill("#pg-temperature", "0")
        page.click("#pg-send")
        page.locator("#pg-status", has_text="Done.").wait_for(timeout=120_000)
        out["served_tokens"] = int(page.inner_text("#pg-output-tokens"))
        out["served_text"] = page.inner_text("#pg-output")
        screenshot(page, "models-served-in-playground")
        context.close()
    return {**out, "org": org, "seen": seen, "problems": problems, "posts": posts}


def main() -> None:
    url, data_dir, dsn, tar = sys.argv[1:5]
    print(json.dumps(drive(url, Path(data_dir), dsn, Path(tar)), default=str))


if __name__ == "__main__":
    main()
