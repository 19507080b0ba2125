"""Who pays when a node's socket goes while it holds work (issue 11: reconnect storms).

A registry restart is nobody's fault, so a dropped socket keeps its work for the reconnect
grace. But a node that closes its own socket holding work left it (its role moves at once,
a failure on its record), and `welcome` lists what a node still holds, so a node back from
any disconnect answers or gives up its work: staying silent until the deadline is a
strike, giving it up as `lost_on_reconnect` is free, and costs the user no deadline."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from bim_core import protocol
from registry import dispatch, give_up, presence, sweeper
from registry.models import Assignment, AssignmentState, Node, Strike
from tests.factories import SubnetFactory, online_node
from tests.registry.test_hostile_nodes import dispatched, submit
from tests.registry.test_node_socket import closed_with, handshake, paired_job, ready_spare, run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def _state(assignment_id):
    return Assignment.objects.values_list("state", "failure_reason").get(pk=assignment_id)


def _record(node_id):
    node = Node.objects.get(pk=node_id)
    return node.jobs_failed, Strike.objects.filter(node=node).count()


def test_a_node_that_closes_its_socket_holding_work_leaves_it_at_once():
    subnet = SubnetFactory()

    async def scenario():
        job, offers = await paired_job(subnet)
        spare, spare_socket = await ready_spare(subnet)
        keys, socket_a, offer_a = offers["A"]
        await socket_a.disconnect(code=1001)  # the node's own clean close: no sweep needed
        offer = await spare_socket.receive_json_from(timeout=5)
        assert (offer["type"], offer["role"], offer["job_id"]) == ("job", "A", str(job.id))
        await spare_socket.disconnect()
        await offers["B"][1].disconnect()
        return keys.node.pk, offer_a["assignment_id"]

    node_id, assignment_id = run(scenario)
    assert _state(assignment_id) == (AssignmentState.LOST, "node closed its socket holding the work")
    assert _record(node_id) == (1, 0)  # a failure on its record, no strike


def test_a_dropped_socket_keeps_its_work_for_the_grace(settings):
    settings.NODE_RECONNECT_GRACE_S = 30
    subnet = SubnetFactory()

    async def scenario():
        job, offers = await paired_job(subnet)
        keys, socket_a, offer_a = offers["A"]
        await socket_a.disconnect(code=1006)  # abnormal: the network, or the registry went down
        await database_sync_to_async(sweeper.sweep)()
        await offers["B"][1].disconnect()
        return keys.node.pk, offer_a["assignment_id"]

    node_id, assignment_id = run(scenario)
    assert _state(assignment_id) == (AssignmentState.DISPATCHED, "")
    assert _record(node_id) == (0, 0)


def test_welcome_lists_the_work_a_node_still_holds_and_giving_it_up_is_free():
    subnet = SubnetFactory()

    async def scenario():
        job, offers = await paired_job(subnet)
        keys, socket_a, offer_a = offers["A"]
        await socket_a.disconnect(code=1006)
        again = await handshake(dataclasses.replace(keys, session=protocol.new_private_key()), subnet)
        welcome = await again.receive_json_from(timeout=5)
        assert welcome["type"] == "welcome"
        await again.send_json_to(
            {"type": "job_failed", "assignment_id": offer_a["assignment_id"], "reason": protocol.LOST_ON_RECONNECT}
        )
        await again.send_json_to({"type": "heartbeat"})  # answered after the job_failed was handled
        assert (await again.receive_json_from(timeout=5))["type"] == "pong"
        await again.disconnect(code=1006)
        await offers["B"][1].disconnect()
        return keys.node.pk, offer_a["assignment_id"], welcome["assignments"]

    node_id, assignment_id, listed = run(scenario)
    assert listed == [assignment_id]
    assert _state(assignment_id)[0] == AssignmentState.LOST
    assert _record(node_id) == (0, 0)


def test_giving_up_work_of_the_current_session_is_a_failure_whatever_the_reason(django_capture_on_commit_callbacks):
    subnet = SubnetFactory()
    keys = online_node(subnet)
    other = online_node(subnet)
    job = submit(subnet)
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.job_dispatch(job_id=job.id)
    mine = job.assignments.get(node=keys.node)
    give_up.assignment_give_up(node_id=keys.node.pk, assignment_id=str(mine.pk), reason=protocol.LOST_ON_RECONNECT)
    assert _record(keys.node.pk) == (1, 0)
    assert _record(other.node.pk) == (0, 0)


def test_silence_about_listed_work_after_coming_back_is_struck(django_capture_on_commit_callbacks):
    subnet = SubnetFactory()
    job, pool, by_role = dispatched(subnet, django_capture_on_commit_callbacks)
    back = pool[by_role["A"].node_id].node
    with django_capture_on_commit_callbacks(execute=True):
        presence.node_disconnect(node_id=back.pk, channel_name=back.channel_name)
    presence.node_connect(
        node=back,
        channel_name=f"again.{back.pk}",
        session_key_pub=protocol.public_key_b64(protocol.new_private_key()),
        nonce=protocol.b64encode(b"m" * 32),
        session_cert="cert",
        ip=back.ip,
    )
    # It came back 20 s before the deadline, heard its work listed, and said nothing.
    Node.objects.filter(pk=back.pk).update(connected_at=timezone.now() - timedelta(seconds=21))
    Assignment.objects.filter(pk=by_role["A"].pk).update(deadline=timezone.now() - timedelta(seconds=1))

    with django_capture_on_commit_callbacks(execute=True):
        sweeper.sweep()

    assert _state(by_role["A"].pk)[0] == AssignmentState.LOST
    assert _record(back.pk) == (1, 1)


def test_a_node_cut_off_for_a_flood_leaves_its_work_at_once(settings):
    settings.NODE_RATE_PER_S, settings.NODE_RATE_BURST = 0.01, 4  # hello and ready take two
    subnet = SubnetFactory()

    async def scenario():
        job, offers = await paired_job(subnet)
        spare, spare_socket = await ready_spare(subnet)
        keys, socket_a, offer_a = offers["A"]
        for _ in range(20):
            await socket_a.send_json_to({"type": "heartbeat"})
        assert await closed_with(socket_a) == protocol.CLOSE_RATE_LIMITED
        await socket_a.disconnect(code=protocol.CLOSE_RATE_LIMITED)  # the server's close, echoed
        offer = await spare_socket.receive_json_from(timeout=5)
        assert (offer["type"], offer["role"]) == ("job", "A")
        await spare_socket.disconnect()
        await offers["B"][1].disconnect()
        return keys.node.pk, offer_a["assignment_id"]

    node_id, assignment_id = run(scenario)
    assert _state(assignment_id) == (AssignmentState.LOST, "node cut off: flooded the registry with messages")
    assert _record(node_id) == (1, 1)


def test_a_node_whose_frame_the_transport_refused_is_struck_and_leaves_its_work():
    """daphne's own limit (1 MiB) closes with 1009 before the consumer sees the frame
    (bim_site.serve): the consumer learns it from the disconnect code."""
    subnet = SubnetFactory()

    async def scenario():
        job, offers = await paired_job(subnet)
        keys, socket_a, offer_a = offers["A"]
        await socket_a.disconnect(code=protocol.CLOSE_MESSAGE_TOO_BIG)
        await offers["B"][1].disconnect()
        return keys.node.pk, offer_a["assignment_id"]

    node_id, assignment_id = run(scenario)
    assert _state(assignment_id) == (AssignmentState.LOST, "node cut off: sent a frame over the size limit")
    assert _record(node_id) == (1, 1)


def test_a_node_cut_off_for_a_flood_cannot_say_hello_again_at_once(settings):
    settings.NODE_RATE_PER_S, settings.NODE_RATE_BURST = 0.01, 4
    subnet = SubnetFactory()
    keys = online_node(subnet, ready=False)

    async def scenario():
        socket = await handshake(keys, subnet)
        for _ in range(20):
            await socket.send_json_to({"type": "heartbeat"})
        assert await closed_with(socket) == protocol.CLOSE_RATE_LIMITED
        await socket.disconnect(code=protocol.CLOSE_RATE_LIMITED)
        again = await handshake(dataclasses.replace(keys, session=protocol.new_private_key()), subnet)
        return await closed_with(again)

    assert run(scenario) == protocol.CLOSE_RATE_LIMITED
