"""rawrt.netpolicy: the client address behind trusted proxies, the per-address connection
count, and the WebSocket message budget, driven without a loop or a socket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import CORE, QUIET_PATCH_WRITER

from rawrt.config import Config, ConfigError
from rawrt.netpolicy import (
    Budget,
    ConnectionsPerIp,
    TrustedProxies,
    budget_verdict,
    take_token,
)

pytestmark = QUIET_PATCH_WRITER

PROXIES = TrustedProxies.parse("10.0.0.0/8, 192.168.1.7, ::1")


def client(peer: str, *xff: bytes, real_ip: bytes | None = None) -> str:
    return PROXIES.client_address(peer, xff, real_ip)


# --- trusted proxies ---------------------------------------------------------------------------


def test_an_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    assert client("203.0.113.9", b"1.1.1.1", real_ip=b"2.2.2.2") == "203.0.113.9"
    assert TrustedProxies().client_address("127.0.0.1", [b"1.1.1.1"], b"2.2.2.2") == "127.0.0.1"


def test_a_trusted_peer_gives_the_right_most_untrusted_hop() -> None:
    # The client wrote "6.6.6.6" itself; the first proxy we trust appended what it saw.
    assert client("10.1.2.3", b"6.6.6.6, 198.51.100.4, 10.9.9.9") == "198.51.100.4"
    assert client("192.168.1.7", b"198.51.100.4") == "198.51.100.4"


def test_several_header_lines_are_one_list_in_order() -> None:
    assert client("10.1.2.3", b"6.6.6.6", b"198.51.100.4", b"10.2.2.2") == "198.51.100.4"


def test_all_hops_trusted_gives_the_left_most() -> None:
    assert client("10.1.2.3", b"10.4.4.4, 10.5.5.5") == "10.4.4.4"


def test_an_unreadable_hop_stops_the_walk_at_the_trusted_one_to_its_right() -> None:
    assert client("10.1.2.3", b"1.1.1.1, unknown, 10.7.7.7") == "10.7.7.7"
    assert client("10.1.2.3", b"garbage") == "10.1.2.3"
    assert client("10.1.2.3", b"") == "10.1.2.3"


def test_ports_brackets_and_mapped_addresses_are_read_as_proxies_write_them() -> None:
    assert client("10.1.2.3", b"198.51.100.4:5060") == "198.51.100.4"
    assert client("::1", b"[2001:db8::7]:443") == "2001:db8::7"
    assert client("::ffff:10.1.2.3", b"2001:db8::8") == "2001:db8::8"
    assert client("::ffff:203.0.113.9", b"1.1.1.1") == "203.0.113.9"


def test_x_real_ip_is_used_only_without_x_forwarded_for() -> None:
    assert client("10.1.2.3", real_ip=b"198.51.100.4") == "198.51.100.4"
    assert client("10.1.2.3", b"198.51.100.5", real_ip=b"198.51.100.4") == "198.51.100.5"
    assert client("10.1.2.3", real_ip=b"not an address") == "10.1.2.3"


@pytest.mark.parametrize(
    ("text", "problem"),
    [("10.0.0.1/8", "host bits"), ("10.0.0.0/33", "10.0.0.0/33"), ("localhost", "localhost")],
)
def test_bad_trusted_proxies_are_refused_naming_the_element(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="trusted_proxies.*" + problem):
        Config(trusted_proxies=text)


def test_an_empty_list_trusts_nobody() -> None:
    assert not TrustedProxies.parse(" , ")
    assert Config(trusted_proxies="").trusted_proxies == ""


@CORE
@given(
    forged=st.lists(st.ip_addresses(v=4).map(str), max_size=4),
    real=st.ip_addresses(v=4).filter(lambda a: not a.is_private).map(str),
    proxies=st.lists(
        st.integers(0, 2**24 - 1).map(lambda n: f"10.{n >> 16}.{n >> 8 & 255}.{n & 255}"),
        max_size=3,
    ),
)
def test_nothing_a_client_writes_moves_its_address_past_the_real_one(
    forged: list[str], real: str, proxies: list[str]
) -> None:
    """Whatever the client forges to the left, the first untrusted hop from the right wins."""
    header = ", ".join([*forged, real, *proxies]).encode()
    assert client("10.0.0.1", header) == real


# --- connections per address -------------------------------------------------------------------


def test_per_ip_counter_refuses_past_the_limit_and_forgets_released_addresses() -> None:
    counter = ConnectionsPerIp(limit=2, max_tracked=10)
    assert counter.acquire("a") and counter.acquire("a")
    assert not counter.acquire("a")
    assert counter.acquire("b")
    assert counter.count("a") == 2
    counter.release("a")
    assert counter.acquire("a")
    for _ in range(3):
        counter.release("a")
    counter.release("b")
    assert len(counter) == 0


def test_a_connection_changing_hands_is_counted_without_a_check() -> None:
    counter = ConnectionsPerIp(limit=1, max_tracked=10)
    assert counter.acquire("a")
    counter.release("a")  # the HTTP side lets the socket go ...
    counter.add("a")  # ... and the transport taking it over counts it again
    assert counter.count("a") == 1 and not counter.acquire("a")


def test_per_ip_counter_never_tracks_more_addresses_than_its_bound() -> None:
    counter = ConnectionsPerIp(limit=0, max_tracked=3)
    assert all(counter.acquire(f"10.0.0.{n}") for n in range(3))
    assert not counter.acquire("10.0.0.9")
    assert counter.acquire("10.0.0.1")  # a known address is no new entry
    assert len(counter) == 3


# --- the message budget ------------------------------------------------------------------------


def drain(count: int, rate: float, burst: float, gap_s: float) -> list[Budget]:
    tokens, verdicts = float(burst), []
    for _ in range(count):
        tokens = take_token(tokens, gap_s, rate, burst)
        verdicts.append(budget_verdict(tokens, burst))
    return verdicts


def test_a_burst_is_within_then_over_then_far_over() -> None:
    verdicts = drain(21, rate=1.0, burst=10, gap_s=0.0)
    assert verdicts[:10] == [Budget.WITHIN] * 10
    assert verdicts[10:19] == [Budget.OVER] * 9
    assert verdicts[19:] == [Budget.FAR_OVER] * 2


def test_sending_at_the_rate_is_always_within() -> None:
    assert set(drain(1000, rate=50.0, burst=1, gap_s=1 / 50)) == {Budget.WITHIN}


def test_the_bucket_refills_but_never_above_its_burst() -> None:
    tokens = take_token(-3.0, 10.0, rate=5.0, burst=4)
    assert tokens == 3.0  # refilled to 4, then one spent
    assert take_token(-4.0, 0.0, rate=5.0, burst=4) == -4.0  # debt is bounded by one burst


@CORE
@given(
    gaps=st.lists(st.floats(0, 5, allow_nan=False), max_size=200),
    rate=st.floats(0.1, 1000, allow_nan=False),
    burst=st.integers(1, 500),
)
def test_the_bucket_stays_within_one_burst_either_side(
    gaps: list[float], rate: float, burst: int
) -> None:
    tokens = float(burst)
    for gap in gaps:
        tokens = take_token(tokens, gap, rate, burst)
        assert -burst <= tokens <= burst - 1


def test_network_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key"):
        Config(tls_cert="/x.pem")
    with pytest.raises(ConfigError, match="max_client_message_burst"):
        Config(max_client_message_burst=0)
    assert Config(max_client_messages_per_s=0.0, max_connections_per_ip=0)
