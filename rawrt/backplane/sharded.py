"""Channels sharded over several backplanes: one Redis (or Sentinel group) per shard.

Theory of operation
-------------------
Each channel lives on exactly one shard, and every node picks the same one without talking
to the others: rendezvous (highest random weight) hashing. A shard's score for a channel is

    blake2b(utf-8(shard id) + b"\\0" + utf-8(channel), digest_size=8)

read as a big-endian number; the highest score wins. A shard's id is the address of its
Redis (`rawrt.config.redis_address`: host:port/db, without credentials or options), so the
order in which shards are listed does not matter, and neither does a password change.

Adding a shard moves to it the channels it now wins, about 1/(N+1) of them, and no other
channel moves (each channel's scores on the old shards are unchanged). A moved channel finds
no history on its new shard, whose scripts then start a new epoch for it: a client resuming
from an id of the old shard gets a reset, never a silent gap. Removing a shard is not the
mirror image: its channels return to shards that may still hold their older history (see
the README, "Several Redis (shards)").

Every call that names a channel (publish, attach, on_evict, relay_event) goes to the
channel's shard; start, stop, sweep and listen_events go to every shard. All shards share the
node's one hub: a shard only syncs, accepts and drops the channels routed to it, so no two
shards touch one channel, and a channel the hub evicts is reported to the shard that
attached it.

One shard down affects only its channels: their publishes and attaches fail with
BackplaneUnavailable (503, an SSE retry, a WebSocket error frame) while every other channel
works. So `ready` (/readyz) stays True while any shard is connected: a node without shard k
is no worse than any other node, and taking nodes out of a load balancer would only stop the
channels of the shards that are up. It is False when no shard is connected, and at start-up
until every shard has connected or `settle_s` has passed, so that a node joining a cluster is
not sent clients for channels whose shard it has not reached yet.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from rawrt.backplane import Backplane

if TYPE_CHECKING:
    from rawrt.hub import Hub

__all__ = ["ShardedBackplane", "pick_shard"]


def _scorer(shard_id: str) -> hashlib.blake2b:
    """The hash state after the shard's part of its score: copied, then fed a channel."""
    return hashlib.blake2b(shard_id.encode() + b"\0", digest_size=8)


def _pick(scorers: list[tuple[hashlib.blake2b, str]], channel: str) -> str:
    name = channel.encode("utf-8", "surrogatepass")
    best, top = "", b""
    for scorer, shard_id in scorers:  # in id order: even a tie cannot depend on list order
        state = scorer.copy()
        state.update(name)
        score = state.digest()  # 8 bytes compare as the big-endian numbers they spell
        if score > top:
            best, top = shard_id, score
    return best


def pick_shard(shard_ids: list[str], channel: str) -> str:
    """The id, among `shard_ids`, of the shard that holds `channel` (rendezvous hashing)."""
    return _pick([(_scorer(shard_id), shard_id) for shard_id in sorted(shard_ids)], channel)


class ShardedBackplane:
    """A Backplane over several, each holding the channels that hash to it."""

    # Ids come from the shards (Redis numbers messages), never from the hub.
    assigns_ids_locally = False

    def __init__(self, shards: Mapping[str, Backplane], *, settle_s: float) -> None:
        assert len(shards) >= 2, "one shard is a plain backplane"
        assert not any(shard.assigns_ids_locally for shard in shards.values())
        self._shards = dict(shards)
        # Hashed once (shard_for() runs on every publish and attach), in id order.
        self._scorers = [(_scorer(shard_id), shard_id) for shard_id in sorted(self._shards)]
        self._settle_s = settle_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._settle_by = 0.0  # loop time, set by start()
        self._settled = False

    def shard_for(self, channel: str) -> str:
        """The id of the shard that holds `channel`, as pick_shard() finds it."""
        return _pick(self._scorers, channel)

    def _shard(self, channel: str) -> Backplane:
        return self._shards[self.shard_for(channel)]

    # --- readiness -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True while any shard is connected, once start-up has settled (module docstring)."""
        up = [shard.ready for shard in self._shards.values()]
        if not any(up):
            return False
        if not self._settled and self._loop is not None:
            self._settled = all(up) or self._loop.time() >= self._settle_by
        return self._settled

    def shard_states(self) -> dict[str, bool]:
        """Each shard's id and whether it is connected (for an operator's view)."""
        return {shard_id: self._shards[shard_id].ready for _, shard_id in self._scorers}

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, hub: Hub) -> None:
        """Start every shard on the same hub; returns without waiting for any Redis."""
        self._loop = asyncio.get_running_loop()
        self._settle_by = self._loop.time() + self._settle_s
        for shard in self._shards.values():
            await shard.start(hub)

    async def stop(self) -> None:
        await asyncio.gather(*(shard.stop() for shard in self._shards.values()))

    # --- routed by channel -----------------------------------------------------------------

    def publish(self, channel: str, data_json: str, timestamp_ms: int) -> str | asyncio.Future[str]:
        return self._shard(channel).publish(channel, data_json, timestamp_ms)

    def attach(self, channel: str, since: str | None = None) -> asyncio.Future[None] | None:
        return self._shard(channel).attach(channel, since)

    def on_evict(self, channel: str) -> None:
        self._shard(channel).on_evict(channel)

    def sweep(self, now: float) -> None:
        for shard in self._shards.values():
            shard.sweep(now)

    def relay_event(self, channel: str, text: str) -> None:
        self._shard(channel).relay_event(channel, text)

    def listen_events(self, receive: Callable[[str, str], None]) -> None:
        for shard in self._shards.values():
            shard.listen_events(receive)
