"""How a node talks to Redis: one client per target, and script calls sent in pipelines.

Theory of operation
-------------------
`client_for()` builds the redis-py client of one target, a URL or a Sentinel master
(`master_for`), with the settings every connection needs: timeouts, a bounded pool, no
automatic retry, a client name.

With Sentinel, each new connection asks the Sentinels for the primary. A Sentinel names a
primary only while it thinks it up, and it thinks a primary down as soon as its own pings
go unanswered for down-after-milliseconds: for a moment after a promotion (its link to the
new primary is new) or when it is slow itself. redis-py then refuses the connection, and
with it a publish, although the primary serves fine. `_SentinelPool` connects to the
primary the Sentinels last named instead, as the pub/sub reader keeps its connection when
no Sentinel names one: if that primary is really gone, the connection is refused at once.

A `ScriptQueue` holds calls of one Lua script, each answered by a future. A worker (`serve()`)
takes up to _BATCH queued calls and sends them as one pipeline: SCRIPT LOAD, then one EVALSHA
per call, a single round trip whatever the number, under a deadline of redis_timeout_s. Each
worker holds one pooled connection while its pipeline is in flight, so the number of workers
is the number of connections the queue may use; one worker keeps the calls in order.

Failures: a pipeline that times out fails its own calls. One that cannot reach Redis (the
connection refused or cut) fails every queued call at once, since each would fail the same
way. With `deadline=True` a call also fails once it has waited redis_timeout_s in the queue
without being sent (publishes: a 503 within the bound even behind a hung pipeline); without,
it waits its turn (snapshots, which a burst of attaches queues by the thousand, and whose
callers retry).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from rawrt.config import Config
from rawrt.errors import BackplaneUnavailable

__all__ = ["ScriptQueue", "addresses", "client_for", "unavailable"]

log = logging.getLogger("rawrt")

R = TypeVar("R")

# Calls sent in one pipeline at most; more wait for the next round trip.
_BATCH = 256
# What a client is told when Redis cannot be used.
_UNAVAILABLE = "the backplane (Redis) is unavailable"


def client_for(
    config: Config, url: str | None, master: str | None
) -> tuple[aioredis.Redis, Sentinel | None]:
    """The client of one target, and the Sentinel that finds it (None for a URL)."""
    if url is None and master is None:
        url, master = config.redis_url, None if config.redis_url else config.redis_master
    options: dict[str, Any] = {
        "socket_timeout": config.redis_timeout_s,
        "socket_connect_timeout": config.redis_timeout_s,
        # No retry: a command retried after its connection broke may have run already (a
        # publish twice). A pooled connection that Redis closed is replaced when it is taken
        # from the pool, which checks it, so a restart costs no publish...
        "retry": Retry(NoBackoff(), 0),
        # ... but only with maintenance notifications off: redis-py 8 skips that check while
        # they are "auto" (the default), and hands out connections a restart left dead.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
        "decode_responses": False,
        "max_connections": config.redis_max_connections,
        "client_name": f"{config.redis_prefix}-node",  # CLIENT LIST tells rawrt's own apart
    }
    if url is not None:
        return aioredis.Redis.from_url(url, **options), None
    assert master and config.redis_sentinel, "a Sentinel master needs redis_sentinel"
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        addresses(config.redis_sentinel),
        sentinel_kwargs={
            "socket_timeout": config.redis_timeout_s,
            "socket_connect_timeout": config.redis_timeout_s,
            # Not redis-py's default of ten tries with backoff: a Sentinel that is down
            # would hold each new connection (and its publish) for seconds, past its
            # deadline; the next Sentinel is asked instead.
            "retry": Retry(NoBackoff(), 0),
        },
    )
    client = sentinel.master_for(master, connection_pool_class=_SentinelPool, **options)
    return client, sentinel


class _SentinelPool(SentinelConnectionPool):
    """A Sentinel master's pool that, when no Sentinel names a primary that is up, keeps
    to the last one they named (see the module docstring)."""

    async def get_master_address(self) -> tuple[str, int]:
        try:
            address: tuple[str, int] = await super().get_master_address()  # type: ignore[no-untyped-call]
        except MasterNotFoundError:  # its message lists every Sentinel client, at length
            last: tuple[str, int] | None = self.master_address  # set by each naming
            if last is None:
                raise  # never named one: nothing to keep to
            log.info("no Sentinel names a primary that is up; keeping %s:%s", *last)
            return last
        return address


def addresses(text: str) -> list[tuple[str, int]]:
    """`HOST:PORT,HOST:PORT` (validated by Config) as pairs; `[::1]:26379` for IPv6."""
    pairs = (item.strip().rpartition(":") for item in text.split(","))
    return [(host.strip("[]"), int(port)) for host, _, port in pairs]


def unavailable(exc: BaseException) -> BackplaneUnavailable:
    """What a client is told of a Redis failure: no addresses or internals."""
    if isinstance(exc, BackplaneUnavailable):
        return exc
    log.info("Redis call failed: %s", exc)
    return BackplaneUnavailable(_UNAVAILABLE)


def _ignore(seconds: float) -> None:
    pass


class ScriptQueue(Generic[R]):
    """Calls of one script, queued (at most `limit`) and sent a pipeline at a time."""

    def __init__(
        self,
        client: aioredis.Redis,
        script: str,
        convert: Callable[[Any], R],
        *,
        timeout_s: float,
        limit: int,
        what: str,
        deadline: bool,
    ) -> None:
        self._client = client
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()  # EVALSHA names a script by its SHA-1
        self._convert = convert
        self._timeout_s = timeout_s
        self._limit = limit
        self._what = what  # the calls, as a refusal names them
        self._deadline = deadline
        self._calls: deque[tuple[list[Any], asyncio.Future[R], float]] = deque()
        self._queued = asyncio.Event()
        # Called with each pipeline's round trip in seconds (rawrt.metrics sets it).
        self.on_round_trip: Callable[[float], None] = _ignore

    def call(self, keys: list[str], args: list[Any]) -> asyncio.Future[R]:
        """The script's converted result, later; refused at once when the queue is full."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if len(self._calls) >= self._limit:
            future.set_exception(BackplaneUnavailable(f"too many {self._what} waiting for Redis"))
            return future
        expires = asyncio.get_running_loop().time() + self._timeout_s
        self._calls.append(([self._sha, len(keys), *keys, *args], future, expires))
        self._queued.set()
        return future

    async def serve(self) -> None:
        """Send queued calls forever, one pipeline at a time (cancel to stop)."""
        while True:
            while not self._calls:
                self._queued.clear()
                await self._queued.wait()
            batch = self._take()
            if not batch:
                continue
            # With deadlines, the pipeline gets what is left of the oldest call's.
            budget = self._timeout_s
            if self._deadline:
                budget = min(e for _, _, e in batch) - asyncio.get_running_loop().time()
            results = await self._send([call for call, _, _ in batch], budget)
            for (_, future, _), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(unavailable(result))
                else:
                    future.set_result(self._convert(result))

    def _take(self) -> list[tuple[list[Any], asyncio.Future[R], float]]:
        """Up to _BATCH calls to send; with deadlines, failing those that waited too long."""
        batch = [self._calls.popleft() for _ in range(min(_BATCH, len(self._calls)))]
        if not self._deadline:
            return batch
        now = asyncio.get_running_loop().time()
        for _, future, expires in batch:
            if expires <= now and not future.done():
                future.set_exception(BackplaneUnavailable(f"Redis took too long ({self._what})"))
        return [call for call in batch if call[2] > now]

    async def _send(self, calls: list[list[Any]], budget_s: float) -> list[Any]:
        # Not redis-py's Script helper: in a pipeline it sends SCRIPT EXISTS before every
        # execute(), a second round trip per batch (per call, when they come one at a time),
        # and on failure it keeps a pool connection. SCRIPT LOAD (idempotent, cheap when
        # cached) goes first in the same pipeline instead: Redis runs one client's commands
        # in order, so every EVALSHA after it finds the script, even right after a restart
        # emptied the script cache. The load's own answer does not matter: had it failed,
        # each EVALSHA says so itself.
        try:
            async with asyncio.timeout(budget_s):
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.script_load(self._script)
                    for call in calls:
                        pipe.evalsha(*call)
                    started = time.perf_counter()
                    results = list(await pipe.execute(raise_on_error=False))[1:]
                    self.on_round_trip(time.perf_counter() - started)
                    return results
        except TimeoutError:
            log.warning("%d calls to Redis timed out", len(calls))
            return [BackplaneUnavailable(f"Redis took too long ({self._what})")] * len(calls)
        except (RedisConnectionError, OSError) as exc:
            log.warning("%d calls to Redis failed: %s", len(calls), exc)
            error = unavailable(exc)
            self.fail_all(error)  # the queued ones would fail the same way
            return [error] * len(calls)
        except RedisError as exc:
            log.warning("%d calls to Redis failed: %s", len(calls), exc)
            return [unavailable(exc)] * len(calls)
        except Exception:  # a bug: fail these calls, keep serving the next ones
            log.exception("bug in a Redis pipeline")
            return [BackplaneUnavailable("internal error")] * len(calls)

    def fail_all(self, error: BaseException) -> None:
        """Answer every queued call with `error` (Redis failed, or the node stops)."""
        while self._calls:
            future = self._calls.popleft()[1]
            if not future.done():
                future.set_exception(error)
