"""A drain's pace: how many open connections to close at each tick, spread evenly over a window.

Theory of operation
-------------------
When a node goes away, every client it held reconnects somewhere. Closed all at once, they
all reconnect at once: a storm the other nodes must absorb in the same second. Spread over
`drain_s`, the same clients arrive at a steady rate instead (Centrifugo bounds how many it
disconnects at once; Mercure spreads them with its write timeout).

The pace is a rate, not a list made when the drain begins: at each tick of the server's
sweep, of the connections open now, the share that the time since the last tick is of the
time left is due (`quota(now, open_count)`), and the caller closes that many, oldest first.
With nothing arriving, that is the same number at every tick: N times the tick over the
window. A connection that appears during the drain (a long poll answered and parked again on
its kept-alive socket, which is a new session) is simply part of what is open at the next
tick, so it too goes within the window rather than all together at its end. Fractions carry
over from tick to tick, so a window of many ticks and few connections still closes them one
by one, evenly; at the window's end whatever is left is due.

No timer per connection. Plain synchronous code: the caller passes `now` in.
"""

from __future__ import annotations

import math

__all__ = ["DrainPace"]


class DrainPace:
    """How many of the open connections to close at each tick of a drain."""

    __slots__ = ("_carry", "_end", "_last")

    def __init__(self, start: float, window_s: float) -> None:
        self._last = start  # the time of the last tick (the window's start at first)
        self._end = start + window_s
        self._carry = 0.0  # the fraction of a connection due but not closed yet

    def over(self, now: float) -> bool:
        return now >= self._end

    def quota(self, now: float, open_count: int) -> int:
        """How many of `open_count` connections to close now."""
        if now >= self._end:
            return open_count
        if now <= self._last:
            return 0
        self._carry += open_count * (now - self._last) / (self._end - self._last)
        self._last = now
        due = min(open_count, math.floor(self._carry))
        self._carry -= due
        return due
