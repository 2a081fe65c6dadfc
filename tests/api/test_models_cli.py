"""``bitnet-actor models push | list`` and ``admin rotate-keys | shred-org`` end to end (subprocesses on a real
PostgreSQL and the filesystem object store)."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
