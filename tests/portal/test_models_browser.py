"""The models pages' two scripts in a real browser (Debian's chromium through Playwright; skipped without it),
against the whole system on a loopback port: upload.js sends the file to the JSON API with the session and
the CSRF header, showing the bytes sent and then the server's check, starts the chosen conversion and opens
its job page; job.js follows a running job (its row moved along here) to its result and then stops polling.
No Content-Security-Policy violation on the way."""

from __future__ import annotations

import json
import re
import sys
from typing import TYPE_CHECKING

import pytest
import trio

from tests.api.served import serve
from tests.browser import REPO, require_browser
from tests.portal.uploading import DEMO_MODEL, tar_of

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.slow
async def test_upload_progress_and_live_job_page_in_a_browser(pg_dsn: str, redis_url: str, tmp_path: Path) -> None:
    require_browser()
    tar = tmp_path / "demo.tar"
    tar.write_bytes(tar_of(DEMO_MODEL))
    async with serve(pg_dsn, redis_url, tmp_path / "data", {}) as served:
        driver = [sys.executable, "-m", "tests.portal.models_browser_driver", served.url, str(tmp_path / "data")]
        with trio.fail_after(300):  # a hung browser fails the test rather than the run
            done = await trio.run_process([*driver, pg_dsn, str(tar)], cwd=REPO, capture_stdout=True)
        served.stop.set()
    got = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert not got["problems"], got["problems"]  # no CSP violation, no script error
    org = got["org"]
    api_posts = [p.split("//", 1)[1].split("/", 1)[1] for p in got["posts"] if "/api/v1/" in p]
    assert api_posts == [f"api/v1/orgs/{org}/models?name=demo&version=1", f"api/v1/orgs/{org}/jobs"], got["posts"]
    assert not any("/uploads" in p for p in got["posts"])  # the script, not the plain form, sent the file
    upload = [text for where, text, _ in got["seen"] if where == "upload-status"]
    assert any(re.fullmatch(r"Sent [\d,]+ bytes of [\d,]+ bytes \(\d+%\)\.", t) for t in upload), upload
    sent = upload.index(next(t for t in upload if t.startswith("Sent.")))
    assert "checking and inspecting" in upload[sent] and "Starting the conversion" in upload[sent + 1], upload
    job = [(text, bar) for where, text, bar in got["seen"] if where == "job-detail"]
    assert ("7 of 10 tensors", 7) in job and job[-1] == ("10 of 10 tensors", 10), job
    assert got["result_visible"] and not got["cancel_visible"] and got["bar"] == [10, 10]
    assert got["polls_at_end"] >= 2 and got["polls_later"] == got["polls_at_end"], got
    assert got["served_tokens"] > 0 and got["served_text"].strip(), got  # the upload serves
