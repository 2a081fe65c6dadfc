"""API key pages (portal/views/keys.py): the list, creating a key (scopes, expiry, limits) whose secret is
shown once with a copy button, revoking and rotating; the role rules and other tenants' ids."""

from __future__ import annotations

import re
import uuid

from bitnet_actor.services import api_keys
from bitnet_actor.services.billing import plans
from tests.portal.conftest import Browser, Page


async def owner_browser(browser: Browser) -> tuple[Browser, str]:
    owner = await browser.h.signup()
    browser.as_caller(owner)
    return browser, next(iter(owner.orgs.values()))


async def test_create_a_key_shows_the_secret_once_and_it_works(browser: Browser) -> None:
    b, org = await owner_browser(browser)
    listing = await b.get(f"/portal/orgs/{org}/keys")
    assert listing.by_id("no-keys")
    form = await b.get(listing.by_id("new-key").attrs["href"])
    assert form.h1() == "Create an API key"
    boxes = {n.attrs["value"] for n in form.doc.find_all("input", type="checkbox")}
    assert boxes == {"inference", "models:read", "models:write", "billing:read", "admin"}  # an owner's
    fields = {"name": "ci runner", "scopes": ["inference", "billing:read"], "expires_in": "30", "rpm": "10"}
    r = await b.submit(form, "key-form", {**fields, "tpm": "", "max_concurrency": "2"})
    assert r.status == 200 and r.h1() == "Your new API key"
    assert r.headers["Cache-Control"] == "no-store"
    secret = r.by_id("new-key-secret").attrs["value"]
    assert api_keys.format_ok(secret)
    copy = r.by_id("copy-key")
    assert copy.attrs["data-copy-target"] == "new-key-secret" and "hidden" in copy.attrs  # shown by the script
    scripts = [s.attrs["src"] for s in r.doc.find_all("script")]
    assert len(scripts) == 1 and re.fullmatch(r"/portal/static/copy\.[0-9a-f]{16}\.js", scripts[0])
    # The key authenticates, with its scopes and limits.
    me = await b.h.call(
        "GET",
        f"/api/v1/orgs/{org}/usage/completions?start_time=1700000000",
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert me.status_code == 200
    keys = await api_keys.list_keys(b.h.system.stores.db, uuid.UUID(org))
    (key,) = keys
    assert (
        key.scopes == ("billing:read", "inference") and key.rpm == 10 and key.tpm is None and key.max_concurrency == 2
    )
    assert key.expires_at is not None
    # The list shows it, never the secret.
    listing = await b.get(f"/portal/orgs/{org}/keys")
    assert secret not in listing.text and secret[-4:] in listing.by_id(f"key-{key.id}").text()
    assert "10 requests/min" in listing.text
    await api_keys.record_last_used(b.h.system.stores.db, {key.id: uuid.UUID(org)})  # the cache's batch write
    listing = await b.get(f"/portal/orgs/{org}/keys")
    now_used = listing.by_id(f"key-{key.id}").find_all("td")[6]
    assert now_used.find("time") is not None  # a time, not "never"


async def test_key_form_refusals(browser: Browser) -> None:
    b, org = await owner_browser(browser)
    form = await b.get(f"/portal/orgs/{org}/keys/new")
    r = await b.submit(form, "key-form", {"name": "", "scopes": ["inference"]})
    assert r.status == 400 and r.by_id("f-name").attrs["aria-invalid"] == "true"
    r = await b.submit(form, "key-form", {"name": "k", "scopes": []})
    assert r.status == 400 and "scopes" in r.by_id("form-error").text()
    r = await b.submit(form, "key-form", {"name": "k", "scopes": ["inference"], "rpm": "ten"})
    assert r.status == 400 and "whole number" in r.by_id("f-rpm-error").text()
    r = await b.submit(form, "key-form", {"name": "k", "scopes": ["inference"], "expires_on": "2001-01-01"})
    assert r.status == 400 and "future" in r.by_id("form-error").text()
    await plans.set_org_overrides(b.h.system.stores.db, uuid.UUID(org), {"key_rpm": 5})
    b.h.system.tenants.forget(uuid.UUID(org))
    r = await b.submit(form, "key-form", {"name": "k", "scopes": ["inference"], "rpm": "6"})
    assert r.status == 400 and "per-key limit of 5" in r.by_id("f-rpm-error").text()
    assert r.by_id("f-name").attrs["value"] == "k" and r.by_id("scope-inference").attrs.get("checked") is not None
    assert not await api_keys.list_keys(b.h.system.stores.db, uuid.UUID(org))


async def test_members_may_create_keys_only_with_their_scopes_and_viewers_not_at_all(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    member = Browser(h).as_caller(await h.invite(owner, org, "member"))
    form = await member.get(f"/portal/orgs/{org}/keys/new")
    boxes = {n.attrs["value"] for n in form.doc.find_all("input", type="checkbox")}
    assert boxes == {"inference", "models:read", "models:write"}
    r = await member.submit(form, "key-form", {"name": "k", "scopes": ["admin"]})
    assert r.status == 403 and "may not create keys with scopes" in r.by_id("error-message").text()
    viewer = Browser(h).as_caller(await h.invite(owner, org, "viewer"))
    listing = await viewer.get(f"/portal/orgs/{org}/keys")
    assert listing.status == 200 and listing.doc.find(id="new-key") is None
    assert (await viewer.get(f"/portal/orgs/{org}/keys/new")).status == 403
    assert (
        await viewer.post(
            f"/portal/orgs/{org}/keys",
            [("csrf_token", viewer_csrf(viewer, listing)), ("name", "x"), ("scopes", "inference")],
        )
    ).status == 403
    billing = Browser(h).as_caller(await h.invite(owner, org, "billing"))
    assert (await billing.get(f"/portal/orgs/{org}/keys")).status == 403


def viewer_csrf(b: Browser, page: Page) -> str:
    field = page.doc.find("input", name="csrf_token")
    assert field is not None
    return field.attrs["value"]


async def test_revoke_and_rotate(browser: Browser) -> None:
    b, org = await owner_browser(browser)
    form = await b.get(f"/portal/orgs/{org}/keys/new")
    first = await b.submit(form, "key-form", {"name": "to rotate", "scopes": ["inference"]})
    secret = first.by_id("new-key-secret").attrs["value"]
    (key,) = await api_keys.list_keys(b.h.system.stores.db, uuid.UUID(org))
    listing = await b.get(f"/portal/orgs/{org}/keys")
    confirm = await b.get(listing.by_id(f"rotate-{key.id}").attrs["href"])
    assert confirm.h1() == "Rotate to rotate?"
    r = await b.submit(confirm, "rotate-form", {"grace_seconds": "0"})
    assert r.status == 200 and r.by_id("rotated-note")
    new_secret = r.by_id("new-key-secret").attrs["value"]
    assert new_secret != secret and api_keys.format_ok(new_secret)
    bearer = {"Authorization": f"Bearer {new_secret}"}
    assert (await b.h.call("GET", "/v1/models", headers=bearer)).status_code == 200
    keys = {k.id: k for k in await api_keys.list_keys(b.h.system.stores.db, uuid.UUID(org))}
    new_id = next(i for i in keys if i != key.id)
    listing = await b.get(f"/portal/orgs/{org}/keys")
    confirm = await b.get(listing.by_id(f"revoke-{new_id}").attrs["href"])
    assert confirm.h1() == "Revoke to rotate?"
    r = await b.submit(confirm, "revoke-submit-form")
    assert r.status == 303
    listing = await b.follow(r)
    assert "is revoked" in listing.by_id("flashes").text()
    assert "revoked" in listing.by_id(f"key-{new_id}").text()
    assert (await b.h.call("GET", "/v1/models", headers=bearer)).status_code == 401


async def test_another_orgs_key_is_a_404_everywhere(browser: Browser) -> None:
    h = browser.h
    a_owner, b_owner = await h.signup(), await h.signup()
    org_a, org_b = next(iter(a_owner.orgs.values())), next(iter(b_owner.orgs.values()))
    _, b_key = await h.key(b_owner, org_b, ["inference"])
    a = Browser(h).as_caller(a_owner)
    listing = await a.get(f"/portal/orgs/{org_a}/keys")
    token = viewer_csrf(a, listing)
    for path in (f"/portal/orgs/{org_a}/keys/{b_key}/revoke", f"/portal/orgs/{org_a}/keys/{b_key}/rotate"):
        assert (await a.get(path)).status == 404, path
        assert (await a.post(path, [("csrf_token", token)])).status == 404, path
    keys = await api_keys.list_keys(h.system.stores.db, uuid.UUID(org_b))
    assert all(k.active and k.rotated_to is None for k in keys)  # nothing changed in org B
