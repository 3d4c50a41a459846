"""Processes the bench starts, and what /proc says about them.

Every process here is started by the bench and stopped by its own PID:
SIGTERM first, SIGKILL after a bounded wait.  Nothing is looked up by name.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Proc",
    "core_busy_s",
    "cpu_seconds",
    "free_port",
    "machine_busy",
    "rss_bytes",
    "start",
    "wait_listening",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
# How long a server gets to exit after SIGTERM before SIGKILL.
STOP_GRACE_S = 3.0


@dataclass
class Proc:
    """A child process and the log file its output goes to."""

    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_GRACE_S; returns the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_GRACE_S)
        return self.popen.returncode

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return ""


def _raise_nofile() -> None:
    # 15,000 idle connections need more than the usual soft limit of 1024.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start(argv: Sequence[str], cpu: int, log_path: Path, cwd: Path) -> Proc:
    """Starts argv pinned to one CPU; taskset execs, so the PID is argv's."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            ["taskset", "-c", str(cpu), *argv],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_raise_nofile,
        )
    return Proc(popen, log_path)


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (freed at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(proc: Proc, port: int, timeout_s: float) -> bool:
    """True once a TCP connect to the port succeeds, False if the process
    exits or the time runs out first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.alive():
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces: count fields after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a process, from /proc/PID/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def machine_busy(cpus: Sequence[int], window_s: float = 1.0) -> list[float]:
    """Share of each CPU busy over a short window, before the bench starts
    anything: other people's work on the machine skews every figure."""
    before = [core_busy_s(c) or 0.0 for c in cpus]
    time.sleep(window_s)
    return [((core_busy_s(c) or 0.0) - b) / window_s for c, b in zip(cpus, before, strict=True)]


def core_busy_s(cpu: int) -> float | None:
    """Busy time of one CPU since boot (all but idle and iowait)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK
    return None
