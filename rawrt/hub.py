"""The hub: channels, their logs, and who listens to them. The sole owner of that state.

Theory of operation
-------------------
A publish appends a `Message` to its channel's log, with every transport's bytes built once,
and marks the channel dirty. Nothing is written yet: the owner of the event loop calls
`flush_step()` once per loop iteration, and each dirty channel then hands every live subscriber
the messages that arrived since the last flush, joined into one byte string per transport
kind. Ten messages published in one loop iteration leave each socket in one write.
When the server offers WebSocket compression, a message also carries its frame compressed
once (rawrt.wire.deflate), and the WebSockets that negotiated it are a kind of their own
(`Kind.WS_DEFLATE`): they are written those bytes, joined the same way, never compressed
per subscriber.

Subscribers come in two shapes:

- a `Subscription` (WebSocket, SSE) stays until unsubscribed. It is *live* while its socket
  takes writes, and then it is only an entry in the channel's live table, holding the bound
  write method the fan-out loop calls. When its socket pushes back, the owner calls `pause()`:
  the subscription leaves the live table and keeps a cursor, the seq of the last message it
  was given. `resume()` catches it up from the log and makes it live again; if the log no
  longer holds what it missed, it gets a reset and continues from the head.
- a parked long poll is one-shot: the next flush that brings messages `wake()`s every parked
  poller of the channel with one shared `PollAnswer`, and forgets them.

A channel is flushed before anyone joins, pauses or resumes, so a joiner never sees a message
from before its position and a returning reader never misses one.

A flush of a large channel is cut into slices (`fanout_slice_writes` writes each; a poll's
answer counts for `_WAKE_WRITES`): the first slice is written at once, each next one is
scheduled behind whatever the loop has ready, so a request that waited for this very
message (the publish, answered once Redis numbered it) is answered between slices instead
of after the last one. A fan-out under way is a snapshot, taken when it began, of who gets
the messages, and `flushed` moves to them at once: a subscriber that leaves meanwhile is
skipped (`gone`), one that pauses still gets what its cursor already counts. Whatever
flushes the channel first (a join, a resume, a poll, a sync, `flush()`) finishes its fan-out
synchronously, and the channel's next messages wait for it to end, so order and
exactly-once hold per subscriber.

The hub never touches a socket, a clock or the event loop: writes go through the callables
subscribers hand in, time comes in as arguments, and flushing is scheduled by the caller.

What it has done is counted in plain int attributes (`delivered`, `delivered_bytes`,
`resets`, `pauses`, and `subscriptions` now) that rawrt.metrics reads at scrape time. The
fan-out counts are bumped once per channel and transport kind per flush (the loop already
knows how many it wrote to), never per subscriber write, so counting costs the hot path
nothing it can measure; the subscriptions once per subscribe, park and their ends.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable

from rawrt.channel import (
    Channel,
    Entry,
    Kind,
    PollAnswer,
    Subscription,
    Waiter,
    Write,
    join_frames,
    reset_bytes,
)
from rawrt.config import Config
from rawrt.errors import HubFull, NotAttached
from rawrt.log import ChannelLog, Message
from rawrt.presence import Presence, count_presence
from rawrt.wire import deflate, envelope, sse, wsframe
from rawrt.wire.ids import parse_id, to_base36

__all__ = [
    "POLL",
    "Entry",
    "Hub",
    "HubFull",
    "Kind",
    "NotAttached",
    "PollAnswer",
    "Subscription",
    "Waiter",
]


# Index of long polls in `Hub.delivered`, after the Kind values (WS, SSE).
POLL = 2
# Why a reader got a reset (the keys of `Hub.resets`): its position fell behind what the
# history still holds, or it names another lifetime of the history (a server restart, a
# Redis that lost its keys, an id that is not this channel's at all).
BEHIND, EPOCH = "behind", "epoch"
# The cursor of a paused reader whose channel started a new epoch: no log holds it.
_NEW_EPOCH = -1
# The counter slot (in `delivered`, `delivered_bytes`, `subscriptions`) of each Kind: a
# WebSocket with compression counts as a WebSocket.
_TALLY = (int(Kind.WS), int(Kind.SSE), int(Kind.WS))
# What waking a parked poll costs against one socket write, in a slice's budget: it builds
# a response and a new HTTP parser (measured at 5 to 10 times a WebSocket delivery).
_WAKE_WRITES = 5


class _FanOut:
    """One channel's fan-out under way: who gets which bytes, and how far it has got.

    `parts` are, per transport kind, the (subscription, write) pairs live when it began and
    the bytes they get; `part` and `at` say where the next slice starts. `waiters` are the
    parked polls it has still to wake with `answer` (in any order: each is a request of its
    own), a table so that one that times out meanwhile can leave it (`Hub.unpark`).
    """

    __slots__ = ("answer", "at", "part", "parts", "waiters")

    def __init__(self, answer: PollAnswer | None) -> None:
        self.parts: list[tuple[tuple[tuple[Subscription, Write], ...], bytes]] = []
        self.waiters: dict[Waiter, str | None] = {}
        self.answer = answer
        self.part = self.at = 0

    @property
    def done(self) -> bool:
        return self.part >= len(self.parts) and not self.waiters

    def run(self, budget: float) -> float:
        """Make the next calls, worth about `budget` writes (at least one); returns their worth."""
        spent = 0.0
        while self.part < len(self.parts) and spent < budget:
            subs, batch = self.parts[self.part]
            start = self.at
            end = start + _calls(budget - spent, len(subs) - start, 1.0)
            # Moved on before the writes, so a call that re-enters the hub finds it there.
            self.part, self.at = (self.part + 1, 0) if end == len(subs) else (self.part, end)
            for sub, write in subs[start:end]:
                if not sub.gone:  # left since the fan-out began: its socket may be shut
                    write(batch)
            spent += end - start
        waiters = self.waiters
        if waiters and (spent < budget or not self.parts):
            assert self.answer is not None
            for _ in range(_calls(budget - spent, len(waiters), _WAKE_WRITES)):
                if not waiters:
                    break  # a wake made another poll leave (its client was the same)
                waiters.popitem()[0].wake(self.answer)
                spent += _WAKE_WRITES
        return spent


def _calls(budget: float, left: int, worth: float) -> int:
    """How many of `left` calls worth `worth` writes each fit `budget` (at least one)."""
    return left if budget >= left * worth else max(1, int(budget / worth))


class Hub:
    def __init__(
        self,
        config: Config,
        run_id: str,
        schedule_flush: Callable[[], None],
        *,
        assigns_ids: bool = True,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        self._run_id = run_id  # makes epochs differ between server runs
        self._schedule_flush = schedule_flush
        # True: this hub numbers messages itself (one node). False: a backplane does, and a
        # channel exists here only once `sync()` has brought it in from the shared history.
        self._assigns_ids = assigns_ids
        # Payloads this long and longer get a compressed frame (Kind.WS_DEFLATE); None: the
        # server does not offer compression, and messages carry no such frame.
        self._deflate_min = config.ws_compression_min_bytes if config.ws_compression else None
        self._on_evict = on_evict
        self._channels: dict[str, Channel] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()  # evictable, least recent first
        self._dirty: list[Channel] = []
        # Fan-outs under way (module docstring), oldest first, one per channel at most.
        self._fanning: dict[Channel, _FanOut] = {}
        self._step_due = False  # a flush_step() is scheduled
        self._created = 0
        self.total_bytes = 0
        # Counted for rawrt.metrics (module docstring): messages handed out, by Kind and then
        # POLL; bytes written, by Kind (a poll's response bytes are its transport's to count).
        self.delivered = [0, 0, 0]
        self.delivered_bytes = [0, 0]
        self.resets = {BEHIND: 0, EPOCH: 0}
        self.pauses = 0  # a live subscriber's socket pushed back
        # Subscriptions now, by Kind and then POLL (parked polls): kept on every subscribe and
        # park rather than walked over every channel at each scrape.
        self.subscriptions = [0, 0, 0]
        # Told of every subscription's start (True) and end (False), after the hub's tables
        # have it: rawrt.presence_events, with --presence-events. None costs one test.
        self.on_member: Callable[[Subscription, bool], None] | None = None

    # --- channels --------------------------------------------------------------------------

    def channel(self, name: str) -> Channel:
        """The channel called `name`, created (with a fresh epoch) if needed."""
        ch = self._channels.get(name)
        if ch is None:
            if not self._assigns_ids:
                raise NotAttached(name)
            self._created += 1
            ch = self._add(name, self._run_id + to_base36(self._created), self._new_log(0))
        elif name in self._idle:  # idle, and not fanning out (_maybe_idle)
            self._idle.move_to_end(name)
        return ch

    def has(self, name: str) -> bool:
        return name in self._channels

    def is_idle(self, name: str) -> bool:
        ch = self._channels.get(name)
        return ch is None or (ch.idle and ch not in self._fanning)

    def is_ahead(self, name: str, message_id: str) -> bool:
        """True when `message_id` is of this channel's epoch but newer than its head.

        With a backplane that means this node has not heard of that message yet (a client
        saw it through another node); alone, that such an id is not ours.
        """
        ch = self._channels.get(name)
        parsed = parse_id(message_id)
        return (
            ch is not None
            and parsed is not None
            and parsed[0] == ch.epoch
            and (parsed[1] > ch.log.head)
        )

    def _new_log(self, head: int) -> ChannelLog:
        return ChannelLog(self._config.history_size, self._config.history_max_bytes, head)

    def _add(self, name: str, epoch: str, log: ChannelLog) -> Channel:
        if len(self._channels) >= self._config.max_channels:
            if not self._idle:
                raise HubFull(f"all {self._config.max_channels} channels are in use")
            self._evict(next(iter(self._idle)))
        ch = self._channels[name] = Channel(name, epoch, log)
        self._idle[name] = None
        return ch

    def drop(self, name: str) -> bool:
        """Forget an idle channel (a backplane detaching from it); False if it is busy."""
        if name not in self._idle:
            return False
        self._evict(name, notify=False)
        return True

    def _evict(self, name: str, *, notify: bool = True) -> None:
        ch = self._channels.pop(name)
        del self._idle[name]
        self.total_bytes -= ch.log.nbytes
        if ch in self._dirty:
            self._dirty.remove(ch)
        self._fanning.pop(ch, None)
        if notify and self._on_evict is not None:
            self._on_evict(name)

    def _became_busy(self, ch: Channel) -> None:
        self._idle.pop(ch.name, None)

    def _maybe_idle(self, ch: Channel) -> None:
        # Not while its fan-out is under way: the polls it has still to wake listen to it.
        if ch.idle and self._channels.get(ch.name) is ch and ch not in self._fanning:
            self._idle[ch.name] = None

    # --- publishing ------------------------------------------------------------------------

    def publish(self, name: str, data_json: str, now_ms: int) -> Message:
        """Append a message with the next local seq; it goes out at the next flush."""
        ch = self.channel(name)
        message = self._encode(ch, ch.log.head + 1, data_json, now_ms)
        self._append(ch, message)
        return message

    def _encode(self, ch: Channel, seq: int, data_json: str, now_ms: int) -> Message:
        message_id = ch.id_of(seq)
        text = envelope.message(ch.channel_json, data_json, now_ms, message_id)
        payload = text.encode()
        frames: tuple[bytes, ...] = (wsframe.frame(payload), sse.event(data_json, message_id))
        if self._deflate_min is not None:
            # Compressed once here for every deflate subscriber (server_no_context_takeover
            # makes the bytes valid on each of them); a small message shares the plain frame.
            small = len(payload) < self._deflate_min
            frames += ((None if small else deflate.deflated_frame(payload)) or frames[0],)
        return Message(seq, message_id, data_json.encode(), now_ms, frames)

    def _append(self, ch: Channel, message: Message) -> None:
        self.total_bytes += message.size - ch.log.append(message)
        ch.pending.append(message)
        if len(ch.pending) == 1:
            self._dirty.append(ch)
            self._schedule_step()
        self._within_budget(ch)

    def _within_budget(self, ch: Channel) -> None:
        """Keep all history under history_total_bytes: idle channels go first."""
        while self.total_bytes > self._config.history_total_bytes:
            idle = next((n for n in self._idle if n != ch.name), None)
            if idle is not None:
                self._evict(idle)
            elif len(ch.log) > 1:
                self.total_bytes -= ch.log.trim_oldest()
            else:
                # Then other busy channels' history, oldest channel first (their paused
                # readers get a reset): stopping here let channels with listeners hold up to
                # max_channels times a message each, far past history_total_bytes.
                others = (c for c in self._channels.values() if c is not ch and len(c.log))
                other = next(others, None)
                if other is None:
                    return
                self.total_bytes -= other.log.trim_oldest()

    # --- the shared history (backplane) ---------------------------------------------------

    def accept(self, name: str, epoch: str, entry: Entry) -> bool:
        """Take the next message of a shared history; False when `sync()` is needed first.

        Duplicates (a seq already held) are dropped; a message from another epoch, or one
        that leaves a hole after the head, means this copy is out of step.
        """
        ch = self._channels.get(name)
        if ch is None or (entry.seq <= ch.log.head and epoch == ch.epoch):
            return True  # not attached here, or already have it
        if epoch != ch.epoch or entry.seq != ch.log.head + 1:
            return False
        self._append(ch, self._encode(ch, entry.seq, entry.data_json, entry.timestamp_ms))
        return True

    def sync(self, name: str, epoch: str, head: int, entries: list[Entry]) -> None:
        """Bring `name` in line with a snapshot of the shared history.

        `entries` are the newest messages, oldest first, ending at `head`. Missing messages
        are appended when the snapshot covers them; otherwise (another epoch, or a hole the
        snapshot no longer holds) the channel starts over and its readers get a reset.
        """
        ch = self._channels.get(name)
        if ch is None:
            ch = self._add(name, epoch, self._new_log(head))
            self._fill(ch, head, entries)
            self._within_budget(ch)
            return
        self._flush_now(ch)
        have = ch.log.head
        covered = head == have or (bool(entries) and entries[0].seq <= have + 1)
        if epoch != ch.epoch or head < have or not covered:
            self._restart(ch, epoch, head, entries)
            return
        for entry in entries:
            if entry.seq > ch.log.head:
                self._append(ch, self._encode(ch, entry.seq, entry.data_json, entry.timestamp_ms))

    def _fill(self, ch: Channel, head: int, entries: list[Entry]) -> None:
        """Replace the log of `ch` with `entries` (a run ending at `head`)."""
        self.total_bytes -= ch.log.nbytes
        ch.log = self._new_log(entries[0].seq - 1 if entries else head)
        for entry in entries:
            message = self._encode(ch, entry.seq, entry.data_json, entry.timestamp_ms)
            self.total_bytes += message.size - ch.log.append(message)
        ch.flushed = ch.log.head

    def _restart(self, ch: Channel, epoch: str, head: int, entries: list[Entry]) -> None:
        """A new history lifetime: every reader's position is void.

        Live readers get a reset to where the shared history now begins, then every message
        it holds, as new messages (after Redis came back empty, those are the first
        messages of the new lifetime: nobody should miss them). Parked polls are answered
        with the reset; a paused reader gets its reset when it resumes.
        """
        ch.epoch = epoch
        self._fill(ch, entries[0].seq - 1 if entries else head, [])
        for live in ch.live:
            self.resets[EPOCH] += len(live)
            for sub, write in tuple(live.items()):
                write(reset_bytes(ch, sub.kind))
        for sub in ch.paused:
            sub.cursor = _NEW_EPOCH  # no log holds it: the resume writes a reset
        if ch.parked:
            self.resets[EPOCH] += len(ch.parked)
            self.subscriptions[POLL] -= len(ch.parked)
            parked, ch.parked = ch.parked, {}
            answer = PollAnswer([], ch.id_of(ch.flushed), reset=True)
            for waiter in parked:
                waiter.wake(answer)
            self._maybe_idle(ch)
        for entry in entries:
            self._append(ch, self._encode(ch, entry.seq, entry.data_json, entry.timestamp_ms))

    # --- fan-out ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Hand every dirty channel's new messages to its subscribers and parked polls, all
        of them now (a goodbye follows: what was published before it must be written)."""
        self._step_due = False  # nothing is left for a scheduled step, which costs nothing
        for ch in list(self._fanning):
            self._finish(ch)
        dirty, self._dirty = self._dirty, []
        for ch in dirty:
            self._flush_channel(ch)

    def flush_step(self) -> None:
        """The scheduled flush: fan out for at most `fanout_slice_writes` writes, then ask to
        be scheduled again while anything is left (module docstring)."""
        self._step_due = False
        budget: float = self._config.fanout_slice_writes or float("inf")
        dirty, self._dirty = self._dirty, []
        for ch in dirty:
            if ch in self._fanning:
                self._dirty.append(ch)  # its next messages wait for this fan-out to end
            elif ch.pending:
                budget -= self._start(ch, budget)
        for ch, fan in list(self._fanning.items()):
            if budget <= 0:
                break
            budget -= fan.run(budget)
            if fan.done:
                self._ended(ch)
        if self._fanning or self._dirty:
            self._schedule_step()

    def _schedule_step(self) -> None:
        if not self._step_due:
            self._step_due = True
            self._schedule_flush()

    def _start(self, ch: Channel, budget: float) -> float:
        """Begin `ch`'s fan-out: all of it now when it fits `budget`, else its first slice."""
        size = sum(map(len, ch.live)) + len(ch.parked) * _WAKE_WRITES
        if size <= budget:
            self._flush_channel(ch)
            return size
        new = ch.pending
        ch.pending = []
        ch.flushed = new[-1].seq
        fan = _FanOut(PollAnswer(new, ch.id_of(ch.flushed)) if ch.parked else None)
        for kind, live in enumerate(ch.live):
            if live:
                batch = new[0].frames[kind] if len(new) == 1 else join_frames(new, kind)
                self.delivered[_TALLY[kind]] += len(new) * len(live)
                self.delivered_bytes[_TALLY[kind]] += len(batch) * len(live)
                fan.parts.append((tuple(live.items()), batch))
        if ch.parked:
            self.delivered[POLL] += len(new) * len(ch.parked)
            self.subscriptions[POLL] -= len(ch.parked)
            fan.waiters, ch.parked = ch.parked, {}
        self._fanning[ch] = fan
        spent = fan.run(budget)
        if fan.done:
            self._ended(ch)
        return spent

    def _finish(self, ch: Channel) -> None:
        fan = self._fanning.get(ch)
        if fan is not None:
            fan.run(float("inf"))  # it stays listed meanwhile: a reader can tell it is under way
            self._ended(ch)

    def _ended(self, ch: Channel) -> None:
        self._fanning.pop(ch, None)
        self._maybe_idle(ch)

    def _flush_channel(self, ch: Channel) -> None:
        new = ch.pending
        if not new:
            return
        ch.pending = []
        ch.flushed = new[-1].seq  # before writing: a pause inside a write keeps this cursor
        for kind, live in enumerate(ch.live):  # the index is the Kind's value
            if live:
                batch = new[0].frames[kind] if len(new) == 1 else join_frames(new, kind)
                writes = tuple(live.values())
                self.delivered[_TALLY[kind]] += len(new) * len(writes)
                self.delivered_bytes[_TALLY[kind]] += len(batch) * len(writes)
                for write in writes:  # a write may pause (remove) a subscriber
                    write(batch)
        if ch.parked:
            self.delivered[POLL] += len(new) * len(ch.parked)
            self.subscriptions[POLL] -= len(ch.parked)
            parked, ch.parked = ch.parked, {}
            answer = PollAnswer(new, ch.id_of(ch.flushed))
            for waiter in parked:
                waiter.wake(answer)
            self._maybe_idle(ch)

    def _flush_now(self, ch: Channel) -> None:
        self._finish(ch)
        if ch.pending:
            self._dirty.remove(ch)
            self._flush_channel(ch)

    # --- subscriptions ---------------------------------------------------------------------

    def subscribe(
        self,
        name: str,
        kind: Kind,
        write: Write,
        since: str | None = None,
        *,
        start: bool = True,
        user: str | None = None,
    ) -> Subscription:
        """Join `name` at its head, or after `since` (replaying what the log holds).

        A `since` the log cannot resume from writes a reset first. Raises HubFull.
        With `start=False` the subscription comes back paused at its position and the
        caller `resume()`s it once it has stored it: a replay may fill the socket, and the
        socket's pause can only reach a subscription its owner already knows.
        """
        ch = self.channel(name)
        self._flush_now(ch)
        sub = Subscription(ch, kind, write, user)
        ch.subscribers += 1
        self.subscriptions[_TALLY[kind]] += 1
        self._became_busy(ch)
        sub.cursor = ch.flushed
        if since is not None:
            cursor = ch.cursor_of(since)
            if cursor is None:
                self._count_reset(ch, since)
                write(reset_bytes(ch, kind))
            else:
                sub.cursor = cursor
        ch.paused[sub] = None  # catching up, then live
        if self.on_member is not None:
            self.on_member(sub, True)  # still paused: a join is not written to the joiner
        if start:
            self.resume(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        ch = sub.channel
        if ch.live[sub.kind].pop(sub, None) is None and not sub.paused:
            return  # already gone
        sub.gone = True
        ch.paused.pop(sub, None)
        ch.subscribers -= 1
        self.subscriptions[_TALLY[sub.kind]] -= 1
        self._maybe_idle(ch)
        if self.on_member is not None:
            self.on_member(sub, False)

    def write_event(self, name: str, frames: tuple[bytes, ...], max_subscribers: int) -> int:
        """Write an event that is not a message (no id, not logged, never replayed) to every
        live subscriber of `name`, `frames` by Kind; paused ones miss it. Nothing is written
        when `name` has more than `max_subscribers` here. Returns how many were written to.

        Messages stay in order around it: the channel is flushed first, so the event comes
        after every message published before it, and a write that pauses a subscriber keeps
        its cursor at the flushed head."""
        ch = self._channels.get(name)
        if ch is None or ch.subscribers > max_subscribers:
            return 0
        self._flush_now(ch)
        written = 0
        for kind, live in enumerate(ch.live):
            writes = tuple(live.values())  # a write may pause (remove) a subscriber
            written += len(writes)
            for write in writes:
                write(frames[kind])
        return written

    def pause(self, sub: Subscription) -> None:
        """Stop writing to `sub`; it keeps its place as a cursor."""
        # Not after unsubscribe(): marking a gone subscription paused made the next
        # unsubscribe() count it out twice (subscribers < 0: the channel never idle again)
        # and the next resume() make it live again.
        if sub.paused or sub.gone:
            return
        sub.channel.paused[sub] = None
        if sub.channel.live[sub.kind].pop(sub, None) is not None:
            sub.cursor = sub.channel.flushed
            self.pauses += 1

    def resume(self, sub: Subscription) -> None:
        """Write what `sub` missed (or a reset), then make it live again."""
        if not sub.paused or self._channels.get(sub.channel.name) is not sub.channel:
            return
        ch = sub.channel
        # Out of the paused table before the flush: a fan-out it is due in may be finished
        # there, and a write of it that fills the socket must pause it again, not be lost.
        del ch.paused[sub]
        self._flush_now(ch)
        if sub.paused:
            return  # paused again; its cursor says where to go on
        if not ch.log.holds_after(sub.cursor):
            self.resets[EPOCH if sub.cursor == _NEW_EPOCH else BEHIND] += 1
            sub.cursor = ch.flushed
            sub.write(reset_bytes(ch, sub.kind))
        elif not self._catch_up(sub):
            return  # paused again mid-way; its cursor says where to go on
        if not sub.paused:
            ch.live[sub.kind][sub] = sub.write

    def _catch_up(self, sub: Subscription) -> bool:
        """Write the log after sub.cursor in bounded pieces; False if a write paused it."""
        ch, limit = sub.channel, self._config.catch_up_chunk_bytes
        missed = ch.log.after(sub.cursor)
        start = 0
        while start < len(missed):
            end, size = start, 0
            while end < len(missed) and (
                size == 0 or size + len(missed[end].frames[sub.kind]) <= limit
            ):
                size += len(missed[end].frames[sub.kind])
                end += 1
            sub.cursor = missed[end - 1].seq  # before the write, which may pause `sub`
            self.delivered[_TALLY[sub.kind]] += end - start
            self.delivered_bytes[_TALLY[sub.kind]] += size
            sub.write(join_frames(missed[start:end], sub.kind))
            if sub.paused:
                return False
            start = end
        return True

    # --- long polls ------------------------------------------------------------------------

    def poll(self, name: str, since: str | None) -> PollAnswer | int:
        """An answer now (messages after `since`, or a reset), or the seq to park at.

        Without `since` the poll waits for what is published after it arrived.
        """
        ch = self.channel(name)
        self._flush_now(ch)
        if since is None:
            return ch.flushed
        cursor = ch.cursor_of(since)
        if cursor is None:
            self._count_reset(ch, since)
            return PollAnswer([], ch.id_of(ch.flushed), reset=True)
        if cursor < ch.flushed:
            missed = ch.log.after(cursor)
            self.delivered[POLL] += len(missed)
            return PollAnswer(missed, ch.id_of(ch.flushed))
        return cursor

    def park(self, name: str, waiter: Waiter, user: str | None = None) -> None:
        """Wake `waiter` at the next flush of `name` (after `poll` returned a seq)."""
        ch = self.channel(name)
        if waiter not in ch.parked:
            self.subscriptions[POLL] += 1
        ch.parked[waiter] = user
        self._became_busy(ch)

    def unpark(self, name: str, waiter: Waiter) -> str:
        """Forget a parked poll (timed out, or its client left); returns the head id."""
        ch = self._channels.get(name)
        if ch is None:
            return ""
        if waiter in ch.parked:
            del ch.parked[waiter]
            self.subscriptions[POLL] -= 1
        fan = self._fanning.get(ch)
        if fan is not None:
            fan.waiters.pop(waiter, None)  # counted out when the fan-out began
        self._maybe_idle(ch)
        return ch.id_of(ch.flushed)

    def _count_reset(self, ch: Channel, since: str) -> None:
        parsed = parse_id(since)
        self.resets[BEHIND if parsed is not None and parsed[0] == ch.epoch else EPOCH] += 1

    # --- what rawrt.metrics reads at scrape time -------------------------------------------

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    # --- reading: history and presence (HTTP API) ------------------------------------------

    def history(self, name: str, since: str | None, limit: int) -> tuple[list[Message], bool]:
        """Up to `limit` messages after `since` (without it, the newest `limit`), oldest
        first, and whether `since` was no longer held (a reset: then from the oldest held)."""
        ch = self.channel(name)
        self._flush_now(ch)
        held = ch.log.after(ch.log.first_seq - 1)
        if since is None:
            return held[max(0, len(held) - limit) :], False
        cursor = ch.cursor_of(since)
        if cursor is None:
            return held[:limit], True
        return ch.log.after(cursor)[:limit], False

    def presence(self, name: str, max_users: int) -> Presence:
        """Who is subscribed to `name` here now (a channel not held here has nobody)."""
        ch = self._channels.get(name)
        if ch is None:
            return count_presence(0, 0, 0, (), max_users)
        paused_ws = sum(1 for sub in ch.paused if sub.kind is not Kind.SSE)
        ws = len(ch.live[Kind.WS]) + len(ch.live[Kind.WS_DEFLATE]) + paused_ws
        sse = len(ch.live[Kind.SSE]) + len(ch.paused) - paused_ws
        users = itertools.chain(
            (s.user for s in ch.live[Kind.WS]),
            (s.user for s in ch.live[Kind.WS_DEFLATE]),
            (s.user for s in ch.live[Kind.SSE]),
            (s.user for s in ch.paused),
            ch.parked.values(),
        )
        return count_presence(ws, sse, len(ch.parked), users, max_users)

    def presences(self, max_users: int) -> dict[str, Presence]:
        """Every busy channel's presence here (what a node reports to the others)."""
        return {
            name: self.presence(name, max_users)
            for name, ch in self._channels.items()
            if not ch.idle
        }

    def head_id(self, name: str) -> str:
        """Id of the newest message of `name`, after handing out any still pending."""
        ch = self.channel(name)
        self._flush_now(ch)
        return ch.id_of(ch.flushed)
