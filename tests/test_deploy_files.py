"""The files of deploy/ hold what rawrt needs from its surroundings, read without running them.

nginx.conf is parsed into directives and checked against rawrt's own defaults (timeouts above
its quiet periods, no buffering for SSE, the sticky hash), then checked by `nginx -t` where
nginx is installed; nginx-tls.conf must be the same front plus its TLS lines, and passes
`nginx -t` with a certificate made at test time. The Kubernetes manifests are parsed as YAML
(PyYAML) and their fields checked against each other, the Dockerfile and rawrt's Config:
nothing here needs Docker or a cluster. local-cluster.sh is checked for syntax and for
refusing to touch what it did not make. grafana-dashboard.json must be valid JSON whose every
query names only metrics a running rawrt exports, and show every one of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import StartServer
from support.certs import Cert, make_cert
from support.clients import request
from support.redis_server import free_port
from support.scrape import scrape

from rawrt.cli import parse_config
from rawrt.config import Config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DEFAULTS = Config()
PLACEHOLDERS = {"NGINX_LISTEN", "NGINX_DIR", "RAWRT_SERVERS", "RAWRT_UPSTREAM"}


# --- nginx.conf ---------------------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    children: list[Directive] = field(default_factory=list)

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.children if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.all(name)
        assert len(found) == 1, f"{len(found)} {name} directives in {self.name} {self.args}"
        return found[0]

    def value(self, name: str) -> str:
        return " ".join(self.one(name).args)


_TOKEN = re.compile(r"""#[^\n]*|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[{};]|[^\s{};"'#]+""")


def parse_nginx(text: str) -> Directive:
    """nginx's syntax: `name args;` or `name args { ... }`, # comments, quoted strings."""
    root = Directive("main", [])
    stack = [root]
    words: list[str] = []
    for token in _TOKEN.findall(text):
        if token.startswith("#"):
            continue
        if token in (";", "{"):
            assert words, f"empty directive before {token!r}"
            directive = Directive(words[0], words[1:])
            stack[-1].children.append(directive)
            if token == "{":
                stack.append(directive)
            words = []
        elif token == "}":
            assert not words and len(stack) > 1, "unbalanced }"
            stack.pop()
        else:
            words.append(token.strip("'\"") if token[0] in "'\"" else token)
    assert not words and len(stack) == 1, "unterminated directive or block"
    return root


def render(
    text: str, nginx_dir: str, listen: str = "127.0.0.1:8080", tls: Cert | None = None
) -> str:
    values = {
        "NGINX_LISTEN": listen,
        "NGINX_DIR": nginx_dir,
        "RAWRT_SERVERS": "server 127.0.0.1:8001;\n        server 127.0.0.1:8002;",
        "RAWRT_UPSTREAM": "rawrt_sticky",
        "TLS_CERT": str(tls.cert) if tls else "/etc/ssl/rawrt/fullchain.pem",
        "TLS_KEY": str(tls.key) if tls else "/etc/ssl/rawrt/privkey.pem",
    }
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", text)
    assert match, text
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[match.group(2)]


@pytest.fixture(scope="module")
def template() -> str:
    return (DEPLOY / "nginx.conf").read_text()


@pytest.fixture(scope="module")
def conf(template: str) -> Directive:
    return parse_nginx(render(template, "/var/lib/nginx-rawrt"))


def test_template_has_exactly_its_placeholders(template: str) -> None:
    assert set(re.findall(r"\$\{([A-Za-z_]+)\}", template)) == PLACEHOLDERS
    # The comments name them without "${", so envsubst leaves the comments alone.
    for line in template.splitlines():
        if line.lstrip().startswith("#"):
            assert "${" not in line, line


