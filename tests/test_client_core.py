"""The client's sans-I/O core: a feed's position, duplicates, stale frames, its bounded
queue, the backoff, and URLs. No socket, no loop."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import CORE, QUIET_PATCH_WRITER

from rawrt.client.auth import refresh_delay
from rawrt.client.core import Endpoint, Feed, Message, Reset, State, backoff_delay

pytestmark = QUIET_PATCH_WRITER


def message(seq: int, epoch: str = "e1") -> Message:
    return Message("news", f"{epoch}-{seq}", {"n": seq}, 1_700_000_000_000 + seq)


def live_feed(since: str | None = None, max_events: int = 100, max_bytes: int = 10**6) -> Feed:
    feed = Feed("news", since, max_events, max_bytes)
    feed.subscribe()
    feed.on_subscribed("e1-0")
    return feed


def drain(feed: Feed) -> list[str]:
    ids = []
    for _ in range(10_000):
        event = feed.take()
        if event is None:
            return ids
        ids.append(event.id)
    raise AssertionError("endless queue")


def test_subscribe_frame_carries_the_position_as_since() -> None:
    fresh = Feed("news", None, 10, 1000)
    assert json.loads(fresh.subscribe()) == {"type": "subscribe", "channel": "news"}
    resumed = Feed("news", "e1-4", 10, 1000)
    assert json.loads(resumed.subscribe()) == {
        "type": "subscribe",
        "channel": "news",
        "since": "e1-4",
    }
    assert resumed.state is State.WAITING


def test_fresh_feed_takes_the_head_of_subscribed_as_its_position() -> None:
    feed = Feed("news", None, 10, 1000)
    feed.subscribe()
    feed.on_subscribed("e1-7")
    assert feed.position == "e1-7" and feed.state is State.LIVE
    feed.disconnected()
    assert json.loads(feed.subscribe())["since"] == "e1-7"


def test_resumed_feed_keeps_its_since_whatever_the_head() -> None:
    feed = live_feed(since="e1-3")
    feed.on_subscribed("e1-9")  # a second answer changes nothing either
    assert feed.position == "e1-3"


def test_frames_before_subscribed_are_dropped() -> None:
    feed = Feed("news", "e1-0", 10, 1000)
    feed.subscribe()
    assert feed.on_message(message(1), 10) is None
    assert feed.queued == 0 and feed.position == "e1-0"


def test_messages_at_or_before_the_position_are_duplicates() -> None:
    feed = live_feed(since="e1-2")
    for seq in (1, 2, 3, 3, 2, 4):
        feed.on_message(message(seq), 10)
    assert drain(feed) == ["e1-3", "e1-4"]
    assert feed.position == "e1-4"


def test_a_reset_moves_the_position_to_a_new_epoch() -> None:
    feed = live_feed(since="e1-2")
    feed.on_reset(Reset("news", "e2-5"), 10)
    feed.on_message(message(5, "e2"), 10)  # not after the reset's id
    feed.on_message(message(6, "e2"), 10)
    assert drain(feed) == ["e2-5", "e2-6"]
    assert feed.position == "e2-6"


def test_a_full_queue_unsubscribes_and_catches_up_from_its_position() -> None:
    feed = live_feed(since="e1-0", max_events=4)
    frames = [feed.on_message(message(seq), 10) for seq in range(1, 8)]
    assert frames[:4] == [None] * 4
    assert json.loads(frames[4] or "") == {"type": "unsubscribe", "channel": "news"}
    assert frames[5:] == [None, None]  # BEHIND: dropped without a word
    assert feed.state is State.BEHIND and feed.position == "e1-4"
    assert [feed.take() is not None for _ in range(2)] == [True, True]
    assert feed.caught_up  # half the queue taken
    assert json.loads(feed.subscribe())["since"] == "e1-4"
    feed.on_message(message(9), 10)  # of the old subscription, before `subscribed`
    feed.on_subscribed("e1-9")
    feed.on_message(message(5), 10)
    assert drain(feed) == ["e1-3", "e1-4", "e1-5"]


def test_the_byte_bound_counts_too_and_one_large_event_always_fits() -> None:
    feed = live_feed(since="e1-0", max_bytes=100)
    assert feed.on_message(message(1), 500) is None  # alone in the queue: taken
    assert feed.on_message(message(2), 10) is not None  # over the bytes: behind
    assert drain(feed) == ["e1-1"]


def test_a_behind_feed_stays_behind_across_a_disconnect() -> None:
    feed = live_feed(since="e1-0", max_events=1)
    feed.on_message(message(1), 1)
    feed.on_message(message(2), 1)
    feed.disconnected()
    assert feed.state is State.BEHIND


@CORE
@given(st.integers(0, 200), st.randoms(use_true_random=False))
def test_backoff_is_within_its_bounds_and_its_ceiling_doubles(
    attempt: int, rng: random.Random
) -> None:
    delay = backoff_delay(attempt, 0.5, 20.0, rng)
    assert 0.5 <= delay <= 20.0
    assert delay <= 0.5 + 0.5 * 2**attempt


def test_backoff_jitters() -> None:
    rng = random.Random(7)
    delays = {round(backoff_delay(5, 0.5, 20.0, rng), 6) for _ in range(50)}
    assert len(delays) > 40  # no synchronized storm
    assert max(delays) > 10


@pytest.mark.parametrize(
    ("url", "authority", "ws_target", "publish_target", "secure"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "/ws", "/api/publish/a%2Fb", False),
        ("https://example.com/rt/", "example.com", "/rt/ws", "/rt/api/publish/a%2Fb", True),
        ("ws://h:81/ws", "h:81", "/ws", "/api/publish/a%2Fb", False),
        ("wss://[::1]:4443/x/ws", "[::1]:4443", "/x/ws", "/x/api/publish/a%2Fb", True),
    ],
)
def test_endpoint_from_url(
    url: str, authority: str, ws_target: str, publish_target: str, secure: bool
) -> None:
    endpoint = Endpoint.parse(url)
    assert endpoint.authority == authority and endpoint.secure is secure
    assert endpoint.websocket_target == ws_target
    assert endpoint.publish_target("a/b") == publish_target


@pytest.mark.parametrize("url", ["ftp://h/", "127.0.0.1:8000", "http://", "http://h:99999"])
def test_endpoint_refuses_what_is_not_a_server_url(url: str) -> None:
    with pytest.raises(ValueError):
        Endpoint.parse(url)


@pytest.mark.parametrize(
    ("exp", "delay"),
    [
        (1000.0 + 3600, 3590.0),  # a long token: token_refresh_s before it expires
        (1000.0 + 12, 6.0),  # a short one: halfway through what is left
        (1000.0 - 5, 0.0),  # already gone: at once
    ],
)
def test_a_getters_token_is_refreshed_before_it_expires(exp: float, delay: float) -> None:
    assert refresh_delay(exp, 1000.0, 10.0) == delay
