"""IP to ASN from an offline prefix table: longest-prefix match over nested IPv4 and IPv6
prefixes, both pfx2as layouts, multi-origin entries, loud refusal of bad lines, the block
fallback, and the resolver configured by BIM_ASN_TABLE. Pure: no database, no network."""

from __future__ import annotations

import gzip
import ipaddress
import random
from pathlib import Path

import pytest

from registry import asn
from registry.asn import AsnResolver, AsnTableError, asn_or_block, default_resolver, ip_block

TABLE = Path(__file__).resolve().parent.parent / "data" / "asn_test.tsv"


@pytest.fixture(scope="module")
def resolver() -> AsnResolver:
    return AsnResolver.from_file(TABLE)


@pytest.fixture
def fresh_default_resolver(monkeypatch):
    """The cached default resolver, cleared before and after the test."""
    monkeypatch.delenv(asn.ENV_VAR, raising=False)
    default_resolver.cache_clear()
    yield
    default_resolver.cache_clear()


# ---------------------------------------------------------------- lookups


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("192.0.2.0", 64496),
        ("192.0.2.255", 64496),
        ("198.51.100.7", 64497),
        ("203.0.113.200", 64498),
        ("10.10.2.7", 64531),
        ("10.10.2.8", None),
        ("10.10.1.255", 64530),
        ("255.255.255.255", 64532),
        ("172.31.255.255", 4200000001),
        ("172.16.15.1", 4294967294),
    ],
)
def test_it_finds_the_asn_of_an_ipv4_address(resolver, ip, expected):
    assert resolver.lookup(ip) == expected


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("198.18.0.0", 64510),  # only the /15 holds it
        ("198.19.255.255", 64510),
        ("198.18.4.0", 64511),  # the /22
        ("198.18.7.255", 64511),
        ("198.18.4.127", 64511),
        ("198.18.4.128", 64512),  # the /25 inside the /22
        ("198.18.4.159", 64512),
        ("198.18.4.160", 64513),  # the /28 inside the /25
        ("198.18.4.175", 64513),
        ("198.18.4.176", 64512),  # back in the /25 after the /28 ends
        ("198.18.4.255", 64512),
        ("198.18.8.0", 64510),  # back in the /15 after the /22 ends
        ("198.20.0.0", None),  # past the /15
        ("198.17.255.255", None),
    ],
)
def test_the_most_specific_of_nested_ipv4_prefixes_wins(resolver, ip, expected):
    assert resolver.lookup(ip) == expected


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("2001:db8::1", 64500),
        ("2001:db8:fffe:ffff:ffff:ffff:ffff:ffff", 64500),
        ("2001:db8:1::", 64501),
        ("2001:db8:1:2::1", 64501),
        ("2001:db8:1:1::", 64502),
        ("2001:db8:1:1::1", 64503),  # a /128 inside a /64 inside a /48 inside a /32
        ("2001:db8:1:1::2", 64502),
        ("2001:db8:ffff:1::", 64504),
        ("2001:db8:2::abcd", 64507),
        ("3fff:0:1::1", 4200000002),
        ("3fff:fff:ffff::1", 64505),
        ("2001:db9::1", None),
        ("::1", None),
    ],
)
def test_it_finds_the_asn_of_an_ipv6_address_by_longest_prefix(resolver, ip, expected):
    assert resolver.lookup(ip) == expected


@pytest.mark.parametrize(
    ("ip", "expected"),
    [("100.64.0.9", 64520), ("100.64.1.9", 64522), ("100.64.2.9", 64524), ("3fff::1", 64505)],
)
def test_a_multi_origin_prefix_counts_as_its_first_asn(resolver, ip, expected):
    assert resolver.lookup(ip) == expected


def test_an_ipv4_mapped_ipv6_address_is_looked_up_as_ipv4(resolver):
    assert resolver.lookup("::ffff:192.0.2.10") == 64496
    assert resolver.lookup("::ffff:198.18.4.161") == 64513


def test_an_unknown_address_has_no_asn(resolver):
    assert resolver.lookup("8.8.8.8") is None
    assert resolver.lookup("0.0.0.0") is None
    assert resolver.lookup("2600::1") is None