def test_standalone_with_writable_paths(conf: Directive) -> None:
    assert conf.all("events")
    assert conf.value("pid").startswith("/var/lib/nginx-rawrt/")
    assert conf.one("error_log").args[0].startswith("/var/lib/nginx-rawrt/")
    http = conf.one("http")
    for name in (
        "access_log",
        "client_body_temp_path",
        "proxy_temp_path",
        "fastcgi_temp_path",
        "uwsgi_temp_path",
        "scgi_temp_path",
    ):
        assert http.one(name).args[0].startswith("/var/lib/nginx-rawrt/"), name


def test_upstreams_sticky_by_consistent_hash_and_round_robin(conf: Directive) -> None:
    http = conf.one("http")
    upstreams = {u.args[0]: u for u in http.all("upstream")}
    assert set(upstreams) == {"rawrt_sticky", "rawrt_round_robin"}
    sticky, round_robin = upstreams["rawrt_sticky"], upstreams["rawrt_round_robin"]
    assert sticky.one("hash").args == ["$remote_addr", "consistent"]
    for upstream in upstreams.values():
        assert not upstream.all("ip_hash"), "ip_hash keys on /24: one node for a whole subnet"
        assert [s.args[0] for s in upstream.all("server")] == ["127.0.0.1:8001", "127.0.0.1:8002"]
        # Pooled connections are closed by nginx before rawrt would close them.
        assert seconds(upstream.value("keepalive_timeout")) < DEFAULTS.keepalive_timeout_s
    assert not round_robin.all("hash") and not round_robin.all("least_conn")
    upgrade_map = next(
        m for m in http.all("map") if m.args == ["$http_upgrade", "$connection_upgrade"]
    )
    assert {d.name: d.args for d in upgrade_map.children}["default"] == ["upgrade"]


def test_proxy_headers_are_set_once_for_every_location(conf: Directive) -> None:
    server = conf.one("http").one("server")
    assert server.value("proxy_http_version") == "1.1"
    headers = {d.args[0].lower(): d.args[1] for d in server.all("proxy_set_header")}
    assert headers["upgrade"] == "$http_upgrade"
    assert headers["connection"] == "$connection_upgrade"
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    assert headers["x-real-ip"] == "$remote_addr"
    for location in server.all("location"):
        # One proxy_set_header in a location and it inherits none of the server's.
        assert not location.all("proxy_set_header"), location.args
        assert location.value("proxy_pass") == "http://$rawrt_upstream"
        assert not location.all("proxy_ignore_headers"), "X-Accel-Buffering must be honoured"
    assert server.value("set") == "$rawrt_upstream rawrt_sticky"


def _location(conf: Directive, *args: str) -> Directive:
    server = conf.one("http").one("server")
    return next(loc for loc in server.all("location") if loc.args == list(args))


def test_timeouts_outlast_rawrt_quiet_periods(conf: Directive) -> None:
    ws = _location(conf, "=", "/ws")
    sse = _location(conf, "/api/sse/subscribe/")
    poll = _location(conf, "/api/poll/")
    # A WebSocket hears from its node at least every ping interval; a peer gets ping_timeout
    # more before rawrt gives up on it. SSE hears a heartbeat comment.
    ws_quiet = DEFAULTS.ping_interval_s + DEFAULTS.ping_timeout_s
    assert seconds(ws.value("proxy_read_timeout")) > ws_quiet
    assert seconds(sse.value("proxy_read_timeout")) >= 75 > DEFAULTS.sse_heartbeat_s
    assert seconds(poll.value("proxy_read_timeout")) > DEFAULTS.poll_max_timeout_s
    assert sse.value("proxy_buffering") == "off"


def _nginx() -> str:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if nginx is None:
        if os.environ.get("RAWRT_REQUIRE_NGINX") == "1":
            pytest.fail("nginx is not installed, and RAWRT_REQUIRE_NGINX=1")
        pytest.skip("nginx is not installed")
    return nginx


