"""The sans-I/O core imports no I/O: its modules are read with `ast`, not imported.

The core (log, hub, config, errors, access, tokens, wire) takes data and returns data; time
comes in as an argument and writes go out through callables. A module of it importing
asyncio, a socket or a clock, or any of rawrt's I/O edge, would break that promise quietly.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support import QUIET_PATCH_WRITER

import rawrt

pytestmark = QUIET_PATCH_WRITER

PACKAGE = Path(rawrt.__file__).parent
CORE = sorted(
    [
        PACKAGE / "log.py",
        PACKAGE / "channel.py",
        PACKAGE / "hub.py",
        PACKAGE / "config.py",
        PACKAGE / "errors.py",
        PACKAGE / "access.py",
        PACKAGE / "tokens.py",
        PACKAGE / "netpolicy.py",
        PACKAGE / "drain.py",
        PACKAGE / "presence.py",
        PACKAGE / "presence_events.py",
        PACKAGE / "client" / "core.py",  # the client's feeds: sans-I/O like the server's core
    ]
    + [p for p in (PACKAGE / "wire").glob("*.py")]
)
FORBIDDEN = {"asyncio", "socket", "redis", "time", "selectors", "uvloop", "ssl", "threading"}
# rawrt's own I/O edge: the core must not reach it either.
EDGE = {"rawrt.connection", "rawrt.server", "rawrt.routes", "rawrt.cli", "rawrt.transports",
        "rawrt.backplane", "rawrt.client", "rawrt.__main__"}  # fmt: skip


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, module: str) -> set[str]:
    """Every module `source` (the text of `module`) imports, made absolute, including the
    `from package import module` form and calls of `__import__`."""
    package = module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            found.add("__import__")
    return found


def _reaches(name: str, modules: set[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def test_the_core_is_where_it_is_expected() -> None:
    names = {_module_name(p) for p in CORE}
    assert {"rawrt.log", "rawrt.hub", "rawrt.wire.sse", "rawrt.wire.envelope"} <= names


@pytest.mark.parametrize("path", CORE, ids=_module_name)
def test_core_module_imports_no_io(path: Path) -> None:
    imports = _imports(path.read_text(), _module_name(path))
    assert not {m for m in imports if _reaches(m, FORBIDDEN)}
    assert not {m for m in imports if _reaches(m, EDGE)}
    assert "importlib" not in imports and "__import__" not in imports


def test_the_checker_sees_every_import_form() -> None:
    source = (
        "import time\nimport os.path as p\nfrom asyncio import sleep\n"
        "from .. import server\nfrom . import sse\nfrom .http import x\n"
        "def f():\n    import socket\n    __import__('redis')\n"
    )
    found = _imports(source, "rawrt.wire.ids")
    assert {"time", "os.path", "asyncio", "rawrt.server", "rawrt.wire.sse", "socket"} <= found
    assert {"rawrt.wire.http", "__import__"} <= found
    assert _reaches("rawrt.server", EDGE) and _reaches("asyncio.events", FORBIDDEN)
    assert not _reaches("timeit", FORBIDDEN)


# --- the I/O edge: connection, routes and transports see the server only through rawrt.edge ---

ALL = sorted(PACKAGE.rglob("*.py"))
HOSTED = sorted(
    [
        PACKAGE / "edge.py",
        PACKAGE / "connection.py",
        PACKAGE / "routes.py",
        *(PACKAGE / "transports").glob("*.py"),
    ]
)


def _edge_imports(path: Path) -> set[str]:
    return {m for m in _imports(path.read_text(), _module_name(path)) if _reaches(m, {"rawrt"})}


@pytest.mark.parametrize("path", HOSTED, ids=_module_name)
def test_edge_module_never_imports_the_server(path: Path) -> None:
    """Not even under TYPE_CHECKING (ast sees those imports too): a host Protocol instead.
    The package root counts as the server: it imports rawrt.server."""
    imports = _edge_imports(path)
    assert not {m for m in imports if m == "rawrt" or _reaches(m, {"rawrt.server"})}


@pytest.mark.parametrize("path", ALL, ids=_module_name)
def test_only_routes_names_the_transports(path: Path) -> None:
    if _module_name(path) == "rawrt.routes":
        return
    imports = _edge_imports(path)
    assert not {m for m in imports if m.startswith("rawrt.transports.")}


def test_the_http_driver_knows_no_router_or_transport() -> None:
    imports = _edge_imports(PACKAGE / "connection.py")
    assert not {m for m in imports if _reaches(m, {"rawrt.routes", "rawrt.transports"})}
    assert "rawrt.edge" in imports


def test_the_host_protocols_import_nothing_of_the_edge() -> None:
    imports = _edge_imports(PACKAGE / "edge.py")
    assert not {m for m in imports if _reaches(m, EDGE)}


def test_the_edge_checks_see_what_they_look_for() -> None:
    names = {_module_name(p) for p in HOSTED}
    transports = {"rawrt.transports.websocket", "rawrt.transports.sse", "rawrt.transports.longpoll"}
    assert transports <= names
    assert any(m.startswith("rawrt.transports.") for m in _edge_imports(PACKAGE / "routes.py"))
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rawrt.server import S\n"
    assert "rawrt.server" in _imports(source, "rawrt.transports.sse")
