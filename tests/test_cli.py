"""The ``bitnet-actor`` command end to end, as a subprocess: embedded defaults, signals, bad input."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil
import pytest

from bitnet_actor import __version__

if TYPE_CHECKING:
    from collections.abc import Iterator

CLI = [sys.executable, "-m", "bitnet_actor"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITNET_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes_using(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "pid"]):
        try:
            if proc.pid != os.getpid() and any(str(path) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: the embedded PostgreSQL runs as another user and must traverse the path.
    path = Path(tempfile.mkdtemp(prefix="bitnet-e2e-"))
    yield path
    for proc in processes_using(path):  # never leave servers behind, even when a test failed
        proc.kill()
    shutil.rmtree(path, ignore_errors=True)


class Server:
    def __init__(self, data_dir: Path, *args: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (data_dir.parent / f"{data_dir.name}-{self.port}.log").open("w+b")
        self.proc = subprocess.Popen(
            [*CLI, "serve", "--port", str(self.port), *args],
            env=clean_env(BITNET_DATA_DIR=str(data_dir), **env),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            assert self.proc.poll() is None, f"serve exited early:\n{self.output()}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"/readyz not 200 within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.mark.slow
def test_serve_with_embedded_defaults_then_sigterm(data_dir: Path) -> None:
    server = Server(data_dir, "--shutdown-grace", "5")
    try:
        ready_after = server.wait_ready()
        assert ready_after < 60
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        assert processes_using(data_dir), "expected embedded PostgreSQL and Redis processes"
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=20) == 0, server.output()
        deadline = time.monotonic() + 10
        while processes_using(data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_using(data_dir) == [], "embedded servers left running after shutdown"
        out = server.output()
        assert "Traceback" not in out
        assert '"message": "stopped"' in out
    finally:
        server.close()


@pytest.mark.slow
def test_restart_after_crash_recovers(data_dir: Path) -> None:
    first = Server(data_dir)
    try:
        first.wait_ready()
        first.proc.kill()  # a crash: no cleanup at all
        first.proc.wait()
    finally:
        first.close()
    second = Server(data_dir)
    try:
        second.wait_ready()
        second.proc.send_signal(signal.SIGINT)
        assert second.proc.wait(timeout=20) == 0, second.output()
        deadline = time.monotonic() + 10
        while processes_using(data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_using(data_dir) == []
    finally:
        second.close()


def run_cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=clean_env(**env), capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("bitnet-actor: error:")]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0]


def test_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"bitnet-actor {__version__}"


def test_unknown_flag() -> None:
    result = run_cli("serve", "--no-such-flag")
    assert result.returncode == 2
    assert_one_line_error(result, "unrecognized arguments: --no-such-flag")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_environment_value() -> None:
    result = run_cli("serve", BITNET_PORT="eighty")
    assert result.returncode == 2
    assert_one_line_error(result, "BITNET_PORT='eighty' is not a valid int")


def test_unreachable_database(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        "--data-dir",
        str(tmp_path),
        "--port",
        "0",
        BITNET_DATABASE_URL="postgresql://u:hunter2@127.0.0.1:1/db",
        BITNET_REDIS_URL="redis://127.0.0.1:1",
    )
    assert_one_line_error(result, "cannot connect to PostgreSQL at postgresql://u:***@127.0.0.1:1/db")
    assert "hunter2" not in result.stderr


def test_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("serve", "--data-dir", str(blocker / "data"))
    assert_one_line_error(result, "is not writable")


def test_port_in_use(data_dir: Path, pg_dsn: str, redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "serve",
            "--port",
            str(port),
            BITNET_DATA_DIR=str(data_dir),
            BITNET_DATABASE_URL=pg_dsn,
            BITNET_REDIS_URL=redis_url,
        )
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}: address already in use")


def test_second_serve_on_same_data_dir_is_refused(data_dir: Path, pg_dsn: str, redis_url: str) -> None:
    env = {"BITNET_DATABASE_URL": pg_dsn, "BITNET_REDIS_URL": redis_url}
    first = Server(data_dir, **env)
    try:
        first.wait_ready()
        result = run_cli("serve", "--port", "0", BITNET_DATA_DIR=str(data_dir), **env)
        assert_one_line_error(result, "is in use by another bitnet-actor serve")
    finally:
        first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(timeout=20)
        first.close()


def test_migrate_is_idempotent(fresh_dsn_sync: str) -> None:
    first = run_cli("migrate", BITNET_DATABASE_URL=fresh_dsn_sync)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied migrations: 0001")
    second = run_cli("migrate", BITNET_DATABASE_URL=fresh_dsn_sync)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "database schema is up to date"


def test_serve_on_a_missing_opencl_device_fails_at_start(tmp_path: Path) -> None:
    result = run_cli(
        "serve", "--data-dir", str(tmp_path), "--port", "0", "--device", "opencl", "--opencl-device", "no-such-gpu"
    )
    assert_one_line_error(result, "OpenCL: no OpenCL ")  # "device matches 'no-such-gpu'", or "platform found"
    assert not (tmp_path / "postgres").exists()  # refused before any store started


def test_serve_device_must_be_known(tmp_path: Path) -> None:
    result = run_cli("serve", "--data-dir", str(tmp_path), BITNET_DEVICE="cuda")
    assert result.returncode == 2
    assert_one_line_error(result, "BITNET_DEVICE must be cpu, opencl or auto, not 'cuda'")


def test_serve_kv_cache_must_be_known(tmp_path: Path) -> None:
    result = run_cli("serve", "--data-dir", str(tmp_path), BITNET_KV_CACHE="int4")
    assert result.returncode == 2
    assert_one_line_error(result, "BITNET_KV_CACHE must be f32 or f16, not 'int4'")
