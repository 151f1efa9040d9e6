"""Which client a request comes from, for limits on clients that present no credentials."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

__all__ = ["client_address", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """CIDR blocks (``10.0.0.0/8``, ``130.211.0.0/22``, a single address).

    Raises:
        ValueError: one is not an address or a network.
    """
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip())


def _within(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str | None, headers: Mapping[str, str], trusted_proxies: Sequence[Network]) -> str:
    """The client's address: the connection's peer, or, when the peer is a trusted proxy, the right-most
    ``X-Forwarded-For`` entry that is not itself a trusted proxy (entries further left can be forged)."""
    address = peer or "-"
    if not trusted_proxies or not _within(address, trusted_proxies):
        return address
    forwarded = [hop.strip() for hop in headers.get("x-forwarded-for", "").split(",") if hop.strip()]
    for hop in reversed(forwarded):
        if not _within(hop, trusted_proxies):
            return hop
    return address
