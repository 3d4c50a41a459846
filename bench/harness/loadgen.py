"""Builds bench/loadgen/loadgen.c and runs it, pinned to its own CPU.

The load generator prints one JSON object at the end; in idle mode it first
prints "READY n" and then holds its connections until its stdin closes.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LoadgenError", "build", "run", "run_idle"]

LOADGEN_CPU = 1


class LoadgenError(RuntimeError):
    """The load generator failed, hung, or printed no result."""


def build(root: Path) -> Path:
    """Compiles the load generator when the binary is missing or stale."""
    src = root / "bench/loadgen/loadgen.c"
    binary = root / "bench/loadgen/loadgen"
    if binary.exists() and binary.stat().st_mtime >= src.stat().st_mtime:
        return binary
    cmd = ["gcc", "-O2", "-Wall", "-o", str(binary), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise LoadgenError(f"gcc failed:\n{done.stderr}")
    return binary


def _popen(binary: Path, args: Sequence[str], log: Path, stdin: int) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as err:
        return subprocess.Popen(
            ["taskset", "-c", str(LOADGEN_CPU), str(binary), *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=err,
        )


def _parse(out: bytes) -> dict[str, Any]:
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("{")]
    if not lines:
        raise LoadgenError("no JSON result on stdout")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run(binary: Path, args: Sequence[str], log: Path, timeout_s: float) -> dict[str, Any]:
    """Runs one measurement to the end and returns its JSON result."""
    proc = _popen(binary, args, log, subprocess.DEVNULL)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        raise LoadgenError(f"no result within {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        raise LoadgenError(f"exit status {proc.returncode}; see {log}")
    return _parse(out)


def _read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    """One line of stdout, waiting at most timeout_s."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout_s
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise LoadgenError(f"no line within {timeout_s:.0f} s")
        chunk = os.read(fd, 1)
        if not chunk:
            raise LoadgenError("stdout closed early")
        line += chunk
    return line


def run_idle(
    binary: Path,
    args: Sequence[str],
    log: Path,
    timeout_s: float,
    on_ready: Callable[[int], Any],
) -> tuple[dict[str, Any], Any]:
    """Opens idle connections; calls on_ready(n) while they are all held,
    then releases them.  Returns the loadgen result and on_ready's value."""
    proc = _popen(binary, args, log, subprocess.PIPE)
    try:
        line = _read_line(proc, timeout_s)
        if not line.startswith(b"READY "):
            raise LoadgenError(f"unexpected line {line!r}")
        measured = on_ready(int(line.split()[1]))
        out, _ = proc.communicate(timeout=60)  # closes stdin: the cue to let go
        return _parse(out), measured
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
