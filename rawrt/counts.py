"""What the I/O edge counts for rawrt.metrics: publishes, refusals, long-poll bytes.

Plain ints, bumped where each event is decided (once per publish, per refused request or
close, per long-poll answer; never per subscriber write of the fan-out, which the hub counts
per flush) and read by rawrt.metrics at scrape time. The one thing that is not an int is the
publish latency, a distribution: `observe_publish` is the histogram's `observe`, installed by
rawrt.metrics, so that this module imports no metrics library and costs nothing without one.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ROUTES", "Counts"]

# Where a publish came from: POST /api/publish (and /api/sse/publish), POST /api/broadcast,
# a WebSocket publish frame, or `Server.publish()` of an embedding program.
ROUTES = ("publish", "broadcast", "websocket", "embedded")


def _ignore(route: str, seconds: float) -> None:
    pass


class Counts:
    __slots__ = ("observe_publish", "poll_bytes", "published", "refused")

    def __init__(self) -> None:
        self.published = dict.fromkeys(ROUTES, 0)
        # (transport, code) -> refusals: an HTTP status for "http"; for "websocket" a close
        # code rawrt sent (1002 and up), or the status an error frame stands for (401, 403,
        # 429, 503, 400). A bounded set: only rawrt's own codes and wsproto's.
        self.refused: dict[tuple[str, int], int] = {}
        self.poll_bytes = 0  # long-poll responses that carried an answer
        self.observe_publish: Callable[[str, float], None] = _ignore

    def publish_done(self, route: str, seconds: float) -> None:
        """A publish got its id `seconds` after its request was read."""
        self.published[route] += 1
        self.observe_publish(route, seconds)

    def refuse(self, transport: str, code: int) -> None:
        key = (transport, code)
        self.refused[key] = self.refused.get(key, 0) + 1
