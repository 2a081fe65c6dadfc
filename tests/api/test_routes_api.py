"""A/B routes over HTTP: PUT validation (400 for weights, counts, unknown versions; 409 for a model's name),
listing and reading, deletion, the split (90/10 within tolerance over 400 users, sticky per user), and
delete_version refused while a route sends traffic to a version, allowed once its weight is 0."""

from __future__ import annotations

import uuid

from bitnet_actor.services.models import routes
from tests.api.conftest import Harness
from tests.api.test_registry_api import publish


async def test_route_crud_and_validation(harness: Harness) -> None:
    h = harness
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    await publish(h, org, "chat", "1")
    await publish(h, org, "chat", "2")
    base = f"/api/v1/orgs/{org}/routes"

    def targets(*pairs: tuple[str, object]) -> dict[str, object]:
        return {"targets": [{"version": v, "weight": w} for v, w in pairs]}

    bad = [
        targets(("chat:1", 90), ("chat:2", 20)),  # sum != 100
        targets(("chat:1", 110), ("chat:2", -10)),  # negative
        targets(("chat:1", 50), ("chat:9", 50)),  # unknown version
        targets(("other:1", 100)),  # unknown model
        targets(("chat:1", 50.5), ("chat:2", 49.5)),  # not integers
        targets(*[(f"chat:{i}", 10) for i in range(9)], ("chat:1", 10)),  # too many
        targets(("chat:1", 50), ("chat:1", 50)),  # twice
        {"targets": []},
    ]
    for body in bad:
        r = await h.call("PUT", f"{base}/ab", owner, json=body)
        assert r.status_code == 400, body
        assert (await r.get_json())["error"]["param"] == "targets"
    r = await h.call("PUT", f"{base}/chat", owner, json=targets(("chat:1", 100)))
    assert r.status_code == 409, await r.get_data()  # a model's own name

    r = await h.call("PUT", f"{base}/ab", owner, json=targets(("chat:1", 90), ("chat:2", 10)))
    assert r.status_code == 200, await r.get_data()
    got = await r.get_json()
    assert [(t["version"], t["weight"]) for t in got["targets"]] == [("chat:1", 90), ("chat:2", 10)]
    listed = await (await h.call("GET", base, owner)).get_json()
    assert [r["id"] for r in listed["data"]] == ["ab"]
    assert (await h.call("GET", f"{base}/ab", owner)).status_code == 200
    assert (await h.call("GET", f"{base}/nope", owner)).status_code == 404

    # A version a route sends traffic to cannot be deleted; at weight 0 it can.
    r = await h.call("DELETE", f"/api/v1/orgs/{org}/models/chat/versions/2", owner)
    assert r.status_code == 409 and "ab" in (await r.get_json())["error"]["message"]
    r = await h.call("PUT", f"{base}/ab", owner, json=targets(("chat:1", 100), ("chat:2", 0)))
    assert r.status_code == 200
    r = await h.call("DELETE", f"/api/v1/orgs/{org}/models/chat/versions/2", owner)
    assert r.status_code == 200
    got = await (await h.call("GET", f"{base}/ab", owner)).get_json()
    assert [(t["version"], t["weight"]) for t in got["targets"]] == [("chat:1", 100), (None, 0)]

    assert (await h.call("DELETE", f"{base}/ab", owner)).status_code == 200
    assert (await h.call("DELETE", f"{base}/ab", owner)).status_code == 404
    assert (await h.system.routes.get(uuid.UUID(org), "ab")) is None


async def test_split_is_by_weight_and_sticky(harness: Harness) -> None:
    h = harness
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    await publish(h, org, "chat", "1")
    await publish(h, org, "chat", "2")
    route = await routes.put_route(
        h.system.stores.db,
        uuid.UUID(org),
        "ab",
        [{"version": "chat:1", "weight": 90}, {"version": "chat:2", "weight": 10}],
    )
    picks = [routes.pick(route, f"user-{i}").ref for i in range(400)]
    share = picks.count("chat:2") / len(picks)
    assert 0.06 <= share <= 0.14, share
    assert all(routes.pick(route, f"user-{i}").ref == picks[i] for i in range(400))  # the same user, the same version
    # Another organization's identical route splits its users independently (the hash includes the org).
    other = routes.Route(uuid.uuid4(), route.public_name, route.targets, route.updated_at)
    assert [routes.pick(other, f"user-{i}").ref for i in range(400)] != picks
