"""The servers under test: how to start each, and whether it can be.

rawrt is started with no tuning flags: the bench measures its defaults.
`rawrt-tokens` is the same server with tokens required (an HS256 secret, no
browser origin): the load generator then sends a token on every request, and
comparing the two shows what checking tokens costs. It runs only when named.
`rawrt-metrics-off` is rawrt with `--metrics false` (no /metrics), beside which the default
shows what serving metrics costs; also only when named.
Peers live in bench/peers/ (see its README for what each one is).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ALL_SERVERS", "SERVERS", "Server", "availability"]

ALL_TRANSPORTS = ("ws", "sse", "poll")
NPM_TIMEOUT_S = 300


@dataclass(frozen=True)
class Server:
    name: str
    argv: Callable[[Path, int], list[str]]
    transports: tuple[str, ...] = ALL_TRANSPORTS
    # More load generator options for this server (a credential to send).
    loadgen_args: Callable[[Path], list[str]] = lambda _root: []
    by_default: bool = True


def _python(script: str) -> Callable[[Path, int], list[str]]:
    # sys.executable, not "python": a version manager's shim script would
    # sit between us and the server and hide its PID.
    return lambda root, port: [sys.executable, str(root / script), "--port", str(port)]


def _rawrt(root: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "rawrt", "--host", "127.0.0.1", "--port", str(port)]


# Benchmark-only: generated on this machine, never a real deployment's secret.
BENCH_JWT_SECRET = "rawrt-bench-secret-not-for-deployment-0123456789"


def _rawrt_tokens(root: Path, port: int) -> list[str]:
    # No browser origin may connect: the load generator is not a browser (and sends no Origin).
    return [*_rawrt(root, port), "--jwt-secret", BENCH_JWT_SECRET, "--allowed-origins", ""]


def _rawrt_metrics_off(root: Path, port: int) -> list[str]:
    return [*_rawrt(root, port), "--metrics", "false"]


def _token_header(root: Path) -> list[str]:
    """One token for every connection: each still verifies it and keeps its own grant."""
    sys.path.insert(0, str(root))
    try:
        from rawrt.tokens import issue_token
    finally:
        sys.path.remove(str(root))
    token = issue_token(
        BENCH_JWT_SECRET,
        sub="bench",
        channels=["bench"],
        publish=["bench"],
        now=time.time(),
        ttl_s=6 * 3600,
    )
    return ["--header", f"Authorization: Bearer {token}"]


def _node(root: Path, port: int) -> list[str]:
    node = shutil.which("node") or "node"
    return [node, str(root / "bench/peers/node/server.js"), "--port", str(port)]


SERVERS: dict[str, Server] = {
    s.name: s
    for s in (
        Server("rawrt", _rawrt),
        Server("rawrt-tokens", _rawrt_tokens, loadgen_args=_token_header, by_default=False),
        Server("rawrt-metrics-off", _rawrt_metrics_off, by_default=False),
        Server("node", _node),
        Server("websockets", _python("bench/peers/websockets_peer.py"), ("ws",)),
        Server("aiohttp", _python("bench/peers/aiohttp_peer.py")),
        Server("floor", _python("bench/peers/floor_peer.py")),
    )
}
ALL_SERVERS = tuple(name for name, spec in SERVERS.items() if spec.by_default)


def _rawrt_missing(root: Path) -> str | None:
    if not (root / "rawrt/__main__.py").exists():
        return "python -m rawrt does not exist yet (no rawrt/__main__.py)"
    sys.path.insert(0, str(root))
    try:
        if importlib.util.find_spec("rawrt.__main__") is None:
            return "rawrt.__main__ cannot be imported"
    except ImportError as exc:
        return f"rawrt cannot be imported: {exc}"
    finally:
        sys.path.remove(str(root))
    return None


def _node_missing(root: Path) -> str | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node or npm is not installed"
    peer = root / "bench/peers/node"
    if not (peer / "server.js").exists():
        return "bench/peers/node/server.js does not exist yet"
    if (peer / "node_modules").is_dir():
        return None
    verb = "ci" if (peer / "package-lock.json").exists() else "install"
    print(f"bench: node_modules missing, running npm {verb} in bench/peers/node", flush=True)
    done = subprocess.run(
        ["npm", verb, "--no-audit", "--no-fund"], cwd=peer, timeout=NPM_TIMEOUT_S, check=False
    )
    return None if done.returncode == 0 else f"npm {verb} failed ({done.returncode})"


def availability(name: str, root: Path) -> str | None:
    """None when the server can run, else why not (to print and skip)."""
    if name in ("rawrt", "rawrt-tokens", "rawrt-metrics-off"):
        return _rawrt_missing(root)
    if name == "node":
        return _node_missing(root)
    script = SERVERS[name].argv(root, 0)[1]
    return None if Path(script).exists() else f"{script} does not exist yet"
