from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import trio

from actors.key_cache import KeyCache
from bitnet_actor.services import api_keys
from bitnet_actor.services.api_keys import format_ok, generate_key
from bitnet_actor.services.errors import AuthenticationError
from tests.api.conftest import Caller, Harness


def test_key_format() -> None:
    key = generate_key()
    assert key.startswith("bnk_live_")
    assert len(key) == len("bnk_live_") + 30 + 6
    assert format_ok(key)
    tampered = key[:-7] + ("A" if key[-7] != "A" else "B") + key[-6:]
    assert not format_ok(tampered)  # the CRC32 checksum catches a changed character
    assert not format_ok(key[:-1])
    assert len({generate_key() for _ in range(1000)}) == 1000


async def test_key_shown_once_and_stored_hashed(harness: Harness) -> None:
    owner = await harness.signup()
    org = next(iter(owner.orgs.values()))
    secret, key_id = await harness.key(owner, org, ["inference"])
    listed = await (await harness.call("GET", f"/api/v1/orgs/{org}/keys", owner)).get_json()
    assert all("key" not in k for k in listed["data"])
    assert listed["data"][0]["prefix"] == secret[:13] and listed["data"][0]["last4"] == secret[-4:]
    row = await harness.system.stores.db.fetchrow(
        "SELECT * FROM bitnet_api_key_by_hash($1)", hashlib.sha256(secret.encode()).digest()
    )
    assert str(row["id"]) == key_id
    # The secret itself is nowhere in the row.
    async with harness.system.stores.db.transaction(org_id=uuid.UUID(org)) as tx:
        raw = await tx.fetchrow("SELECT * FROM api_keys WHERE id = $1", uuid.UUID(key_id))
    assert secret not in repr(dict(raw))


async def test_key_authenticates_and_scopes_apply(harness: Harness) -> None:
    owner = await harness.signup()
    org = next(iter(owner.orgs.values()))
    inference, _ = await harness.key(owner, org, ["inference"])
    admin, _ = await harness.key(owner, org, ["admin"])
    r = await harness.call("GET", f"/api/v1/orgs/{org}/keys", Caller(bearer=inference))
    assert r.status_code == 403
    assert (await r.get_json())["error"]["type"] == "permission_error"
    r = await harness.call("GET", f"/api/v1/orgs/{org}/keys", Caller(bearer=admin))
    assert r.status_code == 200
    assert (await harness.call("GET", "/api/v1/me", Caller(bearer=admin))).status_code == 403


async def test_revoke_takes_effect_on_other_replicas(harness: Harness) -> None:
    owner = await harness.signup()
    org = next(iter(owner.orgs.values()))
    secret, key_id = await harness.key(owner, org, ["admin"])
    # A second "replica": its own cache, listening on the same Redis.
    other = KeyCache(harness.system.stores.db, harness.system.stores.redis, ttl_s=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(other.run)
        assert (await other.authenticate(secret)).key_id == uuid.UUID(key_id)
        r = await harness.call("DELETE", f"/api/v1/orgs/{org}/keys/{key_id}", owner)
        assert r.status_code == 200
        with trio.fail_after(5):
            while True:
                try:
                    await other.authenticate(secret)
                except AuthenticationError:
                    break
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert (await harness.call("GET", f"/api/v1/orgs/{org}/keys", Caller(bearer=secret))).status_code == 401


async def test_warm_key_check_needs_no_database(harness: Harness) -> None:
    owner = await harness.signup()
    org = next(iter(owner.orgs.values()))
    secret, _ = await harness.key(owner, org, ["inference"])
    cache = KeyCache(harness.system.stores.db, harness.system.stores.redis)
    await cache.authenticate(secret)
    cache.db = None  # type: ignore[assignment]  # any database call now fails loudly
    for _ in range(50):
        await cache.authenticate(secret)
    assert cache.statistics()["hits"] == 50


async def test_rotation_grace_and_expiry(harness: Harness) -> None:
    owner = await harness.signup()
    org = next(iter(owner.orgs.values()))
    old, old_id = await harness.key(owner, org, ["admin"])
    r = await harness.call("POST", f"/api/v1/orgs/{org}/keys/{old_id}/rotate", owner, json={"grace_seconds": 1})
    assert r.status_code == 201
    new = (await r.get_json())["key"]
    assert (await harness.call("GET", f"/api/v1/orgs/{org}", Caller(bearer=old))).status_code == 200
    assert (await harness.call("GET", f"/api/v1/orgs/{org}", Caller(bearer=new))).status_code == 200
    await trio.sleep(1.2)
    assert (await harness.call("GET", f"/api/v1/orgs/{org}", Caller(bearer=old))).status_code == 401
    assert (await harness.call("GET", f"/api/v1/orgs/{org}", Caller(bearer=new))).status_code == 200
    expires = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    r = await harness.call(
        "POST", f"/api/v1/orgs/{org}/keys", owner, json={"name": "short", "scopes": ["admin"], "expires_at": expires}
    )
    short = (await r.get_json())["key"]
    assert (await harness.call("GET", f"/api/v1/orgs/{org}", Caller(bearer=short))).status_code == 200
    await trio.sleep(1.2)
    assert (await harness.call("GET", f"/api/v1/orgs/{org}", Caller(bearer=short))).status_code == 401


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x", "scopes": ["root"]}, "scopes"),
        ({"name": "x", "scopes": "inference"}, "scopes"),
        ({"name": "", "scopes": ["inference"]}, "name"),
        ({"scopes": ["inference"]}, "name"),
        ({"name": "x", "scopes": ["inference"], "expires_at": "tomorrow"}, "expires_at"),
        ({"name": "x", "scopes": ["inference"], "expires_at": "2001-01-01T00:00:00+00:00"}, "expires_at"),
        ({"name": "x", "scopes": ["inference"], "color": "red"}, "color"),
    ],
)
async def test_bad_key_requests(harness: Harness, body: dict, param: str) -> None:
    owner = await harness.signup()
    org = next(iter(owner.orgs.values()))
    r = await harness.call("POST", f"/api/v1/orgs/{org}/keys", owner, json=body)
    assert r.status_code == 400, await r.get_data()
    assert (await r.get_json())["error"]["param"] == param


