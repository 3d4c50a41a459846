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

Across nodes (rawrt.backplane.board) each node reports its own `Presence` of every busy
channel as a small JSON text (`report()`), kept with a time to live; an answer `merge()`s the
live reports with this node's own counts: counts add up, users are united (still bounded).

Plain data and pure functions; nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = ["Presence", "count_presence", "merge"]


@dataclass(frozen=True, slots=True)
class Presence:
    """One channel's subscribers on this node."""

    websocket: int
    sse: int
    poll: int
    users: tuple[str, ...]  # distinct, sorted, at most the configured maximum
    truncated: bool  # more distinct users than `users` lists
    nodes: int = 1  # how many nodes' counts this holds

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
            "nodes": self.nodes,
        }

    def report(self) -> str:
        """This node's counts as the compact text another node reads with `from_report`."""
        counts = [self.websocket, self.sse, self.poll, list(self.users), self.truncated]
        return json.dumps(counts, separators=(",", ":"))

    @classmethod
    def from_report(cls, text: str | bytes) -> Presence:
        """The counts a node reported; raises ValueError if `text` is not a report."""
        try:
            ws, sse, poll, users, truncated = json.loads(text)
            return cls(int(ws), int(sse), int(poll), tuple(map(str, users)), bool(truncated))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a presence report: {exc}") from None


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


def merge(parts: Iterable[Presence], max_users: int) -> Presence:
    """Several nodes' counts as one: sums, and the union of their users (bounded)."""
    ws = sse = poll = nodes = 0
    users: list[str] = []
    truncated = False
    for part in parts:
        ws, sse, poll = ws + part.websocket, sse + part.sse, poll + part.poll
        nodes += part.nodes
        users.extend(part.users)
        truncated |= part.truncated
    total = count_presence(ws, sse, poll, sorted(users), max_users)
    return replace(total, truncated=total.truncated or truncated, nodes=nodes)
