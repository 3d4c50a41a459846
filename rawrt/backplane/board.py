"""The presence board: where nodes put their presence counts, and read each other's.

Theory of operation
-------------------
Presence (rawrt.presence) is counted on each node from its own hub. Alone, a node's counts
are the answer: `LocalBoard` hands them back. With Redis, every node reports the counts of
its busy channels from the server's sweep, a third of `presence_ttl_s` apart, each kept with
that time to live; an answer merges the live reports of the other nodes with this node's own
fresh counts (rawrt.backplane.redis_presence). A node that dies stops reporting, and its
counts drop out of every answer within the time to live.

`board_for(config, node_id)` builds the one a Config asks for. The Redis board is imported
only with a Redis URL, as the Redis backplane is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from rawrt.config import Config
from rawrt.presence import Presence

__all__ = ["LocalBoard", "PresenceBoard", "board_for"]

Reports = Callable[[], dict[str, Presence]]


class PresenceBoard(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def report(self, now: float, local: Reports) -> None:
        """From the sweep: report this node's busy channels if one is due (`local` is
        called only then: it walks every subscription)."""
        ...

    def presence(self, channel: str, local: Presence) -> Presence | asyncio.Future[Presence]:
        """Every node's presence on `channel`, given this node's; a failure of the future
        is BackplaneUnavailable."""
        ...


class LocalBoard:
    """One node: its own counts are the whole answer."""

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def report(self, now: float, local: Reports) -> None:
        pass

    def presence(self, channel: str, local: Presence) -> Presence:
        return local


def board_for(config: Config, node_id: str) -> PresenceBoard:
    if not (config.redis_url or config.redis_master):
        return LocalBoard()
    from rawrt.backplane.redis_presence import RedisBoard

    return RedisBoard(config, node_id)
