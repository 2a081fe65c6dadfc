"""Customers' models on a real server whose object store is S3 (SeaweedFS): a GGUF file and an HF directory
(tar) uploaded over HTTP, stored as ciphertext in the bucket, served through /v1/completions, downloaded back
through a signed link as the uploaded bytes, and gone from the bucket once deleted."""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING

import boto3
import httpx
import trio

from bitnet_actor.engine.convert import convert_model
from tests.api.served import _org_with_key, serve
from tests.api.test_uploads_api import tar_of
from tests.stores.conftest import s3_server

if TYPE_CHECKING:
    from pathlib import Path

    from tests.stores.conftest import S3Server

__all__ = ["s3_server"]


def _bucket_objects(server: S3Server) -> dict[str, bytes]:
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        region_name="us-east-1",
    )
    listed = client.list_objects_v2(Bucket=server.bucket, Prefix="sha256/")
    return {
        o["Key"]: client.get_object(Bucket=server.bucket, Key=o["Key"])["Body"].read()
        for o in listed.get("Contents", [])
    }


async def test_upload_serve_download_and_delete_on_s3(
    aio_loop: object, pg_dsn: str, redis_url: str, model_dir: Path, s3_server: S3Server, tmp_path: Path
) -> None:
    gguf = tmp_path / "tiny.gguf"
    await trio.to_thread.run_sync(lambda: convert_model(model_dir, gguf, "i2_s"))
    files = {"g": gguf.read_bytes(), "h": tar_of(model_dir, top=None)}
    tokenizer = (model_dir / "tokenizer.json").read_bytes()
    s3 = {
        "s3_endpoint": s3_server.endpoint_url,
        "s3_bucket": s3_server.bucket,
        "s3_access_key_id": s3_server.access_key_id,
        "s3_secret_access_key": s3_server.secret_access_key,
    }
    before = set(await trio.to_thread.run_sync(_bucket_objects, s3_server))
    async with serve(pg_dsn, redis_url, tmp_path / "data", {}, **s3) as srv:
        _, key = await trio.to_thread.run_sync(
            _org_with_key, pg_dsn, f"s3-{uuid.uuid4().hex[:6]}", ["inference", "models:write"]
        )
        auth = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=srv.url, headers=auth, timeout=120) as c:
            for name, data in files.items():
                r = await c.post(f"/api/v1/orgs/current/models?name={name}&version=1", content=data)
                assert r.status_code == 201, r.text
                assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()
            assert r.json()["facts"]["format"] == "safetensors"

            stored = await trio.to_thread.run_sync(_bucket_objects, s3_server)
            ours = {k: v for k, v in stored.items() if k not in before}
            assert len(ours) == 2, sorted(ours)
            for blob in ours.values():  # ciphertext only: neither file nor a recognizable piece of it
                assert files["g"][:4096] not in blob and files["h"][1024:4096] not in blob
                assert tokenizer[:512] not in blob

            for name in files:
                r = await c.post("/v1/completions", json={"model": f"{name}:1", "prompt": "a b", "max_tokens": 4})
                assert r.status_code == 200, r.text
                assert r.json()["model"] == f"{name}:1" and r.json()["usage"]["completion_tokens"] >= 1

                r = await c.post(f"/api/v1/orgs/current/models/{name}/versions/1/download")
                assert r.status_code == 200, r.text
                url = r.json()["url"]
                async with httpx.AsyncClient(base_url=srv.url, timeout=120) as anonymous:  # the link alone
                    got = await anonymous.get(url[url.index("/api/v1/model-downloads/") :])
                assert got.status_code == 200 and got.content == files[name]

            for name in files:
                r = await c.delete(f"/api/v1/orgs/current/models/{name}/versions/1")
                assert r.status_code in (200, 204), r.text
            left = set(await trio.to_thread.run_sync(_bucket_objects, s3_server))
            assert not (left & set(ours)), "a deleted version's object is deleted from the bucket"
