"""``bitnet-actor models push | list | quantize`` and ``admin rotate-keys | shred-org`` end to end (subprocesses
on a real PostgreSQL and the filesystem object store)."""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

import trio
import trio_asyncio

from actors.jobs import JobWorker
from bitnet_actor.config import Settings
from bitnet_actor.services.models.encrypted import EncryptedObjects
from bitnet_actor.services.models.files import LocalFiles
from bitnet_actor.services.models.keys import LocalKeyProvider
from bitnet_actor.stores import open_stores
from tests.test_cli import assert_one_line_error, run_cli

if TYPE_CHECKING:
    from pathlib import Path


def test_push_list_rotate_and_shred(fresh_dsn_sync: str, redis_url: str, model_dir: Path, tmp_path: Path) -> None:
    env = {"BITNET_DATABASE_URL": fresh_dsn_sync, "BITNET_REDIS_URL": redis_url, "BITNET_DATA_DIR": str(tmp_path)}
    assert run_cli("admin", "create-org", "--name", "Acme", "--owner-email", "o@acme.example", **env).returncode == 0
    r = run_cli(
        "models", "push", str(model_dir), "--org", "Acme", "--name", "tiny", "--version", "1", timeout=180, **env
    )
    assert r.returncode == 0, r.stderr
    assert "tiny:1 published in Acme" in r.stdout and "parameters" in r.stdout
    assert "uploaded; inspected and stored" in r.stderr  # the progress lines (no terminal: start and end)

    r = run_cli("models", "list", "--org", "Acme", **env)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("tiny:1"))
    assert "own" in row and "ready" in row and "latest" in row

    again = run_cli("models", "push", str(model_dir), "--org", "Acme", "--name", "tiny", "--version", "1", **env)
    assert_one_line_error(again, "already has a version '1'")
    png = tmp_path / "picture.gguf"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    assert_one_line_error(
        run_cli("models", "push", str(png), "--org", "Acme", "--name", "pic", "--version", "1", **env), "unknown format"
    )
    assert_one_line_error(
        run_cli("models", "push", str(tmp_path / "nope"), "--org", "Acme", "--name", "x", "--version", "1", **env),
        "no such file or directory",
    )

    r = run_cli("admin", "rotate-keys", **env)
    assert r.returncode == 0, r.stderr
    assert "re-wrapped under the current master key: 0 (already current: 1)" in r.stdout

    assert_one_line_error(run_cli("admin", "shred-org", "--org", "Acme", **env), "add --yes")
    r = run_cli("admin", "shred-org", "--org", "Acme", "--yes", **env)
    assert r.returncode == 0, r.stderr
    assert "1 data keys destroyed" in r.stdout
    r = run_cli("models", "list", "--org", "Acme", **env)
    assert not any(line.startswith("tiny") for line in r.stdout.splitlines())
    assert [p for p in (tmp_path / "objects").rglob("*") if p.is_file()] == [], "the ciphertext is deleted too"


def _job_worker(env: dict[str, str], stop: threading.Event) -> None:
    """A server's job worker over the test's stores, in this thread, until ``stop`` is set."""
    settings = Settings.from_env(env)

    async def main() -> None:
        async with trio_asyncio.open_loop(), open_stores(settings) as stores:
            objects = EncryptedObjects(stores.objects, stores.db, LocalKeyProvider.from_settings(settings))
            files = LocalFiles(settings.data_dir / "model-files", objects, stores.db)
            worker = JobWorker(stores.db, stores.redis, objects, files, settings.data_dir / "jobs-tmp", block_ms=100)
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                await trio.to_thread.run_sync(stop.wait)
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_quantize_queues_a_job_and_waits_for_it(
    fresh_dsn_sync: str, redis_url: str, model_dir: Path, tmp_path: Path
) -> None:
    env = {"BITNET_DATABASE_URL": fresh_dsn_sync, "BITNET_REDIS_URL": redis_url, "BITNET_DATA_DIR": str(tmp_path)}
    assert run_cli("admin", "create-org", "--name", "Acme", "--owner-email", "o@acme.example", **env).returncode == 0
    r = run_cli("models", "push", str(model_dir), "--org", "Acme", "--name", "tiny", "--version", "1", **env)
    assert r.returncode == 0, r.stderr

    # Without --wait: queued, nothing runs it yet (no server).
    r = run_cli("models", "quantize", "tiny:1", "--org", "Acme", "--target", "tq1_0", "--name", "t1", "--version",
                "1", **env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    queued = json.loads(r.stdout)
    assert queued["state"] == "queued" and queued["output"] == "t1:1" and queued["target"] == "tq1_0"
    cancelled = run_cli("jobs", "cancel", "--org", "Acme", "--id", queued["id"], **env)
    assert json.loads(cancelled.stdout)["state"] == "cancelled", cancelled.stderr

    # With --wait and a worker running: followed to the end, the new version published with its lineage.
    stop = threading.Event()
    thread = threading.Thread(target=_job_worker, args=(env, stop), daemon=True)
    thread.start()
    try:
        r = run_cli("models", "quantize", "tiny:1", "--org", "Acme", "--target", "i2_s", "--name", "t2",
                    "--version", "1", "--wait", timeout=240, **env)  # fmt: skip
    finally:
        stop.set()
        thread.join(timeout=30)
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["state"] == "succeeded" and done["result_version_id"], done
    assert "tensors" in r.stderr and "succeeded" in r.stderr  # the progress lines
    r = run_cli("models", "list", "--org", "Acme", **env)
    row = next(line for line in r.stdout.splitlines() if line.startswith("t2:1"))
    assert "ready" in row and "quantized" in row

    # Refusals: one line each, nothing queued.
    bad = run_cli("models", "quantize", "tiny:9", "--org", "Acme", "--target", "tq2_0", "--name", "x", "--version",
                  "1", **env)  # fmt: skip
    assert_one_line_error(bad, "tiny:9")
    again = run_cli("models", "quantize", "tiny:1", "--org", "Acme", "--target", "tq2_0", "--name", "t2",
                    "--version", "1", **env)  # fmt: skip
    assert_one_line_error(again, "already has a version")

    # A conversion the model cannot take fails at once (no retries), naming the version, not a server path.
    r = run_cli("models", "quantize", "tiny:1", "--org", "Acme", "--target", "tq2_0", "--name", "t3", "--version",
                "1", **env)  # fmt: skip
    job_id = json.loads(r.stdout)["id"]
    stop = threading.Event()
    thread = threading.Thread(target=_job_worker, args=(env, stop), daemon=True)
    thread.start()
    try:
        r = run_cli("models", "quantize", "tiny:1", "--org", "Acme", "--target", "tq1_0", "--name", "t4",
                    "--version", "1", "--wait", timeout=240, **env)  # fmt: skip
        shown = json.loads(run_cli("jobs", "show", "--org", "Acme", "--id", job_id, **env).stdout)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert_one_line_error(r, "TQ1_0 needs in_features a multiple of 256")  # --wait: the job's failure, exit 1
    assert shown["state"] == "failed" and shown["attempts"] == 1, shown
    assert "tiny:1" in shown["error"] and "multiple of 256" in shown["error"] and "model-files" not in shown["error"]
