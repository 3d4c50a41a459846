"""`Subscription`: one channel a `Client` follows, as the application sees it.

It wraps a `Feed` (rawrt.client.core) and wakes the application's `anext` when the client
queues an event. It knows its client only as an `Owner`: the three calls it makes back.
"""

from __future__ import annotations

import asyncio
import random
from typing import Protocol, Self

from rawrt.client.core import Event, Feed, backoff_delay
from rawrt.config import ClientConfig
from rawrt.errors import ClientError

__all__ = ["Owner", "Subscription"]


class Owner(Protocol):
    """What a subscription asks of its client."""

    def _send_subscribe(self, feed: Feed) -> None:
        """Subscribe `feed` from its position (on the open socket, or the next one)."""

    def _forget(self, sub: Subscription) -> None:
        """Unsubscribe `sub` and drop it."""

    def _resubscribe(self, sub: Subscription) -> None:
        """A busy subscription's retry is due."""


class Subscription:
    """One channel followed by a `Client`: an async iterator of `Message` and `Reset`.

    Iterating raises the `ClientError` that ended it (Refused for this channel, or for the
    whole client) once the events queued before it are taken; it stops when the subscription
    or its client is closed.
    """

    def __init__(self, client: Owner, feed: Feed) -> None:
        self._client = client
        self._feed = feed
        self._wakeup = asyncio.Event()
        self._confirmed = False
        self._ended = False
        self._busy_attempts = 0  # "Server busy" answers in a row
        self._retry: asyncio.TimerHandle | None = None

    @property
    def channel(self) -> str:
        return self._feed.channel

    @property
    def position(self) -> str | None:
        """The id a reconnect resumes from: of the last event queued, or the channel's head.
        (To resume after your process restarts, keep the id of the last event you handled.)"""
        return self._feed.position

    @property
    def pending(self) -> int:
        """Events queued for the application now (an `anext` would not wait)."""
        return self._feed.queued

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        while True:
            event = self._feed.take()
            if event is not None:
                if self._feed.caught_up:
                    self._client._send_subscribe(self._feed)
                return event
            if self._feed.error is not None:
                raise self._feed.error
            if self._ended:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    async def ready(self) -> None:
        """Return once the server has confirmed the subscription (messages published from
        then on will arrive); the subscription's ClientError if it failed first."""
        while not self._confirmed:
            if self._feed.error is not None:
                raise self._feed.error
            if self._ended:
                raise ClientError("the subscription was closed")
            self._wakeup.clear()
            await self._wakeup.wait()

    def close(self) -> None:
        """Unsubscribe; iteration stops once the queued events are taken."""
        self._client._forget(self)
        self._end()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def _end(self) -> None:
        self._ended = True
        if self._retry is not None:
            self._retry.cancel()
        self._wake()

    def _retry_later(self, config: ClientConfig, rng: random.Random) -> None:
        delay = backoff_delay(self._busy_attempts, config.backoff_min_s, config.backoff_max_s, rng)
        self._busy_attempts += 1
        if self._retry is not None:
            self._retry.cancel()
        loop = asyncio.get_running_loop()
        self._retry = loop.call_later(delay, self._client._resubscribe, self)

    def _wake(self) -> None:
        self._wakeup.set()
