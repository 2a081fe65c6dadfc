"""Model uploads through the HTTP API on real PostgreSQL and the filesystem store: a tiny HF model as a tar,
streamed in one body or resumed range by range after a dropped range; the same bytes stored once; bad
uploads refused with the checker's or loader's words, leaving no version, blob or temporary file; the plan's
size limit; another organization's upload is a 404."""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from bitnet_actor.services.billing import plans
from bitnet_actor.stores.postgres import open_database
from tests.api.conftest import Caller, Harness

if TYPE_CHECKING:
    from typing import Any


def tar_of(model_dir: Path, *, top: str | None = "tiny") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for path in sorted(model_dir.iterdir()):
            tf.add(path, arcname=f"{top}/{path.name}" if top else path.name)
    return buf.getvalue()


def with_unknown_architecture(model_dir: Path, dest: Path) -> Path:
    dest.mkdir()
    for path in model_dir.iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
    (dest / "config.json").write_text('{"architectures": ["GPT9ForCausalLM"], "model_type": "gpt9"}')
    return dest


def spool_files(h: Harness) -> list[Path]:
    spool = h.system.settings.data_dir / "uploads-tmp"
    return list(spool.rglob("*")) if spool.exists() else []


async def upload(h: Harness, org: str, who: Caller, data: bytes, name: str, version: str) -> Any:
    return await h.call("POST", f"/api/v1/orgs/{org}/models?name={name}&version={version}", who, data=data)


async def test_upload_inspect_publish_and_dedup(harness: Harness, model_dir: Path) -> None:
    h = harness
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    data = tar_of(model_dir)
    r = await upload(h, org, owner, data, "tiny", "1")
    assert r.status_code == 201, await r.get_data()
    made = await r.get_json()
    assert made["state"] == "ready" and made["aliases"] == ["latest"] and made["origin"] == "uploaded"
    assert made["facts"]["format"] == "safetensors" and made["facts"]["parameter_count"] > 0
    assert made["facts"]["tokenizer_kind"] == "BPE"
    r = await upload(h, org, owner, data, "tiny", "2")  # the same bytes again
    assert r.status_code == 201
    async with h.system.stores.db.transaction(org_id=uuid.UUID(org)) as tx:
        blobs = await tx.fetch("SELECT object_key FROM model_blobs WHERE org_id = $1", uuid.UUID(org))
    assert len(blobs) == 1, "one blob for the same bytes"
    stored = await h.system.stores.objects.get(blobs[0]["object_key"])
    assert len(stored) > len(data)
    safetensors = (model_dir / "model.safetensors").read_bytes()
    for probe in (safetensors[8:72], safetensors[-64:], b"model_type", b"vocab_size"):
        assert probe not in stored, "a model file is stored encrypted: no plaintext in the object"
    r = await upload(h, org, owner, data, "tiny", "2")
    assert r.status_code == 409
    listed = await (await h.call("GET", f"/api/v1/orgs/{org}/models/tiny", owner)).get_json()
    assert [v["version"] for v in listed["versions"]] == ["2", "1"] and listed["aliases"]["latest"] == "2"
    assert spool_files(h) == []


async def test_bad_uploads_are_refused_and_leave_nothing(harness: Harness, model_dir: Path, tmp_path: Path) -> None:
    h = harness
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tf:
        info = tarfile.TarInfo("../../etc/evil.json")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"{}"))
    broken = with_unknown_architecture(model_dir, tmp_path / "broken")
    for data, fragment in (
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "unknown format"),
        (evil.getvalue(), ".."),
        (tar_of(model_dir)[:5000], "truncated"),
        (tar_of(broken), "gpt9"),
        (b"", "empty"),
    ):
        r = await upload(h, org, owner, data, "bad", "1")
        assert r.status_code == 400, (fragment, await r.get_data())
        message = (await r.get_json())["error"]["message"]
        assert fragment in message.lower() or fragment in message, (fragment, message)
    async with h.system.stores.db.transaction(org_id=uuid.UUID(org)) as tx:
        assert await tx.fetchval("SELECT count(*) FROM model_versions WHERE org_id = $1", uuid.UUID(org)) == 0
        assert await tx.fetchval("SELECT count(*) FROM model_blobs WHERE org_id = $1", uuid.UUID(org)) == 0
    assert spool_files(h) == []
    r = await h.call("POST", f"/api/v1/orgs/{org}/models?name=x", owner, data=b"GGUF")
    assert r.status_code == 400 and (await r.get_json())["error"]["param"] == "version"


