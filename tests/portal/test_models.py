"""Models pages (portal/views/models.py, uploads.py): uploading a real tiny model through the plain form (the
file streamed, checked, published), the list, a model's versions and aliases (set, move, remove), lineage,
the download link, deprecation and deletion; every refusal (CSRF, names, bad files, the plan's size limit,
roles), another tenant's names a 404, hostile text escaped. The JS progress bar's hooks are checked here too;
its behaviour in a browser is the lead's Playwright journey's."""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import TYPE_CHECKING

from bitnet_actor.services.billing import plans
from bitnet_actor.services.models import jobs as job_service
from bitnet_actor.services.models import registry, routes
from bitnet_actor.stores.postgres import open_database
from tests.api.test_registry_api import publish
from tests.portal.conftest import HOSTILE, Browser, Page
from tests.portal.html import form_fields
from tests.portal.uploading import DEMO_MODEL, post_multipart, spool_files, submit_upload, tar_of

if TYPE_CHECKING:
    from pathlib import Path

RAW = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


async def owner_browser(browser: Browser, org_name: str | None = None) -> tuple[Browser, str]:
    owner = await browser.h.signup(org=org_name)
    browser.as_caller(owner)
    return browser, next(iter(owner.orgs.values()))


def ids_in(page: Page, table: str) -> list[str]:
    return [tr.attrs["id"] for tr in page.by_id(table).find_all("tr") if "id" in tr.attrs]


def token_of(page: Page) -> str:
    field = page.doc.find("input", name="csrf_token")
    assert field is not None
    return field.attrs["value"]


async def upload(b: Browser, org: str, name: str, version: str, data: bytes, **fields: str) -> Page:
    form = await b.get(f"/portal/orgs/{org}/uploads/new")
    return await submit_upload(b, form, {"name": name, "version": version, **fields}, data)


async def test_upload_without_javascript_publishes_the_version(browser: Browser, model_dir: Path) -> None:
    b, org = await owner_browser(browser)
    listing = await b.get(f"/portal/orgs/{org}/models")
    assert listing.by_id("nav-models").attrs.get("aria-current") == "page"
    assert listing.by_id("no-models")
    form = await b.get(listing.by_id("upload-model").attrs["href"])
    assert form.h1() == "Upload a model"
    upload_form = form.by_id("upload-form")
    assert form_fields(upload_form)[0][0] == "csrf_token"  # read before the file
    assert form.by_id("upload-file").attrs["type"] == "file"
    # The progress bar's hooks: the static script, the API routes it calls, the bar (hidden without JS).
    scripts = [s.attrs["src"] for s in form.doc.find_all("script")]
    assert len(scripts) == 1 and re.fullmatch(r"/portal/static/upload\.[0-9a-f]{16}\.js", scripts[0])
    assert upload_form.attrs["data-api"] == f"/api/v1/orgs/{org}/models"
    assert upload_form.attrs["data-api-jobs"] == f"/api/v1/orgs/{org}/jobs"
    assert form.by_id("upload-progress").tag == "progress" and "hidden" in form.by_id("upload-progress-box").attrs
    script = await b.get(scripts[0])
    assert "X-CSRF-Token" in script.text and 'upload.addEventListener("progress"' in script.text

    data = tar_of(model_dir)
    r = await submit_upload(b, form, {"name": "tiny", "version": "1", "description": "the first"}, data)
    assert r.status == 303, r.text
    page = await b.follow(r)
    assert page.h1() == "tiny:1" and "tiny:1 is uploaded and ready" in page.by_id("flashes").text()
    assert page.by_id("version-state").text() == "ready"
    assert page.by_id("version-sha256").text() == hashlib.sha256(data).hexdigest()
    assert page.by_id("version-format").text() == "tar"
    assert page.by_id("version-size").text().startswith(f"{len(data):,} bytes")
    assert page.by_id("version-description").text() == "the first"
    assert "parameter_count" in page.by_id("version-inspected").text()
    api = await b.h.call("GET", f"/api/v1/orgs/{org}/models/tiny/versions/1", headers={"Cookie": page_cookie(b)})
    made = await api.get_json()
    assert made["state"] == "ready" and made["sha256"] == hashlib.sha256(data).hexdigest()
    assert made["aliases"] == ["latest"] and made["facts"]["format"] == "safetensors"
    assert spool_files(b.h) == []
    listing = await b.get(f"/portal/orgs/{org}/models")
    assert ids_in(listing, "models-table") == ["model-tiny"]
    assert "ready" in listing.by_id("model-tiny").text()


