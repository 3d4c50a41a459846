"""rawrt.hub.Hub driven directly: subscribers are sinks (callables collecting bytes), the
flush is called by hand, and time is a number. No loop, no socket."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support import QUIET_PATCH_WRITER, Item, Sink

from rawrt.config import Config
from rawrt.hub import Hub, HubFull, Kind, PollAnswer, Subscription
from rawrt.wire.envelope import canonical_json
from rawrt.wire.ids import format_id

pytestmark = QUIET_PATCH_WRITER

KINDS = [Kind.WS, Kind.SSE]


class FakeLoop:
    """Counts flush requests, as the server's loop.call_soon(hub.flush) would receive them."""

    def __init__(self) -> None:
        self.requests = 0

    def schedule(self) -> None:
        self.requests += 1


def make_hub(**limits: Any) -> tuple[Hub, FakeLoop]:
    loop = FakeLoop()
    settings = {"history_size": 5, "max_channels": 4} | limits
    return Hub(Config(**settings), "run", loop.schedule), loop


def publish(hub: Hub, channel: str, *values: int) -> list[str]:
    """Publish `{"n": v}` for each value; returns the ids."""
    return [hub.publish(channel, f'{{"n":{v}}}', now_ms=v).id for v in values]


def ids(items: list[Item]) -> list[tuple[str, str]]:
    return [(item.type, item.id) for item in items]


def msg(channel_epoch: str, *seqs: int) -> list[tuple[str, str]]:
    return [("message", format_id(channel_epoch, s)) for s in seqs]


def epoch_of(hub: Hub, channel: str) -> str:
    return hub.head_id(channel).rpartition("-")[0]


class Waiter:
    def __init__(self) -> None:
        self.answers: list[PollAnswer] = []

    def wake(self, answer: PollAnswer) -> None:
        self.answers.append(answer)


# --- publishing and fan-out --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_publisher_schedules_one_flush_and_subscriber_gets_a_batch_in_one_write(kind: Kind) -> None:
    hub, loop = make_hub()
    sink = Sink(kind)
    hub.subscribe("news", kind, sink)
    epoch = epoch_of(hub, "news")
    publish(hub, "news", 1, 2, 3)
    assert sink.writes == [] and loop.requests == 1
    hub.flush()
    assert len(sink.writes) == 1
    assert ids(sink.items) == msg(epoch, 1, 2, 3)
    assert [json.loads(item.data) for item in sink.items] == [{"n": 1}, {"n": 2}, {"n": 3}]
    hub.flush()
    assert len(sink.writes) == 1
    publish(hub, "news", 4)
    assert loop.requests == 2


def test_subscribers_of_one_kind_are_written_the_same_bytes_object() -> None:
    hub, _ = make_hub()
    ws1, ws2, sse = Sink(Kind.WS), Sink(Kind.WS), Sink(Kind.SSE)
    for sink in (ws1, ws2, sse):
        hub.subscribe("c", sink.kind, sink)
    publish(hub, "c", 1)
    hub.flush()
    assert ws1.writes[0] is ws2.writes[0]  # built once at publish, shared
    assert ids(ws1.items) == ids(sse.items)


def test_ws_message_envelope_carries_channel_data_timestamp_and_id() -> None:
    hub, _ = make_hub()
    frames: list[bytes] = []
    hub.subscribe("a\ud800", Kind.WS, frames.append)  # a lone surrogate stays escaped
    message = hub.publish("a\ud800", '{"k":[1,"é"]}', now_ms=1234)
    hub.flush()
    envelope = json.loads(frames[0][2:])
    assert envelope == {
        "type": "message",
        "channel": "a\ud800",
        "data": {"k": [1, "é"]},
        "timestamp": 1234,
        "id": message.id,
    }


