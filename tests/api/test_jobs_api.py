"""Conversion jobs over real PostgreSQL, Redis and the filesystem store: a tq2_0 job of an uploaded tiny model
completes (progress monotone through GET and SSE; lineage recorded) and its output serves through
/v1/completions the greedy tokens of the engine's own conversion of the source; a cancel mid-way leaves no
version and no temporary; a worker killed mid-way is replaced by another once its lease passes and the job
completes once; a job that always fails is retried, then dead-lettered."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import trio

from actors.jobs import JobWorker
from bitnet_actor.services.billing import plans
from bitnet_actor.services.models import jobs as job_service
from bitnet_actor.services.models.files import LocalFiles
from tests.api.test_uploads_api import tar_of

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.api.conftest import Caller, Harness

pytest.importorskip("transformers", reason="transformers builds the test model")

PROMPT = [5, 17, 42, 99]


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny online BitNet checkpoint whose K is a multiple of 256 (TQ blocks), with a tokenizer."""
    from tests.engine.conftest import GGUF_SIZES
    from tests.engine.hf_models import make_checkpoint
    from tests.engine.test_tokenizer_integration import _write_tokenizer

    root = make_checkpoint(
        tmp_path_factory.mktemp("jobs") / "src", linear_class="bitlinear", mode="online", tie=False, sizes=GGUF_SIZES
    )
    _write_tokenizer(root)
    return root


def slow_convert(delay_s: float) -> Callable[..., Any]:
    """The engine's convert, sleeping ``delay_s`` after each tensor (to act mid-way)."""
    from bitnet_actor.engine.convert import convert_model

    def convert(*args: Any, progress: Callable[..., None], **kwargs: Any) -> Any:
        def slow(*counts: int) -> None:
            progress(*counts)
            time.sleep(delay_s)

        return convert_model(*args, progress=slow, **kwargs)

    return convert


def worker(h: Harness, **kw: Any) -> JobWorker:
    s, objects = h.system.stores, h.system.model_objects
    data = h.system.settings.data_dir
    files = LocalFiles(data / "model-files", objects, s.db)
    kw = {"heartbeat_s": 0.1, "block_ms": 100, "backoff_s": 0.05, **kw}
    return JobWorker(s.db, s.redis, objects, files, data / "jobs-tmp", **kw)


async def setup_org(h: Harness, source_dir: Path) -> tuple[Caller, str]:
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    r = await h.call("POST", f"/api/v1/orgs/{org}/models?name=src&version=1", owner, data=tar_of(source_dir))
    assert r.status_code == 201, await r.get_data()
    return owner, org


async def create(h: Harness, owner: Caller, org: str, output: str = "q") -> dict[str, Any]:
    body = {"source": "src:1", "target": "tq2_0", "output_name": output, "output_version": "1"}
    r = await h.call("POST", f"/api/v1/orgs/{org}/jobs", owner, json=body)
    assert r.status_code == 201, await r.get_data()
    job: dict[str, Any] = await r.get_json()
    assert job["state"] in ("queued", "running") and job["kind"] == "quantize"  # a worker may have it already
    return job


async def get(h: Harness, owner: Caller, org: str, job_id: str) -> dict[str, Any]:
    r = await h.call("GET", f"/api/v1/orgs/{org}/jobs/{job_id}", owner)
    assert r.status_code == 200
    job: dict[str, Any] = await r.get_json()
    return job


async def wait_for(h: Harness, owner: Caller, org: str, job_id: str, done: Callable[[dict[str, Any]], bool]) -> Any:
    with trio.fail_after(60):
        while not done(job := await get(h, owner, org, job_id)):  # noqa: ASYNC110 - polling the API, as a client does
            await trio.sleep(0.05)
    return job


def temp_files(h: Harness) -> list[Path]:
    root = h.system.settings.data_dir / "jobs-tmp"
    return list(root.rglob("*")) if root.exists() else []


