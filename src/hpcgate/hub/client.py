"""The client's address as seen behind the hub's trusted proxies.

JupyterHub runs tornado with ``xheaders=True``, which takes the last X-Forwarded-For
entry from *any* peer. hpcgate's grant conditions (``networks``) need more care: the
header is believed only when the TCP peer is a trusted proxy
(:attr:`HPCGate.trusted_proxies`, by default the loopback addresses where
configurable-http-proxy runs). The entries are then read from the right -- each
trusted proxy appends the address it saw -- and the first address that is not itself
a trusted proxy is the client. A client that sends its own X-Forwarded-For gains
nothing: its value is left of the address its proxy appended.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> Address | None:
    """An IP address (IPv4-mapped IPv6 as IPv4, zone and brackets dropped), or None."""
    text = text.strip().strip("[]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def parse_networks(values: Iterable[str]) -> list[Network]:
    """Networks from addresses or CIDR strings; ValueError naming a bad one."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP address or network: {exc}") from None
    return out


def _trusted(ip: Address, proxies: Sequence[Network]) -> bool:
    return any(ip.version == net.version and ip in net for net in proxies)


def client_address(peer: str | None, forwarded_for: Iterable[str], proxies: Sequence[Network]) -> str | None:
    """The client's address, as a string; ``None`` if unknown (e.g. a Unix socket peer).

    ``peer``: the TCP peer's address. ``forwarded_for``: every X-Forwarded-For header
    value, in order. ``proxies``: the trusted proxies.
    """
    ip = parse_address(peer or "")
    if ip is None:
        return None
    if not _trusted(ip, proxies):
        return str(ip)
    entries = [e for value in forwarded_for for e in value.split(",") if e.strip()]
    for entry in reversed(entries):
        hop = parse_address(entry)
        if hop is None:
            # garbage left of what our proxies appended: stop at the last good address
            return str(ip)
        ip = hop
        if not _trusted(ip, proxies):
            return str(ip)
    return str(ip)


def request_client_address(request: object, proxies: Sequence[Network]) -> str | None:
    """:func:`client_address` for a tornado ``HTTPServerRequest`` (the socket's peer)."""
    context = getattr(getattr(request, "connection", None), "context", None)
    address = getattr(context, "address", None)
    peer = address[0] if isinstance(address, tuple) and address else None
    headers = getattr(request, "headers", None)
    forwarded = headers.get_list("X-Forwarded-For") if headers is not None else []
    return client_address(peer, forwarded, proxies)
