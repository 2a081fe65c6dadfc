"""The response cache's setting through PATCH /api/v1/orgs/{org}: owners and admins turn it on (1 s .. 7 days)
and off (null or 0), others may not, bad values are a 400 naming the field, GET shows it, the change is in the
audit log and this replica's cached plan follows at once."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.api.conftest import Harness


async def test_owners_and_admins_set_the_response_cache(harness: Harness) -> None:
    owner = await harness.signup()
    org_id = next(iter(owner.orgs.values()))
    path = f"/api/v1/orgs/{org_id}"
    r = await harness.call("GET", path, owner)
    assert r.status_code == 200 and (await r.get_json())["response_cache_ttl_s"] is None  # off by default
    assert (await harness.system.tenants.profile(uuid.UUID(org_id))).response_cache_ttl_s is None  # now cached

    r = await harness.call("PATCH", path, owner, json={"response_cache_ttl_s": 3600})
    assert r.status_code == 200, await r.get_data()
    body = await r.get_json()
    assert body["response_cache_ttl_s"] == 3600 and body["id"] == org_id
    assert (await harness.system.tenants.profile(uuid.UUID(org_id))).response_cache_ttl_s == 3600
    r = await harness.call("GET", path, owner)
    assert (await r.get_json())["response_cache_ttl_s"] == 3600

    for bad in (0.5, -1, 7 * 24 * 3600 + 1, "60", True):
        r = await harness.call("PATCH", path, owner, json={"response_cache_ttl_s": bad})
        assert r.status_code == 400, (bad, await r.get_data())
        assert (await r.get_json())["error"]["param"] == "response_cache_ttl_s"
    r = await harness.call("PATCH", path, owner, json={})
    assert r.status_code == 400

    admin = await harness.invite(owner, org_id, "admin")
    r = await harness.call("PATCH", path, admin, json={"response_cache_ttl_s": 60, "name": f"o-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 200 and (await r.get_json())["response_cache_ttl_s"] == 60
    for role in ("member", "viewer", "billing"):
        other = await harness.invite(owner, org_id, role)
        r = await harness.call("PATCH", path, other, json={"response_cache_ttl_s": 5})
        assert r.status_code == 403, role

    for off in (None, 0):
        r = await harness.call("PATCH", path, owner, json={"response_cache_ttl_s": 30})
        assert (await r.get_json())["response_cache_ttl_s"] == 30
        r = await harness.call("PATCH", path, owner, json={"response_cache_ttl_s": off})
        assert r.status_code == 200 and (await r.get_json())["response_cache_ttl_s"] is None
    assert (await harness.system.tenants.profile(uuid.UUID(org_id))).response_cache_ttl_s is None

    async with harness.system.stores.db.transaction(org_id=uuid.UUID(org_id), readonly=True) as tx:
        changes = await tx.fetch(
            "SELECT details FROM audit_log WHERE action = 'billing.limits_changed' AND org_id = $1", uuid.UUID(org_id)
        )
    assert len(changes) == 6  # 3600, 60, (30, off) twice
