"""rawrt.config.Config validation and rawrt.cli.parse_config (environment, then flags)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from support import QUIET_PATCH_WRITER

from rawrt.cli import parse_config
from rawrt.config import Config, ConfigError, demo_enabled

pytestmark = QUIET_PATCH_WRITER

NUMERIC = [
    f.name
    for f in dataclasses.fields(Config)
    if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)
]


def test_defaults_are_valid_and_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("name", NUMERIC)
def test_no_numeric_setting_accepts_a_negative_value(name: str) -> None:
    default = getattr(Config(), name)
    with pytest.raises(ConfigError, match=name):
        Config(**{name: type(default)(-1)})


@pytest.mark.parametrize(
    "name",
    ["history_size", "history_max_bytes", "history_total_bytes", "max_channels",
     "max_body_bytes", "max_head_bytes", "max_header_count", "max_target_bytes",
     "ping_interval_s", "ping_timeout_s", "sse_heartbeat_s", "request_timeout_s",
     "write_high_water", "catch_up_chunk_bytes", "workers"],
)  # fmt: skip
def test_limits_and_periods_must_be_positive(name: str) -> None:
    default = getattr(Config(), name)
    with pytest.raises(ConfigError, match=name):
        Config(**{name: type(default)(0)})


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"port": 65536}, "port"),
        ({"write_low_water": 64, "write_high_water": 64}, "write_low_water"),
        ({"poll_timeout_s": 60.0, "poll_max_timeout_s": 30.0}, "poll_timeout_s"),
        ({"echo_path": "echo"}, "echo_path"),
        ({"workers": 2}, "redis_url"),
        ({"ws_compression_max_window_bits": 8}, "ws_compression_max_window_bits"),
        ({"ws_compression_max_window_bits": 16}, "ws_compression_max_window_bits"),
        ({"ws_compression_min_bytes": -1}, "ws_compression_min_bytes"),
    ],
)
def test_inconsistent_settings_are_refused_with_a_reason(
    changes: dict[str, object], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        Config(**changes)  # type: ignore[arg-type]


def test_zero_is_valid_where_it_means_something() -> None:
    config = Config(port=0, sse_retry_ms=0, shutdown_timeout_s=0.0, write_low_water=0)
    assert (config.port, config.sse_retry_ms) == (0, 0)
    assert Config(workers=2, redis_url="redis://127.0.0.1:6379/0").workers == 2
    assert Config(echo_path="/echo").echo_path == "/echo"


def test_replace_validates_again() -> None:
    assert Config().replace(history_size=5).history_size == 5
    with pytest.raises(ConfigError):
        Config().replace(history_size=0)


@pytest.mark.parametrize("name", ["ping_interval_s", "request_timeout_s", "poll_timeout_s"])
def test_float_settings_refuse_nan(name: str) -> None:
    with pytest.raises(ConfigError):
        Config(**{name: math.nan})


# --- the command line and the environment ---------------------------------------------------


def test_environment_sets_fields_by_their_upper_case_name() -> None:
    config = parse_config(
        [],
        {"RAWRT_HISTORY_SIZE": "5", "RAWRT_PING_INTERVAL_S": "2.5", "RAWRT_ECHO_PATH": "/e",
         "RAWRT_UNRELATED": "x", "HISTORY_SIZE": "7"},
    )  # fmt: skip
    assert (config.history_size, config.ping_interval_s, config.echo_path) == (5, 2.5, "/e")


def test_flags_override_the_environment() -> None:
    config = parse_config(["--port", "2", "--history-size", "9"], {"RAWRT_PORT": "1"})
    assert (config.port, config.history_size) == (2, 9)


def test_short_aliases_and_long_flags_name_the_same_field() -> None:
    config = parse_config(
        [
            "--ping-interval",
            "3",
            "--sse-heartbeat-s",
            "4",
            "--workers",
            "2",
            "--redis",
            "redis://r",
        ],
        {},
    )
    assert (config.ping_interval_s, config.sse_heartbeat_s) == (3.0, 4.0)
    assert (config.workers, config.redis_url) == (2, "redis://r")


_REDIS_BY_URL = {"redis_url": "redis://r"}
_REDIS_BY_SENTINEL = {"redis_sentinel": "127.0.0.1:26379,[::1]:26380", "redis_master": "m"}


@pytest.mark.parametrize("redis", [_REDIS_BY_URL, _REDIS_BY_SENTINEL])
def test_every_field_has_a_flag_and_a_variable(redis: dict[str, str]) -> None:
    # One way to name Redis at a time: a URL, or Sentinels and a master.
    others = (_REDIS_BY_URL.keys() | _REDIS_BY_SENTINEL.keys()) - redis.keys()
    given = {
        f.name: "/x" if f.name == "echo_path" else redis.get(f.name, str(f.default))
        for f in dataclasses.fields(Config)
        if f.name not in others and f.name != "demo"  # demo: --demo / --no-demo, tested below
    }
    expected = Config(echo_path="/x", **redis)  # type: ignore[arg-type]
    argv = [a for name, text in given.items() for a in ("--" + name.replace("_", "-"), text)]
    assert parse_config(argv, {}) == expected
    assert parse_config([], {f"RAWRT_{name.upper()}": text for name, text in given.items()}) == (
        expected
    )


def test_demo_is_a_switch_whose_default_is_decided_by_the_server() -> None:
    assert parse_config([], {}).demo is None
    assert demo_enabled(parse_config([], {}))  # an open server shows its demo page
    assert parse_config(["--demo"], {}).demo is True
    assert parse_config(["--no-demo"], {}).demo is False
    assert not demo_enabled(parse_config(["--no-demo"], {}))
    assert parse_config([], {"RAWRT_DEMO": "0"}).demo is False
    assert parse_config(["--demo"], {"RAWRT_DEMO": "off"}).demo is True  # the flag wins


def test_keys_or_tokens_turn_the_demo_off_unless_it_is_asked_for() -> None:
    tokens = Config(jwt_secret="s" * 32, allowed_origins="https://app.example.com")
    keyed = Config(publish_key="k" * 16)
    assert not demo_enabled(tokens) and not demo_enabled(keyed)
    assert demo_enabled(tokens.replace(demo=True)) and demo_enabled(keyed.replace(demo=True))
@pytest.mark.parametrize(
    "values",
    [{"redis_sentinel": "127.0.0.1:26379"}, {"redis_master": "m"},
     {**_REDIS_BY_SENTINEL, **_REDIS_BY_URL}, {**_REDIS_BY_SENTINEL, "redis_sentinel": "h"},
     {**_REDIS_BY_SENTINEL, "redis_sentinel": "h:1,h:x"}, {"redis_max_connections": 2},
     {"redis_max_pending_attaches": 0}],
)  # fmt: skip
def test_redis_settings_that_cannot_work_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Config(**values)


def test_sentinel_flags_have_short_names() -> None:
    config = parse_config(["--redis-sentinel", "127.0.0.1:1", "--redis-master", "m"], {})
    assert (config.redis_sentinel, config.redis_master) == ("127.0.0.1:1", "m")


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAWRT_MAX_CHANNELS", "12")
    assert parse_config([]).max_channels == 12


@pytest.mark.parametrize(
    "environ",
    [{"RAWRT_PORT": "http"}, {"RAWRT_HISTORY_SIZE": "1.5"}, {"RAWRT_PORT": "70000"},
     {"RAWRT_WORKERS": "3"}, {"RAWRT_PING_TIMEOUT_S": "0"}],
)  # fmt: skip
def test_bad_environment_value_is_a_config_error(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        parse_config([], environ)


def test_bad_flag_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config(["--port", "http"], {})
    assert exited.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_inconsistent_flags_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        parse_config(["--workers", "2"], {})


def test_a_yes_no_flag_named_alone_means_yes() -> None:
    assert parse_config(["--ws-compression", "--port", "0"]).ws_compression is True
    assert parse_config(["--ws-compression", "off"]).ws_compression is False
    assert parse_config(["--metrics", "false"]).metrics is False
    assert parse_config([]).ws_compression is False