def page_cookie(b: Browser) -> str:
    return "; ".join(f"{k}={v}" for k, v in b.cookies.items())


async def test_versions_aliases_lineage_download_deprecate_delete(browser: Browser) -> None:
    b, org = await owner_browser(browser)
    h, db = b.h, b.h.system.stores.db
    data = tar_of(DEMO_MODEL)
    for version in ("1", "2"):
        assert (await upload(b, org, "demo", version, data)).status == 303
    v1 = (await registry.get_version(db, uuid.UUID(org), "demo", "1")).id
    child = await publish(h, org, "demo-q", "1", parent=v1)  # as a conversion records it
    await publish(h, org, "demo-q", "2", parent=child)
    model = await b.get(f"/portal/orgs/{org}/models/demo")
    assert ids_in(model, "versions-table") == ["version-2", "version-1"]
    assert "2" in model.by_id("alias-latest").text() and "moves by itself" in model.by_id("alias-latest").text()
    row = model.by_id("version-1").text()
    assert (
        "ready" in row
        and "tar" in row
        and f"{len(data):,} bytes" in row
        and hashlib.sha256(data).hexdigest()[:12] in row
    )

    r = await b.submit(model, "alias-form", {"alias": "stable", "version": "1"})
    assert r.status == 303
    model = await b.follow(r)
    assert "demo@stable now points at version 1" in model.by_id("flashes").text()
    assert "1" in model.by_id("alias-stable").find_all("td")[0].text()
    r = await b.submit(model, "move-stable-form", {"version": "2"})
    model = await b.follow(r)
    assert model.by_id("alias-stable").find_all("td")[0].text() == "2"
    for alias, version, status, words in (
        ("latest", "1", 400, "moves to each new published version"),
        ("Not An Alias", "1", 400, "lowercase"),
        ("beta", "9", 404, "no model version"),
    ):
        r = await b.submit(model, "alias-form", {"alias": alias, "version": version})
        assert r.status == status and words in r.by_id("form-error").text(), (alias, r.status)
    r = await b.submit(model, "remove-alias-stable-form")
    model = await b.follow(r)
    assert "is removed" in model.by_id("flashes").text() and model.doc.find(id="alias-stable") is None
    assert registry.LATEST in (await registry.get_version(db, uuid.UUID(org), "demo", "2")).aliases

    # Lineage: the chain to the root, and the tree of versions made from one.
    grandchild = await b.get(f"/portal/orgs/{org}/models/demo-q/versions/2")
    chain = [li.text() for li in grandchild.by_id("lineage-chain").find_all("li")]
    assert [c.split(":")[0] + ":" + c.split(":")[1].split(" ")[0] for c in chain] == ["demo:1", "demo-q:1", "demo-q:2"]
    assert "(this version)" in chain[-1] and chain[1].endswith("quantized")
    root = await b.get(f"/portal/orgs/{org}/models/demo/versions/1")
    tree = root.by_id("lineage-derived")
    top = [li for li in tree.children if not isinstance(li, str)]
    assert len(top) == 1 and top[0].text().startswith("demo-q:1")
    assert top[0].find("ul").find("li").text().startswith("demo-q:2")  # type: ignore[union-attr]
    assert root.by_id("lineage-root")
    derived_model = await b.get(f"/portal/orgs/{org}/models/demo-q")
    made_from = derived_model.by_id("version-1").find_all("td")[5]
    assert made_from.find("a").attrs["href"] == f"/portal/orgs/{org}/models/demo/versions/1"  # type: ignore[union-attr]

    # The download link streams the file as uploaded.
    r = await b.submit(root, "download-version-form")
    assert r.status == 303 and r.location.startswith("/api/v1/model-downloads/")
    got = await h.client.get(r.location)
    assert got.status_code == 200 and await got.get_data() == data

    r = await b.submit(root, "deprecate-version-form")
    root = await b.follow(r)
    assert root.by_id("version-state").text() == "deprecated" and root.doc.find(id="deprecate-version") is None

    # Deleting: refused while a route sends traffic to the version, then done; latest moves back.
    await routes.put_route(db, uuid.UUID(org), "ab", [{"version": "demo:2", "weight": 100}])
    confirm = await b.get(root.path.replace("/versions/1", "/versions/2") + "/delete")
    assert confirm.h1() == "Delete demo:2?"
    r = await b.submit(confirm, "delete-submit-form")
    assert r.status == 409 and "route(s) ab" in r.by_id("form-error").text()
    await routes.put_route(db, uuid.UUID(org), "ab", [{"version": "demo:1", "weight": 100}])
    r = await b.submit(confirm, "delete-submit-form")
    assert r.status == 303 and r.location == f"/portal/orgs/{org}/models/demo"
    model = await b.follow(r)
    assert ids_in(model, "versions-table") == ["version-1"] and "1" in model.by_id("alias-latest").text()


