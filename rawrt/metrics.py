"""Prometheus metrics: what the server has counted, in the text format, at `GET /metrics`.

Theory of operation
-------------------
The core counts in plain ints that its owners keep anyway (the hub per flush, rawrt.counts per
publish and refusal, the server's registry of connections, the backplane's last lag), so the
hot path never calls this module. At a scrape `Metrics.sync()` copies them into
prometheus-client objects (a counter gets the difference since the last copy, a gauge its
value) and the library writes the exposition. Only the two latency histograms are observed
as they happen, once per publish and once per Redis round trip (a pipeline of publishes),
never per subscriber.

With `--workers N` the supervisor (rawrt.workers) gives every worker one private directory in
PROMETHEUS_MULTIPROC_DIR: prometheus-client then keeps each worker's values in a memory-mapped
file there, and any worker answering a scrape reads them all (`MultiProcessCollector`), so
one scrape shows the whole node. A worker copies its ints there every `SYNC_S` and at each
scrape, so the other workers' figures are at most that old. Counters and histograms are
summed over every worker that ever ran (a restarted worker's counts stay); gauges say how
they combine (`multiprocess_mode`): connections, subscriptions and channels are summed over
live workers, Redis is up only when every live worker is connected, a lag is the worst.

This is the only module that imports prometheus_client.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from rawrt import __version__
from rawrt.backplane import Backplane
from rawrt.channel import Kind
from rawrt.config import Config
from rawrt.counts import ROUTES, Counts
from rawrt.hub import BEHIND, EPOCH, POLL, Hub

__all__ = [
    "CONTENT_TYPE",
    "MULTIPROC_ENV",
    "SYNC_S",
    "Metrics",
    "MetricsSource",
    "forget_process",
    "private_dir",
    "remove_dir",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How often a worker copies its figures to the shared directory: a scrape answered by
# another worker shows this one's figures at most this old.
SYNC_S = 1.0

# Publish latency, request read to id known: microseconds in one process, a Redis round trip
# (about 0.1 to 1 ms on one host, a few ms across a network) with a backplane, up to the
# Redis timeout (2 s by default) when Redis struggles.
_LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                      0.25, 0.5, 1.0, 2.5)  # fmt: skip
_TRANSPORTS = ("websocket", "sse", "longpoll")

# What each metric means, as its HELP line says it.
_BUILD_DOC = "rawrt's version and Python's (the value is 1)"
_CONNECTIONS_DOC = "Open connections, by transport (http: plain requests and idle keep-alive)"
_SUBS_DOC = "Subscriptions now, by transport (longpoll: polls parked waiting for a message)"
_LOOP_LAG_DOC = "How late the server's periodic sweep last ran: the event loop was busy that long"
_PUBLISHED_DOC = "Messages published (given an id), by route"
_DELIVERIES_DOC = "Messages handed to subscribers, by transport"
_BYTES_DOC = "Bytes of messages written to subscribers, by transport"
_PAUSES_DOC = "Times a subscriber's socket pushed back and it was paused to a cursor"
_REFUSALS_DOC = (
    "Requests refused (code: HTTP status) and WebSocket refusals (code: the close code sent, "
    "or the status an error frame stands for), by transport"
)
_LATENCY_DOC = "From a publish request read to its message id, by route"
_REDIS_RTT_DOC = "Round trip of a pipeline of publishes to Redis"
_PUBSUB_LAG_DOC = "From a publish (its node's clock) to this node hearing of it over Redis pub/sub"


class MetricsSource(Protocol):
    """What metrics read of the server, at scrape time only."""

    @property
    def config(self) -> Config: ...
    @property
    def hub(self) -> Hub: ...
    @property
    def counts(self) -> Counts: ...
    @property
    def backplane(self) -> Backplane: ...
    @property
    def loop_lag_s(self) -> float:
        """How late the server's last periodic callback ran."""
        ...

    def connection_census(self) -> tuple[int, int, int]:
        """Open connections: WebSockets, event streams, and all others (HTTP, long polls)."""
        ...


