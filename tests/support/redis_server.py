"""Private redis-servers for tests: free ports on 127.0.0.1, each stopped by its own PID.

    server = RedisServer(tmp_path)      # finds redis-server, or skips (fails when required)
    server.start()                      # returns once it answers PING (bounded)
    server.url                          # redis://127.0.0.1:PORT/0
    server.stop()                       # SIGTERM to its own pid, SIGKILL after a bound
    server.start()                      # again, on the same port: "Redis comes back"

By default nothing is saved (`--save '' --appendonly no`), so a restart is also a Redis that
lost every key: the case rawrt's epochs exist for. `persistence="rdb"` keeps what `SAVE`
wrote (`dump.rdb`, loaded at start); `persistence="aof"` logs every write before answering
(`appendfsync always`); `snapshot()` and `restore()` copy the persistence files aside and
back, so a restart can come back from a snapshot older than the last acknowledged writes.
`replica_of=port` starts a replica. `Sentinel(directory, "name", primary_port)` runs a
Sentinel (redis-server in sentinel mode) watching that primary.

`RAWRT_REQUIRE_REDIS=1` turns a missing redis-server into a failure instead of a skip (CI sets
it).
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

__all__ = ["HOST", "RedisServer", "Sentinel", "free_port", "redis_server_program"]

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

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        persistence: str = "none",
        replica_of: int | None = None,
    ) -> None:
        assert persistence in ("none", "rdb", "aof"), persistence
        self.program = redis_server_program()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.replica_of = replica_of
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

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
            "save": "",  # no automatic snapshots: only an explicit SAVE writes dump.rdb
            "appendonly": "yes" if self.persistence == "aof" else "no",
            "appendfsync": "always",  # with AOF: every acknowledged write is on disk
            "dbfilename": "dump.rdb",
            "dir": str(self.directory),
            "daemonize": "no",
            "logfile": "",  # to stdout, which goes to redis.log in `directory`
        }
        if self.replica_of is not None:
            options["replicaof"] = f"{HOST} {self.replica_of}"
        return [arg for name, value in options.items() for arg in (f"--{name}", value)]

    # --- persistence -----------------------------------------------------------------------

    def _files(self) -> list[Path]:
        return [self.directory / "dump.rdb", self.directory / "appendonlydir"]

    def snapshot(self) -> None:
        """Copy the persistence files aside as they are now (after a SAVE, for RDB)."""
        assert self.persistence != "none"
        if self.persistence == "rdb":
            with self.client() as admin:
                admin.save()
        for path in self._files():
            _copy(path, path.with_name(path.name + ".snapshot"))

    def restore(self) -> None:
        """Put the files `snapshot()` copied back, replacing newer ones: call while stopped."""
        assert not self.running, "restore a stopped server"
        for path in self._files():
            _copy(path.with_name(path.name + ".snapshot"), path)

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

    def pause(self) -> None:
        """SIGSTOP our redis-server: it holds its connections and answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def _log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def _copy(source: Path, target: Path) -> None:
    """Replace `target` by a copy of `source` (a file or a folder); nothing if none."""
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    if source.is_dir():
        shutil.copytree(source, target)
    elif source.exists():
        shutil.copy2(source, target)


class Sentinel(RedisServer):
    """A Sentinel watching one primary: quick to notice a failure, quick to fail over.

    Sentinel rewrites its configuration file as it learns the topology, so each has its own.
    """

    DOWN_AFTER_MS = 400  # unanswered this long, a Redis is subjectively down
    FAILOVER_TIMEOUT_MS = 2000

    def __init__(self, directory: Path, master: str, primary_port: int, quorum: int = 2):
        self.master = master
        self.primary_port = primary_port
        self.quorum = quorum
        super().__init__(directory)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _options(self) -> list[str]:
        conf = self.directory / "sentinel.conf"
        if not conf.exists():
            m = self.master
            conf.write_text(
                f"port {self.port}\nbind {HOST}\ndir {self.directory}\n"
                f"sentinel monitor {m} {HOST} {self.primary_port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {m} {self.DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {m} {self.FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {m} 1\n"
            )
        return [str(conf), "--sentinel", "--daemonize", "no", "--logfile", ""]

    def primary(self) -> tuple[str, int] | None:
        """The primary's address as this Sentinel knows it now."""
        with self.client(decode_responses=True) as admin:
            found = admin.sentinel_get_master_addr_by_name(self.master)
        return None if not found else (found[0], int(found[1]))

    def knows(self, sentinels: int, replicas: int) -> bool:
        """True once it has heard of the other Sentinels and of the primary's replicas."""
        with self.client(decode_responses=True) as admin:
            state = admin.sentinel_master(self.master)
        return bool(
            int(state["num-other-sentinels"]) >= sentinels - 1
            and int(state["num-slaves"]) >= replicas
        )