async def test_upload_refusals(browser: Browser, pg_dsn: str) -> None:
    b, org = await owner_browser(browser)
    h = b.h
    data = tar_of(DEMO_MODEL)
    form = await b.get(f"/portal/orgs/{org}/uploads/new")
    path, token = f"/portal/orgs/{org}/uploads", token_of(form)
    fields = [("name", "m"), ("version", "1")]
    file = ("file", "model.tar", data)
    for token_fields, first in (([("csrf_token", "forged")], False), ([], False), ([("csrf_token", token)], True)):
        r = await post_multipart(b, path, token_fields + fields, file, file_first=first)
        assert r.status == 403 and "did not come from this site" in r.text, (token_fields, first)
    assert (await post_multipart(Browser(h), path, [("csrf_token", token), *fields], file)).status == 403
    assert (await b.post(path, [("csrf_token", token), *fields])).status == 400  # not multipart

    for values, payload, status, element, words in (
        ({"name": "bad name!"}, data, 400, "upload-name-error", "model name"),
        ({"version": ""}, data, 400, "upload-version-error", "required"),
        ({"convert_to": "q8_0"}, data, 400, "upload-convert_to-error", "conversions offered"),
        ({}, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, 400, "upload-file-error", "unknown format"),
        ({}, data[: len(data) // 2], 400, "upload-file-error", "truncated"),
    ):
        r = await submit_upload(b, form, {"name": "m", "version": "1", **values}, payload)
        assert r.status == status and words in r.by_id(element).text(), (values, r.status, r.text[-3000:])
        assert r.by_id("upload-name").attrs["value"] == values.get("name", "m")  # what was typed comes back
    r = await post_multipart(b, path, [("csrf_token", token), *fields], ("file", "", b""))
    assert r.status == 400 and "choose the model file" in r.by_id("upload-file-error").text()
    assert (await submit_upload(b, form, {"name": "m", "version": "1"}, data)).status == 303
    r = await submit_upload(b, form, {"name": "m", "version": "1"}, data)
    assert r.status == 409 and "already has a version" in r.by_id("form-error").text()

    async with open_database(pg_dsn, max_size=1) as owner_db:  # the plan's limit: the file one byte over it
        small = f"small-{uuid.uuid4().hex[:6]}"
        await plans.upsert_plan(owner_db, small, {"max_upload_bytes": len(data) - 1})
        await plans.set_org_plan(owner_db, uuid.UUID(org), small)
    h.system.tenants.forget(uuid.UUID(org))
    form = await b.get(f"/portal/orgs/{org}/uploads/new")
    assert form.by_id("upload-form").attrs["data-max-bytes"] == str(len(data) - 1)
    assert form.by_id("upload-limit").text().startswith(f"{len(data) - 1:,} bytes")
    r = await submit_upload(b, form, {"name": "m", "version": "2"}, data)
    assert r.status == 413 and "plan's limit" in r.by_id("upload-file-error").text()
    async with open_database(pg_dsn, max_size=1) as owner_db:  # far over it: refused before reading the body
        await plans.upsert_plan(owner_db, small, {"max_upload_bytes": 1000})
    h.system.tenants.forget(uuid.UUID(org))
    r = await submit_upload(b, form, {"name": "m", "version": "2"}, data)
    assert r.status == 413 and "limit of 1000 bytes" in r.by_id("form-error").text()

    versions = await registry.list_versions(h.system.stores.db, uuid.UUID(org))
    assert [v.ref for v in versions if v.org_id is not None] == ["m:1"]
    assert spool_files(h) == []


async def test_roles_see_what_they_may_do(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    await publish(h, org, "shared", "1")
    viewer = Browser(h).as_caller(await h.invite(owner, org, "viewer"))
    listing = await viewer.get(f"/portal/orgs/{org}/models")
    assert listing.status == 200 and listing.doc.find(id="upload-model") is None
    assert listing.doc.find(id="subnav-upload") is None
    model = await viewer.get(f"/portal/orgs/{org}/models/shared")
    assert (
        model.status == 200 and model.doc.find(id="alias-form") is None and model.doc.find(id="upload-version") is None
    )
    version = await viewer.get(f"/portal/orgs/{org}/models/shared/versions/1")
    assert version.status == 200 and version.doc.find(id="actions-heading") is None
    assert (await viewer.get(f"/portal/orgs/{org}/uploads/new")).status == 403
    r = await post_multipart(viewer, f"/portal/orgs/{org}/uploads", [("csrf_token", token_of(listing))], None)
    assert r.status == 403 and "does not allow models:write" in r.text
    billing = Browser(h).as_caller(await h.invite(owner, org, "billing"))
    dashboard = await billing.get(f"/portal/orgs/{org}")
    assert dashboard.doc.find(id="nav-models") is None
    assert (await billing.get(f"/portal/orgs/{org}/models")).status == 403
    member = Browser(h).as_caller(await h.invite(owner, org, "member"))
    assert (await upload(member, org, "by-member", "1", tar_of(DEMO_MODEL))).status == 303


async def test_another_orgs_models_are_404s(browser: Browser) -> None:
    h = browser.h
    a, org_a = await owner_browser(browser)
    b_owner = await h.signup()
    org_b = next(iter(b_owner.orgs.values()))
    await publish(h, org_b, "secret", "1")
    await registry.set_alias(h.system.stores.db, uuid.UUID(org_b), "secret", "stable", "1")
    listing = await a.get(f"/portal/orgs/{org_a}/models")
    assert "secret" not in listing.text
    token = token_of(listing)
    base = f"/portal/orgs/{org_a}/models/secret"
    for path in (base, f"{base}/versions/1", f"{base}/versions/1/delete"):
        assert (await a.get(path)).status == 404, path
    for path in (f"{base}/aliases", f"{base}/aliases/stable/remove", f"{base}/versions/1/download",
                 f"{base}/versions/1/deprecate", f"{base}/versions/1/delete"):  # fmt: skip
        r = await a.post(path, [("csrf_token", token), ("alias", "stable"), ("version", "1")])
        assert r.status == 404, (path, r.status)
    found = await registry.get_version(h.system.stores.db, uuid.UUID(org_b), "secret", "1")
    assert found.state == "ready" and set(found.aliases) == {"latest", "stable"}  # nothing changed in org B
    for bad in ("..", "a b", "x" * 200):
        assert (await a.get(f"/portal/orgs/{org_a}/models/{bad}")).status == 404, bad


async def test_hostile_text_is_escaped_on_the_models_pages(browser: Browser) -> None:
    b, org = await owner_browser(browser, org_name=f"{HOSTILE} {uuid.uuid4().hex[:6]}")
    db = b.h.system.stores.db
    assert (await upload(b, org, "demo", "1", tar_of(DEMO_MODEL), description=HOSTILE)).status == 303
    await registry.update_metadata(db, uuid.UUID(org), "demo", "1", evals={HOSTILE: HOSTILE}, description=None)
    pending = await registry.create_version(db, uuid.UUID(org), name="demo", version="2", description=HOSTILE)
    await registry.fail(db, uuid.UUID(org), pending.id, HOSTILE)
    pages = [
        await b.get(f"/portal/orgs/{org}/models"),
        await b.get(f"/portal/orgs/{org}/models/demo"),
        await b.get(f"/portal/orgs/{org}/models/demo/versions/1"),
        await b.get(f"/portal/orgs/{org}/models/demo/versions/2"),
        await b.get(f"/portal/orgs/{org}/uploads/new"),
    ]
    for page in pages:
        assert page.status == 200, page.path
        assert RAW not in page.text and ESCAPED in page.text and "{{7*7}}" in page.text, page.path
    assert HOSTILE in pages[2].by_id("version-description").text()
    assert HOSTILE in pages[2].by_id("version-evals").text()
    assert HOSTILE in pages[3].by_id("version-error").text() and "failed" in pages[1].by_id("version-2").text()


async def test_every_models_form_refuses_a_forged_token(browser: Browser) -> None:
    b, org = await owner_browser(browser)
    h, db = b.h, b.h.system.stores.db
    await publish(h, org, "m", "1")
    await registry.set_alias(db, uuid.UUID(org), "m", "stable", "1")
    await routes.put_route(db, uuid.UUID(org), "ab", [{"version": "m:1", "weight": 100}])
    job = await job_service.create_job(
        db, h.system.stores.redis, uuid.UUID(org), source="m:1", target="tq2_0", output_name="m", output_version="2"
    )
    base = f"/portal/orgs/{org}"
    forms = {
        "/models/m/aliases": [("alias", "beta"), ("version", "1")],
        "/models/m/aliases/stable/remove": [],
        "/models/m/versions/1/download": [],
        "/models/m/versions/1/deprecate": [],
        "/models/m/versions/1/delete": [],
        "/jobs": [("source", "m:1"), ("target", "tq2_0"), ("output_name", "m"), ("output_version", "3")],
        f"/jobs/{job.id}/cancel": [],
        "/routes": [("public_name", "cd"), ("version-0", "m:1"), ("weight-0", "100")],
        "/routes/ab": [("version-0", "m:1"), ("weight-0", "100")],
        "/routes/ab/delete": [],
    }
    for path, fields in forms.items():
        for token in ([], [("csrf_token", "forged")], [("csrf_token", b.cookies.get("__Host-bitnet_form", "x"))]):
            r = await b.post(base + path, token + fields)
            assert r.status == 403 and "did not come from this site" in r.text, (path, token, r.status)
    v = await registry.get_version(db, uuid.UUID(org), "m", "1")
    assert v.state == "ready" and set(v.aliases) == {"latest", "stable"}  # nothing changed
    assert [r.public_name for r in await routes.list_routes(db, uuid.UUID(org))] == ["ab"]
    assert [(j.id, j.state) for j in await job_service.list_jobs(db, uuid.UUID(org))] == [(job.id, "queued")]
