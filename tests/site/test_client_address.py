"""The client-address rule behind reverse proxies (`bim_core.net`): the peer is the client
unless it is a trusted proxy, whose X-Forwarded-For is read right to left past the trusted
proxies; anything malformed falls back to the peer. Pure functions, no Django."""

from __future__ import annotations

import pytest

from bim_core.net import client_ip, forwarded_client, parse_networks, scope_behind_proxies

PROXY = "10.0.0.5"
TRUSTED = parse_networks("10.0.0.5, 192.168.7.0/24, 2001:db8:feed::/48")


# ------------------------------------------------------------------ the trust list


def test_it_parses_addresses_and_blocks_and_ignores_blank_entries():
    networks = parse_networks(" 10.0.0.5 ,, 192.168.7.9/24, ::1 ,")
    assert [str(n) for n in networks] == ["10.0.0.5/32", "192.168.7.0/24", "::1/128"]
    assert parse_networks("") == ()


@pytest.mark.parametrize("text", ["proxy.example.org", "10.0.0.0/33", "10.0.0.5;10.0.0.6", "*"])
def test_it_refuses_a_trust_list_entry_that_is_no_address(text):
    with pytest.raises(ValueError, match="not an IP address or CIDR block"):
        parse_networks(text)


# ------------------------------------------------------------------ forwarded_client


def test_an_untrusted_peer_is_the_client_whatever_it_forwards():
    assert forwarded_client("198.51.100.7", "203.0.113.9", TRUSTED) == "198.51.100.7"


def test_nothing_is_trusted_by_default():
    assert forwarded_client(PROXY, "203.0.113.9", ()) == PROXY


def test_a_trusted_proxy_names_the_client():
    assert forwarded_client(PROXY, "203.0.113.9", TRUSTED) == "203.0.113.9"


def test_a_trusted_proxy_without_the_header_is_the_client():
    assert forwarded_client(PROXY, None, TRUSTED) == PROXY
    assert forwarded_client(PROXY, "", TRUSTED) == PROXY


def test_spoofed_left_most_entries_are_ignored():
    # The client sent "X-Forwarded-For: 1.2.3.4, 10.0.0.5"; nginx appended its real address.
    assert forwarded_client(PROXY, "1.2.3.4, 10.0.0.5, 203.0.113.9", TRUSTED) == "203.0.113.9"


def test_a_chain_of_trusted_proxies_is_walked_past():
    # client -> 192.168.7.20 (an inner proxy, trusted) -> 10.0.0.5 (the peer)
    assert forwarded_client(PROXY, "1.1.1.1, 203.0.113.9, 192.168.7.20", TRUSTED) == "203.0.113.9"


def test_an_untrusted_hop_in_the_chain_stops_the_walk():
    # 198.51.100.1 is not ours: what it says about who came before it proves nothing.
    assert forwarded_client(PROXY, "203.0.113.9, 198.51.100.1, 192.168.7.20", TRUSTED) == "198.51.100.1"


def test_a_chain_of_only_trusted_proxies_gives_its_left_most_entry():
    assert forwarded_client(PROXY, "192.168.7.3, 192.168.7.20", TRUSTED) == "192.168.7.3"


def test_repeated_headers_read_as_one_list():
    assert forwarded_client(PROXY, "1.2.3.4,203.0.113.9", TRUSTED) == "203.0.113.9"


