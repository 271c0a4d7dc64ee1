"""Which addresses the fetcher may connect to: public unicast only, unless allowed.

A URL from the open internet must not make the fetcher reach the machine it runs on, the
cluster's private network or the cloud's metadata service (169.254.169.254). The policy is
pure (ipaddress objects in, a reason out), so it is tested without a single connection, and it
is applied three times on the way to a socket:

- to the URL's host when it is an IP literal, in any form a resolver would accept
  (`2130706433`, `0x7f000001`, `0177.0.0.1` and `127.1` all mean 127.0.0.1);
- to every address the resolver returns (resolver.py drops the blocked ones, so the connector
  only ever sees checked addresses: no window between check and connect);
- to the socket address itself, in the connector's socket factory, as a last line that holds
  even if a path above had a bug.

The reason is stable text ("blocked address: loopback") because users count failures by it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

BLOCKED_PREFIX = "blocked address: "

# Checked in order; the first match names the reason. Everything else that is not globally
# routable (documentation, benchmarking, protocol assignments...) falls under "special-purpose".
_CATEGORIES: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), reason)
    for net, reason in (
        ("0.0.0.0/8", "unspecified"),  # "this network": Linux connects 0.0.0.0 to itself
        ("10.0.0.0/8", "private network"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),  # includes the cloud metadata service
        ("172.16.0.0/12", "private network"),
        ("192.168.0.0/16", "private network"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # includes the broadcast address 255.255.255.255
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0/96", "ipv4-mapped"),  # ::ffff:127.0.0.1 is 127.0.0.1 on a dual stack
        # SIIT's IPv4-translated form (RFC 2765) and the deprecated IPv4-compatible one
        # (RFC 4291): both name an IPv4 host a translator or an old stack would reach.
        ("::ffff:0:0:0/96", "ipv4-translated"),
        ("::/96", "ipv4-compatible"),
        # Local-use NAT64 (RFC 8215): a translator inside the operator's own network, with an
        # IPv4 address at an offset only its operator knows: never a public destination.
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),  # deprecated (RFC 3879), still routed inside some sites
        ("fc00::/7", "unique local"),
        ("ff00::/8", "multicast"),
    )
)
# IPv6 prefixes that carry an IPv4 address a gateway would forward to: judged by that address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# What inet_aton (and so getaddrinfo) reads as an IPv4 address besides the dotted quad.
_LEGACY_IPV4 = re.compile(r"[0-9a-fA-FxX.]+")


class BlockedAddress(OSError):
    """A connection to an address the policy refuses. An OSError, so that raised inside the
    resolver or the socket factory it travels through aiohttp as a connection error."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{BLOCKED_PREFIX}{reason}")
        self.reason = reason

    def __str__(self) -> str:
        return f"{BLOCKED_PREFIX}{self.reason}"


def category(ip: IPAddress) -> str | None:
    """Why `ip` is not a public unicast address, or None when it is."""
    for net, reason in _CATEGORIES:
        if ip.version == net.version and ip in net:
            return reason
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = category(embedded)
            if inner is not None:
                return inner
    if not ip.is_global:
        return "special-purpose"
    return None


def literal_address(host: str) -> IPAddress | None:
    """`host` as an IP address if it is one in any form a resolver would take as such
    (IPv6 with or without brackets, the canonical dotted quad, and the legacy decimal, hex,
    octal and short forms), else None: a name to resolve."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (a bare address is its own /32 or /128); host bits are ignored."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


class AddressPolicy:
    """Public unicast addresses pass; others only inside an explicitly allowed network."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = parse_networks(allowed)

    def blocked(self, ip: IPAddress) -> str | None:
        """The reason `ip` is refused, or None when it may be connected to."""
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return None
        return category(ip)

    def check(self, ip: IPAddress) -> None:
        reason = self.blocked(ip)
        if reason is not None:
            raise BlockedAddress(reason)

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """For aiohttp's TCPConnector: the socket is made only for an allowed address."""
        family, type_, proto, _canonname, sockaddr = addr_info
        self.check(ipaddress.ip_address(sockaddr[0]))
        return socket.socket(family=family, type=type_, proto=proto)
