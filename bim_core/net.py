"""Network facts about a request, the same for HTTP views and websocket consumers.

Which address a request came from is decided once per connection, before any view or
consumer runs: `bim_site.proxies.TrustedProxyMiddleware` applies `scope_behind_proxies` to
the ASGI scope, so `scope["client"]` (and the `REMOTE_ADDR` Django derives from it) already
holds the client's address when the peer is a trusted reverse proxy. `client_ip` only reads
it. The rule (`forwarded_client`) is the usual one: the peer is the client unless it is a
trusted proxy; then `X-Forwarded-For` is read right to left, past the trusted proxies, and
the first address that is not one of them is the client. Entries left of it were written by
the client itself and prove nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
TrustedNetworks = tuple[Network, ...]

# Request headers only a proxy may set. From a peer that is not a trusted proxy they are the
# client's own claims: dropped, so nothing downstream (Django's SECURE_PROXY_SSL_HEADER or
# USE_X_FORWARDED_HOST, a library reading X-Real-IP) can be talked into believing them.
PROXY_HEADERS = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port", b"x-real-ip", b"forwarded"}
)
# More trusted proxies in a row than any real deployment has: read no further, keep the peer.
MAX_HOPS = 32


def client_ip(source: Mapping[str, Any]) -> str | None:
    """The client's address from an ASGI scope (`client`) or a Django request's META
    (`REMOTE_ADDR`), as the proxy middleware left it: the one place code reads it."""
    client = source.get("client")
    if client:
        return str(client[0]) or None
    return source.get("REMOTE_ADDR") or None


def parse_networks(text: str) -> TrustedNetworks:
    """Comma-separated addresses and CIDR blocks (`10.0.0.5, 192.168.0.0/24, ::1`); raises
    ValueError naming the first entry that is neither (a host name is refused: a proxy is
    trusted by the address it connects from)."""
    networks = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR block") from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    """An address as proxies write it: bare, `[v6]` or `[v6]:port`, `v4:port`; IPv4-mapped
    IPv6 (what a dual-stack socket reports) as IPv4. None for anything else (`unknown`,
    RFC 7239 obfuscated identifiers, garbage)."""
    text = text.strip()
    if text.startswith("["):
        text, bracket, _ = text[1:].partition("]")
        if not bracket:
            return None
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: Address, trusted: TrustedNetworks) -> bool:
    return any(address in network for network in trusted)


def forwarded_client(peer: str | None, forwarded_for: str | None, trusted: TrustedNetworks) -> str | None:
    """The client's address: `peer` unless it is a trusted proxy; then the right-most entry of
    `forwarded_for` (the X-Forwarded-For value, several headers joined by commas) that is not
    a trusted proxy. A trusted peer without the header is the client (a health check from the
    proxy itself); a chain of trusted proxies only gives its left-most entry. A malformed
    entry where the walk reaches it, or more than MAX_HOPS trusted entries in a row, give the
    peer: never a guess, never an exception. Only the entries the walk reaches are read, so
    what a client writes left of its own address (padding, garbage) changes nothing."""
    if peer is None or not trusted:
        return peer
    peer_address = _address(peer)
    if peer_address is None or not is_trusted(peer_address, trusted) or not forwarded_for:
        return peer
    entries = forwarded_for.rsplit(",", MAX_HOPS)  # the last MAX_HOPS entries, split; the rest unread
    client = peer_address
    for entry in reversed(entries[-MAX_HOPS:]):
        hop = _address(entry)
        if hop is None:
            return peer
        if not is_trusted(hop, trusted):
            return str(hop)
        client = hop
    return peer if len(entries) > MAX_HOPS else str(client)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """A request header from an ASGI scope; repeated headers joined by commas (RFC 9110 §5.3),
    in order. ASGI servers give names lower-cased; values are bytes, read as latin-1."""
    values = [value.decode("latin-1") for key, value in headers if key.lower() == name]
    return ",".join(values) if values else None


def _forwarded_scheme(value: str | None, websocket: bool) -> str | None:
    """The scheme X-Forwarded-Proto names. The right-most value: a proxy that appends rather
    than overwrites leaves the client's own claim on the left."""
    if not value:
        return None
    proto = value.split(",")[-1].strip().lower()
    secure = {"https": True, "wss": True, "http": False, "ws": False}.get(proto)
    if secure is None:
        return None
    if websocket:
        return "wss" if secure else "ws"
    return "https" if secure else "http"


def scope_behind_proxies(scope: dict[str, Any], trusted: TrustedNetworks) -> dict[str, Any]:
    """An HTTP or websocket scope as the client made it. From a trusted proxy: `client` is the
    forwarded client (port 0: the client's port is not forwarded) and `scheme` follows
    X-Forwarded-Proto. From anyone else: unchanged but for the proxy headers, removed."""
    client = scope.get("client")
    peer = str(client[0]) if client else None
    headers = scope.get("headers") or []
    peer_address = _address(peer) if peer and trusted else None
    if peer_address is None or not is_trusted(peer_address, trusted):
        if any(key.lower() in PROXY_HEADERS for key, _ in headers):
            return dict(scope, headers=[(key, value) for key, value in headers if key.lower() not in PROXY_HEADERS])
        return scope
    changed = dict(scope)
    address = forwarded_client(peer, _header(headers, b"x-forwarded-for"), trusted)
    if address != peer:
        changed["client"] = (address, 0)
    scheme = _forwarded_scheme(_header(headers, b"x-forwarded-proto"), scope.get("type") == "websocket")
    if scheme is not None:
        changed["scheme"] = scheme
    return changed
