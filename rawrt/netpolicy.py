"""Who a client is and how much it may take: the network policy, sans I/O.

Three small pieces, each decided in one place and called by the I/O edge:

**The client address.** A TCP peer is the client unless it is a trusted proxy
(`--trusted-proxies`, addresses and CIDRs parsed once with `ipaddress`). Only from a trusted
peer are `X-Forwarded-For` and `X-Real-IP` believed, and then only as far as the chain of
trusted hops goes: `X-Forwarded-For` is read from the right, each proxy having appended the
address it saw, and the first element that is *not* a trusted proxy is the client. Everything
to its left was written by that client (or by proxies we know nothing of) and could say
anything. When every element is trusted the left-most is taken. An element that is not an IP
address stops the walk, and the hop to its right (a trusted proxy) is the answer: attributing
the request to the proxy is wrong but harmless, believing a forged address is not. With no
`X-Forwarded-For`, a trusted peer's `X-Real-IP` (one address, nginx's `$remote_addr`) is used.

**Connections per address.** `ConnectionsPerIp` counts what each address holds open and
refuses one more past `--max-connections-per-ip`. Its table has one entry per address that
holds at least one connection, so it can never have more entries than the server has
connections; it is nonetheless capped at the global connection cap, so no bug in a caller can
grow it without a bound.

**A message budget per WebSocket.** A token bucket, kept as two floats on the session (no
object, no task, no timer): `take_token` refills it for the time elapsed since the last
message and takes one token; `budget_verdict` says whether the message is within the rate,
over it (the bucket is below zero: the message is refused with an error frame) or far over
it (the bucket is a whole burst below zero: the client kept sending after being told, and is
closed with 1008). A refused message still costs its token, so a client that does not slow
down reaches the far end.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable

from rawrt.errors import ConfigError

__all__ = [
    "Budget",
    "ConnectionsPerIp",
    "TrustedProxies",
    "budget_verdict",
    "take_token",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_address(text: str) -> Address | None:
    """An IP address as proxies write it (`1.2.3.4`, `1.2.3.4:80`, `[::1]:80`), or None."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port (some load balancers add one)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return address


class TrustedProxies:
    """The peers whose forwarding headers are believed, and the client address they give."""

    __slots__ = ("_networks",)

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self._networks = tuple(networks)

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        """`10.0.0.0/8, 192.168.1.7, ::1`: addresses and CIDRs, separated by commas.

        Raises ConfigError naming the bad element (a CIDR with host bits set is refused: it
        is usually a typing mistake for a wider or narrower network than meant).
        """
        networks: list[Network] = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            try:
                networks.append(ipaddress.ip_network(item))
            except ValueError as exc:
                raise ConfigError(f"trusted_proxies: {exc}") from None
        return cls(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: Address) -> bool:
        return any(address in network for network in self._networks)

    def trusts_peer(self, peer: str) -> bool:
        address = _parse_address(peer)
        return address is not None and self.trusts(address)

    def client_address(
        self, peer: str, forwarded_for: Iterable[bytes], real_ip: bytes | None
    ) -> str:
        """The client's address for a request from `peer` carrying these headers.

        `forwarded_for` is every `X-Forwarded-For` field line in order (RFC 9110 §5.3: they
        are one comma-separated list); `real_ip` the `X-Real-IP` value, if any.
        """
        if not self._networks:
            return peer
        address = _parse_address(peer)
        if address is None:
            return peer
        if not self.trusts(address):
            return str(address)
        hops = [hop for line in forwarded_for for hop in line.split(b",")]
        if hops:
            return str(self._walk(address, hops))
        if real_ip is not None:
            claimed = _parse_address(real_ip.decode("latin-1"))
            if claimed is not None:
                return str(claimed)
        return str(address)

    def _walk(self, nearest: Address, hops: list[bytes]) -> Address:
        """Right to left through trusted hops; the first untrusted one is the client."""
        for raw in reversed(hops):
            hop = _parse_address(raw.decode("latin-1"))
            if hop is None:
                return nearest  # unreadable: nothing further left can be believed
            nearest = hop
            if not self.trusts(hop):
                return hop
        return nearest


class ConnectionsPerIp:
    """Open connections per client address, refusing one past `limit` (0: no limit)."""

    __slots__ = ("_counts", "_limit", "_max_tracked")

    def __init__(self, limit: int, max_tracked: int) -> None:
        self._limit = limit
        # Every tracked address holds a connection, so the global connection cap bounds the
        # table already; this makes the bound explicit rather than a consequence.
        self._max_tracked = max_tracked
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, address: str) -> int:
        return self._counts.get(address, 0)

    def acquire(self, address: str) -> bool:
        """Count one more connection for `address`; False (and nothing counted) if full."""
        held = self._counts.get(address, 0)
        if self._limit and held >= self._limit:
            return False
        if not held and len(self._counts) >= self._max_tracked:
            return False
        self._counts[address] = held + 1
        return True

    def add(self, address: str) -> None:
        """Count a connection that changed hands (its count was released a moment ago), so
        it may not be refused now; the table stays bounded by the open connections."""
        self._counts[address] = self._counts.get(address, 0) + 1

    def release(self, address: str) -> None:
        held = self._counts.get(address, 0)
        if held > 1:
            self._counts[address] = held - 1
        else:
            self._counts.pop(address, None)


class Budget(enum.Enum):
    """What a client message gets from its WebSocket's token bucket."""

    WITHIN = "within"  # handle it
    OVER = "over"  # refuse it with an error frame; the socket stays open
    FAR_OVER = "far over"  # close the socket with 1008


def take_token(tokens: float, elapsed_s: float, rate: float, burst: float) -> float:
    """The bucket after refilling for `elapsed_s` at `rate` per second (up to `burst`) and
    spending one token. It may go below zero, down to one burst below (then it stays there:
    a client cannot dig a debt it would take longer than a burst's time to repay)."""
    return max(-burst, min(burst, tokens + elapsed_s * rate) - 1.0)


def budget_verdict(tokens: float, burst: float) -> Budget:
    """The verdict on the message that left the bucket at `tokens`."""
    if tokens >= 0.0:
        return Budget.WITHIN
    return Budget.FAR_OVER if tokens <= -burst else Budget.OVER
