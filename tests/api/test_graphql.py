"""``/graphql`` over real PostgreSQL and Redis: each credential ``/api/v1`` takes, role denials, another
tenant's objects by id (null with NOT_FOUND, as REST's 404), secrets never in an answer, usage and invoices
equal to the REST routes' for the same arguments, and the request limits (size, tokens, depth, fields,
aliases, cost, batches, GET mutations). The role x tenant matrix is in test_isolation.py."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from graphql import get_introspection_query

from bitnet_actor.api.graphql import limits
from bitnet_actor.services.billing.ledger import UsageEvent, record_batch
from tests.api.conftest import ANON, PASSWORD, Caller, Harness
from tests.api.test_isolation import World, a_job, a_model, build_world

T0 = int(datetime(2024, 3, 10, tzinfo=UTC).timestamp())
DAY = 86400


async def gql(
    h: Harness,
    caller: Caller,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    method: str = "POST",
    operation: str | None = None,
) -> tuple[int, dict[str, Any]]:
    if method == "GET":
        args = {"query": query, **({"variables": json.dumps(variables)} if variables else {})}
        if operation:
            args["operationName"] = operation
        r = await h.call("GET", "/graphql", caller, query_string=args)
    else:
        body: dict[str, Any] = {"query": query, "variables": variables}
        if operation:
            body["operationName"] = operation
        r = await h.call("POST", "/graphql", caller, json=body)
    assert r.headers["Content-Type"].startswith("application/json")
    return r.status_code, await r.get_json()


def codes(body: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """(path, code) of each error."""
    return [(tuple(e.get("path") or ()), e["extensions"]["code"]) for e in body.get("errors", [])]


def event(org: str, at: int, model: str, i: int, o: int, key: str | None) -> UsageEvent:
    return UsageEvent(
        request_id=uuid.uuid4().hex, org_id=uuid.UUID(org), api_key_id=uuid.UUID(key) if key else None, model=model,
        input_tokens=i, output_tokens=o, latency_ms=1, outcome="completed", created_at=datetime.fromtimestamp(at, UTC),
    )  # fmt: skip


@pytest.fixture
async def world(harness: Harness) -> World:
    return await build_world(harness)


async def test_an_api_key_reads_what_its_scopes_allow(harness: Harness, world: World) -> None:
    owner = world.a["owner"]
    admin_key, _ = await harness.key(owner, world.org_a, ["admin", "billing:read"], name="gql-admin")
    await a_model(harness, world)
    status, body = await gql(
        harness,
        Caller(bearer=admin_key),
        '{ organization(id: "current") { id name role members { email role } keys { name prefix last4 }'
        " models { name } usage(startTime: 1700000000) { hasMore } invoices { period } } }",
    )
    assert status == 200 and "errors" not in body, body
    org = body["data"]["organization"]
    assert org["id"] == world.org_a and org["role"] is None  # a key has scopes, not a role
    assert {m["email"] for m in org["members"]} == {c.email for c in world.a.values()}
    assert {"gql-admin", "a-key"} <= {k["name"] for k in org["keys"]}
    assert org["models"] and org["invoices"]

    inference_key, _ = await harness.key(owner, world.org_a, ["inference"], name="gql-inference")
    status, body = await gql(
        harness, Caller(bearer=inference_key), '{ organization(id: "current") { id models { name } name keys { id } } }'
    )
    assert status == 200
    org = body["data"]["organization"]
    assert org["models"] and org["name"] is None and org["keys"] is None  # inference grants models:read only
    assert sorted(codes(body)) == [(("organization", "keys"), "FORBIDDEN"), (("organization", "name"), "FORBIDDEN")]
    assert all(e["extensions"]["status"] == 403 for e in body["errors"])
    status, body = await gql(harness, Caller(bearer=inference_key), "{ organizations { id } }")
    assert body == {"data": {"organizations": [{"id": world.org_a}]}}


async def test_a_session_cookie_reads_with_get_and_posts_with_its_csrf_token(harness: Harness, world: World) -> None:
    viewer = world.a["viewer"]
    query = "{ organizations { id name role } }"
    status, body = await gql(harness, viewer, query)
    assert status == 200 and body["data"]["organizations"] == [
        {"id": world.org_a, "name": body["data"]["organizations"][0]["name"], "role": "viewer"}
    ]
    status, get_body = await gql(harness, Caller(session=viewer.session), query, method="GET")  # no CSRF token
    assert status == 200 and get_body == body
    status, refused = await gql(harness, Caller(session=viewer.session), query)  # POST without it
    assert status == 403 and refused["errors"][0]["extensions"] == {"code": "FORBIDDEN", "status": 403}
    assert "data" not in refused


@pytest.mark.filterwarnings("ignore:get_jwt_config:DeprecationWarning")
async def test_an_access_token_bound_to_one_organization_sees_only_that_one(harness: Harness, world: World) -> None:
    owner = world.a["owner"]
    r = await harness.call("POST", "/api/v1/orgs", owner, json={"name": f"second-{uuid.uuid4().hex[:6]}"})
    second = (await r.get_json())["id"]
    status, body = await gql(harness, owner, '{ organizations { id } organization(id: "current") { id } }')
    assert {o["id"] for o in body["data"]["organizations"]} == {world.org_a, second}
    assert body["data"]["organization"] is None  # two organizations: "current" is ambiguous, as in REST
    assert codes(body) == [(("organization",), "BAD_REQUEST")]
    assert "several organizations" in body["errors"][0]["message"]

    r = await harness.call(
        "POST",
        "/api/v1/token",
        json={"grant_type": "password", "email": owner.email, "password": PASSWORD, "org_id": second},
    )
    bearer = Caller(bearer=(await r.get_json())["access_token"])
    status, body = await gql(
        harness,
        bearer,
        f'{{ organizations {{ id role }} current: organization(id: "current") {{ id }}'
        f' first: organization(id: "{world.org_a}") {{ id }} }}',
    )
    assert status == 200
    assert body["data"] == {
        "organizations": [{"id": second, "role": "owner"}],
        "current": {"id": second},
        "first": None,
    }
    assert codes(body) == [(("first",), "NOT_FOUND")]


async def test_without_valid_credentials_nothing_is_parsed(harness: Harness) -> None:
    for method in ("GET", "POST"):
        for caller in (ANON, Caller(bearer="bnk_live_" + "x" * 36), Caller(bearer="not-a-token")):
            status, body = await gql(harness, caller, "{ __schema { types { name } } }", method=method)
            assert status == 401, (method, caller, body)
            assert body["errors"][0]["extensions"] == {"code": "UNAUTHENTICATED", "status": 401}
    r = await harness.call("POST", "/graphql", json={"query": "{ organizations { id } }"})
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_another_tenants_objects_by_id_are_not_found(harness: Harness, world: World) -> None:
    ids = await a_job(harness, world)  # a model and a job of org A
    owner = world.a["owner"]
    invoices = await (await harness.call("GET", f"/api/v1/orgs/{world.org_a}/invoices", owner)).get_json()
    invoice_id = invoices["data"][0]["id"]
    org_a_name = (await (await harness.call("GET", f"/api/v1/orgs/{world.org_a}", owner)).get_json())["name"]
    rest = await harness.call("GET", f"/api/v1/orgs/{world.org_a}", world.b_owner)
    assert rest.status_code == 404
    rest_message = (await rest.get_json())["error"]["message"]
    inside_b = (
        f'key(id: "{world.a_key_id}") {{ id }} job(id: "{ids["job"]}") {{ id }} invoice(id: "{invoice_id}") {{ id }}'
        f' model(name: "{ids["model"]}") {{ name }} models {{ name }} keys {{ id }} jobs {{ id }} invoices {{ id }}'
    )
    for caller in (world.b_owner, Caller(bearer=world.b_key)):
        status, body = await gql(
            harness,
            caller,
            f'{{ a: organization(id: "{world.org_a}") {{ id name members {{ email }} }}'
            f' b: organization(id: "{world.org_b}") {{ id {inside_b} }}'
            f" all: organizations {{ id }} }}",
        )
        assert status == 200
        data = body["data"]
        assert data["a"] is None  # not even its id
        assert data["b"]["id"] == world.org_b
        for name in ("key", "job", "invoice", "model"):
            assert data["b"][name] is None, name
        assert sorted(codes(body)) == sorted(
            [(("a",), "NOT_FOUND")] + [(("b", name), "NOT_FOUND") for name in ("invoice", "job", "key", "model")]
        )
        assert next(e for e in body["errors"] if e["path"] == ["a"])["message"] == rest_message
        assert all(e["extensions"]["status"] == 404 for e in body["errors"])
        assert ids["model"] not in {m["name"] for m in data["b"]["models"]}
        assert world.a_key_id not in {k["id"] for k in data["b"]["keys"]}
        assert ids["job"] not in {j["id"] for j in data["b"]["jobs"]}
        assert invoice_id not in {i["id"] for i in data["b"]["invoices"]}
        assert {o["id"] for o in data["all"]} == {world.org_b}
        text = json.dumps(body)
        for secret in (world.org_a, org_a_name, world.a_key_id, ids["job"], invoice_id):
            assert secret not in text
    for bad in ("not-a-uuid", str(uuid.uuid4()), "CURRENT"):
        status, body = await gql(harness, world.b_owner, f'{{ organization(id: "{bad}") {{ id }} }}')
        assert (
            status == 200 and body["data"]["organization"] is None and codes(body) == [(("organization",), "NOT_FOUND")]
        )


async def test_key_secrets_and_hashes_are_never_answered(harness: Harness, world: World) -> None:
    owner = world.a["owner"]
    secret, key_id = await harness.key(owner, world.org_a, ["inference"], name="secret-keeper")
    digest = hashlib.sha256(secret.encode()).digest()
    forms = [
        secret,
        secret[len("bnk_live_") :],
        digest.hex(),
        base64.b64encode(digest).decode(),
        "\\\\x" + digest.hex(),
    ]
    fields = await gql(harness, owner, '{ __type(name: "ApiKey") { fields { name } } }')
    names = {f["name"] for f in fields[1]["data"]["__type"]["fields"]}
    assert not {n for n in names if any(w in n.lower() for w in ("hash", "secret", "key"))} - {"last4"}
    selection = " ".join(sorted(names))
    status, body = await gql(
        harness,
        owner,
        f'{{ organization(id: "{world.org_a}") {{ keys {{ {selection} }} key(id: "{key_id}") {{ {selection} }} }} }}',
    )
    assert status == 200 and "errors" not in body, body
    listed = body["data"]["organization"]["key"]
    assert listed["id"] == key_id and secret.endswith(listed["last4"]) and secret.startswith(listed["prefix"])
    assert listed["active"] is True and listed["scopes"] == ["inference"]
    text = json.dumps(body)
    for form in forms:
        assert form not in text
    rest = await (await harness.call("GET", f"/api/v1/orgs/{world.org_a}/keys", owner)).get_json()
    rest_key = next(k for k in rest["data"] if k["id"] == key_id)
    assert {k: rest_key[k] for k in ("name", "prefix", "last4", "active")} == {
        k: listed[k] for k in ("name", "prefix", "last4", "active")
    }


@pytest.mark.parametrize(
    "query",
    [
        "",
        "&group_by=model,api_key_id",
        "&group_by=model&models=m2",
        "&bucket_width=1h&limit=30&group_by=api_key_id",
    ],
)
async def test_usage_buckets_equal_the_rest_routes(harness: Harness, world: World, query: str) -> None:
    owner = world.a["owner"]
    billing, billing_id = await harness.key(owner, world.org_a, ["billing:read"], name="bill")
    await record_batch(
        harness.system.stores.db,
        [
            event(world.org_a, T0 + 5, "m1", 10, 5, billing_id),
            event(world.org_a, T0 + 3700, "m1", 20, 1, world.a_key_id),
            event(world.org_a, T0 + DAY + 1, "m2", 7, 3, world.a_key_id),
            event(world.org_b, T0 + 6, "m1", 1000, 1000, None),  # another tenant's: in neither answer
        ],
    )
    params = dict(p.split("=") for p in f"start_time={T0}&end_time={T0 + 2 * DAY}{query}".split("&"))
    args = {
        "startTime": int(params["start_time"]),
        "endTime": int(params["end_time"]),
        "bucketWidth": params.get("bucket_width"),
        "limit": int(params["limit"]) if "limit" in params else None,
        "groupBy": params["group_by"].split(",") if "group_by" in params else None,
        "models": params["models"].split(",") if "models" in params else None,
    }
    gql_query = (
        "query($startTime: BigInt!, $endTime: BigInt, $bucketWidth: String, $limit: Int, $groupBy: [String!],"
        ' $models: [String!], $page: String) { organization(id: "current") { usage(startTime: $startTime,'
        " endTime: $endTime, bucketWidth: $bucketWidth, limit: $limit, groupBy: $groupBy, models: $models,"
        " page: $page) { hasMore nextPage buckets { startTime endTime results { inputTokens outputTokens"
        " inputCachedTokens numModelRequests model apiKeyId } } } } }"
    )
    rest_path = f"/api/v1/orgs/current/usage/completions?start_time={T0}&end_time={T0 + 2 * DAY}{query}"
    page: str | None = None
    seen = 0
    for _ in range(5):  # the 1h case has two pages
        suffix = f"&page={page}" if page else ""
        r = await harness.call("GET", rest_path + suffix, Caller(bearer=billing))
        assert r.status_code == 200
        rest = await r.get_json()
        status, body = await gql(harness, Caller(bearer=billing), gql_query, {**args, "page": page})
        assert status == 200 and "errors" not in body, body
        got = body["data"]["organization"]["usage"]
        assert (got["hasMore"], got["nextPage"]) == (rest["has_more"], rest["next_page"])
        assert [
            (b["startTime"], b["endTime"], [
                (r["inputTokens"], r["outputTokens"], r["inputCachedTokens"], r["numModelRequests"], r["model"],
                 r["apiKeyId"]) for r in b["results"]
            ]) for b in got["buckets"]
        ] == [
            (b["start_time"], b["end_time"], [
                (r["input_tokens"], r["output_tokens"], r["input_cached_tokens"], r["num_model_requests"], r["model"],
                 r["api_key_id"]) for r in b["results"]
            ]) for b in rest["data"]
        ]  # fmt: skip
        seen += sum(r["input_tokens"] for b in rest["data"] for r in b["results"])
        page = rest["next_page"]
        if page is None:
            break
    assert seen == {"": 37, "&group_by=model&models=m2": 7}.get(query, 37)  # never org B's 1000


async def test_a_bad_usage_argument_is_the_rest_routes_400(harness: Harness, world: World) -> None:
    owner = world.a["owner"]
    r = await harness.call("GET", f"/api/v1/orgs/{world.org_a}/usage/completions?start_time=1&bucket_width=2d", owner)
    rest = (await r.get_json())["error"]
    status, body = await gql(
        harness,
        owner,
        f'{{ organization(id: "{world.org_a}") {{ id usage(startTime: 1, bucketWidth: "2d") {{ hasMore }} }} }}',
    )
    assert status == 200 and body["data"]["organization"] == {"id": world.org_a, "usage": None}
    (error,) = body["errors"]
    assert error["message"] == rest["message"]
    assert error["extensions"] == {"code": "BAD_REQUEST", "status": 400, "param": "bucket_width"}


async def test_invoices_equal_the_rest_routes(harness: Harness, world: World) -> None:
    now = int(datetime.now(UTC).timestamp())
    await record_batch(
        harness.system.stores.db,
        [event(world.org_a, now - 1, "m1", 5_000_000_000, 7, None), event(world.org_a, T0, "m2", 3, 4, None)],
    )  # five billion tokens: past GraphQL's 32-bit Int
    billing = world.a["billing"]
    rest = await (await harness.call("GET", f"/api/v1/orgs/{world.org_a}/invoices", billing)).get_json()
    line_fields = "lineNo kind model description quantity unitPricePerMCents amountCents"
    status, body = await gql(
        harness,
        billing,
        f'{{ organization(id: "{world.org_a}") {{ invoices {{ id period periodStart status plan currency subtotalCents'
        f" totalCents inputTokens outputTokens requests finalizedAt lines {{ {line_fields} }} }} }} }}",
    )
    assert status == 200 and "errors" not in body, body
    got = body["data"]["organization"]["invoices"]
    assert [i["period"] for i in got] == [i["period"] for i in rest["data"]]
    assert "2024-03" in [i["period"] for i in got]
    for mine, theirs in zip(got, rest["data"], strict=True):
        assert mine["id"] == theirs["id"] and mine["status"] == theirs["status"] and mine["plan"] == theirs["plan"]
        assert int(datetime.fromisoformat(mine["periodStart"]).timestamp()) == theirs["period_start"]
        for name in ("subtotal_cents", "total_cents", "input_tokens", "output_tokens", "requests", "currency"):
            camel = name.split("_")[0] + "".join(p.title() for p in name.split("_")[1:])
            assert mine[camel] == theirs[name], name
        mine_lines = [
            (x["lineNo"], x["kind"], x["model"], x["description"], x["quantity"], x["unitPricePerMCents"],
             x["amountCents"]) for x in mine["lines"]
        ]  # fmt: skip
        rest_lines = [
            (x["line_no"], x["kind"], x["model"], x["description"], x["quantity"], x["unit_price_per_m_cents"],
             x["amount_cents"]) for x in theirs["lines"]
        ]  # fmt: skip
        assert mine_lines == rest_lines
    assert got[0]["inputTokens"] == 5_000_000_000
    one_id = got[0]["id"]
    rest_one = await (await harness.call("GET", f"/api/v1/orgs/{world.org_a}/invoices/{one_id}", billing)).get_json()
    status, body = await gql(
        harness, billing, f'{{ organization(id: "{world.org_a}") {{ invoice(id: "{one_id}") {{ id totalCents }} }} }}'
    )
    assert body["data"]["organization"]["invoice"] == {"id": one_id, "totalCents": rest_one["total_cents"]}


async def test_models_versions_lineage_and_jobs_equal_the_rest_routes(harness: Harness, world: World) -> None:
    ids = await a_job(harness, world)
    viewer = world.a["viewer"]
    name = ids["model"]
    rest_model = await (await harness.call("GET", f"/api/v1/orgs/{world.org_a}/models/{name}", viewer)).get_json()
    rest_jobs = await (await harness.call("GET", f"/api/v1/orgs/{world.org_a}/jobs", viewer)).get_json()
    status, body = await gql(
        harness,
        viewer,
        f'{{ organization(id: "{world.org_a}") {{ model(name: "{name}") {{ name platform aliases {{ alias version }}'
        " versions { id versionId state sha256 facts aliases origin createdAt publishedAt lineage { id } }"
        ' version(version: "1") { id } } jobs { id kind target output state attempts progress createdAt }'
        f' job(id: "{ids["job"]}") {{ id state }} }} }}',
    )
    assert status == 200 and "errors" not in body, body
    org = body["data"]["organization"]
    model = org["model"]
    assert model["name"] == name and model["platform"] is False
    assert {a["alias"]: a["version"] for a in model["aliases"]} == rest_model["aliases"]
    (version,) = model["versions"]
    (rest_version,) = rest_model["versions"]
    assert version["id"] == rest_version["id"] == f"{name}:1" and version["versionId"] == rest_version["version_id"]
    for gql_name, rest_name in (("state", "state"), ("sha256", "sha256"), ("facts", "facts"), ("aliases", "aliases")):
        assert version[gql_name] == rest_version[rest_name]
    assert int(datetime.fromisoformat(version["createdAt"]).timestamp()) == rest_version["created_at"]
    assert version["lineage"] == [{"id": f"{name}:1"}] and model["version"] == {"id": f"{name}:1"}
    assert [j["id"] for j in org["jobs"]] == [j["id"] for j in rest_jobs["data"]]
    mine = next(j for j in org["jobs"] if j["id"] == ids["job"])
    theirs = next(j for j in rest_jobs["data"] if j["id"] == ids["job"])
    assert (mine["kind"], mine["target"], mine["output"], mine["state"]) == (
        theirs["kind"], theirs["target"], theirs["output"], theirs["state"],
    )  # fmt: skip
    assert org["job"] == {"id": ids["job"], "state": "cancelled"}


async def test_lists_take_first_within_their_maximum(harness: Harness, world: World) -> None:
    owner = world.a["owner"]
    status, body = await gql(harness, owner, '{ organization(id: "current") { members(first: 2) { role } } }')
    assert status == 200 and len(body["data"]["organization"]["members"]) == 2
    maximum = limits.LIST_SIZES["Organization.members"].maximum
    status, body = await gql(
        harness, owner, f'{{ organization(id: "current") {{ id members(first: {maximum + 1}) {{ role }} }} }}'
    )
    assert status == 200 and body["data"]["organization"]["members"] is None
    assert codes(body) == [(("organization", "members"), "BAD_REQUEST")]


def nested_lineage(depth: int) -> str:
    """``organization { models { versions { lineage { lineage ... { id } } } } }``: ``depth`` fields deep."""
    inner = "id"
    for _ in range(depth - 4):
        inner = f"lineage {{ {inner} }}"
    return f'{{ organization(id: "current") {{ models(first: 1) {{ versions(first: 1) {{ {inner} }} }} }} }}'


async def test_depth_fields_aliases_and_cost_limits(harness: Harness, world: World) -> None:
    owner = world.a["owner"]
    await a_model(harness, world)

    async def refused(query: str, variables: dict[str, Any] | None = None) -> str:
        status, body = await gql(harness, owner, query, variables)
        assert status == 400 and "data" not in body, body
        (error,) = body["errors"]
        assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"
        return str(error["message"])

    status, body = await gql(harness, owner, nested_lineage(limits.MAX_DEPTH))
    assert status == 200 and "errors" not in body, body  # the deepest allowed executes (its rounds too)
    assert "deeper than 8" in await refused(nested_lineage(limits.MAX_DEPTH + 1))

    many = " ".join(["id"] * limits.MAX_FIELDS)
    assert "more than 500 fields" in await refused(f'{{ organization(id: "current") {{ {many} }} }}')
    fragments = ["fragment F0 on Organization { id }"] + [
        f"fragment F{i} on Organization {{ ...F{i - 1} ...F{i - 1} }}" for i in range(1, 10)
    ]  # 2**9 fields once expanded, from a few lines
    assert "more than 500 fields" in await refused('{ organization(id: "current") { ...F9 } } ' + " ".join(fragments))

    aliases = " ".join(f"a{i}: organizations(first: 1) {{ id }}" for i in range(limits.MAX_ALIASES + 1))
    assert "more than 30 aliases" in await refused(f"{{ {aliases} }}")

    costly = "query($n: Int!) { organizations(first: $n) { members(first: $n) { email role } } }"
    assert "costs more than 5000" in await refused(costly, {"n": 100})
    status, body = await gql(harness, owner, costly, {"n": 10})
    assert status == 200 and "errors" not in body
    assert "costs more than 5000" in await refused(
        '{ organization(id: "current") { usage(startTime: 1, bucketWidth: "1m", limit: 1440)'
        " { buckets { startTime results { inputTokens outputTokens } } } } }"
    )


async def test_size_tokens_batches_methods_and_malformed_requests(harness: Harness, world: World) -> None:
    owner = world.a["owner"]
    small = '{ organization(id: "current") { id } }'
    padded = "#" + "x" * limits.MAX_QUERY_BYTES + "\n" + small  # a comment: bytes, not tokens
    status, body = await gql(harness, owner, padded)
    assert status == 400 and "longer than 16384 bytes" in body["errors"][0]["message"]
    status, body = await gql(harness, owner, small, {"pad": "x" * limits.MAX_BODY_BYTES})
    assert status == 413 and body["errors"][0]["extensions"]["code"] == "REQUEST_TOO_LARGE"
    status, body = await gql(harness, owner, "{ organizations { id " + "id " * limits.MAX_TOKENS + "} }")
    assert status == 400 and body["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    assert "more than 3000 tokens" in body["errors"][0]["message"]

    r = await harness.call("POST", "/graphql", owner, json=[{"query": small}, {"query": small}])
    assert r.status_code == 400 and "batched" in (await r.get_json())["errors"][0]["message"]
    r = await harness.call("POST", "/graphql", owner, data=small, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = await harness.call("POST", "/graphql", owner, data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400

    status, body = await gql(harness, owner, small, method="GET")
    assert status == 200 and body["data"]["organization"]["id"] == world.org_a
    status, body = await gql(harness, owner, "mutation { organizations { id } }", method="GET")
    assert status == 405
    status, body = await gql(harness, owner, "mutation { organizations { id } }")
    assert status == 400 and body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    status, body = await gql(harness, owner, "{ organizations { id secret } }")
    assert status == 400 and body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    for broken in ("{ organizations { id }", "{ }", "{ organizations { } }"):  # empty selections: the spec's rule
        status, body = await gql(harness, owner, broken)
        assert status == 400 and body["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED", broken
    status, body = await gql(harness, owner, "query($n: Int!) { organizations(first: $n) { id } }", {"n": "ten"})
    assert status == 400 and "data" not in body
    status, body = await gql(harness, owner, "query A { organizations { id } } query B { organizations { id } }")
    assert status == 400  # two operations and no operationName
    status, body = await gql(
        harness, owner, "query A { organizations { id } } query B { x: organizations { id } }", operation="B"
    )
    assert status == 200 and list(body["data"]) == ["x"]
    for query in ("", "   ", None):
        r = await harness.call("POST", "/graphql", owner, json={"query": query})
        assert r.status_code == 400


async def test_introspection_for_an_authenticated_caller_within_its_own_limits(harness: Harness, world: World) -> None:
    owner = world.a["owner"]
    standard = get_introspection_query(
        descriptions=True, specified_by_url=True, directive_is_repeatable=True, input_value_deprecation=True
    )  # what GraphiQL asks
    status, body = await gql(harness, owner, standard)
    assert status == 200 and "errors" not in body
    types = {t["name"] for t in body["data"]["__schema"]["types"]}
    assert {"Organization", "ApiKey", "Invoice", "UsageBucket", "ModelVersion", "Job"} <= types
    assert body["data"]["__schema"]["mutationType"] is None
    status, body = await gql(harness, owner, "{ __schema { types { fields { type { fields { name } } } } } }")
    assert status == 400 and "fields inside fields" in body["errors"][0]["message"]


async def test_lineage_across_models_equals_the_rest_route(harness: Harness, world: World) -> None:
    """Nested lineage four deep, through versions of two models: each level's chains equal REST's, and the
    rounds that fetch them (each level may discover new versions) end within the limit."""
    from bitnet_actor.services.models import registry

    db, org = harness.system.stores.db, uuid.UUID(world.org_a)

    async def version(name: str, label: str, parent: uuid.UUID | None, origin: str) -> uuid.UUID:
        sha = uuid.uuid4().hex * 2
        async with db.transaction(org_id=org) as tx:
            blob = await tx.fetchval(
                "INSERT INTO model_blobs (org_id, sha256, object_key, bytes, format) VALUES ($1, $2, $3, 1, 'gguf')"
                " RETURNING id",
                org,
                sha,
                f"sha256/{sha}",
            )
        made = await registry.create_version(
            db, org, name=name, version=label, blob_id=blob, sha256=sha, parent_id=parent, origin=origin, facts={}
        )
        return made.id

    base, quantized = f"base-{uuid.uuid4().hex[:6]}", f"q-{uuid.uuid4().hex[:6]}"
    v1 = await version(base, "1", None, "uploaded")
    v2 = await version(base, "2", v1, "converted")
    await version(quantized, "1", v2, "quantized")
    viewer = world.a["viewer"]
    rest = await harness.call("GET", f"/api/v1/orgs/{world.org_a}/models/{quantized}/versions/1/lineage", viewer)
    chain = [v["id"] for v in (await rest.get_json())["data"]]
    assert chain == [f"{quantized}:1", f"{base}:2", f"{base}:1"]
    status, body = await gql(
        harness,
        viewer,
        f'{{ organization(id: "{world.org_a}") {{ model(name: "{quantized}") {{ version(version: "1") {{'
        " lineage { id lineage { id lineage { id lineage { id } } } } } } } }",
    )
    assert status == 200 and "errors" not in body, body
    top = body["data"]["organization"]["model"]["version"]["lineage"]
    assert [v["id"] for v in top] == chain
    for level in top:  # each version's own chain: itself and what follows it in the top one
        assert [v["id"] for v in level["lineage"]] == chain[chain.index(level["id"]) :]
