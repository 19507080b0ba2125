"""IP address to origin ASN, from an offline prefix table (no network, no Django).

The table is a public prefix-to-ASN dump such as CAIDA's RouteViews "pfx2as" files, one
prefix a line, either `1.0.0.0<TAB>24<TAB>13335` or `2001:db8::/32<TAB>64500`. A prefix
announced by several origins (`13335_4826`) or with an AS set (`13335,4826`) counts as its
first ASN: routing only needs "which network is this node in", and the first origin is as
good a label as any. Comments (`#`) and blank lines are skipped; anything else that does
not parse is refused with its line number, because a half-loaded table would silently
weaken the diversity rules that depend on it.

Lookup is longest-prefix match. At load time the nested prefixes of each address family
are flattened into sorted, non-overlapping intervals (a step function "address -> ASN"),
so a lookup is one binary search: 1-2 microseconds on a full RouteViews-sized table.

Routing keys a node by `asn_or_block(ip)`: "AS<n>" when the table knows the address,
otherwise its /24 or /48 block, so an ASN rule still separates what it can.
"""

from __future__ import annotations

import functools
import gc
import gzip
import ipaddress
import os
import socket
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from pathlib import Path

ENV_VAR = "BIM_ASN_TABLE"
MAX_ASN = 2**32 - 1
_BITS = {4: 32, 6: 128}
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_V4_MAPPED = 0xFFFF << 32  # ::ffff:0:0/96


class AsnTableError(ValueError):
    """A line of a prefix table that does not parse; names the source and line number."""

    def __init__(self, source: str, line_number: int, problem: str, line: str) -> None:
        self.source = source
        self.line_number = line_number
        super().__init__(f"{source}, line {line_number}: {problem}: {line.strip()[:120]!r}")


# ---------------------------------------------------------------- addresses


def _address_int(text: str) -> tuple[int, int]:
    """(version, integer) of an address; IPv4-mapped IPv6 addresses count as IPv4."""
    if ":" not in text:
        try:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        except OSError:
            raise ValueError(f"{text!r} is not an IP address") from None
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except OSError:
        value = int(ipaddress.IPv6Address(text))  # scoped addresses (fe80::1%eth0); raises ValueError
    if value & ~0xFFFFFFFF == _V4_MAPPED:
        return 4, value & 0xFFFFFFFF
    return 6, value


def ip_block(ip: str | None) -> str:
    """The /24 (IPv4) or /48 (IPv6) network an address belongs to ("" for no address).

    An IPv4-mapped IPv6 address (`::ffff:192.0.2.7`, what a dual-stack socket reports)
    gets its IPv4 /24, not the one `::/48` that every such address would otherwise share.
    """
    if not ip:
        return ""
    address = ipaddress.ip_address(ip)
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


# ---------------------------------------------------------------- the table format


def _parse_asn(field: str) -> int:
    first = field.replace(",", "_").split("_", 1)[0]
    if not (first.isascii() and first.isdigit()):  # also refuses "", "-1", "+5" and asdot "1.10"
        raise ValueError(f"ASN {field!r} is not a number")
    asn = int(first)
    if asn > MAX_ASN:
        raise ValueError(f"ASN {asn} is larger than 2**32 - 1")
    return asn


def _parse_line(fields: list[str]) -> tuple[int, int, int, int]:
    if len(fields) == 3:
        address, length_text, asn_text = fields
    elif len(fields) == 2 and "/" in fields[0]:
        address, length_text = fields[0].split("/", 1)
        asn_text = fields[1]
    else:
        raise ValueError("expected 'prefix<TAB>length<TAB>asn' or 'prefix/length<TAB>asn'")
    version = 4 if ":" not in address else 6
    try:
        network = int.from_bytes(socket.inet_pton(_FAMILY[version], address), "big")
    except OSError:
        raise ValueError(f"{address!r} is not an IPv{version} address") from None
    if not (length_text.isascii() and length_text.isdigit()) or int(length_text) > _BITS[version]:
        raise ValueError(f"prefix length {length_text!r} is not 0..{_BITS[version]}")
    length = int(length_text)
    if network & ((1 << (_BITS[version] - length)) - 1):
        raise ValueError(f"{address}/{length} has host bits set")
    return version, network, length, _parse_asn(asn_text)


def parse_prefix_table(lines: Iterable[str], *, source: str = "<table>") -> Iterator[tuple[int, int, int, int]]:
    """(version, network as int, prefix length, asn) for each prefix line, in file order."""
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            yield _parse_line(text.split())
        except ValueError as exc:
            raise AsnTableError(source, number, str(exc), line) from None


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    # Undecodable bytes become U+FFFD, so the line holding them is refused by number.
    return path.open(encoding="utf-8", errors="replace")


# ---------------------------------------------------------------- flattening


