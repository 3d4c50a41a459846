"""The configuration file (rawrt.configfile), its precedence under the environment and the
flags, `rawrt config check` and `rawrt config show`, and the --help line of every option."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rawrt.cli import HELP, _parser, parse_config
from rawrt.config import Config
from rawrt.configfile import MASK
from rawrt.errors import ConfigError

SECRET = "config-secret-0123456789abcdefghijkl"
KEY = "config-publish-key-0123456789"
REDIS_PASSWORD = "redis-pass-word-42"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rawrt.toml"
    path.write_text(text)
    return str(path)


def rawrt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rawrt", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("RAWRT_")}, **(env or {})},
    )


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path, "port = 1\nhistory_size = 2\nsse_retry_ms = 3\ndrain-s = 4\nlog_format = 'json'"
    )
    env = {"RAWRT_PORT": "10", "RAWRT_HISTORY_SIZE": "20"}
    config = parse_config(["--config", path, "--port", "100"], env)
    assert (config.port, config.history_size, config.sse_retry_ms) == (100, 20, 3)
    assert config.drain_s == 4.0 and config.log_format == "json"  # an integer for a float
    assert parse_config([], {**env, "RAWRT_CONFIG": path}).port == 10  # the file by env
    assert parse_config([], {}).port == Config().port  # and no file unless named


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("histroy_size = 5", ["unknown key 'histroy_size'"]),
        ("[listening]\nport = 5", ["unknown key 'listening'"]),
        ("history_size = '5'", ["history_size must be a whole number", "a string"]),
        ("history_size = 5.5", ["history_size must be a whole number"]),
        ("access_log = 'yes'", ["access_log must be true or false"]),
        ("history_size = 0", ["history_size must be positive"]),
        ("log_format = 'xml'", ["log_format must be text or json"]),
        ("port = ", ["not valid TOML"]),
    ],
)
def test_file_refuses_unknown_keys_and_bad_values_naming_the_key(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        parse_config(["--config", path], {})
    assert all(word in str(caught.value) for word in words), str(caught.value)
    checked = rawrt("config", "check", path)
    assert checked.returncode == 2
    assert all(word in checked.stderr for word in words), checked.stderr


def test_missing_file_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        parse_config(["--config", str(tmp_path / "nope.toml")], {})


def test_config_check_accepts_a_sound_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'host = "127.0.0.1"\nport = 0\ndrain_delay_s = 5\naccess_log = true\n')
    checked = rawrt("config", "check", path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == f"{path}: ok"
    assert rawrt("config").returncode == 2  # no subcommand: usage
    asked = rawrt("config", "--help")
    assert asked.returncode == 0 and "rawrt config check FILE" in asked.stdout


def test_config_show_prints_the_effective_configuration_with_secrets_masked(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, f'publish_key = "{KEY}"\nhistory_size = 7\n')
    env = {"RAWRT_JWT_SECRET": SECRET, "RAWRT_ALLOWED_ORIGINS": ""}
    redis = f"redis://user:{REDIS_PASSWORD}@127.0.0.1:6390/0"
    shown = rawrt("config", "show", "--config", path, "--redis", redis, "--port", "9", env=env)
    assert shown.returncode == 0, shown.stderr
    for secret in (SECRET, KEY, REDIS_PASSWORD):
        assert secret not in shown.stdout
    table = tomllib.loads(shown.stdout)
    assert table["publish_key"] == MASK and table["jwt_secret"] == MASK
    assert table["redis_url"] == f"redis://user:{MASK}@127.0.0.1:6390/0"
    assert (table["history_size"], table["port"], table["jwt_audience"]) == (7, 9, "")
    names = {field.name for field in dataclasses.fields(Config)}
    unset = {f.name for f in dataclasses.fields(Config) if f.default is None} - {"redis_url"}
    assert "echo_path" in unset and set(table) == names - unset  # unset: comments


def test_every_option_has_a_help_line_in_words_with_its_unit() -> None:
    text = " ".join(_parser().format_help().split())  # unwrapped
    assert "see rawrt.config" not in text
    for field in dataclasses.fields(Config):
        line = HELP[field.name]
        assert len(line.split()) >= 4, (field.name, line)
        unit = {"_s": "second", "_ms": "millisecond", "_bytes": "byte"}
        for suffix, word in unit.items():
            if field.name.endswith(suffix):
                assert word in line, (field.name, line)
        flag = "--" + field.name.replace("_", "-")
        assert flag in text and f"; env RAWRT_{field.name.upper()})" in text
        # argparse may wrap a line at a hyphen as well as at a space: compare without either.
        assert "".join(line.split()) + "(default" in "".join(text.split())
    assert set(HELP) == {field.name for field in dataclasses.fields(Config)}