@pytest.mark.parametrize("bad", ["", "not-an-ip", "192.0.2", "192.0.2.256", "2001:db8::g"])
def test_it_refuses_something_that_is_not_an_address(resolver, bad):
    with pytest.raises(ValueError):
        resolver.lookup(bad)


def test_it_counts_every_prefix_line_once(resolver):
    lines = [ln for ln in TABLE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(resolver) == len(lines) == 24


def test_lookups_agree_with_a_brute_force_longest_prefix_match():
    """Random nested and adjacent prefixes, probed at every prefix edge and at random."""
    rng = random.Random(20260101)
    for version, bits, base in ((4, 32, "10.0.0.0/8"), (6, 128, "2001:db8::/32")):
        root = ipaddress.ip_network(base)
        table: dict[ipaddress._BaseNetwork, int] = {}
        frontier = [root]
        while len(table) < 300:
            parent = rng.choice(frontier)
            if parent.prefixlen >= bits - 2:
                continue
            child = rng.choice(
                list(parent.subnets(new_prefix=rng.randint(parent.prefixlen + 1, min(bits, parent.prefixlen + 6))))
            )
            table[child] = rng.randrange(1, 2**32)
            frontier.append(child)
        lines = [f"{net}\t{a}" for net, a in table.items()]
        rng.shuffle(lines)
        resolver = AsnResolver.from_lines(lines)
        probes = [int(n.network_address) + d for n in table for d in (-1, 0)]
        probes += [int(n.broadcast_address) + d for n in table for d in (0, 1)]
        probes += [rng.randrange(int(root.network_address), int(root.broadcast_address) + 1) for _ in range(500)]
        by_length = sorted(table.items(), key=lambda item: -item[0].prefixlen)
        for probe in probes:
            address = ipaddress.ip_address(probe) if version == 6 else ipaddress.IPv4Address(probe)
            expected = next((a for net, a in by_length if address in net), None)
            assert resolver.lookup(str(address)) == expected, str(address)


# ---------------------------------------------------------------- asn_or_block


def test_asn_or_block_names_a_known_address_by_its_asn(resolver):
    assert asn_or_block("192.0.2.10", resolver=resolver) == "AS64496"
    assert asn_or_block("2001:db8:1:1::1", resolver=resolver) == "AS64503"


def test_asn_or_block_falls_back_to_the_ip_block_of_an_unknown_address(resolver):
    assert asn_or_block("8.8.8.8", resolver=resolver) == "8.8.8.0/24"
    assert asn_or_block("2600:1:2:3::1", resolver=resolver) == "2600:1:2::/48"
    assert asn_or_block("::ffff:8.8.4.4", resolver=resolver) == "8.8.4.0/24"


def test_asn_or_block_of_no_address_is_empty(resolver):
    assert asn_or_block("", resolver=resolver) == ""
    assert asn_or_block(None, resolver=resolver) == ""


@pytest.mark.parametrize(
    ("ip", "block"),
    [
        ("192.0.2.77", "192.0.2.0/24"),
        ("10.1.2.3", "10.1.2.0/24"),
        ("2001:db8:1:2::9", "2001:db8:1::/48"),
        ("2600::1", "2600::/48"),
        ("::1", "::/48"),
        ("", ""),
        (None, ""),
    ],
)
def test_ip_block_is_the_slash_24_or_slash_48(ip, block):
    assert ip_block(ip) == block


def test_ip_block_gives_a_mapped_ipv4_address_its_own_slash_24():
    assert ip_block("::ffff:192.0.2.77") == "192.0.2.0/24"


# ---------------------------------------------------------------- malformed tables


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("192.0.2.0\t24", "expected"),
        ("192.0.2.0/24", "expected"),
        ("192.0.2.0\t24\t64496\textra", "expected"),
        ("300.0.2.0\t24\t64496", "not an IPv4 address"),
        ("192.0.2\t24\t64496", "not an IPv4 address"),
        ("2001:db8::zz/32\t64500", "not an IPv6 address"),
        ("192.0.2.0\t33\t64496", "prefix length"),
        ("2001:db8::/129\t64500", "prefix length"),
        ("192.0.2.0\t-1\t64496", "prefix length"),
        ("192.0.2.1\t24\t64496", "host bits"),
        ("2001:db8::1/32\t64500", "host bits"),
        ("192.0.2.0\t24\tAS64496", "not a number"),
        ("192.0.2.0\t24\t1.10", "not a number"),
        ("192.0.2.0\t24\t_64496", "not a number"),
        ("192.0.2.0\t24\t4294967296", "larger than"),
    ],
)
def test_it_refuses_a_malformed_line_and_names_its_number(line, problem):
    lines = ["# header", "", "198.51.100.0\t24\t64497", line, "203.0.113.0\t24\t64498"]
    with pytest.raises(AsnTableError, match=problem) as excinfo:
        AsnResolver.from_lines(lines, source="feed.tsv")
    assert excinfo.value.line_number == 4
    assert str(excinfo.value).startswith("feed.tsv, line 4: ")


