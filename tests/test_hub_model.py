"""A stateful hypothesis model of rawrt.hub.Hub.

The machine publishes, flushes, subscribes (at the head, or resuming from an id that may be
current, old, lost, from another lifetime of the channel or garbage), pauses and resumes
(also from inside a write, as a transport's pause_writing() does), unsubscribes, and
polls, parks and unparks long polls, across more channel names than the hub has slots.

What every subscriber is written is decoded as a client would (wsproto, a WHATWG parser)
and checked the moment it arrives:

- messages come with strictly increasing, consecutive seqs of the channel's current
  lifetime, each with the data that was published: no duplicate and no silent hole;
- a hole is allowed only after a reset, which names the head, and only when the log no
  longer holds what the subscriber missed;
- a live subscriber has everything up to the head once the channel is flushed;
- a parked poll is woken exactly once, with exactly the messages after its position;
- the bounds hold: history_size and history_max_bytes per channel, history_total_bytes in
  all, max_channels, and a channel with listeners is never evicted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from support import QUIET_PATCH_WRITER, STATEFUL, Item, Sink

from rawrt.config import Config
from rawrt.hub import Channel, Hub, HubFull, Kind, PollAnswer, Subscription
from rawrt.wire.envelope import canonical_json
from rawrt.wire.ids import format_id, parse_id

pytestmark = QUIET_PATCH_WRITER

# Small bounds, so that the interesting states come within a few steps: one name more than
# max_channels (eviction, HubFull), three messages of history, budgets a few messages wide.
NAMES = ("a", "b", "c")
CONFIG = Config(
    history_size=3,
    history_max_bytes=2500,
    history_total_bytes=4000,
    max_channels=2,
    catch_up_chunk_bytes=400,
)
# Data padding: a message costs about 3 * pad + 500 bytes of history (its data, a WebSocket
# frame, an SSE event, bookkeeping): small ones, ones a chunk holds one of, and ones bigger
# than a channel's byte budget.
PADS = (0, 60, 250, 900)
# "a" comes up most, so that its readers see long runs of messages, pauses and resets.
CHANNEL_NAMES = st.sampled_from(("a", "a", "a", "b", "c"))
SINCE = ("none", "head", "back1", "back3", "zero", "future", "garbage", "old")


@dataclass(eq=False)
class Life:
    """One lifetime of a channel in the hub: from its creation to its eviction."""

    channel: Channel
    epoch: str
    data: list[str] = field(default_factory=list)  # data of seq i at index i - 1

    @property
    def head(self) -> int:
        return len(self.data)


@dataclass(eq=False)
class Reader:
    """A subscription as its client sees it."""

    name: str
    sink: Sink
    position: int | None  # seq of the last message or reset it got; None: a reset is due
    sub: Subscription | None = None
    life: Life | None = None
    paused: bool = False
    pause_in_write: bool = False
    gone: bool = False


@dataclass(eq=False)
class Poller:
    """A parked long poll; the hub calls wake()."""

    machine: HubMachine
    name: str
    life: Life
    position: int
    answers: list[PollAnswer] = field(default_factory=list)

    def wake(self, answer: PollAnswer) -> None:
        self.machine.woken(self, answer)


class HubMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.hub = Hub(CONFIG, "m", self._flush_requested)
        self.flush_due = False
        self.lives: dict[str, Life] = {}
        self.epochs: set[str] = set()
        self.dead_ids: list[str] = []  # ids from evicted lifetimes
        self.readers: list[Reader] = []
        self.parked: list[Poller] = []
        self.writes_allowed = True
        self.clock_ms = 0

    def _flush_requested(self) -> None:
        self.flush_due = True

    # --- keeping the model in step with the hub's channels ------------------------------------

    def sync(self) -> None:
        for name in NAMES:
            ch = self.hub._channels.get(name)
            life = self.lives.get(name)
            if life is not None and life.channel is not ch:
                assert not self._listened(life), f"{name!r} was evicted while listened to"
                self.dead_ids.append(format_id(life.epoch, max(life.head, 1)))
                del self.lives[name]
                life = None
            if ch is not None and life is None:
                assert ch.epoch not in self.epochs, "a new lifetime must have a new epoch"
                self.epochs.add(ch.epoch)
                self.lives[name] = Life(ch, ch.epoch)

    def _listened(self, life: Life) -> bool:
        return any(r.life is life and not r.gone for r in self.readers) or any(
            p.life is life for p in self.parked
        )

    def _hub_full_expected(self, name: str) -> bool:
        if name in self.hub._channels or len(self.hub._channels) < CONFIG.max_channels:
            return False
        return all(self._listened(life) for life in self.lives.values())

    def _since(self, name: str, choice: str) -> str | None:
        life = self.lives.get(name)
        if choice == "none":
            return None
        if choice == "garbage" or (life is None and choice != "old"):
            return "garbage"
        if choice == "old":
            return self.dead_ids[-1] if self.dead_ids else "zz-1"
        assert life is not None
        seq = {
            "head": life.head,
            "back1": life.head - 1,
            "back3": life.head - 3,
            "zero": 0,
            "future": life.head + 1,
        }[choice]
        return format_id(life.epoch, max(seq, 0))

    def _resumable(self, name: str, since: str) -> int | None:
        """The seq `since` resumes from, if the hub can resume it (checked before the call)."""
        life, parsed = self.lives.get(name), parse_id(since)
        if life is None or parsed is None or parsed[0] != life.epoch:
            return None
        return parsed[1] if life.channel.log.holds_after(parsed[1]) else None

    # --- what subscribers and pollers are given ------------------------------------------------

    def written(self, reader: Reader, new: list[Item]) -> None:
        assert self.writes_allowed, "nothing is written outside a flush, join or resume"
        assert not reader.gone, "an unsubscribed reader was written to"
        assert not reader.paused, "a paused reader was written to"
        self.sync()
        life = reader.life = reader.life or self.lives[reader.name]
        for item in new:
            parsed = parse_id(item.id)
            assert parsed is not None and parsed[0] == life.epoch, item
            seq = parsed[1]
            if item.type == "reset":
                assert seq == life.channel.flushed, "a reset names the head"
                assert reader.position is None or not life.channel.log.holds_after(
                    reader.position
                ), "a reset only when the log cannot resume the reader"
            else:
                assert reader.position is not None, "a reset was due first"
                assert seq == reader.position + 1, f"hole or repeat: {reader.position} -> {seq}"
                assert item.data == life.data[seq - 1]
            reader.position = seq
        if reader.pause_in_write and reader.sub is not None:
            reader.pause_in_write = False
            reader.paused = True
            self.hub.pause(reader.sub)

    def woken(self, poller: Poller, answer: PollAnswer) -> None:
        assert poller in self.parked, "a poll was woken twice, or after it was unparked"
        self.parked.remove(poller)
        poller.answers.append(answer)
        head = poller.life.channel.flushed
        assert not answer.reset
        assert [m.seq for m in answer.messages] == list(range(poller.position + 1, head + 1))
        data = poller.life.data[poller.position : head]  # newer ones may be pending already
        assert [m.data.decode() for m in answer.messages] == data
        assert answer.cursor == format_id(poller.life.epoch, head)
        assert answer.messages, "woken with nothing"

    # --- rules ---------------------------------------------------------------------------------

    @initialize(kinds=st.lists(st.sampled_from([Kind.WS, Kind.SSE]), min_size=1, max_size=2))
    def readers_of_a(self, kinds: list[int]) -> None:
        for kind in kinds:
            self.subscribe("a", kind, "none")

    @rule(name=CHANNEL_NAMES, pads=st.lists(st.sampled_from(PADS), min_size=1, max_size=5))
    def publish(self, name: str, pads: list[int]) -> None:
        """Messages published within one loop iteration: a burst between two flushes."""
        for pad in pads:
            self._publish_one(name, pad)

    def _publish_one(self, name: str, pad: int) -> None:
        self.clock_ms += 1
        data = canonical_json({"t": self.clock_ms, "pad": "x" * pad})
        self.writes_allowed = False
        try:
            if self._hub_full_expected(name):
                try:
                    self.hub.publish(name, data, self.clock_ms)
                except HubFull:
                    return
                raise AssertionError("HubFull expected")
            message = self.hub.publish(name, data, self.clock_ms)
        finally:
            self.writes_allowed = True
        self.sync()
        life = self.lives[name]
        life.data.append(data)
        assert message.seq == life.head and message.id == format_id(life.epoch, life.head)

    @rule()
    def flush(self) -> None:
        self.flush_due = False
        self.hub.flush()
        self.sync()
        for life in self.lives.values():
            assert life.channel.flushed == life.head and not life.channel.pending

    @rule(
        name=CHANNEL_NAMES,
        kind=st.sampled_from([Kind.WS, Kind.SSE]),
        since_choice=st.sampled_from(SINCE),
    )
    def subscribe(self, name: str, kind: Kind, since_choice: str) -> None:
        since = self._since(name, since_choice)
        life = self.lives.get(name)
        if since is None:
            position: int | None = life.head if life is not None else 0
        else:
            position = self._resumable(name, since)
        reader = Reader(name, Sink(kind), position)
        reader.sink.on_write = lambda sink, new: self.written(reader, new)
        if self._hub_full_expected(name):
            try:
                self.hub.subscribe(name, kind, reader.sink, since)
            except HubFull:
                return
            raise AssertionError("HubFull expected")
        self.readers.append(reader)
        reader.sub = self.hub.subscribe(name, kind, reader.sink, since)
        self.sync()
        reader.life = self.lives[name]
        assert reader.position is not None, "an unresumable since got no reset"

    def _active(self) -> list[Reader]:
        return [r for r in self.readers if not r.gone]

    @precondition(lambda self: self._active())
    @rule(i=st.integers(0, 50))
    def pause(self, i: int) -> None:
        reader = self._active()[i % len(self._active())]
        assert reader.sub is not None
        reader.paused = True
        self.hub.pause(reader.sub)

    @precondition(lambda self: self._active())
    @rule(i=st.integers(0, 50), fills_up=st.booleans())
    def resume(self, i: int, fills_up: bool) -> None:
        """The socket drained; with `fills_up`, the first catch-up write fills it again."""
        reader = self._active()[i % len(self._active())]
        assert reader.sub is not None
        reader.pause_in_write = reader.pause_in_write or fills_up
        reader.paused = False
        self.hub.resume(reader.sub)
        self.sync()

    @precondition(lambda self: self._active())
    @rule(i=st.integers(0, 50))
    def fill_socket_on_next_write(self, i: int) -> None:
        """The reader's next write fills its socket: it is paused inside that write."""
        self._active()[i % len(self._active())].pause_in_write = True

    @precondition(lambda self: self._active())
    @rule(i=st.integers(0, 50))
    def unsubscribe(self, i: int) -> None:
        reader = self._active()[i % len(self._active())]
        assert reader.sub is not None
        reader.gone = True
        self.hub.unsubscribe(reader.sub)

    @precondition(lambda self: any(r.gone for r in self.readers))
    @rule(i=st.integers(0, 50), then_resume=st.booleans())
    def pause_after_unsubscribe(self, i: int, then_resume: bool) -> None:
        """A late pause (or resume, or unsubscribe) of a gone subscription changes nothing."""
        gone = [r for r in self.readers if r.gone]
        reader = gone[i % len(gone)]
        assert reader.sub is not None
        self.hub.pause(reader.sub)
        if then_resume:
            self.hub.resume(reader.sub)
        self.hub.unsubscribe(reader.sub)
        self.sync()

    @rule(name=CHANNEL_NAMES, since_choice=st.sampled_from(SINCE))
    def poll(self, name: str, since_choice: str) -> None:
        since = self._since(name, since_choice)
        resumable = None if since is None else self._resumable(name, since)
        if self._hub_full_expected(name):
            try:
                self.hub.poll(name, since)
            except HubFull:
                return
            raise AssertionError("HubFull expected")
        result = self.hub.poll(name, since)
        self.sync()
        life = self.lives[name]
        head_id = format_id(life.epoch, life.head)
        assert life.channel.flushed == life.head  # a poll flushes its channel first
        if since is None or resumable == life.head:
            assert result == life.head
        elif resumable is None:
            assert isinstance(result, PollAnswer) and result.reset
            assert result.messages == [] and result.cursor == head_id
        else:
            assert isinstance(result, PollAnswer) and not result.reset
            assert [m.seq for m in result.messages] == list(range(resumable + 1, life.head + 1))
            assert result.cursor == head_id

    @rule(name=CHANNEL_NAMES)
    def poll_and_park(self, name: str) -> None:
        if self._hub_full_expected(name):
            return
        position = self.hub.poll(name, None)
        assert isinstance(position, int)
        self.sync()
        poller = Poller(self, name, self.lives[name], position)
        self.parked.append(poller)
        self.hub.park(name, poller)

    @precondition(lambda self: self.parked)
    @rule(i=st.integers(0, 50))
    def unpark(self, i: int) -> None:
        """The poll timed out, or its client left."""
        poller = self.parked.pop(i % len(self.parked))
        head_id = self.hub.unpark(poller.name, poller)
        assert head_id == format_id(poller.life.epoch, poller.life.channel.flushed)

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def budgets_hold(self) -> None:
        logs = [ch.log for ch in self.hub._channels.values()]
        assert len(logs) <= CONFIG.max_channels
        assert self.hub.total_bytes == sum(log.nbytes for log in logs)
        for log in logs:
            assert len(log) <= CONFIG.history_size
            assert log.nbytes <= CONFIG.history_max_bytes or len(log) == 1
            assert log.nbytes == sum(m.size for m in log.after(log.first_seq - 1))
        held = sum(len(log) for log in logs)
        assert self.hub.total_bytes <= CONFIG.history_total_bytes or held == 1

    @invariant()
    def logs_hold_what_was_published(self) -> None:
        for life in self.lives.values():
            log = life.channel.log
            assert log.head == life.head
            for message in log.after(log.first_seq - 1):
                assert message.id == format_id(life.epoch, message.seq)
                assert message.data.decode() == life.data[message.seq - 1]

    @invariant()
    def readers_are_where_the_hub_has_them(self) -> None:
        for reader in self._active():
            sub, life = reader.sub, reader.life
            if sub is None or life is None:
                continue
            assert sub.paused is reader.paused
            assert (sub in life.channel.live[sub.kind]) is not reader.paused
            if reader.paused:
                assert sub.cursor == reader.position
            elif not life.channel.pending:
                assert reader.position == life.head, "a live reader is missing messages"
        for poller in self.parked:
            assert poller.position == poller.life.channel.flushed, "a poll was not woken"
        for life in self.lives.values():
            readers = [r for r in self._active() if r.life is life]
            assert life.channel.subscribers == len(readers)
            assert list(life.channel.parked) == [p for p in self.parked if p.life is life]

    @invariant()
    def pending_messages_have_a_flush_coming(self) -> None:
        if any(ch.pending for ch in self.hub._channels.values()):
            assert self.flush_due


