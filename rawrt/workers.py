"""`--workers N`: N rawrt processes accepting on one port, sharing channels through Redis.

The supervisor binds the port first with SO_REUSEPORT (so `--port 0` picks one port for
all), starts N copies of the same command line with that port, and lets the kernel spread
incoming connections over their listeners. A worker that dies is started again (at most
`_MAX_RESTARTS` times a minute); SIGINT or SIGTERM is passed on to every worker as SIGTERM
(each then drains: rawrt.drain), a second one too (which cuts the drains short), and the
supervisor exits when they have.

Each process holds its own connections and its own hub; they agree on every channel because
ids and history live in Redis, which is why more than one worker requires `--redis`.

With metrics on, the supervisor makes a private directory for prometheus-client's
multiprocess mode and names it in every worker's PROMETHEUS_MULTIPROC_DIR, so that whichever
worker answers a scrape shows the whole node (rawrt.metrics); a dead worker's live gauges are
dropped before its replacement starts, and the directory is removed on exit.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from rawrt import metrics
from rawrt.config import Config

__all__ = ["WORKER_ENV", "supervise"]

log = logging.getLogger("rawrt")

# Set in a worker's environment, so that it serves instead of supervising.
WORKER_ENV = "RAWRT_WORKER"
_MAX_RESTARTS = 5
_STOP_TIMEOUT_S = 10.0


def _reserve(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _start(
    argv: Sequence[str], port: int, index: int, metrics_dir: str | None
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **{WORKER_ENV: str(index)})
    if metrics_dir is not None:
        env[metrics.MULTIPROC_ENV] = metrics_dir
    return subprocess.Popen([sys.executable, "-m", "rawrt", *argv, "--port", str(port)], env=env)


def supervise(config: Config, argv: Sequence[str]) -> int:
    """Run `config.workers` worker processes until a signal; returns an exit status."""
    reserved = _reserve(config.host, config.port)  # held so the port stays ours
    metrics_dir = metrics.private_dir() if config.metrics else None
    try:
        return _run(config, argv, reserved, metrics_dir)
    finally:
        if metrics_dir is not None:
            metrics.remove_dir(metrics_dir)


def _run(
    config: Config, argv: Sequence[str], reserved: socket.socket, metrics_dir: str | None
) -> int:
    port = reserved.getsockname()[1]
    stop = threading.Event()
    workers: list[subprocess.Popen[bytes]] = []

    def on_signal(*_: object) -> None:
        if stop.is_set():  # a second signal cuts the workers' drains short: pass it on
            for worker in workers:
                if worker.poll() is None:
                    worker.terminate()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    workers.extend(_start(argv, port, i, metrics_dir) for i in range(config.workers))
    log.info("supervising %d workers on http://%s:%d", config.workers, config.host, port)
    restarts: list[float] = []
    while not stop.wait(0.5):
        for i, worker in enumerate(workers):
            if worker.poll() is None:
                continue
            restarts = [t for t in restarts if t > time.monotonic() - 60] + [time.monotonic()]
            if len(restarts) > _MAX_RESTARTS:
                log.error("workers keep dying; giving up")
                stop.set()
                break
            log.warning("worker %d exited with %s; starting it again", i, worker.returncode)
            if metrics_dir is not None:
                metrics.forget_process(worker.pid, metrics_dir)
            workers[i] = _start(argv, port, i, metrics_dir)
    # A worker drains first (rawrt.drain): give it that long on top of stopping.
    return _stop_all(workers, reserved, config.drain_delay_s + config.drain_s)


def _stop_all(
    workers: list[subprocess.Popen[bytes]], reserved: socket.socket, drain_s: float
) -> int:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    deadline = time.monotonic() + _STOP_TIMEOUT_S + drain_s
    status = 0
    for worker in workers:
        try:
            status = status or worker.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            status = 1
    reserved.close()
    return status