async def test_members_cannot_mint_admin_keys(harness: Harness) -> None:
    owner = await harness.signup()
    org = next(iter(owner.orgs.values()))
    member = await harness.invite(owner, org, "member")
    r = await harness.call("POST", f"/api/v1/orgs/{org}/keys", member, json={"name": "x", "scopes": ["admin"]})
    assert r.status_code == 403
    r = await harness.call("POST", f"/api/v1/orgs/{org}/keys", member, json={"name": "x", "scopes": ["inference"]})
    assert r.status_code == 201


async def test_last_used_is_recorded_off_the_request_path(harness: Harness) -> None:
    owner = await harness.signup()
    org = next(iter(owner.orgs.values()))
    secret, key_id = await harness.key(owner, org, ["admin"])
    await harness.call("GET", f"/api/v1/orgs/{org}", Caller(bearer=secret))
    await harness.system.auth.keys.flush_last_used()
    keys = await api_keys.list_keys(harness.system.stores.db, uuid.UUID(org))
    assert next(k for k in keys if str(k.id) == key_id).last_used_at is not None


async def test_key_limits_tighten_the_plan_never_loosen_it(harness: Harness) -> None:
    owner = await harness.signup()  # on the free plan: 4 concurrent requests per key
    org = next(iter(owner.orgs.values()))
    path = f"/api/v1/orgs/{org}/keys"
    r = await harness.call(
        "POST", path, owner, json={"name": "tight", "scopes": ["inference"], "rpm": 5, "tpm": 900, "max_concurrency": 2}
    )
    assert r.status_code == 201, await r.get_data()
    body = await r.get_json()
    assert (body["rpm"], body["tpm"], body["max_concurrency"]) == (5, 900, 2)
    listed = (await (await harness.call("GET", path, owner)).get_json())["data"]
    assert [(k["rpm"], k["max_concurrency"]) for k in listed if k["id"] == body["id"]] == [(5, 2)]
    row = await harness.system.stores.db.fetchrow(
        "SELECT * FROM bitnet_api_key_by_hash($1)", hashlib.sha256(body["key"].encode()).digest()
    )
    assert (row["rpm"], row["tpm"], row["max_concurrency"]) == (5, 900, 2)

    for extra, param in (
        ({"max_concurrency": 5}, "max_concurrency"),  # above the plan's 4
        ({"rpm": -1}, "rpm"),
        ({"tpm": 10**13}, "tpm"),
        ({"rpm": 1.5}, "rpm"),
        ({"rpm": True}, "rpm"),
    ):
        r = await harness.call("POST", path, owner, json={"name": "bad", "scopes": ["inference"], **extra})
        assert r.status_code == 400, (extra, await r.get_data())
        assert (await r.get_json())["error"]["param"] == param
    listed = (await (await harness.call("GET", path, owner)).get_json())["data"]
    assert [k["name"] for k in listed] == ["tight"], "a refused key must not be created"