def test_a_bad_line_in_a_file_is_reported_with_the_path_and_line(tmp_path):
    path = tmp_path / "pfx2as.tsv"
    path.write_bytes(TABLE.read_bytes() + b"192.0.2.0\t24\t\xff\xfe\n")
    line_number = len(TABLE.read_bytes().splitlines()) + 1
    with pytest.raises(AsnTableError, match=rf"pfx2as.tsv, line {line_number}: ASN"):
        AsnResolver.from_file(path)


def test_the_same_prefix_with_two_asns_is_refused():
    with pytest.raises(ValueError, match=r"192.0.2.0/24 is listed with AS64496 and AS64497"):
        AsnResolver.from_lines(["192.0.2.0\t24\t64496", "192.0.2.0/24\t64497"])


def test_the_same_prefix_twice_with_one_asn_is_fine():
    resolver = AsnResolver.from_lines(["192.0.2.0\t24\t64496", "192.0.2.0/24\t64496_64497"])
    assert len(resolver) == 1
    assert resolver.lookup("192.0.2.1") == 64496


def test_it_reads_a_gzipped_table(tmp_path):
    path = tmp_path / "routeviews-rv2-20260101-1200.pfx2as.gz"
    path.write_bytes(gzip.compress(TABLE.read_bytes()))
    assert AsnResolver.from_file(path).lookup("198.18.4.161") == 64513


def test_an_empty_resolver_knows_nothing():
    empty = AsnResolver()
    assert len(empty) == 0
    assert empty.lookup("192.0.2.1") is None
    assert empty.lookup("2001:db8::1") is None
    assert asn_or_block("192.0.2.1", resolver=empty) == "192.0.2.0/24"


# ---------------------------------------------------------------- the configured resolver


def test_without_a_configured_table_addresses_fall_back_to_their_block(fresh_default_resolver):
    assert len(default_resolver()) == 0
    assert asn_or_block("192.0.2.10") == "192.0.2.0/24"


def test_the_configured_table_names_addresses_by_asn(fresh_default_resolver, monkeypatch):
    monkeypatch.setenv(asn.ENV_VAR, str(TABLE))
    assert asn_or_block("192.0.2.10") == "AS64496"
    assert asn_or_block("8.8.8.8") == "8.8.8.0/24"


def test_the_configured_table_is_loaded_once_until_the_cache_is_cleared(fresh_default_resolver, monkeypatch):
    monkeypatch.setenv(asn.ENV_VAR, str(TABLE))
    first = default_resolver()
    assert default_resolver() is first
    monkeypatch.delenv(asn.ENV_VAR)
    assert default_resolver() is first  # cached: the environment is read once
    default_resolver.cache_clear()
    assert len(default_resolver()) == 0


def test_resolver_from_settings_reloads_every_call(monkeypatch):
    monkeypatch.setenv(asn.ENV_VAR, str(TABLE))
    assert asn.resolver_from_settings() is not asn.resolver_from_settings()
    assert asn.resolver_from_settings().lookup("203.0.113.1") == 64498


def test_a_configured_table_that_is_missing_fails_loudly(fresh_default_resolver, monkeypatch, tmp_path):
    monkeypatch.setenv(asn.ENV_VAR, str(tmp_path / "no-such-table.tsv"))
    with pytest.raises(FileNotFoundError):
        default_resolver()


def test_a_blank_configured_path_means_no_table(fresh_default_resolver, monkeypatch):
    monkeypatch.setenv(asn.ENV_VAR, "  ")
    assert len(default_resolver()) == 0
