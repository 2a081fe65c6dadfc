"""A/B route pages (portal/views/model_routes.py): creating a route over two versions of a real uploaded model,
editing its weights, the service's refusals shown beside the form, deleting after a confirmation, every
replica's route cache told; viewers read only; another organization's route is a 404."""

from __future__ import annotations

import uuid

from bitnet_actor.services.models import routes
from tests.api.test_registry_api import publish
from tests.portal.conftest import Browser, Page
from tests.portal.test_models import ids_in, owner_browser, page_cookie, token_of, upload
from tests.portal.uploading import DEMO_MODEL, tar_of


def targets_of(page: Page, route: str) -> list[str]:
    return [li.text() for li in page.by_id(f"route-{route}").find_all("li")]


async def test_create_edit_and_delete_a_route(browser: Browser) -> None:
    b, org = await owner_browser(browser)
    h = b.h
    for version in ("1", "2"):
        assert (await upload(b, org, "chat", version, tar_of(DEMO_MODEL))).status == 303
    listing = await b.get(f"/portal/orgs/{org}/routes")
    assert listing.by_id("no-routes") and listing.by_id("subnav-routes").attrs["aria-current"] == "page"
    form = await b.get(listing.by_id("new-route").attrs["href"])
    options = [o.attrs["value"] for o in form.by_id("target-version-0").find_all("option")]
    assert options == ["", "chat:1", "chat:2"]
    assert len(form.by_id("targets-table").find_all("tr")) == 1 + 3  # header + rows to fill in

    one, two = {"version-0": "chat:1", "weight-0": "50"}, {"version-1": "chat:2", "weight-1": "50"}
    bad = [
        ({**one, "weight-0": "90", **two, "weight-1": "20"}, 400, "targets-error", "sum to 100"),
        ({**one, "weight-0": "ten"}, 400, "target-weight-0-error", "whole number"),
        ({**one, "weight-1": "50"}, 400, "target-weight-1-error", "no version"),
        ({**one, **two, "version-1": "chat:1"}, 400, "targets-error", "twice"),
        ({"version-0": "chat:9", "weight-0": "100"}, 400, "targets-error", "not a published version"),
        ({**one, "weight-0": "100", "public_name": "chat"}, 409, "form-error", "model name"),
        ({**one, "weight-0": "100", "public_name": "no way!"}, 400, "route-public_name-error", "model name is"),
    ]
    for fields, status, element, words in bad:
        r = await b.submit(form, "route-form", {"public_name": "assistant", **fields})
        assert r.status == status and words in r.by_id(element).text(), (fields, r.status)
        chosen = [o.attrs["value"] for o in r.by_id("target-version-0").find_all("option") if "selected" in o.attrs]
        assert chosen == ([fields["version-0"]] if fields["version-0"] in options else []), fields  # kept
    assert await routes.list_routes(h.system.stores.db, uuid.UUID(org)) == []

    fields = {
        "public_name": "assistant",
        "version-0": "chat:1",
        "weight-0": "90",
        "version-1": "chat:2",
        "weight-1": "10",
    }
    r = await b.submit(form, "route-form", fields)
    assert r.status == 303
    listing = await b.follow(r)
    assert "The route assistant is saved" in listing.by_id("flashes").text()
    assert targets_of(listing, "assistant") == ["chat:1: 90%", "chat:2: 10%"]
    api = await h.call("GET", f"/api/v1/orgs/{org}/routes/assistant", headers={"Cookie": page_cookie(b)})
    assert [(t["version"], t["weight"]) for t in (await api.get_json())["targets"]] == [("chat:1", 90), ("chat:2", 10)]
    r = await b.submit(form, "route-form", fields)
    assert r.status == 409 and "edit it instead" in r.by_id("form-error").text()

    cached = await h.system.routes.get(uuid.UUID(org), "assistant")  # this replica's cache holds the route now
    assert cached is not None and [t.weight for t in cached.targets] == [90, 10]
    edit = await b.get(listing.by_id("edit-route-assistant").attrs["href"])
    assert edit.h1() == "Edit the route assistant" and edit.doc.find(id="route-public_name") is None
    assert edit.by_id("target-weight-1").attrs["value"] == "10"
    r = await b.submit(edit, "route-form", {"weight-0": "50", "weight-1": "50"})
    assert r.status == 303
    listing = await b.follow(r)
    assert targets_of(listing, "assistant") == ["chat:1: 50%", "chat:2: 50%"]
    cached = await h.system.routes.get(uuid.UUID(org), "assistant")  # invalidated, so read again
    assert cached is not None and [t.weight for t in cached.targets] == [50, 50]
    r = await b.submit(edit, "route-form", {"weight-0": "50", "weight-1": "40"})
    assert r.status == 400 and r.by_id("target-weight-1").attrs["value"] == "40"  # what was typed comes back

    confirm = await b.get(listing.by_id("delete-route-assistant").attrs["href"])
    assert confirm.h1() == "Delete the route assistant?"
    r = await b.submit(confirm, "route-delete-submit-form")
    assert r.status == 303
    listing = await b.follow(r)
    assert "is deleted" in listing.by_id("flashes").text() and listing.by_id("no-routes")
    assert await h.system.routes.get(uuid.UUID(org), "assistant") is None
    assert (await b.get(edit.path)).status == 404
    r = await b.post(confirm.path, [("csrf_token", token_of(confirm))])
    assert r.status == 404


