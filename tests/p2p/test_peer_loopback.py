"""Two Peers on 127.0.0.1 in one event loop: set-up, messages both ways, the framing's
refusals, trickled candidates and the open timeout (bim_core.peer)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re

import pytest

from bim_core.peer import BUFFER_HIGH, MAX_FRAME_BYTES, MAX_HEADER_BYTES, Peer, PeerError
from tests.p2p.peers import close, connect, run

pytestmark = pytest.mark.usefixtures("loopback")

MiB = 1024 * 1024


def test_it_carries_a_megabyte_one_way_and_two_back_intact() -> None:
    prompt, result = os.urandom(MiB), os.urandom(2 * MiB)

    async def scenario() -> None:
        user, node = Peer([]), Peer([])
        try:
            await connect(user, node)
            await user.send({"kind": "prompt", "job": "j-1"}, prompt)
            header, received = await node.receive(10)
            assert header == {"kind": "prompt", "job": "j-1"}
            assert hashlib.sha256(received).hexdigest() == hashlib.sha256(prompt).hexdigest()

            await node.send({"kind": "result", "job": "j-1"}, result)
            header, received = await user.receive(10)
            assert header == {"kind": "result", "job": "j-1"}
            assert hashlib.sha256(received).hexdigest() == hashlib.sha256(result).hexdigest()

            stats = user.stats()
            assert stats["local_candidate"] == stats["remote_candidate"] == "host"
            assert stats["relayed"] is False
            assert stats["bytes_sent"] > MiB and stats["bytes_received"] > 2 * MiB
            # The transport adds SCTP, DTLS and acknowledgements to the payload.
            assert stats["transport_bytes_received"] > stats["bytes_received"]
        finally:
            await close(user, node)

    run(scenario)


def test_messages_arrive_whole_and_in_order_header_only_ones_included() -> None:
    # Sizes around the 16 KiB frame boundary, and none at all.
    sizes = [0, 1, MAX_FRAME_BYTES - 1, MAX_FRAME_BYTES, MAX_FRAME_BYTES + 1, 0, 3 * MAX_FRAME_BYTES + 7, 0]
    payloads = [os.urandom(size) for size in sizes]

    async def scenario() -> None:
        user, node = Peer([]), Peer([])
        try:
            await connect(user, node)
            # Sent back to back without waiting for the reader: the channel keeps them apart.
            for number, payload in enumerate(payloads):
                await user.send({"kind": "part", "n": number}, payload)
            for number, payload in enumerate(payloads):
                assert await node.receive(10) == ({"kind": "part", "n": number}, payload)
            with pytest.raises(PeerError) as nothing_more:
                await node.receive(0.2)
            assert nothing_more.value.code == "timeout"
        finally:
            await close(user, node)

    run(scenario)


def test_a_message_over_the_receivers_limit_is_refused_and_the_connection_closed() -> None:
    async def scenario() -> None:
        user, node = Peer([]), Peer([], max_message_bytes=64 * 1024)
        try:
            await connect(user, node)
            await user.send({"kind": "prompt"}, os.urandom(64 * 1024 + 1))
            with pytest.raises(PeerError) as refused:
                await node.receive(5)
            assert refused.value.code == "too_large"
            # The receiver closed the connection: the sender learns it too.
            with pytest.raises(PeerError) as closed:
                await user.receive(5)
            assert closed.value.code == "closed"
        finally:
            await close(user, node)

    run(scenario)


def test_send_returns_with_no_more_than_the_high_mark_queued() -> None:
    """Backpressure: without it, send() would queue all 4 MiB in aiortc at once."""

    async def scenario() -> None:
        user, node = Peer([]), Peer([])
        try:
            await connect(user, node)
            sending = asyncio.create_task(user.send({"kind": "bulk"}, os.urandom(4 * MiB)))
            highest = 0
            while not sending.done():
                highest = max(highest, user.channel.bufferedAmount)
                await asyncio.sleep(0)
            await sending
            assert 0 < highest <= BUFFER_HIGH + MAX_FRAME_BYTES
            header, payload = await node.receive(10)
            assert header == {"kind": "bulk"} and len(payload) == 4 * MiB
        finally:
            await close(user, node)

    run(scenario)


def test_a_peer_that_leaves_too_much_unread_is_refused() -> None:
    """Two messages' worth may wait unread; a third is a flood."""

    async def scenario() -> None:
        user, node = Peer([]), Peer([], max_message_bytes=64 * 1024)
        try:
            await connect(user, node)
            for number in range(3):
                await user.send({"kind": "part", "n": number}, bytes(64 * 1024))
            await asyncio.sleep(0.3)  # all three arrive before the node reads any
            assert (await node.receive(5))[0] == {"kind": "part", "n": 0}
            assert (await node.receive(5))[0] == {"kind": "part", "n": 1}
            with pytest.raises(PeerError) as refused:
                await node.receive(5)
            assert refused.value.code == "too_large"
        finally:
            await close(user, node)

    run(scenario)


def test_a_payload_over_the_senders_own_limit_is_refused_before_sending() -> None:
    async def scenario() -> None:
        user, node = Peer([], max_message_bytes=1024), Peer([])
        try:
            await connect(user, node)
            with pytest.raises(PeerError) as refused:
                await user.send({"kind": "prompt"}, bytes(1025))
            assert refused.value.code == "too_large"
            await user.send({"kind": "prompt"}, bytes(1024))  # still usable
            assert await node.receive(5) == ({"kind": "prompt"}, bytes(1024))
        finally:
            await close(user, node)

    run(scenario)


