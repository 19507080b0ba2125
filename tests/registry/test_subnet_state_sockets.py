"""Pausing, resuming and retiring a subnet tell its connected nodes over their sockets
(`subnet_state`, docs/protocol.md §4.2); a node reconnecting during a pause is welcomed
with the subnet listed as paused, and its ready is accepted."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from registry.lifecycle import subnet_state_set
from subnets.models import Subnet
from tests.factories import SubnetFactory, UserFactory, benchmark_reference, online_node
from tests.registry.test_node_socket import handshake, ready, run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def change(subnet: Subnet, to: str) -> None:
    subnet_state_set(subnet_id=subnet.pk, to=to, operator=UserFactory(), reason="maintenance")


def test_connected_nodes_hear_of_the_pause_the_resume_and_the_retirement():
    subnet = SubnetFactory()
    benchmark_reference(subnet)
    other = SubnetFactory()

    async def scenario():
        keys = [await database_sync_to_async(online_node)(subnet, ready=False) for _ in range(2)]
        bystander = await database_sync_to_async(online_node)(other, ready=False)
        sockets = []
        for node in keys:
            socket = await handshake(node, subnet)
            await ready(socket, subnet)
            sockets.append(socket)
        elsewhere = await handshake(bystander, other)
        await ready(elsewhere, other)

        for to in (Subnet.State.PAUSED, Subnet.State.ACTIVE, Subnet.State.RETIRED):
            await database_sync_to_async(change)(subnet, to)
            for socket in sockets:
                message = await socket.receive_json_from(timeout=5)
                assert message == {
                    "type": "subnet_state",
                    "subnet": subnet.slug,
                    "state": to,
                    "model_checksum": subnet.model_checksum,
                    "manifest_url": f"/subnets/{subnet.slug}/manifest.json",
                }
        assert await elsewhere.receive_nothing(timeout=0.3)
        for socket in [*sockets, elsewhere]:
            await socket.disconnect()

    run(scenario)


def test_a_node_connecting_during_a_pause_is_welcomed_with_the_subnet_paused():
    subnet = SubnetFactory(state=Subnet.State.PAUSED)

    async def scenario():
        node = await database_sync_to_async(online_node)(subnet, ready=False)
        socket = await handshake(node, subnet)
        welcome = await socket.receive_json_from(timeout=5)
        assert welcome["type"] == "welcome"
        assert [(s["slug"], s["state"]) for s in welcome["subnets"]] == [(subnet.slug, "paused")]
        await socket.send_json_to({"type": "ready", "subnet": subnet.slug, "model_checksum": subnet.model_checksum})
        assert (await socket.receive_json_from(timeout=5))["type"] == "ready_ok"
        await socket.disconnect()

    run(scenario)
