"""Request spans through the app with an in-memory exporter: a SERVER span per request named by its route,
under the caller's ``traceparent`` (handed back in the response), an ``auth`` child, the status recorded; and
nothing at all when tracing is off."""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bitnet_actor.config import Settings
from bitnet_actor.tracing import Tracing
from tests.api.conftest import open_harness

if TYPE_CHECKING:
    from pathlib import Path

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


async def test_request_spans_in_memory(aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.with_exporter(exporter, batch=False)
    settings = Settings(data_dir=tmp_path, database_url=pg_dsn, redis_url=redis_url)
    async with open_harness(settings, tracing) as h:
        owner = await h.signup()
        org = next(iter(owner.orgs.values()))
        exporter.clear()
        r = await h.call(
            "GET", f"/api/v1/orgs/{org}/keys", owner, headers={"traceparent": f"00-{TRACE_ID}-{PARENT}-01"}
        )
        assert r.status_code == 200
        assert r.headers["traceparent"].startswith(f"00-{TRACE_ID}-")
        r = await h.call("GET", "/api/v1/orgs/current/keys")  # unauthenticated
        assert r.status_code == 401
        r = await h.call("GET", "/no/such/route")
        assert r.status_code == 404

    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.kind == SpanKind.SERVER]
    assert [s.name for s in server] == [
        "GET /api/v1/orgs/<org:org_id>/keys",
        "GET /api/v1/orgs/<org:org_id>/keys",
        "GET unmatched",
    ]
    first, refused, unmatched = server
    assert f"{first.context.trace_id:032x}" == TRACE_ID and f"{first.parent.span_id:016x}" == PARENT
    assert first.attributes["http.response.status_code"] == 200 and first.attributes["bitnet.org_id"] == org
    (auth,) = [s for s in spans if s.name == "auth" and s.context.trace_id == first.context.trace_id]
    assert auth.parent.span_id == first.context.span_id
    assert refused.parent is None and refused.context.trace_id != first.context.trace_id
    assert refused.attributes["http.response.status_code"] == 401
    assert refused.status.status_code != StatusCode.ERROR  # a 4xx is the caller's, not the server's, error
    assert unmatched.attributes["http.response.status_code"] == 404


async def test_tracing_off_adds_nothing(aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_dsn, redis_url=redis_url)
    async with open_harness(settings) as h:
        assert not h.system.tracing.enabled
        r = await h.call("GET", "/healthz", headers={"traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
        assert r.status_code == 200 and "traceparent" not in r.headers


def test_configuration(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert not Tracing.from_settings(settings, {}).enabled
    on = Tracing.from_settings(Settings(data_dir=tmp_path, otel_endpoint="http://127.0.0.1:4318"), {})
    assert on.enabled
    on.shutdown()
    standard = Tracing.from_settings(settings, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert standard.enabled
    standard.shutdown()
    disabled = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}
    assert not Tracing.from_settings(settings, disabled).enabled
