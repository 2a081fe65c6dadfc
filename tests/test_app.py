"""The HTTP basics of create_app, through Quart's test client over real stores."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from quart import Blueprint, jsonify

from actors.tenant import Tenants
from bitnet_actor.api.errors import ApiError, json_body
from bitnet_actor.app import create_app
from bitnet_actor.config import Settings
from bitnet_actor.handles import Handles
from bitnet_actor.observability import Metrics
from bitnet_actor.stores import Stores, open_stores
from bitnet_actor.stores.objects import S3ObjectStore
from bitnet_actor.system import build_auth, build_handles, build_model_cache

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from quart_trio import QuartTrio


@pytest.fixture
async def stores(aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Stores]:
    settings = Settings(data_dir=tmp_path, database_url=pg_dsn, redis_url=redis_url)
    async with open_stores(settings) as opened:
        yield opened


def build_app(stores: Stores, tmp_path: Path, settings: Settings | None = None) -> tuple[QuartTrio, Handles]:
    settings = settings or Settings(data_dir=tmp_path)
    metrics = Metrics()
    system = build_handles(
        settings,
        stores,
        metrics=metrics,
        auth=build_auth(settings, stores, b"k" * 32),
        cache=build_model_cache(settings, metrics, {}),
        tenants=Tenants(stores.db),
    )
    app = create_app(system)
    # A JSON route of the test's own, to exercise the shared body parser and error mapping.
    echo = Blueprint("echo", __name__)

    @echo.post("/test/echo/<int:n>")
    async def echo_route(n: int):
        body = await json_body()
        if "boom" in body:
            raise RuntimeError("secret internals")
        if "bad" in body:
            raise ApiError(422, "bad is not allowed", param="bad")
        return jsonify({"n": n, "body": body})

    app.register_blueprint(echo)
    return app, system


@pytest.fixture
async def client(stores: Stores, tmp_path: Path):
    app, _ = build_app(stores, tmp_path)
    async with app.test_app() as test_app:
        yield test_app.test_client()


def assert_error_shape(body: dict, status_type: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == status_type
    assert body["error"]["message"]


async def test_healthz_and_readyz(client) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok"}
    response = await client.get("/readyz")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["checks"] == {"postgres": "ok", "redis": "ok", "object_store": "ok"}


async def test_readyz_names_the_failed_store(stores: Stores, tmp_path: Path) -> None:
    dead = S3ObjectStore(
        endpoint_url="http://127.0.0.1:1",
        bucket="nope",
        access_key_id="a",
        secret_access_key="b",
        tmp_dir=tmp_path,
    )
    broken = Stores(db=stores.db, redis=stores.redis, objects=dead)
    app, system = build_app(broken, tmp_path)
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/readyz")
        assert response.status_code == 503
        body = await response.get_json()
        assert_error_shape(body, "server_error")
        assert body["error"]["message"].startswith("not ready: object_store:")
        assert "postgres" not in body["error"]["message"]
        assert response.headers["Retry-After"] == "5"
        system.readiness.draining.set()
        response = await test_app.test_client().get("/readyz")
        assert (await response.get_json())["error"]["code"] == "shutting_down"
    await dead.aclose()


def sample(text: str, name: str) -> float:
    """The value of the one sample ``name`` (with its labels) in a Prometheus text exposition."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


async def test_readiness_sets_a_gauge_per_dependency(stores: Stores, tmp_path: Path) -> None:
    import math

    import redis.asyncio as aioredis

    from bitnet_actor.stores.redis import RedisStore

    dead = RedisStore(aioredis.Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=1), "redis://127.0.0.1:1")
    app, _ = build_app(Stores(db=stores.db, redis=dead, objects=stores.objects), tmp_path)
    try:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            assert (await client.get("/readyz")).status_code == 503
            text = (await (await client.get("/metrics")).get_data()).decode()
            assert sample(text, 'bitnet_dependency_up{dependency="redis"}') == 0
            assert sample(text, 'bitnet_dependency_up{dependency="postgres"}') == 1
            assert sample(text, 'bitnet_dependency_up{dependency="object_store"}') == 1
            assert sample(text, "bitnet_ready") == 0
            # The job queue is on the Redis that does not answer: its depth is unknown, and the scrape still works.
            assert math.isnan(sample(text, 'bitnet_jobs_queued{state="waiting"}'))
            assert math.isnan(sample(text, 'bitnet_jobs_queued{state="pending"}'))
    finally:
        await dead.run(lambda r: r.aclose())
    app, _ = build_app(stores, tmp_path)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get("/readyz")).status_code == 200
        text = (await (await client.get("/metrics")).get_data()).decode()
        for name in ("redis", "postgres", "object_store"):
            assert sample(text, f'bitnet_dependency_up{{dependency="{name}"}}') == 1


async def test_metrics_read_the_job_queue_depth_at_scrape_time(client, stores: Stores) -> None:
    from bitnet_actor.services.models import jobs

    async def waiting() -> float:
        text = (await (await client.get("/metrics")).get_data()).decode()
        sample(text, 'bitnet_jobs_queued{state="pending"}')  # present and a number
        return sample(text, 'bitnet_jobs_queued{state="waiting"}')

    before = await waiting()  # no job worker runs here: nothing takes entries meanwhile
    assert before == (await jobs.queue_depth(stores.redis)).waiting
    ids = [await stores.redis.run(lambda r: r.xadd(jobs.STREAM, {"job_id": "-", "org_id": "-"})) for _ in range(2)]
    try:
        assert await waiting() == before + 2
    finally:
        await stores.redis.run(lambda r: r.xdel(jobs.STREAM, *ids))
    assert await waiting() == before