class Metrics:
    """The server's metrics, in its own registry (or the node's shared directory)."""

    def __init__(self, source: MetricsSource) -> None:
        self._source = source
        self._dir = os.environ.get(MULTIPROC_ENV) or None
        # In one process the metrics live in a registry of their own, so that several
        # servers in one program (tests, embedders) do not collide in the global one. With a
        # shared directory the values live in its files and no registry holds them.
        self._registry = None if self._dir else CollectorRegistry(auto_describe=True)
        self._last: dict[object, float] = {}  # counter child -> the value it was last given
        self._define()
        redis = source.config.redis_url or source.config.redis_master
        self._redis = self._define_redis() if redis else None
        self._build.labels(__version__, platform.python_version()).set(1)
        self._hook_backplane(source.backplane)
        source.counts.observe_publish = self._observe_publish

    @property
    def multiprocess(self) -> bool:
        return self._dir is not None

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...], mode: str) -> Gauge:
        return Gauge(name, doc, labels, registry=self._registry, multiprocess_mode=mode)  # type: ignore[arg-type]

    def _counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self._registry)

    def _histogram(self, name: str, doc: str, labels: tuple[str, ...]) -> Histogram:
        return Histogram(name, doc, labels, buckets=_LATENCY_BUCKETS_S, registry=self._registry)

    def _define(self) -> None:
        g, c, h = self._gauge, self._counter, self._histogram
        self._build = g("rawrt_build_info", _BUILD_DOC, ("version", "python"), "livemax")
        self._connections = g("rawrt_connections", _CONNECTIONS_DOC, ("transport",), "livesum")
        self._subscriptions = g("rawrt_subscriptions", _SUBS_DOC, ("transport",), "livesum")
        self._channels = g("rawrt_channels", "Channels in memory", (), "livesum")
        self._history = g("rawrt_history_bytes", "Bytes of history held", (), "livesum")
        self._loop_lag = g("rawrt_event_loop_lag_seconds", _LOOP_LAG_DOC, (), "livemax")
        self._published = c("rawrt_messages_published_total", _PUBLISHED_DOC, ("route",))
        self._deliveries = c("rawrt_deliveries_total", _DELIVERIES_DOC, ("transport",))
        self._bytes = c("rawrt_delivered_bytes_total", _BYTES_DOC, ("transport",))
        self._resets = c("rawrt_resets_total", "Readers told to start over, by cause", ("cause",))
        self._pauses = c("rawrt_slow_subscriber_pauses_total", _PAUSES_DOC)
        self._refused = c("rawrt_refusals_total", _REFUSALS_DOC, ("transport", "code"))
        self._latency = h("rawrt_publish_latency_seconds", _LATENCY_DOC, ("route",))
        self._latency_children = {route: self._latency.labels(route) for route in ROUTES}

    def _define_redis(self) -> tuple[Histogram, Gauge, Gauge]:
        """The Redis figures, which exist only with a Redis backplane."""
        g = self._gauge
        return (
            self._histogram("rawrt_redis_round_trip_seconds", _REDIS_RTT_DOC, ()),
            g("rawrt_redis_up", "1 while connected to Redis (every worker)", (), "livemin"),
            g("rawrt_redis_pubsub_lag_seconds", _PUBSUB_LAG_DOC, (), "livemax"),
        )

    def _hook_backplane(self, backplane: Backplane) -> None:
        # A Redis backplane offers a hook for each round trip (rawrt.backplane.redis).
        if self._redis is not None and hasattr(backplane, "on_round_trip"):
            backplane.on_round_trip = self._redis[0].observe

    def _observe_publish(self, route: str, seconds: float) -> None:
        self._latency_children[route].observe(seconds)

    # --- at scrape time --------------------------------------------------------------------

    def sync(self) -> None:
        """Copy the server's counts into the metrics (their shared files, with workers)."""
        source, hub = self._source, self._source.hub
        if hub is None:
            return  # not started
        ws, sse, other = source.connection_census()
        subs = hub.subscriptions
        for transport, value in zip(_TRANSPORTS, subs, strict=True):
            self._subscriptions.labels(transport).set(value)
        self._connections.labels("websocket").set(ws)
        self._connections.labels("sse").set(sse)
        self._connections.labels("longpoll").set(subs[POLL])
        self._connections.labels("http").set(max(0, other - subs[POLL]))
        self._channels.set(hub.channel_count)
        self._history.set(hub.total_bytes)
        self._loop_lag.set(source.loop_lag_s)
        self._sync_counters(hub, source.counts)
        if self._redis is not None:
            _, up, pubsub_lag = self._redis
            up.set(1 if source.backplane.ready else 0)
            lag = getattr(source.backplane, "pubsub_lag_s", None)
            if isinstance(lag, float):
                pubsub_lag.set(lag)

    def _sync_counters(self, hub: Hub, counts: Counts) -> None:
        add = self._add
        for route, value in counts.published.items():
            add(self._published.labels(route), value)
        for kind, name in ((Kind.WS, "websocket"), (Kind.SSE, "sse")):
            add(self._deliveries.labels(name), hub.delivered[kind])
            add(self._bytes.labels(name), hub.delivered_bytes[kind])
        add(self._deliveries.labels("longpoll"), hub.delivered[POLL])
        add(self._bytes.labels("longpoll"), counts.poll_bytes)
        for cause in (BEHIND, EPOCH):
            add(self._resets.labels(cause), hub.resets[cause])
        add(self._pauses, hub.pauses)
        for (transport, code), value in list(counts.refused.items()):
            add(self._refused.labels(transport, str(code)), value)

    def _add(self, counter: Counter, total: int) -> None:
        delta = total - self._last.get(counter, 0)
        if delta > 0:
            counter.inc(delta)
            self._last[counter] = total

    def render(self) -> bytes:
        """The exposition of every figure now (of every worker, with a shared directory)."""
        self.sync()
        if self._dir is None:
            assert self._registry is not None
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry, self._dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


# --- the supervisor's side (rawrt.workers) -------------------------------------------------


def private_dir() -> str:
    """A new directory, readable by this user only, for the workers' metric files."""
    return tempfile.mkdtemp(prefix="rawrt-metrics-")


def forget_process(pid: int, path: str) -> None:
    """A worker died: its live gauges no longer count (its counters still do)."""
    _multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
