"""Job pages (portal/views/jobs.py): an upload with a conversion chosen opens its job's page, which shows the
job as it runs (status, <progress>, counts) and its result, and the lineage it recorded; starting a job from
the form, its refusals, cancelling; the route job.js polls; another organization's job is a 404."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import trio

from actors.jobs import JobWorker
from bitnet_actor.services.billing import plans
from bitnet_actor.services.models import jobs as job_service
from bitnet_actor.services.models.files import LocalFiles
from bitnet_actor.stores.postgres import open_database
from tests.api.test_registry_api import publish
from tests.portal.conftest import Browser
from tests.portal.test_models import ids_in, owner_browser, page_cookie, token_of, upload
from tests.portal.uploading import DEMO_MODEL, tar_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.api.conftest import Harness


def worker(h: Harness, delay_s: float) -> JobWorker:
    """A job worker over the harness's stores whose conversion sleeps ``delay_s`` after each tensor."""
    from bitnet_actor.engine.convert import convert_model

    def convert(*args: Any, progress: Callable[..., None], **kwargs: Any) -> Any:
        def slow(*counts: int) -> None:
            progress(*counts)
            time.sleep(delay_s)

        return convert_model(*args, progress=slow, **kwargs)

    s, data = h.system.stores, h.system.settings.data_dir
    files = LocalFiles(data / "model-files", h.system.model_objects, s.db)
    return JobWorker(
        s.db, s.redis, h.system.model_objects, files, data / "jobs-tmp",
        heartbeat_s=0.1, block_ms=100, backoff_s=0.05, convert=convert,
    )  # fmt: skip


async def test_an_upload_with_a_conversion_follows_its_job(browser: Browser) -> None:
    b, org = await owner_browser(browser)
    h = b.h
    seen: list[tuple[str, int | None, int | None, str]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(worker(h, delay_s=0.05).run)
        r = await upload(b, org, "demo", "1", tar_of(DEMO_MODEL), convert_to="hf-ternary")
        assert r.status == 303 and r.location.startswith(f"/portal/orgs/{org}/jobs/"), r.text
        page = await b.follow(r)
        assert "demo:1 is uploaded and ready" in page.by_id("flashes").text()
        assert page.h1() == "Job: convert to demo:1-hf-ternary"
        job_id = page.path.rsplit("/", 1)[1]
        root = page.by_id("job")
        assert root.attrs["data-api"] == f"/api/v1/orgs/{org}/jobs/{job_id}" and root.attrs["data-finished"] == "false"
        assert [s.attrs["src"].split(".")[0] for s in page.doc.find_all("script")] == ["/portal/static/job"]
        assert page.by_id("job-refresh").attrs["href"] == page.path
        # What job.js polls: the jobs API with the session cookie.
        polled = await h.call("GET", root.attrs["data-api"], headers={"Cookie": page_cookie(b)})
        assert polled.status_code == 200 and (await polled.get_json())["output"] == "demo:1-hf-ternary"
        for _ in range(2000):  # the page, reloaded as the refresh link does, until the job is done
            page = await b.get(page.path)
            bar = page.by_id("job-progress")
            value, top = bar.attrs.get("value"), bar.attrs.get("max")
            status = page.by_id("job-status").text()
            seen.append(
                (status, int(value) if value else None, int(top) if top else None, page.by_id("job-detail").text())
            )
            if status not in ("queued", "running"):
                break
            await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert seen[-1][0] == "succeeded", seen[-1]
    done = [v for _, v, _, _ in seen if v is not None]
    assert done == sorted(done) and any(v and t and 0 < v < t for _, v, t, _ in seen), seen  # seen moving
    assert any(" of " in words and "tensors" in words for *_, words in seen)
    assert seen[-1][1] == seen[-1][2]  # full at the end
    assert page.by_id("job").attrs["data-finished"] == "true" and page.doc.find(id="job-cancel-section") is None
    result = page.by_id("job-result")
    assert "hidden" not in result.attrs
    link = page.by_id("job-result-link").attrs["href"]
    assert link == f"/portal/orgs/{org}/models/demo/versions/1-hf-ternary"
    made = await b.get(link)
    assert made.by_id("version-state").text() == "ready" and made.by_id("version-origin").text() == "converted"
    chain = [li.text() for li in made.by_id("lineage-chain").find_all("li")]
    assert chain[0].startswith("demo:1 : uploaded") and chain[1].startswith("demo:1-hf-ternary (this version)")
    source = await b.get(f"/portal/orgs/{org}/models/demo/versions/1")
    assert source.by_id("lineage-derived").text().startswith("demo:1-hf-ternary (converted, ready)")
    listing = await b.get(f"/portal/orgs/{org}/jobs")
    assert "succeeded" in listing.by_id(f"job-{job_id}").text() and "demo:1" in listing.by_id(f"job-{job_id}").text()


async def test_cancelling_a_running_job(browser: Browser) -> None:
    b, org = await owner_browser(browser)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker(b.h, delay_s=0.2).run)
        page = await b.follow(await upload(b, org, "demo", "1", tar_of(DEMO_MODEL), convert_to="hf-ternary"))
        for _ in range(1000):
            page = await b.get(page.path)
            if page.by_id("job-progress").attrs.get("value") not in (None, "0"):
                break
            await trio.sleep(0.02)
        assert page.by_id("job-status").text() == "running"
        page = await b.follow(await b.submit(page, "job-cancel-form"))
        assert "stops after the tensor" in page.by_id("flashes").text()
        assert page.by_id("job-cancel-asked") and page.doc.find(id="job-cancel-form") is None
        for _ in range(1000):
            page = await b.get(page.path)
            if page.by_id("job-status").text() != "running":
                break
            await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert page.by_id("job-status").text() == "cancelled" and "hidden" in page.by_id("job-result").attrs
    model = await b.get(f"/portal/orgs/{org}/models/demo")
    assert ids_in(model, "versions-table") == ["version-1"]  # no output version