def _nginx_t(nginx: str, text: str, tmp_path: Path) -> None:
    conf_file = tmp_path / "nginx.conf"
    conf_file.write_text(text)
    done = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf_file), "-e", str(tmp_path / "err.log")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_nginx_accepts_the_rendered_config(template: str, tmp_path: Path) -> None:
    nginx = _nginx()
    (tmp_path / "logs").mkdir()
    (tmp_path / "tmp").mkdir()
    _nginx_t(nginx, render(template, str(tmp_path)), tmp_path)


# --- nginx-tls.conf: the same front, terminating TLS ------------------------------------------

TLS_DIRECTIVES = {"ssl_certificate", "ssl_certificate_key", "ssl_protocols", "ssl_session_cache",
                  "ssl_session_timeout", "add_header"}  # fmt: skip


@pytest.fixture(scope="module")
def tls_template() -> str:
    return (DEPLOY / "nginx-tls.conf").read_text()


@pytest.fixture(scope="module")
def tls_conf(tls_template: str) -> Directive:
    return parse_nginx(render(tls_template, "/var/lib/nginx-rawrt"))


def test_tls_template_placeholders(tls_template: str) -> None:
    found = set(re.findall(r"\$\{([A-Za-z_]+)\}", tls_template))
    assert found == PLACEHOLDERS | {"TLS_CERT", "TLS_KEY"}
    for line in tls_template.splitlines():
        if line.lstrip().startswith("#"):
            assert "${" not in line, line


def test_tls_front_is_the_plain_front_plus_tls(conf: Directive, tls_conf: Directive) -> None:
    """Upstreams, headers, locations and timeouts are those of nginx.conf, to the letter."""
    plain_http, tls_http = conf.one("http"), tls_conf.one("http")
    plain_server, tls_server = plain_http.one("server"), tls_http.one("server")
    assert tls_server.one("listen").args == [*plain_server.one("listen").args, "ssl"]
    kept = [d for d in tls_server.children if d.name not in TLS_DIRECTIVES | {"listen"}]
    assert kept == [d for d in plain_server.children if d.name != "listen"]
    assert [d for d in tls_http.children if d.name not in ("server", "log_format")] == [
        d for d in plain_http.children if d.name not in ("server", "log_format")
    ]
    assert [d for d in tls_conf.children if d.name != "http"] == [
        d for d in conf.children if d.name != "http"
    ]


def test_tls_front_settings(tls_conf: Directive) -> None:
    http = tls_conf.one("http")
    server = http.one("server")
    assert server.one("ssl_protocols").args == ["TLSv1.2", "TLSv1.3"]
    assert server.value("ssl_certificate").endswith(".pem")
    assert "http2" not in server.one("listen").args  # a WebSocket upgrade needs HTTP/1.1
    assert server.value("proxy_http_version") == "1.1"
    headers = {d.args[0].lower(): d.args[1] for d in server.all("proxy_set_header")}
    assert headers["x-forwarded-proto"] == "$scheme"
    # A token may ride in the query string (the fallback for EventSource): never log it.
    log_format = " ".join(http.one("log_format").args[1:])
    for variable in (
        "$request ",
        "$request_uri",
        "$args",
        "$query_string",
        "$arg_",
        "$http_authorization",
        "$cookie_",
    ):
        assert variable not in log_format + " ", variable


def test_nginx_accepts_the_rendered_tls_config(tls_template: str, tmp_path: Path) -> None:
    nginx = _nginx()
    (tmp_path / "logs").mkdir()
    (tmp_path / "tmp").mkdir()
    cert = make_cert(tmp_path)
    _nginx_t(nginx, render(tls_template, str(tmp_path), tls=cert), tmp_path)


