"""A drain's schedule: which open connections to close by when, spread evenly over a window.

Theory of operation
-------------------
When a node goes away, every client it held reconnects somewhere. Closed all at once, they
all reconnect at once: a storm the other nodes must absorb in the same second. Spread over
`drain_s`, the same clients arrive at a steady rate instead (Centrifugo bounds how many it
disconnects at once; Mercure spreads them with its write timeout).

The plan is made once, when the drain begins, from the connections open at that moment, in
the order given. Connection `i` of `n` is due at `start + window_s * i / n`: the first at
once, the last one share of the window before its end, so every tenth of the window holds a
tenth of the closes. The server's sweep asks `due(now)` on each tick and says goodbye to
what it gets; no timer per connection. A connection that went away by itself meanwhile is
still handed out (the caller skips it), which keeps the rate of the others unchanged.

Plain synchronous code: the caller passes `now` in, as it does to the hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

__all__ = ["DrainPlan"]

T = TypeVar("T")


class DrainPlan(Generic[T]):
    """Hands out `items` over `window_s` seconds from `start`, evenly."""

    __slots__ = ("_items", "_next", "_start", "_window_s")

    def __init__(self, items: Sequence[T], start: float, window_s: float) -> None:
        self._items = list(items)
        self._next = 0  # index of the first item not handed out yet
        self._start = start
        self._window_s = window_s

    @property
    def done(self) -> bool:
        return self._next >= len(self._items)

    @property
    def remaining(self) -> int:
        return len(self._items) - self._next

    def due(self, now: float) -> list[T]:
        """The items whose time has come and that were not handed out before."""
        n = len(self._items)
        if self._window_s <= 0 or now >= self._start + self._window_s:
            upto = n
        else:
            elapsed = max(0.0, now - self._start)
            # Item i is due once elapsed >= window * i / n: items 0 .. floor(n*elapsed/w).
            upto = min(n, int(n * elapsed / self._window_s) + 1)
        if upto <= self._next:
            return []
        batch = self._items[self._next : upto]
        self._next = upto
        return batch

    def next_due(self) -> float | None:
        """When the next item falls due (None when all were handed out)."""
        if self.done:
            return None
        return self._start + self._window_s * self._next / len(self._items)