@pytest.mark.parametrize(
    ("header", "client"),
    [
        ("2001:db8::7", "2001:db8::7"),
        ("[2001:db8::7]", "2001:db8::7"),
        ("[2001:db8::7]:4711", "2001:db8::7"),
        ("203.0.113.9:4711", "203.0.113.9"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("2001:db8::7, 2001:db8:feed::1", "2001:db8::7"),  # an IPv6 proxy in the chain
    ],
)
def test_ipv6_and_ports_are_read(header, client):
    assert forwarded_client(PROXY, header, TRUSTED) == client


def test_an_ipv6_peer_can_be_trusted():
    assert forwarded_client("2001:db8:feed::9", "203.0.113.9", TRUSTED) == "203.0.113.9"


def test_a_dual_stack_peer_is_matched_as_ipv4():
    assert forwarded_client("::ffff:10.0.0.5", "203.0.113.9", TRUSTED) == "203.0.113.9"


@pytest.mark.parametrize(
    "header",
    [
        "unknown",
        "garbage",
        "203.0.113.9, not-an-ip",
        "203.0.113.9,",
        " , ",
        "_hidden",
        "[2001:db8::7",
        "1.2.3.4.5",
        "\x00",
    ],
)
def test_garbage_where_the_walk_reaches_it_falls_back_to_the_peer(header):
    assert forwarded_client(PROXY, header, TRUSTED) == PROXY


def test_garbage_left_of_the_client_does_not_matter():
    assert forwarded_client(PROXY, "garbage, unknown, 203.0.113.9", TRUSTED) == "203.0.113.9"


def test_an_absurdly_long_chain_of_trusted_proxies_falls_back_to_the_peer():
    assert forwarded_client(PROXY, ", ".join(["192.168.7.3"] * 1000), TRUSTED) == PROXY
    assert forwarded_client(PROXY, ", ".join(["192.168.7.3"] * 32), TRUSTED) == "192.168.7.3"


def test_padding_left_of_the_clients_address_changes_nothing():
    padded = ", ".join(["1.1.1.1"] * 5000 + ["garbage", "203.0.113.9"])
    assert forwarded_client(PROXY, padded, TRUSTED) == "203.0.113.9"


def test_a_peer_that_is_no_address_is_kept():
    assert forwarded_client("unix-socket", "203.0.113.9", TRUSTED) == "unix-socket"
    assert forwarded_client(None, "203.0.113.9", TRUSTED) is None


# ------------------------------------------------------------------ ASGI scopes


def scope(peer: str | None, *headers: tuple[bytes, bytes], kind: str = "http") -> dict:
    return {
        "type": kind,
        "scheme": "ws" if kind == "websocket" else "http",
        "client": [peer, 51000] if peer else None,
        "headers": [(b"host", b"registry.example.org"), *headers],
    }


def test_a_trusted_proxys_scope_carries_the_client_and_scheme():
    resolved = scope_behind_proxies(
        scope(PROXY, (b"x-forwarded-for", b"1.2.3.4, 203.0.113.9"), (b"x-forwarded-proto", b"https")), TRUSTED
    )
    assert client_ip(resolved) == "203.0.113.9"
    assert resolved["scheme"] == "https"
    assert (b"x-forwarded-for", b"1.2.3.4, 203.0.113.9") in resolved["headers"]  # kept for whoever logs it


def test_repeated_forwarded_for_headers_in_a_scope_are_joined_in_order():
    resolved = scope_behind_proxies(
        scope(PROXY, (b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-for", b"203.0.113.9")), TRUSTED
    )
    assert client_ip(resolved) == "203.0.113.9"


def test_a_websockets_scheme_becomes_wss():
    resolved = scope_behind_proxies(scope(PROXY, (b"x-forwarded-proto", b"https"), kind="websocket"), TRUSTED)
    assert resolved["scheme"] == "wss" and client_ip(resolved) == PROXY


def test_the_scheme_is_the_right_most_forwarded_proto():
    # A proxy that appends leaves the client's claim on the left.
    resolved = scope_behind_proxies(scope(PROXY, (b"x-forwarded-proto", b"https, http")), TRUSTED)
    assert resolved["scheme"] == "http"
    odd = scope_behind_proxies(scope(PROXY, (b"x-forwarded-proto", b"gopher")), TRUSTED)
    assert odd["scheme"] == "http"


def test_an_untrusted_peers_proxy_headers_are_removed():
    original = scope(
        "198.51.100.7",
        (b"x-forwarded-for", b"203.0.113.9"),
        (b"X-Forwarded-Proto", b"https"),
        (b"x-real-ip", b"203.0.113.9"),
        (b"forwarded", b"for=203.0.113.9;proto=https"),
        (b"user-agent", b"bim-node"),
    )
    resolved = scope_behind_proxies(original, TRUSTED)
    assert client_ip(resolved) == "198.51.100.7"
    assert resolved["scheme"] == "http"
    assert resolved["headers"] == [(b"host", b"registry.example.org"), (b"user-agent", b"bim-node")]
    assert len(original["headers"]) == 6  # the server's scope is not changed in place


def test_a_scope_without_a_client_is_left_alone():
    resolved = scope_behind_proxies(scope(None, (b"x-forwarded-for", b"203.0.113.9")), TRUSTED)
    assert client_ip(resolved) is None and resolved["headers"] == [(b"host", b"registry.example.org")]


def test_client_ip_reads_a_scope_or_django_meta():
    assert client_ip({"client": ("203.0.113.9", 1)}) == "203.0.113.9"
    assert client_ip({"REMOTE_ADDR": "203.0.113.9"}) == "203.0.113.9"
    assert client_ip({"REMOTE_ADDR": ""}) is None
