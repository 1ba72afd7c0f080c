"""SSRF guard: which addresses an image URL may make us connect to.

Pure functions, so they are tested without ever connecting anywhere. The fetcher resolves a
host once, checks every address with :func:`blocked_reason`, then connects to a checked
address (no second lookup that DNS rebinding could change), and does it again for each redirect.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges that ipaddress' flags do not all cover (or cover differently between versions).
_EXTRA_BLOCKED: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.ip_network("0.0.0.0/8"), "unspecified"),
    (ipaddress.ip_network("100.64.0.0/10"), "carrier-grade NAT (shared)"),
    (ipaddress.ip_network("192.0.0.0/24"), "IETF protocol assignments"),
    (ipaddress.ip_network("198.18.0.0/15"), "benchmarking"),
    (ipaddress.ip_network("255.255.255.255/32"), "broadcast"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "local-use NAT64"),
    (ipaddress.ip_network("fec0::/10"), "site-local"),
)


def parse_host_address(host: str) -> IPAddress | None:
    """The IP address a URL host denotes, or None when it is a name to resolve.

    Accepts every spelling that C's ``inet_aton`` (and so most HTTP clients) accepts:
    ``127.0.0.1``, ``2130706433`` (decimal), ``0x7f000001``, ``0177.0.0.1`` (octal), ``127.1``,
    and bracketed or zone-scoped IPv6.
    """
    host = host.strip().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "%" in host:
        host = host.split("%", 1)[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    return _parse_inet_aton(host)


def _parse_inet_aton(host: str) -> ipaddress.IPv4Address | None:
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if not part:
            return None
        try:
            if part.lower().startswith("0x"):
                value = int(part[2:] or "0", 16)
            elif len(part) > 1 and part.startswith("0"):
                value = int(part[1:], 8)
            else:
                value = int(part, 10)
        except ValueError:
            return None
        values.append(value)
    limits = {1: [2**32], 2: [256, 2**24], 3: [256, 256, 2**16], 4: [256] * 4}[len(values)]
    if any(v < 0 or v >= lim for v, lim in zip(values, limits, strict=True)):
        return None
    number = values[-1]
    for i, value in enumerate(values[:-1]):
        number |= value << (24 - 8 * i)
    return ipaddress.IPv4Address(number)


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in ipaddress.ip_network("64:ff9b::/96"):  # well-known NAT64 prefix
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr in ipaddress.ip_network("::/96") and int(addr) > 1:  # deprecated IPv4-compatible
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def blocked_reason(addr: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why connecting to ``addr`` is refused, or None when it is a public address (or allowed)."""
    if any(addr.version == net.version and addr in net for net in allowed):
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_ipv4(addr)
        if inner is not None:
            reason = blocked_reason(inner, allowed)
            return f"{reason} (embedded in IPv6)" if reason else None
    checks = (
        ("loopback", addr.is_loopback),
        ("link-local", addr.is_link_local),
        ("multicast", addr.is_multicast),
        ("unspecified", addr.is_unspecified),
        ("private", addr.is_private),
        ("reserved", addr.is_reserved),
    )
    for name, hit in checks:
        if hit:
            return name
    for net, name in _EXTRA_BLOCKED:
        if addr.version == net.version and addr in net:
            return name
    if not addr.is_global:
        return "not globally routable"
    return None


def parse_networks(cidrs: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]
