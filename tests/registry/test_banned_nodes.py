"""A banned node is off the socket (issue 11: a flooder or a reconnect storm that earned a
ban must not keep costing the registry CPU and users deadlines): the strike that bans it
closes its socket with 4403 and moves its work on, and its hello is refused until the ban
ends."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from bim_core import protocol
from registry import reputation
from registry.models import Assignment, AssignmentState, Node
from tests.factories import SubnetFactory, online_node
from tests.registry.test_node_socket import closed_with, handshake, paired_job, ready_spare, run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def test_the_strike_that_bans_a_connected_node_closes_its_socket_and_moves_its_work():
    subnet = SubnetFactory()

    async def scenario():
        job, offers = await paired_job(subnet)
        spare, spare_socket = await ready_spare(subnet)
        keys, socket_a, offer_a = offers["A"]
        for n in range(3):  # the default policy bans at three active strikes
            await database_sync_to_async(reputation.node_strike)(node_id=keys.node.pk, reason=f"strike {n}")
        code = await closed_with(socket_a)
        await socket_a.disconnect(code=code)  # the close echoed, as daphne reports it
        offer = await spare_socket.receive_json_from(timeout=5)
        await spare_socket.disconnect()
        await offers["B"][1].disconnect()
        return code, offer, offer_a["assignment_id"]

    code, offer, assignment_id = run(scenario)
    assert code == protocol.CLOSE_BANNED
    assert (offer["type"], offer["role"]) == ("job", "A")
    assert Assignment.objects.get(pk=assignment_id).state == AssignmentState.LOST


def test_a_banned_nodes_hello_is_refused_until_the_ban_ends():
    subnet = SubnetFactory()
    keys = online_node(subnet, ready=False)
    Node.objects.filter(pk=keys.node.pk).update(banned_until=timezone.now() + timedelta(hours=1))

    async def scenario():
        refused = await handshake(keys, subnet)
        code = await closed_with(refused)
        await database_sync_to_async(
            lambda: Node.objects.filter(pk=keys.node.pk).update(banned_until=timezone.now() - timedelta(seconds=1))
        )()
        again = await handshake(dataclasses.replace(keys, session=protocol.new_private_key()), subnet)
        welcome = await again.receive_json_from(timeout=5)
        await again.disconnect()
        return code, welcome["type"]

    assert run(scenario) == (protocol.CLOSE_BANNED, "welcome")