@pytest.mark.parametrize("kind", KINDS)
def test_new_subscriber_starts_at_the_head_even_with_messages_pending(kind: Kind) -> None:
    hub, _ = make_hub()
    publish(hub, "c", 1, 2)  # not flushed yet: they are before the joiner's position
    sink = Sink(kind)
    hub.subscribe("c", kind, sink)
    publish(hub, "c", 3)
    hub.flush()
    assert ids(sink.items) == msg(epoch_of(hub, "c"), 3)


@pytest.mark.parametrize("kind", KINDS)
def test_subscriber_with_since_in_history_gets_the_rest_then_live(kind: Kind) -> None:
    hub, _ = make_hub()
    first, *_ = publish(hub, "c", 1, 2, 3)
    sink = Sink(kind)
    hub.subscribe("c", kind, sink, since=first)
    publish(hub, "c", 4)
    hub.flush()
    assert ids(sink.items) == msg(epoch_of(hub, "c"), 2, 3, 4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("since", ["garbage", "zzzz-1", "FUTURE", "LOST", ""])
def test_subscriber_with_unresumable_since_gets_a_reset_to_the_head_first(
    kind: Kind, since: str
) -> None:
    hub, _ = make_hub(history_size=2)
    publish(hub, "c", 1, 2, 3, 4)
    epoch = epoch_of(hub, "c")
    since = {"FUTURE": format_id(epoch, 9), "LOST": format_id(epoch, 1)}.get(since, since)
    sink = Sink(kind)
    hub.subscribe("c", kind, sink, since=since)
    publish(hub, "c", 5)
    hub.flush()
    assert ids(sink.items) == [("reset", format_id(epoch, 4)), *msg(epoch, 5)]


@pytest.mark.parametrize("kind", KINDS)
def test_unsubscribed_subscriber_gets_nothing_more(kind: Kind) -> None:
    hub, _ = make_hub()
    sink = Sink(kind)
    sub = hub.subscribe("c", kind, sink)
    publish(hub, "c", 1)
    hub.unsubscribe(sub)
    hub.unsubscribe(sub)  # twice is harmless
    hub.flush()
    assert sink.writes == []
    assert sub.channel.subscribers == 0 and sub.channel.idle


# --- backpressure: pause, resume, catch up -----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_paused_subscriber_gets_nothing_then_catches_up_on_resume(kind: Kind) -> None:
    hub, _ = make_hub()
    sink = Sink(kind)
    sub = hub.subscribe("c", kind, sink)
    publish(hub, "c", 1)
    hub.flush()
    hub.pause(sub)
    publish(hub, "c", 2, 3)
    hub.flush()
    assert ids(sink.items) == msg(epoch_of(hub, "c"), 1)
    hub.resume(sub)
    publish(hub, "c", 4)
    hub.flush()
    assert ids(sink.items) == msg(epoch_of(hub, "c"), 1, 2, 3, 4)


@pytest.mark.parametrize("kind", KINDS)
def test_paused_subscriber_behind_tail_gets_reset(kind: Kind) -> None:
    hub, _ = make_hub(history_size=2)
    sink = Sink(kind)
    sub = hub.subscribe("c", kind, sink)
    hub.pause(sub)
    publish(hub, "c", 1, 2, 3)
    hub.flush()
    hub.resume(sub)
    publish(hub, "c", 4)
    hub.flush()
    epoch = epoch_of(hub, "c")
    assert ids(sink.items) == [("reset", format_id(epoch, 3)), *msg(epoch, 4)]


def test_paused_subscriber_resumes_before_pending_messages_are_flushed() -> None:
    hub, _ = make_hub()
    sink = Sink(Kind.WS)
    sub = hub.subscribe("c", Kind.WS, sink)
    hub.pause(sub)
    publish(hub, "c", 1, 2)
    hub.resume(sub)  # flushes the channel first, so nothing is written twice
    hub.flush()
    assert ids(sink.items) == msg(epoch_of(hub, "c"), 1, 2)


def test_catch_up_is_written_in_pieces_of_catch_up_chunk_bytes() -> None:
    hub, _ = make_hub(history_size=50, catch_up_chunk_bytes=300)
    sink = Sink(Kind.SSE)
    sub = hub.subscribe("c", Kind.SSE, sink)
    hub.pause(sub)
    publish(hub, "c", *range(20))
    hub.flush()
    hub.resume(sub)
    assert len(sink.writes) > 1
    assert all(len(w) <= 300 for w in sink.writes)
    assert len(sink.messages) == 20


def test_message_bigger_than_a_catch_up_chunk_is_written_whole() -> None:
    hub, _ = make_hub(catch_up_chunk_bytes=10)
    sink = Sink(Kind.WS)
    sub = hub.subscribe("c", Kind.WS, sink)
    hub.pause(sub)
    publish(hub, "c", 1, 2)
    hub.resume(sub)
    assert len(sink.writes) == 2 and ids(sink.items) == msg(epoch_of(hub, "c"), 1, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_subscriber_pausing_inside_a_catch_up_write_resumes_after_what_it_got(kind: Kind) -> None:
    hub, _ = make_hub(history_size=50, catch_up_chunk_bytes=200)
    subs: list[Subscription] = []

    def fills_up(sink: Sink, new: list[Item]) -> None:
        hub.pause(subs[0])  # as transport.write() calls pause_writing() past high water

    sink = Sink(kind)
    subs.append(hub.subscribe("c", kind, sink))
    hub.pause(subs[0])
    publish(hub, "c", *range(1, 13))
    hub.flush()
    sink.on_write = fills_up
    rounds = 0
    while len(sink.messages) < 12:
        rounds += 1
        assert subs[0].paused
        hub.resume(subs[0])
    assert rounds > 1
    assert ids(sink.items) == msg(epoch_of(hub, "c"), *range(1, 13))


def test_subscriber_pausing_inside_a_live_write_gets_each_message_once() -> None:
    hub, _ = make_hub()
    subs: list[Subscription] = []
    sink = Sink(Kind.WS, on_write=lambda sink, new: hub.pause(subs[0]))
    subs.append(hub.subscribe("c", Kind.WS, sink))
    publish(hub, "c", 1, 2)
    hub.flush()
    publish(hub, "c", 3)
    hub.flush()  # paused: not written
    sink.on_write = None
    hub.resume(subs[0])
    assert ids(sink.items) == msg(epoch_of(hub, "c"), 1, 2, 3)


def test_pause_and_resume_after_unsubscribe_change_nothing() -> None:
    hub, _ = make_hub()
    sink = Sink(Kind.WS)
    sub = hub.subscribe("c", Kind.WS, sink)
    hub.unsubscribe(sub)
    hub.pause(sub)
    hub.resume(sub)
    hub.unsubscribe(sub)
    publish(hub, "c", 1)
    hub.flush()
    assert sink.writes == []
    assert sub.channel.subscribers == 0 and not sub.channel.live[Kind.WS]
    assert sub.channel.idle


# --- long polls --------------------------------------------------------------------------------


def test_poll_without_since_parks_at_the_head_and_wakes_once_with_what_came_after() -> None:
    hub, _ = make_hub()
    publish(hub, "c", 1)
    position = hub.poll("c", None)
    assert position == 1
    first, second = Waiter(), Waiter()
    hub.park("c", first)
    hub.park("c", second)
    publish(hub, "c", 2, 3)
    hub.flush()
    publish(hub, "c", 4)
    hub.flush()
    assert len(first.answers) == 1 and first.answers[0] is second.answers[0]  # one shared answer
    answer = first.answers[0]
    epoch = epoch_of(hub, "c")
    assert [m.id for m in answer.messages] == [format_id(epoch, 2), format_id(epoch, 3)]
    assert answer.cursor == format_id(epoch, 3) and not answer.reset
    assert json.loads(answer.body()) == {
        "messages": [{"n": 2}, {"n": 3}],
        "ids": [format_id(epoch, 2), format_id(epoch, 3)],
        "cursor": answer.cursor,
    }


def test_poll_with_since_behind_the_head_answers_at_once() -> None:
    hub, _ = make_hub()
    first, second, third = publish(hub, "c", 1, 2, 3)
    answer = hub.poll("c", first)
    assert isinstance(answer, PollAnswer) and not answer.reset
    assert [m.id for m in answer.messages] == [second, third] and answer.cursor == third
    assert hub.poll("c", third) == 3  # at the head: park


@pytest.mark.parametrize("since", ["nope", "zz-0", "LOST", "FUTURE"])
def test_poll_with_unresumable_since_answers_a_reset_to_the_head(since: str) -> None:
    hub, _ = make_hub(history_size=2)
    message_ids = publish(hub, "c", 1, 2, 3, 4)  # holds 3 and 4: resumable from 2 on
    epoch = epoch_of(hub, "c")
    since = {"LOST": message_ids[0], "FUTURE": format_id(epoch, 7)}.get(since, since)
    answer = hub.poll("c", since)
    assert isinstance(answer, PollAnswer)
    assert answer.reset and answer.messages == [] and answer.cursor == message_ids[-1]
    assert json.loads(answer.body()) == {
        "messages": [],
        "ids": [],
        "cursor": message_ids[-1],
        "reset": True,
    }


def test_a_since_polled_again_is_checked_against_its_channel_each_time() -> None:
    hub, _ = make_hub(history_size=2)
    first, second = publish(hub, "c", 1, 2)
    (elsewhere,) = publish(hub, "d", 1)
    for _ in range(2):  # the same text twice in a row, then in turns with others
        answer = hub.poll("c", first)
        assert isinstance(answer, PollAnswer) and not answer.reset
        assert [m.id for m in answer.messages] == [second]
    assert hub.poll("c", second) == 2
    other = hub.poll("d", second)  # c's epoch, not d's
    assert isinstance(other, PollAnswer) and other.reset and other.cursor == elsewhere
    assert isinstance(hub.poll("c", "nope"), PollAnswer)
    publish(hub, "c", 3, 4)  # now holds 3 and 4: `first` is lost, `second` still resumable
    lost = hub.poll("c", first)
    assert isinstance(lost, PollAnswer) and lost.reset and lost.messages == []
    kept = hub.poll("c", second)
    assert isinstance(kept, PollAnswer) and not kept.reset
    assert [m.data for m in kept.messages] == [b'{"n":3}', b'{"n":4}']


def test_unparked_poll_is_not_woken() -> None:
    hub, _ = make_hub()
    waiter = Waiter()
    assert hub.poll("c", None) == 0
    hub.park("c", waiter)
    assert hub.unpark("c", waiter) == format_id(epoch_of(hub, "c"), 0)
    publish(hub, "c", 1)
    hub.flush()
    assert waiter.answers == []


# --- channels and budgets ----------------------------------------------------------------------


def test_idle_channel_is_evicted_least_recently_used_first() -> None:
    hub, _ = make_hub(max_channels=3)
    for name in "abc":
        publish(hub, name, 1)
    publish(hub, "a", 2)  # "b" is now the least recently used
    publish(hub, "d", 1)
    assert sorted(hub._channels) == ["a", "c", "d"]


def test_recreated_channel_has_a_new_epoch_and_its_old_ids_get_a_reset() -> None:
    hub, _ = make_hub(max_channels=1)
    (old_id,) = publish(hub, "a", 1)
    publish(hub, "b", 1)  # evicts "a"
    (new_id,) = publish(hub, "a", 1)
    assert new_id != old_id and new_id.endswith("-1")
    sink = Sink(Kind.WS)
    hub.subscribe("a", Kind.WS, sink, since=old_id)
    assert ids(sink.items) == [("reset", new_id)]
    answer = hub.poll("a", old_id)
    assert isinstance(answer, PollAnswer) and answer.reset


def test_hub_refuses_a_new_channel_when_every_channel_has_listeners() -> None:
    hub, _ = make_hub(max_channels=2)
    hub.subscribe("a", Kind.WS, Sink(Kind.WS))
    assert hub.poll("b", None) == 0
    hub.park("b", Waiter())
    for attempt in (
        lambda: publish(hub, "c", 1),
        lambda: hub.subscribe("c", Kind.SSE, Sink(Kind.SSE)),
        lambda: hub.poll("c", None),
    ):
        with pytest.raises(HubFull):
            attempt()
    assert sorted(hub._channels) == ["a", "b"]


def test_channel_is_evictable_again_once_its_listeners_leave() -> None:
    hub, _ = make_hub(max_channels=1)
    sub = hub.subscribe("a", Kind.WS, Sink(Kind.WS))
    with pytest.raises(HubFull):
        publish(hub, "b", 1)
    hub.unsubscribe(sub)
    publish(hub, "b", 1)
    assert list(hub._channels) == ["b"]


def _assert_budgets(hub: Hub, config: Config) -> None:
    logs = [ch.log for ch in hub._channels.values()]
    assert hub.total_bytes == sum(log.nbytes for log in logs)
    assert len(logs) <= config.max_channels
    for log in logs:
        assert len(log) <= config.history_size
        assert log.nbytes <= config.history_max_bytes or len(log) == 1
    held = [log for log in logs if len(log)]
    assert hub.total_bytes <= config.history_total_bytes or (len(held) == 1 and len(held[0]) == 1)


def test_history_total_bytes_forgets_idle_channels_first() -> None:
    hub, _ = make_hub(history_total_bytes=4000, history_size=100, max_channels=10)
    hub.subscribe("busy", Kind.WS, Sink(Kind.WS))
    publish(hub, "busy", 1, 2)
    for name in "abcdef":
        publish(hub, name, 1, 2, 3)
        _assert_budgets(hub, hub._config)
    assert "busy" in hub._channels and "a" not in hub._channels
    assert len(hub._channels["busy"].log) == 2


def test_history_total_bytes_holds_when_every_channel_has_listeners() -> None:
    config = {"history_total_bytes": 6000, "history_size": 100, "history_max_bytes": 5000}
    hub, _ = make_hub(**config)
    paused = []
    for name in "abc":
        sink = Sink(Kind.WS)
        sub = hub.subscribe(name, Kind.WS, sink)
        hub.pause(sub)
        paused.append((sub, sink))
        for n in range(3):  # each message costs about 2.4 kB of history
            hub.publish(name, canonical_json({"n": n, "pad": "x" * 700}), now_ms=n)
            _assert_budgets(hub, hub._config)
    hub.flush()
    sub, sink = paused[0]
    hub.resume(sub)  # its history went to keep the budget: it is told so
    assert [item.type for item in sink.items] == ["reset"]


# --- what the hub counts for rawrt.metrics -----------------------------------------------------


def test_counts_follow_subscriptions_deliveries_and_bytes_written() -> None:
    hub, _ = make_hub()
    ws, sse, gone = Sink(Kind.WS), Sink(Kind.SSE), Sink(Kind.WS)
    hub.subscribe("c", Kind.WS, ws)
    hub.subscribe("c", Kind.SSE, sse)
    leaver = hub.subscribe("c", Kind.WS, gone)
    waiter = Waiter()
    hub.park("c", waiter)
    assert hub.subscriptions == [2, 1, 1]
    hub.unsubscribe(leaver)
    hub.unsubscribe(leaver)  # twice: counted out once
    publish(hub, "c", 1, 2)
    hub.flush()
    assert hub.subscriptions == [1, 1, 0]  # the poll was answered
    assert hub.delivered == [2, 2, 2]
    assert hub.delivered_bytes == [len(b"".join(ws.writes)), len(b"".join(sse.writes))]
    other = Waiter()
    hub.park("c", other)
    assert hub.unpark("c", other) and hub.unpark("c", other)  # twice: counted out once
    assert hub.subscriptions == [1, 1, 0]


def test_counts_pauses_and_resets_by_cause() -> None:
    hub, _ = make_hub(history_size=2)
    old = publish(hub, "c", 1)[0]
    hub.flush()
    sink = Sink(Kind.WS)
    sub = hub.subscribe("c", Kind.WS, sink)
    hub.pause(sub)
    hub.pause(sub)  # already paused: one pause
    publish(hub, "c", 2, 3, 4)
    hub.flush()
    hub.resume(sub)  # fell behind the history of 2
    hub.subscribe("c", Kind.SSE, Sink(Kind.SSE), since=old)  # behind as well
    assert isinstance(hub.poll("c", "zzzzzz1-1"), PollAnswer)  # another epoch
    assert hub.pauses == 1
    assert hub.resets == {"behind": 2, "epoch": 1}


# --- permessage-deflate: compressed once, at publish ------------------------------------------

BIG = json.dumps({"text": "compressible " * 60})


def test_deflate_subscribers_share_one_compressed_batch() -> None:
    hub, _ = make_hub(ws_compression=True)
    one, two, plain = Sink(Kind.WS_DEFLATE), Sink(Kind.WS_DEFLATE), Sink(Kind.WS)
    for sink in (one, two, plain):
        hub.subscribe("c", sink.kind, sink)
    small = hub.publish("c", '{"n":1}', now_ms=1)
    big = hub.publish("c", BIG, now_ms=2)
    hub.flush()
    assert one.writes == two.writes and len(one.writes) == 1  # one joined write each
    assert one.writes[0] is two.writes[0]  # the same bytes, not a copy per subscriber
    assert small.frames[2] is small.frames[0]  # under the threshold: the plain frame
    assert big.frames[2][0] & 0x40 and len(big.frames[2]) < len(big.frames[0]) / 4
    assert one.messages == two.messages == plain.messages
    assert [m.data for m in one.messages] == ['{"n":1}', canonical_json(json.loads(BIG))]
    assert hub.delivered[Kind.WS] == 6 and hub.subscriptions == [3, 0, 0]


def test_deflate_subscriber_catches_up_and_resets_from_the_log() -> None:
    hub, _ = make_hub(ws_compression=True, history_size=3)
    first = [hub.publish("c", BIG, now_ms=n).id for n in range(2)]
    hub.flush()
    sink = Sink(Kind.WS_DEFLATE)
    hub.subscribe("c", Kind.WS_DEFLATE, sink, since=first[0])
    assert [m.id for m in sink.messages] == first[1:]
    for n in range(5):
        hub.publish("c", BIG, now_ms=n)
    hub.flush()
    late = Sink(Kind.WS_DEFLATE)
    hub.subscribe("c", Kind.WS_DEFLATE, late, since=first[0])  # fell off: a reset first
    assert late.items[0].type == "reset"
    assert hub.presence("c", 10).websocket == 2


def test_without_compression_messages_carry_no_deflate_frame() -> None:
    hub, _ = make_hub()
    message = hub.publish("c", BIG, now_ms=1)
    assert len(message.frames) == 2
    assert message.size == len(message.data) + sum(map(len, message.frames)) + 200


def test_a_sliced_fan_out_writes_deflate_subscribers_and_counts_them_as_websocket() -> None:
    # With slices of one write, the fan-out reaches sockets of all three kinds over several
    # flush steps, each its own bytes, and the counts put a deflate socket with WebSocket.
    hub, _ = make_hub(ws_compression=True, fanout_slice_writes=1)
    sinks = [Sink(Kind.WS_DEFLATE), Sink(Kind.WS), Sink(Kind.SSE), Sink(Kind.WS_DEFLATE)]
    for sink in sinks:
        hub.subscribe("c", sink.kind, sink)
    big = hub.publish("c", BIG, now_ms=1)
    for _ in range(10):  # bounded: four writes need four steps
        hub.flush_step()
    assert all([m.id for m in sink.messages] == [big.id] for sink in sinks)
    assert sinks[0].writes == [big.frames[Kind.WS_DEFLATE]] == sinks[3].writes
    assert sinks[1].writes == [big.frames[Kind.WS]]
    assert hub.delivered == [3, 1, 0]
