"""Fixtures for tests that run a real rawrt server.

- `server`: a `rawrt.Server` on 127.0.0.1, port 0, started in the test's own event loop and
  stopped after it. Its Config is the default unless the test passes overrides indirectly:

      @pytest.mark.parametrize("server", [{"history_size": 3}], indirect=True)

- `start_server`: a factory for more servers (or other configs) in one test.
- `stack`: an AsyncExitStack for clients; it closes them before the servers stop.
- `spawn_rawrt`: rawrt as a real process (`python -m rawrt ...`); its port is read from the
  `listening on http://HOST:PORT` log line, and it is stopped by SIGTERM to its own pid,
  which must make it exit 0 within a bound.

Event loops: integration test modules (`test_integration_*.py`) run every async test on the
stock asyncio loop and, when uvloop is installed, on uvloop too; other modules keep the stock
loop. Any test chooses with `pytest.mark.asyncio(loop_factories=["asyncio"])` (or
`["uvloop"]`, skipped where uvloop is missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

import rawrt

uvloop: Any
try:
    import uvloop
except ImportError:  # the stock loop still runs everything
    uvloop = None

HOST = "127.0.0.1"
STOP_BOUND_S = 10.0  # a server must have stopped within this
START_BOUND_S = 15.0  # a child process must log its address within this
_LISTENING = re.compile(r"listening on http://([0-9.]+):(\d+)")

StartServer = Callable[..., Awaitable[rawrt.Server]]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    stock = {"asyncio": asyncio.new_event_loop}
    every = {**stock, **({"uvloop": uvloop.new_event_loop} if uvloop is not None else {})}
    marker = item.get_closest_marker("asyncio")
    if item.path.name.startswith("test_integration_") or (
        marker is not None and "loop_factories" in marker.kwargs
    ):
        return every
    return stock


# --- servers in the test's loop ---------------------------------------------------------------


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    servers: list[rawrt.Server] = []

    async def start(**overrides: Any) -> rawrt.Server:
        server = rawrt.Server(rawrt.Config(host=HOST, port=0, **overrides))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await asyncio.wait_for(server.stop(), STOP_BOUND_S)


@pytest.fixture
async def server(request: pytest.FixtureRequest, start_server: StartServer) -> rawrt.Server:
    overrides: dict[str, Any] = getattr(request, "param", {})
    return await start_server(**overrides)


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    async with contextlib.AsyncExitStack() as clients:
        yield clients


# --- rawrt as a process -----------------------------------------------------------------------


class RawrtProcess:
    """A `python -m rawrt` child whose stderr is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rawrt", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        self.port = self._wait_for_port()

    def _collect(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _wait_for_port(self) -> int:
        def found() -> re.Match[str] | None:
            return next(filter(None, map(_LISTENING.search, self.lines)), None)

        with self._changed:
            ok = self._changed.wait_for(
                lambda: found() is not None or self.proc.poll() is not None, START_BOUND_S
            )
            match = found()
        if not ok or match is None:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"rawrt did not log its address; stderr: {self.lines}")
        assert match.group(1) == HOST
        return int(match.group(2))

    def stop(self, timeout_s: float = STOP_BOUND_S) -> int:
        """SIGTERM this child (by its own pid) and return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"rawrt did not exit {timeout_s} s after SIGTERM") from None
        finally:
            self._reader.join(timeout_s)
            assert self.proc.stderr is not None
            self.proc.stderr.close()

    async def stopped(self, timeout_s: float = STOP_BOUND_S) -> int:
        """`stop()` without blocking the running loop (clients may be reading meanwhile)."""
        return await asyncio.to_thread(self.stop, timeout_s)


SpawnRawrt = Callable[..., RawrtProcess]


@pytest.fixture
def spawn_rawrt() -> Iterator[SpawnRawrt]:
    children: list[RawrtProcess] = []

    def spawn(*args: str, env: dict[str, str] | None = None) -> RawrtProcess:
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAWRT_")}
        child = RawrtProcess(list(args), {**base, **(env or {})})
        children.append(child)
        return child

    yield spawn
    codes = [child.stop() for child in children if child.proc.returncode is None]
    assert all(code == 0 for code in codes), f"rawrt exit statuses after SIGTERM: {codes}"
