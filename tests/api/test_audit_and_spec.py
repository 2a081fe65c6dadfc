from __future__ import annotations

import re

import pytest

from bitnet_actor.api.openapi import SPEC
from tests.api.conftest import Caller, Harness


async def test_audit_log_records_who_what_where(harness: Harness) -> None:
    owner = await harness.signup()
    org = next(iter(owner.orgs.values()))
    _, key_id = await harness.key(owner, org, ["inference"], name="ci")
    await harness.call("DELETE", f"/api/v1/orgs/{org}/keys/{key_id}", owner, headers={"User-Agent": "pytest-agent"})
    r = await harness.call("GET", f"/api/v1/orgs/{org}/audit", owner)
    entries = (await r.get_json())["data"]
    actions = [e["action"] for e in entries]
    assert actions[:3] == ["api_key.revoked", "api_key.created", "org.created"]
    revoked = entries[0]
    assert revoked["actor_user_id"] == owner.user_id
    assert revoked["target_id"] == key_id
    assert revoked["user_agent"] == "pytest-agent"
    assert revoked["ip"]
    assert [e["seq"] for e in entries] == sorted((e["seq"] for e in entries), reverse=True)
    page = await (
        await harness.call("GET", f"/api/v1/orgs/{org}/audit?limit=1&before={revoked['seq']}", owner)
    ).get_json()
    assert [e["action"] for e in page["data"]] == ["api_key.created"]
    r = await harness.call("GET", f"/api/v1/orgs/{org}/audit?limit=x", owner)
    assert r.status_code == 400


async def test_every_route_is_in_the_openapi_document(harness: Harness) -> None:
    app_routes = set()
    for rule in harness.client.app.url_map.iter_rules():
        if rule.rule.startswith(("/api/v1", "/.well-known", "/v1/")):
            path = re.sub(r"<(?:[^:>]+:)?(\w+)>", r"{\1}", rule.rule)  # <string(length=64):digest> too
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                app_routes.add((path, method.lower()))
    documented = {(path, m) for path, ops in SPEC["paths"].items() for m in ops if m != "parameters"}
    assert app_routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - app_routes == set(), "the OpenAPI document describes routes the app lacks"
    served = await (await harness.call("GET", "/api/v1/openapi.json", Caller())).get_json()
    assert served["openapi"] == "3.1.0"


def test_inference_request_bodies_are_the_protocols_own() -> None:
    from bitnet_actor.api.openai import protocol

    paths = SPEC["paths"]
    for path, kind in [
        ("/v1/completions", protocol.COMPLETION),
        ("/v1/chat/completions", protocol.CHAT),
        ("/v1/tokenize", protocol.TOKENIZE),
        ("/v1/detokenize", protocol.DETOKENIZE),
    ]:
        schema = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert set(schema["properties"]) == kind.names, path
        assert set(schema["required"]) <= kind.names
        assert not set(schema["properties"]) & set(protocol.UNSUPPORTED)
        assert schema["additionalProperties"] is False


def test_the_openapi_document_is_valid_openapi_3_1() -> None:
    validator = pytest.importorskip("openapi_spec_validator", reason="openapi-spec-validator is a test dependency")
    validator.validate(SPEC)