def _case(id: str, frames: list, code: str, *, delivered: list | None = None):
    """Raw frames after a good message; `delivered`: the messages whole before the bad frame."""
    return pytest.param(frames, code, delivered or [], id=id)


@pytest.mark.parametrize(
    ("frames", "code", "delivered"),
    [
        _case("binary before any header", [b"stray"], "bad_frame"),
        _case("more bytes than announced", ['{"kind":"x","size":3}', b"abcd"], "bad_frame"),
        _case("header mid-message", ['{"kind":"x","size":2}', b"a", '{"kind":"y","size":0}'], "bad_frame"),
        _case(
            "bytes after a header-only message",
            ['{"kind":"x","size":0}', b"z"],
            "bad_frame",
            delivered=[({"kind": "x"}, b"")],
        ),
        _case("header not JSON", ["not json"], "bad_frame"),
        _case("header not an object", ['["kind","x"]'], "bad_frame"),
        _case("header without kind", ['{"size":0}'], "bad_frame"),
        _case("negative size", ['{"kind":"x","size":-1}'], "bad_frame"),
        _case("boolean size", ['{"kind":"x","size":true}'], "bad_frame"),
        _case("no size", ['{"kind":"x"}'], "bad_frame"),
        _case("frame over 16 KiB", ['{"kind":"x","size":20000}', bytes(MAX_FRAME_BYTES + 1)], "bad_frame"),
        _case("header over 64 KiB", [json.dumps({"kind": "x", "size": 0, "pad": "p" * MAX_HEADER_BYTES})], "too_large"),
        _case("size over the limit", ['{"kind":"x","size":1048577}'], "too_large"),
    ],
)
def test_a_frame_that_breaks_the_framing_fails_the_receiver_and_closes(frames: list, code: str, delivered: list) -> None:
    async def scenario() -> None:
        user, node = Peer([]), Peer([], max_message_bytes=MiB)
        try:
            await connect(user, node)
            await user.send({"kind": "fine"}, b"ok")
            for frame in frames:
                user.channel.send(frame)
            received = []
            with pytest.raises(PeerError) as refused:
                while True:
                    received.append(await node.receive(5))
            assert refused.value.code == code
            assert received == [({"kind": "fine"}, b"ok"), *delivered]
            with pytest.raises(PeerError) as again:  # it stays failed
                await node.receive(5)
            assert again.value.code == code
            # The receiver closed the connection: the sender learns it too.
            with pytest.raises(PeerError) as closed:
                await user.receive(5)
            assert closed.value.code == "closed"
        finally:
            await close(user, node)

    run(scenario)


def test_wait_open_times_out_when_the_answer_never_arrives() -> None:
    async def scenario() -> None:
        user = Peer([])
        try:
            await user.offer()
            started = asyncio.get_running_loop().time()
            with pytest.raises(PeerError) as late:
                await user.wait_open(0.5)
            assert late.value.code == "timeout"
            assert asyncio.get_running_loop().time() - started < 2
        finally:
            await user.close()

    run(scenario)


def test_candidates_trickled_browser_style_connect_the_answerer() -> None:
    async def scenario() -> None:
        user, node = Peer([]), Peer([])
        try:
            offer = await user.offer()
            lines = offer["sdp"].split("\r\n")
            mid = next(line.removeprefix("a=mid:") for line in lines if line.startswith("a=mid:"))
            candidates = [line.removeprefix("a=") for line in lines if line.startswith("a=candidate:")]
            assert candidates
            # What a trickling browser sends first: an offer without candidates.
            bare = "\r\n".join(line for line in lines if not re.match(r"a=(candidate:|end-of-candidates)", line))
            answer = await node.answer({"type": "offer", "sdp": bare})
            for candidate in candidates:
                await node.add_remote_candidate({"candidate": candidate, "sdpMid": mid, "sdpMLineIndex": 0})
            await node.add_remote_candidate({"candidate": "", "sdpMid": mid, "sdpMLineIndex": 0})
            await user.accept_answer(answer)
            await asyncio.gather(user.wait_open(10), node.wait_open(10))
            # A trickled host candidate, not one learnt from the user's connectivity checks.
            assert node.stats()["remote_candidate"] == "host"
        finally:
            await close(user, node)

    run(scenario)


@pytest.mark.parametrize(
    "candidate",
    [
        {"candidate": "candidate:1 1 udp"},
        {"candidate": 7},
        {"sdpMid": "0"},
        {"candidate": "candidate:1 1 udp x 1.2.3.4 9 typ host", "sdpMid": "0"},
        {"candidate": "candidate:1 1 udp 2130706431 1.2.3.4 9 typ host"},  # names no section
    ],
)
def test_a_malformed_trickled_candidate_is_refused(candidate: dict) -> None:
    async def scenario() -> None:
        user, node = Peer([]), Peer([])
        try:
            await node.answer(await user.offer())
            with pytest.raises(PeerError) as refused:
                await node.add_remote_candidate(candidate)
            assert refused.value.code == "bad_candidate"
        finally:
            await close(user, node)

    run(scenario)


@pytest.mark.parametrize(
    "offer", [{"type": "offer", "sdp": "v=0\r\ngarbage"}, {"type": "answer", "sdp": "v=0\r\n"}, {"type": "offer"}]
)
def test_a_malformed_offer_is_refused(offer: dict) -> None:
    async def scenario() -> None:
        node = Peer([])
        try:
            with pytest.raises(PeerError) as refused:
                await node.answer(offer)
            assert refused.value.code == "bad_sdp"
        finally:
            await node.close()

    run(scenario)
