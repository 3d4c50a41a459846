"""A private redis-server for tests: a free port on 127.0.0.1, no persistence, stopped by PID.

    server = RedisServer(tmp_path)      # finds redis-server, or skips (fails when required)
    server.start()                      # returns once it answers PING (bounded)
    server.url                          # redis://127.0.0.1:PORT/0
    server.stop()                       # SIGTERM to its own pid, SIGKILL after a bound
    server.start()                      # again, on the same port: "Redis comes back"

Nothing is saved (`--save '' --appendonly no`), so a restart is also a Redis that lost every
key: the case rawrt's epochs exist for. `RAWRT_REQUIRE_REDIS=1` turns a missing redis-server
into a failure instead of a skip (CI sets it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

__all__ = ["HOST", "RedisServer", "free_port", "redis_server_program"]

HOST = "127.0.0.1"
START_BOUND_S = 10.0  # redis-server must answer PING within this
STOP_BOUND_S = 10.0  # ... and exit within this after SIGTERM
_PING_EVERY_S = 0.02
_SBIN = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")


def redis_server_program() -> str:
    """The redis-server executable; skips the test when there is none (fails if required)."""
    found = shutil.which("redis-server")
    for folder in _SBIN:
        candidate = Path(folder) / "redis-server"
        if found is None and os.access(candidate, os.X_OK):
            found = str(candidate)
    if found is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("RAWRT_REQUIRE_REDIS") == "1":
            pytest.fail(f"{message}, and RAWRT_REQUIRE_REDIS=1")
        pytest.skip(message)
    return found


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server child process; `start()` and `stop()` may alternate."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.program = redis_server_program()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **options: Any) -> redis.Redis:
        """A synchronous client of this server (the test's own, not rawrt's)."""
        options = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0, **options}
        return redis.Redis(host=HOST, port=self.port, db=0, **options)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start on `self.port` and wait until it answers PING; a first start whose port was
        taken meanwhile moves to another free port (a bounded number of times)."""
        assert not self.running, "already running"
        for attempt in range(3):
            if self._try_start():
                self.starts += 1
                return
            if self.starts or attempt == 2:
                break  # a restart must keep its port: do not move it
            self.port = free_port()
        raise AssertionError(f"redis-server did not start on port {self.port}: {self._log()}")

    def _try_start(self) -> bool:
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.proc = subprocess.Popen(
                [self.program, *self._options()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_BOUND_S
        probe = self.client(socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False  # exited: the port was taken, or a bad option
                with contextlib.suppress(redis.RedisError, OSError):
                    # Ours, not another server that held the port while ours failed to bind.
                    if probe.ping() and probe.info("server")["process_id"] == self.proc.pid:
                        return True
                time.sleep(_PING_EVERY_S)
        finally:
            probe.close()
        self._kill()
        return False

    def _options(self) -> list[str]:
        options = {
            "port": str(self.port),
            "bind": HOST,
            "save": "",  # no snapshots: a restart comes back empty
            "appendonly": "no",
            "dir": str(self.directory),
            "daemonize": "no",
            "logfile": "",  # to stdout, which goes to redis.log in `directory`
        }
        return [arg for name, value in options.items() for arg in (f"--{name}", value)]

    def stop(self) -> None:
        """SIGTERM our redis-server (by its pid) and wait for it to exit; SIGKILL if late."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            self._kill()

    def kill(self) -> None:
        """SIGKILL our redis-server: gone at once, nothing flushed, no goodbye to clients."""
        self._kill()

    def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(STOP_BOUND_S)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""
