"""Nodes behind the deployment's reverse proxy (deploy/nginx.conf, BIM_TRUSTED_PROXIES):
through the real ASGI application, two nodes connecting via one trusted proxy each get the
address the proxy forwards, so their own /24 blocks, and the diversity rule pairs them;
the same X-Forwarded-For from a peer that is not a trusted proxy is ignored. Without the
trust list, every node behind the proxy would share its /24 and could never be paired."""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator, WebsocketCommunicator
from rest_framework.authtoken.models import Token

from bim_core import protocol
from bim_core.net import parse_networks
from bim_site.asgi import application
from registry import submit
from registry.models import Node
from tests.factories import NodeKeys, SubnetFactory, UserFactory, online_node, user_with_credits

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

PROXY = "10.0.0.5"  # nginx, as daphne sees it
TEXTS = ["two nodes behind one proxy", "are still two networks"]


@pytest.fixture
def trusted_proxy(settings):
    settings.BIM_TRUSTED_PROXIES = parse_networks(PROXY)


async def connect(keys: NodeKeys, *, peer: str, forwarded_for: str) -> WebsocketCommunicator:
    """A node's socket as nginx opens it: from the proxy's address, with the client's in
    X-Forwarded-For (`$proxy_add_x_forwarded_for`), then the challenge and hello."""
    token = await database_sync_to_async(lambda: Token.objects.get_or_create(user=keys.node.owner)[0].key)()
    headers = [(b"x-forwarded-for", forwarded_for.encode()), (b"x-forwarded-proto", b"https")]
    socket = WebsocketCommunicator(application, f"/ws/node/?token={token}", headers=headers)
    socket.scope["client"] = (peer, 41000)
    connected, _ = await socket.connect(timeout=5)
    assert connected
    challenge = await socket.receive_json_from(timeout=5)
    session_pub = protocol.public_key_b64(keys.session)
    signed = protocol.hello_message(node_id=str(keys.node.pk), nonce=challenge["nonce"], session_key_pub=session_pub)
    await socket.send_json_to(
        {
            "type": "hello",
            "node_id": str(keys.node.pk),
            "session_key_pub": session_pub,
            "signature": protocol.sign(keys.long_term, signed),
        }
    )
    assert (await socket.receive_json_from(timeout=5))["type"] == "welcome"
    return socket


async def ready(socket: WebsocketCommunicator, subnet: Any) -> None:
    await socket.send_json_to({"type": "ready", "subnet": subnet.slug, "model_checksum": subnet.model_checksum})
    assert (await socket.receive_json_from(timeout=5))["type"] == "ready_ok"


def addresses(*keys: NodeKeys) -> list[tuple[str, str]]:
    return [(node.ip, node.ip_block) for node in (Node.objects.get(pk=k.node.pk) for k in keys)]


def test_two_nodes_behind_one_trusted_proxy_keep_their_own_blocks_and_are_paired(trusted_proxy):
    subnet = SubnetFactory()
    first, second = online_node(subnet, ready=False), online_node(subnet, ready=False)
    user = user_with_credits(10)

    async def scenario() -> list[dict]:
        # The left-most entry is the node's own claim (spoofed); nginx appended the real one.
        sockets = [
            await connect(first, peer=PROXY, forwarded_for="192.0.2.1, 203.0.113.7"),
            await connect(second, peer=PROXY, forwarded_for="198.51.100.7"),
        ]
        for socket in sockets:
            await ready(socket, subnet)
        await database_sync_to_async(submit.job_submit)(
            user=user, subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key="behind-proxy"
        )
        offers = [await socket.receive_json_from(timeout=5) for socket in sockets]
        for socket in sockets:
            await socket.disconnect()
        return offers

    offers = async_to_sync(scenario)()
    assert addresses(first, second) == [("203.0.113.7", "203.0.113.0/24"), ("198.51.100.7", "198.51.100.0/24")]
    # Distinct owners and distinct /24s: the subnet's diversity rule lets them share a job.
    assert [offer["type"] for offer in offers] == ["job", "job"]
    assert offers[0]["job_id"] == offers[1]["job_id"]
    assert {offer["role"] for offer in offers} == {"A", "B"}


def test_forwarded_for_from_an_untrusted_peer_is_ignored(trusted_proxy):
    subnet = SubnetFactory()
    keys = online_node(subnet, ready=False)

    async def scenario() -> None:
        socket = await connect(keys, peer="10.9.9.9", forwarded_for="203.0.113.7")
        await socket.disconnect()

    async_to_sync(scenario)()
    assert addresses(keys) == [("10.9.9.9", "10.9.9.0/24")]


def test_without_a_trust_list_every_node_behind_the_proxy_shares_its_block():
    # The default (BIM_TRUSTED_PROXIES empty): safe, but behind a proxy the /24 rule collapses.
    subnet = SubnetFactory()
    first, second = online_node(subnet, ready=False), online_node(subnet, ready=False)

    async def scenario() -> None:
        for keys, client in ((first, "203.0.113.7"), (second, "198.51.100.7")):
            socket = await connect(keys, peer=PROXY, forwarded_for=client)
            await socket.disconnect()

    async_to_sync(scenario)()
    assert addresses(first, second) == [(PROXY, "10.0.0.0/24"), (PROXY, "10.0.0.0/24")]


# ------------------------------------------------------------------ HTTP through the same rule


async def register(token: str, public_key: str, subnet: Any, *, peer: str, forwarded_for: str) -> tuple[int, dict]:
    body = json.dumps({"public_key": public_key, "name": "behind-proxy", "subnets": [subnet.slug]}).encode()
    headers = [
        (b"host", b"testserver"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"authorization", f"Token {token}".encode()),
        (b"x-forwarded-for", forwarded_for.encode()),
    ]
    communicator = HttpCommunicator(application, "POST", "/api/v1/nodes/", body=body, headers=headers)
    communicator.scope["client"] = (peer, 41000)
    response = await communicator.get_response(timeout=10)
    return response["status"], json.loads(response["body"])


@pytest.mark.parametrize(
    ("peer", "recorded"), [(PROXY, ("203.0.113.7", "203.0.113.0/24")), ("10.9.9.9", ("10.9.9.9", "10.9.9.0/24"))]
)
def test_node_registration_over_http_records_the_forwarded_address_only_from_the_proxy(trusted_proxy, peer, recorded):
    subnet = SubnetFactory()
    owner = UserFactory()
    online_node(subnet, owner)  # accepts the subnet's license for the owner
    token = Token.objects.create(user=owner).key
    public_key = protocol.public_key_b64(protocol.new_private_key())
    status, node = async_to_sync(register)(token, public_key, subnet, peer=peer, forwarded_for="192.0.2.1, 203.0.113.7")
    # Django's ASGI handler ran the view on a thread of the request's own; the connection that
    # thread took from the pool goes back when its wrapper is collected, not at the request's
    # end. Collected now, so the test database can be dropped at the end of the session.
    gc.collect()
    assert status == 201, node
    registered = Node.objects.get(pk=node["id"])
    assert (registered.ip, registered.ip_block) == recorded
