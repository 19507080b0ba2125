"""Signalling for peer-to-peer jobs over Channels' Redis layer (docs/p2p.md §2): the user
socket learns its job's nodes and ICE servers, offers reach exactly the assigned node, its
answer reaches exactly that user, and everyone else is refused with a code."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from bim_core import families, protocol
from bim_site.asgi import application
from registry import submit
from tests.factories import SubnetFactory, online_node, user_with_credits
from tests.registry.test_node_socket import closed_with, handshake, ready, run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

INPUTS = {"texts": ["what the registry must not read"]}
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


async def user_socket(user) -> WebsocketCommunicator:
    token = await database_sync_to_async(lambda: Token.objects.get_or_create(user=user)[0].key)()
    socket = WebsocketCommunicator(application, f"/ws/user/?token={token}")
    connected, _ = await socket.connect(timeout=5)
    assert connected
    return socket


async def p2p_job_with_nodes(subnet):
    nodes = [await database_sync_to_async(online_node)(subnet, ready=False) for _ in range(2)]
    sockets = {}
    for keys in nodes:
        socket = await handshake(keys, subnet)
        await ready(socket, subnet)
        sockets[keys.node.pk] = socket
    user = await database_sync_to_async(user_with_credits)(10)
    job, _ = await database_sync_to_async(submit.job_submit)(
        user=user,
        subnet_slug=subnet.slug,
        inputs=None,
        idempotency_key="p2p-socket",
        transport="p2p",
        input_hash=protocol.input_hash(INPUTS),
        input_summary=families.family_for("embedding").input_summary(INPUTS),
    )
    offers = {}
    for keys in nodes:
        offer = await sockets[keys.node.pk].receive_json_from(timeout=5)
        assert offer["type"] == "job" and offer["transport"] == "p2p" and "inputs" not in offer
        offers[offer["assignment_id"]] = (keys, sockets[keys.node.pk], offer)
    return job, user, offers


def test_an_offer_reaches_the_assigned_node_and_its_answer_the_user(settings):
    settings.P2P_STUN_URLS = ["stun:127.0.0.1:3478"]
    settings.P2P_TURN_URLS = ["turn:127.0.0.1:3478?transport=udp"]
    settings.P2P_TURN_SECRET = "s3cret"

    async def scenario():
        subnet = await database_sync_to_async(SubnetFactory)()
        job, user, offers = await p2p_job_with_nodes(subnet)
        socket = await user_socket(user)
        await socket.send_json_to({"type": "watch", "job_id": str(job.id)})
        peers = await socket.receive_json_from(timeout=5)
        assert peers["type"] == "peers" and {p["assignment_id"] for p in peers["peers"]} == set(offers)
        assert {p["session_key_pub"] for p in peers["peers"]} == {
            protocol.public_key_b64(keys.session) for keys, _, _ in offers.values()
        }
        stun, turn = peers["ice_servers"]
        assert stun == {"urls": ["stun:127.0.0.1:3478"]}
        # The TURN REST credential: what coturn's --use-auth-secret recomputes.
        expected = base64.b64encode(hmac.new(b"s3cret", turn["username"].encode(), hashlib.sha1).digest()).decode()
        # Each credential names its job or assignment: the TURN server's figures say whose they are.
        assert turn["credential"] == expected and turn["username"].endswith(f":job-{job.id}")
        assignment_id, (keys, node_socket, offer) = next(iter(offers.items()))
        assert offer["ice_servers"][1]["username"].endswith(f":asg-{assignment_id}")
        await socket.send_json_to({"type": "rtc_offer", "job_id": str(job.id), "assignment_id": assignment_id, "sdp": SDP})
        relayed = await node_socket.receive_json_from(timeout=5)
        assert relayed == {"type": "rtc_offer", "job_id": str(job.id), "assignment_id": assignment_id, "sdp": SDP}
        for _, other, _ in offers.values():
            if other is not node_socket:
                assert await other.receive_nothing(timeout=0.3)
        candidate = {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
        await node_socket.send_json_to({"type": "rtc_answer", "assignment_id": assignment_id, "sdp": SDP + "a=answer\r\n"})
        await node_socket.send_json_to({"type": "rtc_ice", "assignment_id": assignment_id, "candidate": candidate})
        answer = await socket.receive_json_from(timeout=5)
        assert answer == {"type": "rtc_answer", "job_id": str(job.id), "assignment_id": assignment_id, "sdp": SDP + "a=answer\r\n"}
        ice = await socket.receive_json_from(timeout=5)
        assert ice["type"] == "rtc_ice" and ice["candidate"] == candidate
        for _, node_socket_, _ in offers.values():
            await node_socket_.disconnect()
        await socket.disconnect()

    run(scenario)


def test_strangers_and_wrong_assignments_are_refused():
    async def scenario():
        subnet = await database_sync_to_async(SubnetFactory)()
        job, user, offers = await p2p_job_with_nodes(subnet)
        stranger = await user_socket(await database_sync_to_async(user_with_credits)(1))
        await stranger.send_json_to({"type": "watch", "job_id": str(job.id)})
        assert (await stranger.receive_json_from(timeout=5))["code"] == "not_found"
        assignment_id = next(iter(offers))
        await stranger.send_json_to({"type": "rtc_offer", "job_id": str(job.id), "assignment_id": assignment_id, "sdp": SDP})
        assert (await stranger.receive_json_from(timeout=5))["code"] == "not_assigned"
        for _, node_socket, _ in offers.values():
            assert await node_socket.receive_nothing(timeout=0.3)

        owner = await user_socket(user)
        for message, code in (
            ({"type": "rtc_offer", "job_id": str(job.id), "assignment_id": str(job.id), "sdp": SDP}, "not_assigned"),
            ({"type": "rtc_offer", "job_id": str(job.id), "assignment_id": assignment_id, "sdp": 7}, "bad_message"),
            ({"type": "rtc_offer", "job_id": str(job.id), "assignment_id": assignment_id, "sdp": "x" * 70_000}, "bad_message"),
            ({"type": "rtc_offer", "job_id": "not-a-uuid", "assignment_id": assignment_id, "sdp": SDP}, "bad_message"),
            ({"type": "rtc_ice", "job_id": str(job.id), "assignment_id": assignment_id, "candidate": "x"}, "bad_message"),
            ({"type": "teleport"}, "bad_message"),
        ):
            await owner.send_json_to(message)
            error = await owner.receive_json_from(timeout=5)
            assert error["code"] == code
            if isinstance(message.get("assignment_id"), str):
                assert error["assignment_id"] == message["assignment_id"]  # which offer was refused
        # A node may answer only for its own assignment.
        (keys_a, socket_a, _), (keys_b, socket_b, offer_b) = offers.values()
        await socket_a.send_json_to({"type": "rtc_answer", "assignment_id": offer_b["assignment_id"], "sdp": SDP})
        refused = await socket_a.receive_json_from(timeout=5)
        assert refused["type"] == "error" and refused["code"] == "not_assigned"
        assert await owner.receive_nothing(timeout=0.3)
        for socket in (stranger, owner, socket_a, socket_b):
            await socket.disconnect()

    run(scenario)


def test_the_user_socket_needs_a_login_and_closes_on_oversized_frames():
    async def scenario():
        anonymous = WebsocketCommunicator(application, "/ws/user/")
        connected, _ = await anonymous.connect(timeout=5)
        assert connected and await closed_with(anonymous) == protocol.CLOSE_UNAUTHENTICATED
        socket = await user_socket(await database_sync_to_async(user_with_credits)(1))
        await socket.send_to(text_data="x" * 200_000)
        assert await closed_with(socket) == protocol.CLOSE_MESSAGE_TOO_BIG_APP

    run(scenario)


def test_an_api_key_opens_the_user_socket_and_a_revoked_one_does_not():
    from developer.keys import api_key_create, api_key_revoke

    async def scenario():
        user = await database_sync_to_async(user_with_credits)(1)
        row, key = await database_sync_to_async(api_key_create)(user=user, name="sdk")
        socket = WebsocketCommunicator(application, f"/ws/user/?token={key}")
        assert (await socket.connect(timeout=5))[0]
        await socket.send_json_to({"type": "watch", "job_id": "00000000-0000-0000-0000-000000000000"})
        assert (await socket.receive_json_from(timeout=5))["code"] == "not_found"  # authenticated, no such job
        await socket.disconnect()
        await database_sync_to_async(api_key_revoke)(user=user, key_id=row.pk)
        revoked = WebsocketCommunicator(application, f"/ws/user/?token={key}")
        assert (await revoked.connect(timeout=5))[0]
        assert await closed_with(revoked) == protocol.CLOSE_UNAUTHENTICATED

    run(scenario)