async def test_a_tq2_0_job_completes_and_serves(harness: Harness, source_dir: Path, tmp_path: Path) -> None:
    h = harness
    owner, org = await setup_org(h, source_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker(h, convert=slow_convert(0.08)).run)
        job = await create(h, owner, org)
        r = await h.call("GET", f"/api/v1/orgs/{org}/jobs/{job['id']}/events", owner)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in (await r.get_data(as_text=True)).splitlines() if line]
        nursery.cancel_scope.cancel()
    assert events[-1]["state"] == "succeeded", events[-1]
    done = [e["progress"].get("tensors_done", 0) for e in events]
    assert done == sorted(done) and len(set(done)) > 2, done  # monotone, seen moving
    final = await get(h, owner, org, job["id"])
    assert final["state"] == "succeeded" and final["attempts"] == 1 and final["result_version_id"]
    assert final["cpu_seconds"] > 0  # the conversion thread's CPU time, recorded
    p = final["progress"]
    assert p["tensors_done"] == p["tensors_total"] > 0 and p["bytes_done"] == p["bytes_total"] > 0
    listed = await (await h.call("GET", f"/api/v1/orgs/{org}/jobs", owner)).get_json()
    assert [j["id"] for j in listed["data"]] == [job["id"]]

    made = await (await h.call("GET", f"/api/v1/orgs/{org}/models/q/versions/1", owner)).get_json()
    src = await (await h.call("GET", f"/api/v1/orgs/{org}/models/src/versions/1", owner)).get_json()
    assert made["version_id"] == final["result_version_id"] and made["origin"] == "quantized"
    assert made["parent_version_id"] == src["version_id"] and made["facts"]["format"] == "gguf"
    details = made["origin_details"]
    assert details["tool"] == "bitnet-actor convert" and details["options"] == {"to": "tq2_0"}
    assert details["source_sha256"] == src["sha256"]
    assert temp_files(h) == []

    key, _ = await h.key(owner, org, ["inference"])
    from tests.api.conftest import Caller as _Caller

    body = {"model": "q:1", "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    async with trio.open_nursery() as nursery:  # the harness does not run the model cache: run it here
        await nursery.start(h.system.inference._cache.run)  # type: ignore[attr-defined]
        r = await h.call("POST", "/v1/completions", _Caller(bearer=key), json=body)
        nursery.cancel_scope.cancel()
    assert r.status_code == 200, await r.get_data()
    served = (await r.get_json())["choices"][0]["text"]

    from bitnet_actor.engine import load_model
    from bitnet_actor.engine.convert import convert_model

    def reference() -> str:
        convert_model(source_dir, tmp_path / "ref.gguf", "tq2_0")
        model = load_model(str(tmp_path / "ref.gguf"))
        ids = list(model.generate(PROMPT, max_tokens=8, temperature=0, ignore_eos=True))
        return str(model.tokenizer.decode(ids))

    assert served == await trio.to_thread.run_sync(reference)


async def test_cancel_mid_way_leaves_nothing(harness: Harness, source_dir: Path) -> None:
    h = harness
    owner, org = await setup_org(h, source_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker(h, convert=slow_convert(0.2)).run)
        job = await create(h, owner, org)
        await wait_for(h, owner, org, job["id"], lambda j: j["progress"].get("tensors_done", 0) >= 1)
        r = await h.call("POST", f"/api/v1/orgs/{org}/jobs/{job['id']}/cancel", owner)
        assert r.status_code == 200 and (await r.get_json())["cancel_requested"]
        final = await wait_for(h, owner, org, job["id"], lambda j: j["state"] not in ("queued", "running"))
        nursery.cancel_scope.cancel()
    assert final["state"] == "cancelled" and final["result_version_id"] is None
    r = await h.call("GET", f"/api/v1/orgs/{org}/models/q/versions/1", owner)
    assert r.status_code == 404
    assert temp_files(h) == []


async def test_a_killed_worker_is_replaced_and_the_job_completes_once(harness: Harness, source_dir: Path) -> None:
    h = harness
    owner, org = await setup_org(h, source_dir)
    async with trio.open_nursery() as nursery:  # the first worker "dies" mid-way: cancelled, never finishing
        await nursery.start(worker(h, name="a", lease_s=1.0, convert=slow_convert(0.1)).run)
        job = await create(h, owner, org)
        await wait_for(h, owner, org, job["id"], lambda j: j["progress"].get("tensors_done", 0) >= 2)
        nursery.cancel_scope.cancel()
    mid = await get(h, owner, org, job["id"])
    assert mid["state"] == "running" and mid["attempts"] == 1
    async with trio.open_nursery() as nursery:
        await nursery.start(worker(h, name="b", lease_s=1.0).run)
        final = await wait_for(h, owner, org, job["id"], lambda j: j["state"] not in ("queued", "running"))
        await trio.sleep(0.3)  # a redelivery, if any, has time to run (and must do nothing)
        nursery.cancel_scope.cancel()
    assert final["state"] == "succeeded" and final["attempts"] == 2
    db = h.system.stores.db
    async with db.transaction(org_id=uuid.UUID(org)) as tx:
        made = await tx.fetchval("SELECT count(*) FROM model_versions WHERE org_id = $1 AND name = 'q'", uuid.UUID(org))
    assert made == 1
    pending = await h.system.stores.redis.run(lambda r: r.xpending(job_service.STREAM, job_service.GROUP))
    assert pending["pending"] == 0


async def dead_lettered(h: Harness, job_id: str) -> bool:
    dead = await h.system.stores.redis.run(lambda r: r.xrange(job_service.DEAD_STREAM))
    return any(fields[b"job_id"].decode() == job_id for _, fields in dead)


async def test_a_failing_job_is_retried_then_dead_lettered(harness: Harness, source_dir: Path) -> None:
    h = harness
    owner, org = await setup_org(h, source_dir)
    db, objects = h.system.stores.db, h.system.stores.objects
    async with db.transaction(org_id=uuid.UUID(org)) as tx:
        key = await tx.fetchval("SELECT object_key FROM model_blobs WHERE org_id = $1", uuid.UUID(org))
    await objects.delete(key)  # the source's file is gone: every attempt fails
    async with trio.open_nursery() as nursery:
        await nursery.start(worker(h).run)
        job = await create(h, owner, org)
        final = await wait_for(h, owner, org, job["id"], lambda j: j["state"] not in ("queued", "running"))
        for _ in range(100):  # the dead letter follows the job's state (within 5 s)
            if await dead_lettered(h, job["id"]):
                break
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert final["state"] == "failed" and final["attempts"] == final["max_attempts"] == 3 and final["error"]
    assert await dead_lettered(h, job["id"])
    r = await h.call("GET", f"/api/v1/orgs/{org}/models/q/versions/1", owner)
    assert r.status_code == 404
    assert temp_files(h) == []


async def test_job_limits_and_conflicts(harness: Harness, source_dir: Path) -> None:
    h = harness
    owner, org = await setup_org(h, source_dir)
    first = await create(h, owner, org, "o0")
    body = {"source": "src:1", "target": "tq2_0", "output_name": "o0", "output_version": "1"}
    r = await h.call("POST", f"/api/v1/orgs/{org}/jobs", owner, json=body)
    assert r.status_code == 409  # another job makes it
    r = await h.call("POST", f"/api/v1/orgs/{org}/jobs", owner, json={**body, "output_name": "more"})
    assert r.status_code == 429 and r.headers["Retry-After"]  # the free plan: one unfinished job
    assert "its plan allows 1" in (await r.get_json())["error"]["message"]
    await plans.set_org_plan(h.system.stores.db, uuid.UUID(org), "pro")
    for i in range(1, 4):  # the pro plan's max_active_jobs
        await create(h, owner, org, f"o{i}")
    r = await h.call("POST", f"/api/v1/orgs/{org}/jobs", owner, json={**body, "output_name": "more"})
    assert r.status_code == 429 and r.headers["Retry-After"]
    assert "its plan allows 4" in (await r.get_json())["error"]["message"]
    r = await h.call("POST", f"/api/v1/orgs/{org}/jobs", owner, json={**body, "output_name": "x", "target": "q4"})
    assert r.status_code == 400
    r = await h.call("POST", f"/api/v1/orgs/{org}/jobs", owner, json={**body, "source": "nope:1"})
    assert r.status_code == 404
    r = await h.call("POST", f"/api/v1/orgs/{org}/jobs/{first['id']}/cancel", owner)
    assert (await r.get_json())["state"] == "cancelled"  # a queued job stops at once
    r = await h.call("POST", f"/api/v1/orgs/{org}/jobs", owner, json={**body, "output_name": "more"})
    assert r.status_code == 201
    r = await h.call("GET", f"/api/v1/orgs/{org}/jobs/{uuid.uuid4()}", owner)
    assert r.status_code == 404


async def test_an_hf_ternary_job_converts_and_leftovers_are_swept(harness: Harness, source_dir: Path) -> None:
    h = harness
    owner, org = await setup_org(h, source_dir)
    tmp = h.system.settings.data_dir / "jobs-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / ".model.gguf.converting-0123456789ab").write_bytes(b"half")  # a crashed worker's temporary
    async with trio.open_nursery() as nursery:
        await nursery.start(worker(h).run)
        assert temp_files(h) == []
        body = {"source": "src:1", "target": "hf-ternary", "output_name": "packed", "output_version": "1"}
        r = await h.call("POST", f"/api/v1/orgs/{org}/jobs", owner, json=body)
        assert r.status_code == 201 and (await r.get_json())["kind"] == "convert"
        job_id = (await r.get_json())["id"]
        final = await wait_for(h, owner, org, job_id, lambda j: j["state"] not in ("queued", "running"))
        nursery.cancel_scope.cancel()
    assert final["state"] == "succeeded", final
    made = await (await h.call("GET", f"/api/v1/orgs/{org}/models/packed/versions/1", owner)).get_json()
    assert made["origin"] == "converted" and made["origin_details"]["format"] == "tar"
    assert made["facts"]["format"] == "safetensors"
    assert temp_files(h) == []


async def test_a_worker_lost_on_the_last_attempt_fails_the_job(harness: Harness, source_dir: Path) -> None:
    h = harness
    owner, org = await setup_org(h, source_dir)
    job = await create(h, owner, org)
    db = h.system.stores.db
    async with db.transaction(org_id=uuid.UUID(org)) as tx:  # as a worker that died on attempt 3 of 3 leaves it
        await tx.execute(
            "UPDATE model_jobs SET state = 'running', attempts = 3, worker = 'gone',"
            " lease_until = now() - interval '1 second' WHERE id = $1",
            uuid.UUID(job["id"]),
        )
    async with trio.open_nursery() as nursery:
        await nursery.start(worker(h).run)
        final = await wait_for(h, owner, org, job["id"], lambda j: j["state"] != "running")
        nursery.cancel_scope.cancel()
    assert final["state"] == "failed" and "no heartbeat" in final["error"] and final["attempts"] == 3
    dead = await h.system.stores.redis.run(lambda r: r.xrange(job_service.DEAD_STREAM))
    assert any(fields[b"job_id"].decode() == job["id"] for _, fields in dead)
