"""A configuration file a person can read: TOML, one key per Config field.

Theory of operation
-------------------
`rawrt --config rawrt.toml` reads a flat TOML table whose keys are the names of the Config
fields (`history_size = 5000`; `history-size`, the flag's spelling, is accepted too). The
file is the lowest layer: the environment (`RAWRT_*`) overrides it and the command line
overrides both (rawrt.cli puts the layers together). Parsing is tomllib's; this module only
checks what TOML cannot: that every key names an option, and that each value has the
option's type. Either failure names the key and the reason, as does every problem Config
itself finds (`history_size must be positive, not 0`).

`show()` renders a Config back as TOML, with every secret masked: a field kept out of
`repr()` (the publish keys, the JWT secret) shows only whether it is set, and a Redis URL
loses its password.

No I/O but reading the one file named.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import urllib.parse
from typing import Any

from rawrt.config import Config
from rawrt.errors import ConfigError

__all__ = ["MASK", "load", "show", "value_type"]

MASK = "********"
_FIELDS = {field.name: field for field in dataclasses.fields(Config)}


def value_type(name: str) -> type:
    """The Python type an option's values have: that of its default (str for None, but
    bool for a switch that None leaves to rawrt, `bool | None`)."""
    field = _FIELDS[name]
    if field.type == "bool | None":
        return bool
    return str if field.default is None else type(field.default)


def load(path: str) -> dict[str, Any]:
    """The options a TOML file sets, by field name; raises ConfigError naming the problem."""
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"config file {path!r} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in _FIELDS or name == "config":
            raise ConfigError(f"{path}: unknown key {key!r}: not an option of rawrt")
        values[name] = _checked(path, key, name, value)
    return values


def _checked(path: str, key: str, name: str, value: object) -> object:
    wanted = value_type(name)
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # `drain_s = 30` means 30.0
    if type(value) is not wanted:
        raise ConfigError(
            f"{path}: {key} must be {_TYPE_WORDS[wanted]}, not {_toml_kind(value)} {value!r}"
        )
    return value


_TYPE_WORDS = {
    int: "a whole number",
    float: "a number",
    str: "a string",
    bool: "true or false",
}


def _toml_kind(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    return names.get(type(value), "a " + type(value).__name__)


def show(config: Config) -> str:
    """`config` as TOML, secrets masked: what `rawrt config show` prints."""
    lines = []
    for name, field in _FIELDS.items():
        value = getattr(config, name)
        if not field.repr and value:
            value = MASK
        elif name == "redis_url" and value:
            value = ",".join(_without_password(url) for url in value.split(","))
        if value is None:
            lines.append(f"# {name} is not set")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"  # TOML's spelling, not JSON's
    return json.dumps(value)  # TOML basic strings and numbers are JSON's


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url.strip())
    if parts.password is None:
        return url.strip()
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