# --- Dockerfile and Kubernetes ----------------------------------------------------------------


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    assert lines[0] == "FROM python:3.11-slim"
    assert any('pip install ".[fast,redis]"' in line for line in lines)
    user = next(line.split()[1] for line in lines if line.startswith("USER "))
    assert not user.startswith(("root", "0")), user
    assert "EXPOSE 8000" in lines and DEFAULTS.port == 8000
    assert lines[-1] == 'CMD ["rawrt", "--host", "0.0.0.0"]'
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^fast = ", pyproject, re.M) and re.search(r"^redis = ", pyproject, re.M)


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), path
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def test_rawrt_deployment(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = manifests[("Deployment", "rawrt")]
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    redis_service = manifests[("Service", "rawrt-redis")]
    redis_port = redis_service["spec"]["ports"][0]["port"]
    assert env["RAWRT_REDIS_URL"] == f"redis://rawrt-redis:{redis_port}/0"
    assert container["ports"][0]["containerPort"] == int(env["RAWRT_PORT"]) == 8000
    assert {"requests", "limits"} <= set(container["resources"])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    pre_stop_s = float(pre_stop[1]) if pre_stop[0] == "sleep" else 0.0
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + DEFAULTS.shutdown_timeout_s
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_deployment_credentials_come_from_a_secret_and_every_option_exists(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    (container,) = manifests[("Deployment", "rawrt")]["spec"]["template"]["spec"]["containers"]
    fields = {f.name for f in dataclasses.fields(Config)}
    for entry in container["env"]:
        option = entry["name"].removeprefix("RAWRT_").lower()
        assert entry["name"].startswith("RAWRT_") and option in fields, entry
    from_secret = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
    }
    assert set(from_secret) == {"RAWRT_JWT_SECRET", "RAWRT_PUBLISH_KEY"}
    for name, ref in from_secret.items():
        assert ref == {"name": "rawrt-credentials", "key": name}  # `optional` unset: required
    # The values are made with `kubectl create secret`, never kept in these files.
    assert not [key for key in manifests if key[0] == "Secret"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # The pod's environment, with secrets of the shape `kubectl create secret` makes, is a
    # configuration rawrt starts with (tokens need an origin list), and the network and access
    # settings are really on (not 0 or empty).
    env |= {"RAWRT_JWT_SECRET": "s" * 64, "RAWRT_PUBLISH_KEY": "k" * 64}
    config = parse_config([], env)
    assert config.trusted_proxies and config.max_connections_per_ip > 0
    assert config.jwt_secret and config.publish_key and config.allowed_origins != "*"


def test_ingress_terminates_tls(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    ingress = manifests[("Ingress", "rawrt")]
    (tls,) = ingress["spec"]["tls"]
    assert tls["secretName"] == "rawrt-tls"
    assert tls["hosts"] == [rule["host"] for rule in ingress["spec"]["rules"]]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"


def test_services_and_affinity(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    service = manifests[("Service", "rawrt")]["spec"]
    assert service["sessionAffinity"] == "ClientIP"
    assert service["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] > 0
    labels = manifests[("Deployment", "rawrt")]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    redis = manifests[("Deployment", "rawrt-redis")]["spec"]
    assert redis["replicas"] == 1
    redis_labels = redis["template"]["metadata"]["labels"]
    assert manifests[("Service", "rawrt-redis")]["spec"]["selector"].items() <= redis_labels.items()
    args = redis["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"


def test_ingress_annotations(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    ingress = manifests[("Ingress", "rawrt")]
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert float(notes[prefix + "proxy-read-timeout"]) > DEFAULTS.poll_max_timeout_s
    assert notes[prefix + "proxy-buffering"] == "off"
    assert notes[prefix + "upstream-hash-by"] == "$remote_addr"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "rawrt"


def test_sentinel_manifests_agree_with_each_other_and_with_rawrt() -> None:
    folder = DEPLOY / "k8s" / "sentinel"
    docs = [d for d in yaml.safe_load_all((folder / "redis-sentinel.yaml").read_text()) if d]
    found = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    redis, sentinel = (found[("StatefulSet", n)]["spec"] for n in ("rawrt-redis", "rawrt-sentinel"))
    assert redis["replicas"] == 2 and sentinel["replicas"] == 3
    for spec in (redis, sentinel):  # headless Services give each pod a stable name
        service = found[("Service", spec["serviceName"])]["spec"]
        assert service["clusterIP"] == "None"
        assert service["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    conf = found[("ConfigMap", "rawrt-sentinel")]["data"]["sentinel.conf"].splitlines()
    monitor = next(line.split() for line in conf if line.startswith("sentinel monitor "))
    name, host, port, quorum = monitor[2:]
    assert host == f"rawrt-redis-0.{redis['serviceName']}" and port == "6379"
    assert sentinel["replicas"] // 2 < int(quorum) <= sentinel["replicas"]
    sentinel_port = found[("Service", "rawrt-sentinel")]["spec"]["ports"][0]["port"]
    assert f"port {sentinel_port}" in conf

    patch = yaml.safe_load((folder / "rawrt-env.patch").read_text())
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", "rawrt")
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RAWRT_REDIS_URL"] == {"name": "RAWRT_REDIS_URL", "$patch": "delete"}
    assert env["RAWRT_REDIS_MASTER"]["value"] == name
    expected = [f"rawrt-sentinel-{i}.rawrt-sentinel:{sentinel_port}" for i in range(3)]
    assert env["RAWRT_REDIS_SENTINEL"]["value"].split(",") == expected
    # rawrt itself accepts them.
    config = Config(
        redis_sentinel=env["RAWRT_REDIS_SENTINEL"]["value"],
        redis_master=env["RAWRT_REDIS_MASTER"]["value"],
    )
    assert config.redis_url is None


# --- local-cluster.sh -----------------------------------------------------------------------


def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEPLOY / "local-cluster.sh"), *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_script_syntax_and_usage(tmp_path: Path) -> None:
    subprocess.run(["bash", "-n", str(DEPLOY / "local-cluster.sh")], check=True, timeout=30)
    assert _script(cwd=tmp_path).returncode == 2
    assert _script("sideways", str(tmp_path), cwd=tmp_path).returncode == 2
    assert "--sentinel" in _script(cwd=tmp_path).stderr  # the usage names the Sentinel mode


def test_script_touches_only_its_own_state(tmp_path: Path) -> None:
    gone = _script("down", str(tmp_path / "never-made"), cwd=tmp_path)
    assert gone.returncode == 0, gone.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    refused = _script("down", str(foreign), cwd=tmp_path)
    assert refused.returncode != 0 and "not made by" in refused.stderr
    refused = _script("up", str(foreign), cwd=tmp_path)
    assert refused.returncode != 0 and "not empty" in refused.stderr
    assert (foreign / "keep.txt").read_text() == "mine"


# --- grafana-dashboard.json -------------------------------------------------------------------

# A name in a PromQL expression: rawrt's metrics all start so (functions and labels do not).
_METRIC_NAME = re.compile(r"\brawrt_[a-z_]+")


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dashboard["title"] and dashboard["uid"]
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs and all(isinstance(e, str) for e in exprs)
    return exprs


async def test_dashboard_names_only_metrics_rawrt_exports(start_server: StartServer) -> None:
    # A Redis URL nothing listens on: the node starts without waiting for it, and exports
    # its Redis figures (rawrt_redis_up 0) beside all the others.
    server = await start_server(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    # Refusals have a series per code once one is counted: count one.
    assert (await request(server.port, "GET", "/no-such-route")).status == 404
    exported = (await scrape(server.port)).names()
    families = {n.removesuffix("_bucket").removesuffix("_count") for n in exported}
    used: set[str] = set()
    for expr in _dashboard_exprs():
        names = set(_METRIC_NAME.findall(expr))
        assert names, f"{expr!r} names no rawrt metric"
        assert names <= exported, f"{expr!r}: {names - exported} not exported"
        used |= names
    shown = {n.removesuffix("_bucket") for n in used}
    missing = {n for n in families if not n.endswith(("_created", "_sum"))} - shown
    assert not missing, f"exported but on no panel: {sorted(missing)}"