async def test_the_plans_upload_limit(harness: Harness, model_dir: Path, pg_dsn: str) -> None:
    h = harness
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    data = tar_of(model_dir)
    async with open_database(pg_dsn, max_size=1) as owner_db:
        small = f"small-{uuid.uuid4().hex[:6]}"
        await plans.upsert_plan(owner_db, small, {"max_upload_bytes": len(data) - 1})
        await plans.set_org_plan(owner_db, uuid.UUID(org), small)
    h.system.tenants.forget(uuid.UUID(org))
    r = await upload(h, org, owner, data, "big", "1")
    assert r.status_code == 413 and "limit" in (await r.get_json())["error"]["message"]
    r = await h.call("POST", f"/api/v1/orgs/{org}/models/uploads", owner, json={"total_bytes": len(data)})
    assert r.status_code == 413
    assert spool_files(h) == []


async def test_resumable_upload(harness: Harness, model_dir: Path) -> None:
    h = harness
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    data = tar_of(model_dir, top=None)
    total = len(data)
    base = f"/api/v1/orgs/{org}/models/uploads"
    r = await h.call("POST", base, owner, json={"total_bytes": total})
    assert r.status_code == 201
    upload_id = (await r.get_json())["id"]
    half = total // 2

    async def put(start: int, end: int, body: bytes | None = None, total_s: str = str(total)) -> Any:
        chunk = data[start:end] if body is None else body
        headers = {"Content-Range": f"bytes {start}-{end - 1}/{total_s}"}
        return await h.call("PUT", f"{base}/{upload_id}", owner, data=chunk, headers=headers)

    r = await put(0, half)
    assert r.status_code == 200 and (await r.get_json())["received_bytes"] == half
    r = await put(half + 10, total)  # a range after a gap
    assert r.status_code == 416 and r.headers["Upload-Offset"] == str(half)
    r = await put(half, total, body=data[half : total - 1])  # a dropped connection: fewer bytes than said
    assert r.status_code == 400
    status = await (await h.call("GET", f"{base}/{upload_id}", owner)).get_json()
    assert status["received_bytes"] == half, "a short range is not kept"
    r = await h.call("PUT", f"{base}/{upload_id}", owner, data=b"x", headers={"Content-Range": "bytes=0-1"})
    assert r.status_code == 400 and (await r.get_json())["error"]["param"] == "Content-Range"
    r = await h.call("POST", f"{base}/{upload_id}/complete", owner, json={"name": "tiny", "version": "1"})
    assert r.status_code == 409 and "send the rest" in (await r.get_json())["error"]["message"]
    r = await put(half, total)
    assert r.status_code == 200 and (await r.get_json())["received_bytes"] == total

    other = await h.signup()
    other_org = next(iter(other.orgs.values()))
    assert (await h.call("GET", f"/api/v1/orgs/{other_org}/models/uploads/{upload_id}", other)).status_code == 404
    assert (await h.call("GET", f"{base}/{upload_id}", other)).status_code == 404

    r = await h.call("POST", f"{base}/{upload_id}/complete", owner, json={"name": "tiny", "version": "1"})
    assert r.status_code == 201, await r.get_data()
    made = await r.get_json()
    assert made["state"] == "ready" and made["facts"]["format"] == "safetensors"
    async with h.system.stores.db.transaction(org_id=uuid.UUID(org)) as tx:
        assert (
            await tx.fetchval("SELECT count(*) FROM model_upload_parts WHERE upload_id = $1", uuid.UUID(upload_id)) == 0
        )
    done = await (await h.call("GET", f"{base}/{upload_id}", owner)).get_json()
    assert done["state"] == "completed" and done["version_id"] == made["version_id"]
    r = await put(0, half)
    assert r.status_code == 409  # a completed upload takes no more ranges
    assert spool_files(h) == []