def _flatten(prefixes: dict[tuple[int, int], int], bits: int) -> tuple[list[int], list[int]]:
    """Sorted interval starts and the ASN from each start on (-1: no prefix covers it).

    CIDR prefixes are either nested or disjoint, so one sweep in (start, shortest first)
    order with a stack of the enclosing prefixes gives the most specific ASN everywhere.
    """
    starts: list[int] = []
    asns: list[int] = []

    def mark(position: int, asn: int) -> None:
        if starts and starts[-1] == position:
            asns[-1] = asn  # several boundaries at one address: the last one holds
        elif not asns or asns[-1] != asn:
            starts.append(position)
            asns.append(asn)

    stack: list[tuple[int, int]] = []  # (last address, asn) of the enclosing prefixes
    for network, length in sorted(prefixes):
        while stack and stack[-1][0] < network:
            end = stack.pop()[0]
            mark(end + 1, stack[-1][1] if stack else -1)
        asn = prefixes[network, length]
        mark(network, asn)
        stack.append((network + (1 << (bits - length)) - 1, asn))
    while stack:
        end = stack.pop()[0]
        mark(end + 1, stack[-1][1] if stack else -1)
    if starts and starts[-1] >= 1 << bits:  # the boundary just past the last address
        starts.pop()
        asns.pop()
    return starts, asns


class AsnResolver:
    """Longest-prefix-match lookups over an in-memory prefix table. Immutable once built."""

    def __init__(self, entries: Iterable[tuple[int, int, int, int]] = (), *, source: str = "<table>") -> None:
        """`entries`: (version, network, length, asn), e.g. from `parse_prefix_table`. The
        same prefix twice with different ASNs is refused: merged tables that disagree are
        a mistake to fix, not a tie to break silently."""
        by_family: dict[int, dict[tuple[int, int], int]] = {4: {}, 6: {}}
        for version, network, length, asn in entries:
            table = by_family[version]
            previous = table.setdefault((network, length), asn)
            if previous != asn:
                prefix = (ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network)((network, length))
                raise ValueError(f"{source}: {prefix} is listed with AS{previous} and AS{asn}")
        self.source = source
        self.prefix_count = len(by_family[4]) + len(by_family[6])
        v4_starts, v4_asns = _flatten(by_family[4], 32)
        self._starts: dict[int, array | list[int]] = {4: array("I", v4_starts)}
        self._asns: dict[int, array] = {4: array("q", v4_asns)}
        # 128-bit starts do not fit an array; IPv6 tables are a fraction of the IPv4 ones.
        v6_starts, v6_asns = _flatten(by_family[6], 128)
        self._starts[6] = v6_starts
        self._asns[6] = array("q", v6_asns)

    @classmethod
    def from_lines(cls, lines: Iterable[str], *, source: str = "<table>") -> AsnResolver:
        # Millions of small tuples, none of them cyclic: without this the cyclic collector
        # runs hundreds of times and doubles the load time.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return cls(parse_prefix_table(lines, source=source), source=source)
        finally:
            if gc_was_enabled:
                gc.enable()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> AsnResolver:
        """Load a pfx2as file (plain or .gz). Raises AsnTableError naming a bad line."""
        path = Path(path)
        with _open_text(path) as handle:
            return cls.from_lines(handle, source=str(path))

    def __len__(self) -> int:
        return self.prefix_count

    def __repr__(self) -> str:
        return f"<AsnResolver {self.source}: {self.prefix_count} prefixes>"

    def lookup(self, ip: str) -> int | None:
        """The origin ASN of the most specific prefix holding `ip`, or None. Raises
        ValueError when `ip` is not an IP address."""
        version, value = _address_int(ip)
        index = bisect_right(self._starts[version], value) - 1
        if index < 0:
            return None
        asn = self._asns[version][index]
        return None if asn < 0 else asn


# ---------------------------------------------------------------- configured resolver


def resolver_from_settings() -> AsnResolver:
    """The table named by BIM_ASN_TABLE, freshly loaded; an empty resolver when unset.
    A set but missing or malformed file raises: running without the ASN rule that the
    operator asked for must not go unnoticed."""
    path = os.environ.get(ENV_VAR, "").strip()
    if not path:
        return AsnResolver(source="<no table>")
    return AsnResolver.from_file(path)


@functools.lru_cache(maxsize=1)
def default_resolver() -> AsnResolver:
    """`resolver_from_settings()`, loaded once per process (`default_resolver.cache_clear()`
    after changing BIM_ASN_TABLE)."""
    return resolver_from_settings()


def asn_or_block(ip: str | None, *, resolver: AsnResolver | None = None) -> str:
    """`AS<n>` for an address the table knows, else its /24 or /48 block ("" for no address)."""
    if not ip:
        return ""
    asn = (resolver if resolver is not None else default_resolver()).lookup(ip)
    return f"AS{asn}" if asn is not None else ip_block(ip)