async def test_readyz_waits_for_platform_models_to_load(stores: Stores, tmp_path: Path) -> None:
    app, system = build_app(stores, tmp_path)
    system.readiness.warming.update({"bitnet-demo", "big"})  # what run_system sets while the first loads run
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/readyz")
        assert response.status_code == 503
        body = await response.get_json()
        assert body["error"]["message"] == "not ready: models: loading big, bitnet-demo"
        assert response.headers["Retry-After"] == "2"
        system.readiness.warming.clear()  # loaded (or failed: a failed load does not hold readiness back)
        response = await test_app.test_client().get("/readyz")
        assert response.status_code == 200


async def test_404_405_are_json_in_openai_shape(client) -> None:
    response = await client.get("/no/such/route")
    assert response.status_code == 404
    body = await response.get_json()
    assert_error_shape(body, "invalid_request_error")
    assert body["error"]["code"] == "not_found"
    response = await client.post("/healthz")
    assert response.status_code == 405
    assert_error_shape(await response.get_json(), "invalid_request_error")
    assert "GET" in response.headers["Allow"]


async def test_malformed_json_is_400(client) -> None:
    response = await client.post("/test/echo/1", data=b'{"a": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    body = await response.get_json()
    assert_error_shape(body, "invalid_request_error")
    assert body["error"]["code"] == "invalid_json"
    response = await client.post("/test/echo/1", data=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    response = await client.post("/test/echo/1", data=b"a=b", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    response = await client.post("/test/echo/1", json={"bad": 1})
    assert response.status_code == 422
    assert (await response.get_json())["error"]["param"] == "bad"
    response = await client.post("/test/echo/7", json={"ok": True})
    assert await response.get_json() == {"n": 7, "body": {"ok": True}}


async def test_oversized_body_is_413(client) -> None:
    response = await client.post(
        "/test/echo/1", data=b"x" * (17 * 1024 * 1024), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert_error_shape(await response.get_json(), "invalid_request_error")


async def test_unhandled_error_is_a_500_without_internals(client, caplog: pytest.LogCaptureFixture) -> None:
    response = await client.post("/test/echo/1", json={"boom": 1}, headers={"X-Request-ID": "req-123"})
    assert response.status_code == 500
    body = await response.get_json()
    assert_error_shape(body, "server_error")
    assert "secret" not in json.dumps(body)
    assert "req-123" in body["error"]["message"]
    assert any("secret internals" in (r.exc_text or str(r.exc_info)) for r in caplog.records if r.exc_info)


async def test_request_id_echoed_or_generated(client) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-DEF_1.2"})
    assert response.headers["X-Request-ID"] == "abc-DEF_1.2"
    response = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    generated = response.headers["X-Request-ID"]
    assert generated != "bad id with spaces"
    assert len(generated) == 32


async def test_access_log_line_per_request(client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="bitnet_actor.access")
    await client.post("/test/echo/5", json={}, headers={"X-Request-ID": "log-1"})
    records = [r for r in caplog.records if r.name == "bitnet_actor.access"]
    assert len(records) == 1
    record = records[0]
    assert (record.request_id, record.method, record.route, record.status) == (
        "log-1",
        "POST",
        "/test/echo/<int:n>",
        200,
    )
    assert record.latency_ms >= 0


async def test_metrics_use_route_templates(client) -> None:
    for n in (1, 2, 3):
        await client.post(f"/test/echo/{n}", json={})
    await client.get("/nowhere/42")
    text = (await (await client.get("/metrics")).get_data()).decode()
    assert 'bitnet_http_requests_total{method="POST",route="/test/echo/<int:n>",status="200"} 3.0' in text
    assert 'route="unmatched",status="404"' in text
    assert "/nowhere/42" not in text
    assert "bitnet_http_request_duration_seconds_bucket" in text
    assert "process_resident_memory_bytes" in text


async def test_presigned_filesystem_download(stores: Stores, client) -> None:
    data = b"ternary weights " * 70_000  # ~1.1 MB: more than one chunk
    info = await stores.objects.put(data)
    url = urlsplit(stores.objects.presigned_url(info.key, expires_s=60))
    response = await client.get(f"{url.path}?{url.query}")
    assert response.status_code == 200
    assert await response.get_data() == data
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["ETag"] == f'"{info.sha256}"'

    tampered = url.query.replace("signature=", "signature=0")
    response = await client.get(f"{url.path}?{tampered}")
    assert response.status_code == 403
    assert_error_shape(await response.get_json(), "permission_error")
    other = await stores.objects.put(b"another object")
    response = await client.get(f"{url.path.replace(info.sha256, other.sha256)}?{url.query}")
    assert response.status_code == 403
    response = await client.get(url.path)
    assert response.status_code == 403


async def test_readyz_checks_this_regions_own_store(
    aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=pg_dsn,
        redis_url=redis_url,
        region="eu",
        region_stores="eu=s3://eu-models,us=s3://us-models",  # eu's is unreachable; us's is not ours to check
        s3_endpoint="http://127.0.0.1:1",
        s3_access_key_id="a",
        s3_secret_access_key="b",
    )
    async with open_stores(settings) as stores:
        app, system = build_app(stores, tmp_path, settings)
        async with app.test_app() as test_app:
            response = await test_app.test_client().get("/readyz")
            assert response.status_code == 503
            message = (await response.get_json())["error"]["message"]
            assert "object_store_eu:" in message and "object_store_us" not in message, message
            assert "object_store:" not in message  # the default store (the data dir) answers
            metrics = system.metrics.render().decode()
            assert sample(metrics, 'bitnet_dependency_up{dependency="object_store_eu"}') == 0
