"""The registry's HTTP routes: listing beside the platform's models, a version's detail, aliases, lineage,
evals, deprecation, deletion (409 while routed), ``current`` for a key, and 404s for what is not there."""

from __future__ import annotations

import uuid

from bitnet_actor.services.models import registry
from tests.api.conftest import Caller, Harness


async def publish(h: Harness, org: str, name: str, version: str, parent: uuid.UUID | None = None) -> uuid.UUID:
    db, org_id = h.system.stores.db, uuid.UUID(org)
    sha = uuid.uuid4().hex * 2
    async with db.transaction(org_id=org_id) as tx:
        blob = await tx.fetchval(
            "INSERT INTO model_blobs (org_id, sha256, object_key, bytes, format) VALUES ($1, $2, $3, 7, 'gguf')"
            " RETURNING id",
            org_id,
            sha,
            f"sha256/{sha}",
        )
    v = await registry.create_version(
        db, org_id, name=name, version=version, blob_id=blob, sha256=sha, parent_id=parent,
        origin="quantized" if parent else "uploaded",
    )  # fmt: skip
    await registry.publish(db, org_id, v.id, facts={"architecture": "bitnet", "parameters": 42})
    return v.id


async def test_registry_routes(harness: Harness) -> None:
    h = harness
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    key, _ = await h.key(owner, org, ["models:read"])
    reader = Caller(bearer=key)
    v1 = await publish(h, org, "assistant", "1")
    await publish(h, org, "assistant", "2", parent=v1)

    listed = await (await h.call("GET", "/api/v1/orgs/current/models", reader)).get_json()
    mine = [m for m in listed["data"] if not m["platform"]]
    assert [m["name"] for m in mine] == ["assistant"]
    assert mine[0]["aliases"] == {"latest": "2"}
    assert [v["id"] for v in mine[0]["versions"]] == ["assistant:2", "assistant:1"]

    base = f"/api/v1/orgs/{org}/models/assistant"
    detail = await (await h.call("GET", f"{base}/versions/1", reader)).get_json()
    assert detail["state"] == "ready" and detail["facts"]["parameters"] == 42 and "local_path" not in detail
    lineage = await (await h.call("GET", f"{base}/versions/2/lineage", reader)).get_json()
    assert [v["id"] for v in lineage["data"]] == ["assistant:2", "assistant:1"]
    assert lineage["data"][0]["origin"] == "quantized"

    r = await h.call("PUT", f"{base}/aliases/stable", reader, json={"version": "1"})
    assert r.status_code == 403  # models:read cannot move aliases
    r = await h.call("PUT", f"{base}/aliases/stable", owner, json={"version": "1"})
    assert r.status_code == 200 and (await r.get_json())["version"] == "1"
    r = await h.call("PUT", f"{base}/aliases/latest", owner, json={"version": "1"})
    assert r.status_code == 400 and (await r.get_json())["error"]["param"] == "alias"
    r = await h.call("PUT", f"{base}/aliases/stable", owner, json={"version": "9"})
    assert r.status_code == 404

    r = await h.call("PATCH", f"{base}/versions/1", owner, json={"evals": {"hellaswag": 0.52}})
    assert r.status_code == 200 and (await r.get_json())["evals"] == {"hellaswag": 0.52}
    r = await h.call("PATCH", f"{base}/versions/1", owner, json={"sha256": "0" * 64})
    assert r.status_code == 400  # only evals and the description change
    r = await h.call("POST", f"{base}/versions/1/deprecate", owner)
    assert r.status_code == 200 and (await r.get_json())["state"] == "deprecated"
    r = await h.call("POST", f"{base}/versions/1/deprecate", owner)
    assert r.status_code == 409

    async with h.system.stores.db.transaction(org_id=uuid.UUID(org)) as tx:
        await tx.execute(
            "INSERT INTO model_routes (org_id, public_name, targets) VALUES ($1, 'chat', $2)",
            uuid.UUID(org),
            [{"version_id": str(v1), "weight": 100}],
        )
    r = await h.call("DELETE", f"{base}/versions/1", owner)
    assert r.status_code == 409 and "route(s) chat" in (await r.get_json())["error"]["message"]
    r = await h.call("DELETE", f"{base}/versions/2", owner)
    assert r.status_code == 200
    after = await (await h.call("GET", base, owner)).get_json()
    assert [v["version"] for v in after["versions"]] == ["1"] and after["aliases"]["latest"] == "1"
    assert (await h.call("GET", f"{base}/versions/2", owner)).status_code == 404
    assert (await h.call("GET", f"/api/v1/orgs/{org}/models/nothing-here", owner)).status_code == 404