async def test_the_job_form_its_refusals_and_cancelling(browser: Browser, pg_dsn: str) -> None:
    b, org = await owner_browser(browser)
    h = b.h
    empty = await b.get(f"/portal/orgs/{org}/jobs/new")
    assert empty.by_id("no-sources") and empty.doc.find(id="job-form") is None
    assert (await b.get(f"/portal/orgs/{org}/jobs")).by_id("no-jobs")
    await publish(h, org, "src", "1")
    form = await b.get(f"/portal/orgs/{org}/jobs/new?source=src:1")
    assert form.by_id("job-source").find("option", selected="").attrs["value"] == "src:1"  # type: ignore[union-attr]
    assert form.by_id("job-output_name").attrs["value"] == "src"
    for fields, status, words in (
        ({"output_version": "1"}, 409, "already has a version"),
        ({"target": "q8_0", "output_version": "2"}, 400, "target must be one of"),
        ({"source": "other:1", "output_version": "2"}, 404, "no model version"),
        ({"output_version": "bad version!"}, 400, "a version is"),
    ):
        r = await b.submit(form, "job-form", fields)
        assert r.status == status and words in r.by_id("form-error").text(), (fields, r.status)
    r = await b.submit(form, "job-form", {"output_version": "1-q"})
    assert r.status == 303
    page = await b.follow(r)
    assert "is queued" in page.by_id("flashes").text() and page.by_id("job-status").text() == "queued"
    assert "value" not in page.by_id("job-progress").attrs  # indeterminate until a worker reports
    assert page.by_id("job-detail").text() == "waiting for a worker"
    r = await b.submit(form, "job-form", {"output_version": "1-q"})
    assert r.status == 409 and "another job is making" in r.by_id("form-error").text()
    async with open_database(pg_dsn, max_size=1) as owner_db:
        one = f"one-job-{uuid.uuid4().hex[:6]}"
        await plans.upsert_plan(owner_db, one, {"max_active_jobs": 1})
        await plans.set_org_plan(owner_db, uuid.UUID(org), one)
    r = await b.submit(form, "job-form", {"output_version": "1-other"})
    assert r.status == 429 and "its plan allows 1" in r.by_id("form-error").text()

    r = await b.submit(page, "job-cancel-form")
    page = await b.follow(r)
    assert "is cancelled" in page.by_id("flashes").text() and page.by_id("job-status").text() == "cancelled"
    assert page.doc.find(id="job-cancel-section") is None
    r = await b.post(f"{page.path}/cancel", [("csrf_token", token_of(page))])
    assert "had already cancelled" in (await b.follow(r)).by_id("flashes").text()


async def test_viewers_watch_and_another_orgs_job_is_a_404(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    await publish(h, org, "src", "1")
    job = await job_service.create_job(
        h.system.stores.db, h.system.stores.redis, uuid.UUID(org), source="src:1", target="tq2_0",
        output_name="src", output_version="2",
    )  # fmt: skip
    viewer = Browser(h).as_caller(await h.invite(owner, org, "viewer"))
    listing = await viewer.get(f"/portal/orgs/{org}/jobs")
    assert listing.by_id(f"job-{job.id}") and listing.doc.find(id="new-job") is None
    page = await viewer.get(f"/portal/orgs/{org}/jobs/{job.id}")
    assert page.status == 200 and page.doc.find(id="job-cancel-section") is None
    assert (await viewer.get(f"/portal/orgs/{org}/jobs/new")).status == 403
    r = await viewer.post(f"/portal/orgs/{org}/jobs/{job.id}/cancel", [("csrf_token", token_of(page))])
    assert r.status == 403

    stranger = Browser(h)
    other = await h.signup()
    stranger.as_caller(other)
    other_org = next(iter(other.orgs.values()))
    mine = await stranger.get(f"/portal/orgs/{other_org}/jobs")
    assert f"job-{job.id}" not in mine.text
    assert (await stranger.get(f"/portal/orgs/{other_org}/jobs/{job.id}")).status == 404
    r = await stranger.post(f"/portal/orgs/{other_org}/jobs/{job.id}/cancel", [("csrf_token", token_of(mine))])
    assert r.status == 404
    assert (await job_service.get_job(h.system.stores.db, uuid.UUID(org), job.id)).state == "queued"  # untouched
