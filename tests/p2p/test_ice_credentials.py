"""TURN REST credentials (bim_core.ice): the formula, the RTCIceServer shapes, the refusals,
and what a real coturn (--use-auth-secret) makes of fresh, expired and forged credentials."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from bim_core.ice import MAX_TTL_S, MIN_TTL_S, ice_servers, turn_credentials
from tests.turn import TurnServer

STUN = ["stun:turn.example.net:3478"]
TURN = ["turn:turn.example.net:3478?transport=udp", "turns:turn.example.net:5349?transport=tcp"]


def test_the_credential_is_the_base64_hmac_sha1_of_the_expiring_username() -> None:
    username, credential = turn_credentials(secret="north-wind", user="job-42", ttl_s=600, now=1_700_000_000.9)

    assert username == "1700000600:job-42"
    by_hand = base64.b64encode(hmac.new(b"north-wind", b"1700000600:job-42", hashlib.sha1).digest()).decode()
    # The same vector from `openssl dgst -sha1 -hmac north-wind -binary | base64`.
    assert credential == by_hand == "SVG8eEorgWFp4A8LT0pRfNpFpYc="


def test_another_secret_or_expiry_gives_another_credential() -> None:
    _, credential = turn_credentials(secret="north-wind", user="job-42", ttl_s=600, now=1_700_000_000)
    assert turn_credentials(secret="south-wind", user="job-42", ttl_s=600, now=1_700_000_000)[1] != credential
    assert turn_credentials(secret="north-wind", user="job-42", ttl_s=601, now=1_700_000_000)[1] != credential


def test_ice_servers_lists_stun_then_turn_with_credentials() -> None:
    servers = ice_servers(stun_urls=STUN, turn_urls=TURN, secret="s3cret", user="job-7", ttl_s=300, now=1_000)

    username, credential = turn_credentials(secret="s3cret", user="job-7", ttl_s=300, now=1_000)
    assert servers == [
        {"urls": STUN},
        {"urls": TURN, "username": username, "credential": credential},
    ]


@pytest.mark.parametrize(("turn_urls", "secret"), [([], "s3cret"), (TURN, "")])
def test_without_turn_urls_or_secret_there_is_no_turn_entry(turn_urls: list[str], secret: str) -> None:
    servers = ice_servers(stun_urls=STUN, turn_urls=turn_urls, secret=secret, user="job-7", ttl_s=300, now=1_000)
    assert servers == [{"urls": STUN}]


def test_without_stun_urls_there_is_only_the_turn_entry() -> None:
    servers = ice_servers(stun_urls=[], turn_urls=TURN, secret="s3cret", user="job-7", ttl_s=300, now=1_000)
    assert [server["urls"] for server in servers] == [TURN]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"user": "job:7"}, "may not contain ':'"),
        ({"user": ""}, "user id is empty"),
        ({"user": "job\n7"}, "printable"),
        ({"user": "j" * 300}, "at most"),
        ({"secret": ""}, "secret is empty"),
        ({"ttl_s": MIN_TTL_S - 1}, "ttl_s"),
        ({"ttl_s": MAX_TTL_S + 1}, "ttl_s"),
        ({"ttl_s": True}, "ttl_s"),
        ({"ttl_s": 60.5}, "ttl_s"),
        ({"now": float("nan")}, "now"),
        ({"now": -1}, "now"),
    ],
)
def test_it_refuses_bad_credential_inputs(changes: dict, message: str) -> None:
    arguments = {"secret": "s3cret", "user": "job-7", "ttl_s": 300, "now": 1_000} | changes
    with pytest.raises(ValueError, match=message):
        turn_credentials(**arguments)


@pytest.mark.parametrize(
    ("stun_urls", "turn_urls"),
    [
        ("stun:one.example:3478", []),  # a bare string, not a list
        (["http://one.example"], []),
        (TURN[:1], []),  # a TURN URL where STUN belongs
        ([], STUN),
        (["stun:"], []),
    ],
)
def test_it_refuses_urls_of_the_wrong_kind(stun_urls, turn_urls) -> None:
    with pytest.raises(ValueError, match="URL"):
        ice_servers(stun_urls=stun_urls, turn_urls=turn_urls, secret="s", user="u", ttl_s=300, now=1_000)


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 10))


class _Discard(asyncio.DatagramProtocol):
    """Relayed datagrams are not the point here; the allocation's end is."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


async def _allocate(server: TurnServer, username: str, password: str) -> tuple[str, int]:
    """A TURN allocation with aioice's client: the relayed address, or TransactionFailed."""
    transport, protocol = await create_turn_endpoint(
        _Discard, server_addr=(server.host, server.port), username=username, password=password
    )
    try:
        return transport.get_extra_info("sockname")
    finally:
        transport.close()  # deletes the allocation, then calls connection_lost
        await asyncio.wait_for(protocol.lost.wait(), 5)


def test_coturn_allocates_a_relay_for_fresh_credentials(turn_server: TurnServer) -> None:
    username, credential = turn_credentials(secret=turn_server.secret, user="job-1", ttl_s=300, now=time.time())

    async def scenario() -> None:
        host, port = await _allocate(turn_server, username, credential)
        assert host == "127.0.0.1" and port > 0

    run(scenario)


@pytest.mark.parametrize("forgery", ["expired", "wrong secret", "edited user"])
def test_coturn_refuses_expired_or_forged_credentials(turn_server: TurnServer, forgery: str) -> None:
    now = time.time()
    if forgery == "expired":  # valid for 10 minutes, an hour ago
        username, credential = turn_credentials(secret=turn_server.secret, user="job-1", ttl_s=600, now=now - 3600)
    elif forgery == "wrong secret":
        username, credential = turn_credentials(secret="not-" + turn_server.secret, user="job-1", ttl_s=300, now=now)
    else:  # someone else's credential under another user's name
        username, credential = turn_credentials(secret=turn_server.secret, user="job-1", ttl_s=300, now=now)
        username = username.replace("job-1", "job-2")

    async def scenario() -> None:
        with pytest.raises(stun.TransactionFailed) as refused:
            await _allocate(turn_server, username, credential)
        assert refused.value.response.attributes["ERROR-CODE"][0] == 401

    run(scenario)
