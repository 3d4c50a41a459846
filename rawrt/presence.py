"""Who is on a channel: subscribers by transport and the distinct users among them.

Theory of operation
-------------------
Presence is counted when asked, not kept: the hub walks one channel's subscriptions (its
live tables, its paused set, its parked polls) when `GET /api/presence/{channel}` comes, so
subscribing, publishing and fan-out pay nothing for it but the user id each subscription
carries. A user is the `sub` of the token a subscriber presented; a subscriber without a
token (a public channel, a server without tokens) counts in the totals but names no user.

The list of users is bounded (`presence_max_users`): past it the answer says `truncated`,
so a channel with a million viewers cannot make one answer a million names long.

Plain data and pure functions; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Presence", "count_presence"]


@dataclass(frozen=True, slots=True)
class Presence:
    """One channel's subscribers on this node."""

    websocket: int
    sse: int
    poll: int
    users: tuple[str, ...]  # distinct, sorted, at most the configured maximum
    truncated: bool  # more distinct users than `users` lists

    @property
    def total(self) -> int:
        return self.websocket + self.sse + self.poll

    def as_json(self, channel: str) -> dict[str, object]:
        return {
            "channel": channel,
            "subscribers": {
                "websocket": self.websocket,
                "sse": self.sse,
                "poll": self.poll,
                "total": self.total,
            },
            "users": list(self.users),
            "users_truncated": self.truncated,
        }


def count_presence(
    websocket: int, sse: int, poll: int, users: Iterable[str | None], max_users: int
) -> Presence:
    """A `Presence` from the counts and every subscriber's user (None: no token)."""
    distinct: set[str] = set()
    truncated = False
    for user in users:
        if user is None or user in distinct:
            continue
        if len(distinct) >= max_users:
            truncated = True
            break
        distinct.add(user)
    return Presence(websocket, sse, poll, tuple(sorted(distinct)), truncated)
