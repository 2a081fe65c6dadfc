"""``bitnet-actor jobs list | show | cancel`` end to end."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

from tests.test_admin_plans_cli import _env, _query
from tests.test_cli import run_cli

if TYPE_CHECKING:
    from pathlib import Path


def test_jobs_list_show_cancel(fresh_dsn_sync: str, redis_url: str, tmp_path: Path) -> None:
    env = _env(fresh_dsn_sync, redis_url, tmp_path)
    r = run_cli("admin", "create-org", "--name", "Acme", "--owner-email", "boss@acme.example", **env)
    assert r.returncode == 0, r.stderr
    r = run_cli("jobs", "list", "--org", "Acme", **env)
    assert r.returncode == 0 and "no jobs" in r.stdout, r.stderr
    rows = _query(
        fresh_dsn_sync,
        "INSERT INTO model_jobs (org_id, kind, target, output_name, output_version)"
        " SELECT id, 'quantize', 'tq2_0', 'out', '1' FROM organizations WHERE name = 'Acme' RETURNING id",
    )
    job_id = str(rows[0]["id"])
    r = run_cli("jobs", "list", "--org", "Acme", **env)
    assert r.returncode == 0 and job_id in r.stdout and "queued" in r.stdout, r.stdout
    r = run_cli("jobs", "show", "--org", "Acme", "--id", job_id, **env)
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "queued", r.stderr
    r = run_cli("jobs", "cancel", "--org", "Acme", "--id", job_id, **env)
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "cancelled", r.stderr
    r = run_cli("jobs", "show", "--org", "Acme", "--id", str(uuid.uuid4()), **env)
    assert r.returncode == 1 and "no such job" in r.stderr