async def test_a_route_to_a_deleted_version_and_a_model_less_org(browser: Browser) -> None:
    b, org = await owner_browser(browser)
    h = b.h
    form = await b.get(f"/portal/orgs/{org}/routes/new")
    assert form.by_id("no-route-targets") and form.doc.find(id="route-form") is None
    await publish(h, org, "m", "1")
    await publish(h, org, "m", "2")
    await routes.put_route(
        h.system.stores.db, uuid.UUID(org), "ab", [{"version": "m:1", "weight": 100}, {"version": "m:2", "weight": 0}]
    )
    delete = await b.get(f"/portal/orgs/{org}/models/m/versions/2/delete")
    assert (await b.submit(delete, "delete-submit-form")).status == 303  # weight 0: it may go
    listing = await b.get(f"/portal/orgs/{org}/routes")
    assert targets_of(listing, "ab") == ["m:1: 100%", "a deleted version: 0%"]
    edit = await b.get(f"/portal/orgs/{org}/routes/ab/edit")
    assert "Deleted versions are left out" in edit.by_id("form-error").text()
    assert edit.by_id("target-version-1").find("option", selected="").attrs["value"] == ""  # type: ignore[union-attr]
    assert (await b.submit(edit, "route-form")).status == 303
    assert targets_of(await b.get(f"/portal/orgs/{org}/routes"), "ab") == ["m:1: 100%"]


async def test_viewers_read_and_another_orgs_route_is_a_404(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    await publish(h, org, "m", "1")
    await routes.put_route(h.system.stores.db, uuid.UUID(org), "ab", [{"version": "m:1", "weight": 100}])
    viewer = Browser(h).as_caller(await h.invite(owner, org, "viewer"))
    listing = await viewer.get(f"/portal/orgs/{org}/routes")
    assert ids_in(listing, "routes-table") == ["route-ab"] and listing.doc.find(id="new-route") is None
    assert listing.doc.find(id="edit-route-ab") is None
    for path in ("/routes/new", "/routes/ab/edit", "/routes/ab/delete"):
        assert (await viewer.get(f"/portal/orgs/{org}{path}")).status == 403, path
    token = token_of(listing)
    r = await viewer.post(
        f"/portal/orgs/{org}/routes/ab", [("csrf_token", token), ("version-0", "m:1"), ("weight-0", "100")]
    )
    assert r.status == 403

    stranger = Browser(h).as_caller(other := await h.signup())
    other_org = next(iter(other.orgs.values()))
    mine = await stranger.get(f"/portal/orgs/{other_org}/routes")
    token = token_of(mine)
    assert (await stranger.get(f"/portal/orgs/{other_org}/routes/ab/edit")).status == 404
    assert (await stranger.get(f"/portal/orgs/{other_org}/routes/ab/delete")).status == 404
    for path in ("/routes/ab", "/routes/ab/delete"):
        r = await stranger.post(
            f"/portal/orgs/{other_org}{path}", [("csrf_token", token), ("version-0", "m:1"), ("weight-0", "100")]
        )
        assert r.status == 404, path
    assert [r.public_name for r in await routes.list_routes(h.system.stores.db, uuid.UUID(org))] == ["ab"]