HubMachine.TestCase.settings = STATEFUL
test_hub_readers_and_pollers_get_every_message_once_within_bounds = HubMachine.TestCase


# --- the same model with every fan-out cut into slices of one write ----------------------------

SLICED = dataclasses.replace(CONFIG, fanout_slice_writes=1)


class SlicedHubMachine(HubMachine):
    """HubMachine with `fanout_slice_writes=1`: a flush_step() writes to one subscriber (or
    wakes one poll), and every other rule may come between two slices of a fan-out.

    A fan-out under way has moved `flushed` already, so while one is, a reader it has not
    reached yet lags its cursor, its parked polls are out of the channel's table but not yet
    woken, and a reader that paused after it began is still written its messages. The
    checks of `written` (consecutive seqs, nothing twice, a reset only when due) hold at every
    write; the invariants that compare positions hold once no fan-out of the channel is
    under way.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hub = Hub(SLICED, "m", self._flush_requested)

    def _fanning(self, life: Life | None) -> bool:
        return life is not None and life.channel in self.hub._fanning

    def written(self, reader: Reader, new: list[Item]) -> None:
        if reader.paused and self._fanning(reader.life or self.lives.get(reader.name)):
            # Paused after this fan-out began: its cursor already counts these messages.
            paused, reader.paused = reader.paused, False
            try:
                super().written(reader, new)
            finally:
                reader.paused = paused
            return
        super().written(reader, new)

    @rule()
    def flush_step(self) -> None:
        self.flush_due = False
        self.hub.flush_step()
        self.sync()

    @invariant()
    def readers_are_where_the_hub_has_them(self) -> None:
        if not self.hub._fanning:
            super().readers_are_where_the_hub_has_them()
            return
        for reader in self._active():
            sub = reader.sub
            if sub is not None and reader.life is not None:
                assert sub.paused is reader.paused
        for poller in self.parked:
            if not self._fanning(poller.life):
                assert poller.position == poller.life.channel.flushed, "a poll was not woken"

    @invariant()
    def pending_messages_have_a_flush_coming(self) -> None:
        if self.hub._fanning or any(ch.pending for ch in self.hub._channels.values()):
            assert self.flush_due


SlicedHubMachine.TestCase.settings = STATEFUL
test_sliced_fan_out_keeps_every_reader_in_order_exactly_once = SlicedHubMachine.TestCase
