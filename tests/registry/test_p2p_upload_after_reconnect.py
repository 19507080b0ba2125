"""An upload the registry asked for while the node's socket was away (docs/p2p.md §4): the
`upload_request` went to a socket that is gone, so a node back with a new session is asked
again right after its `welcome`, rather than struck at `upload_due` for a message it never
got."""

from __future__ import annotations

import dataclasses

import pytest

from bim_core import protocol
from registry import dispatch, results
from registry.models import Job
from registry.verify import job_verify
from tests.factories import SubnetFactory, online_node, unit_vectors, user_with_credits
from tests.p2p_jobs import commit_message, p2p_submit
from tests.registry.test_node_socket import handshake, run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

INPUTS = {"texts": ["asked while away"]}


def committed_and_asked(settings):
    """A P2P job both nodes committed the same hash for, drawn for audit: node A is asked
    for its payload (while no socket of its is connected)."""
    settings.P2P_AUDIT_BP = 10_000
    subnet = SubnetFactory()
    nodes = {n.node.pk: n for n in (online_node(subnet) for _ in range(2))}
    job = p2p_submit(user_with_credits(5), subnet, INPUTS)
    dispatch.job_dispatch(job_id=job.id)
    job = Job.objects.get(pk=job.pk)
    vectors = unit_vectors(1)
    for assignment in job.assignments.all():
        keys = nodes[assignment.node_id]
        results.commit_record(node_id=keys.node.pk, message=commit_message(keys, job, assignment, vectors))
    job_verify(job_id=job.pk)
    a = job.assignments.get(role="A")
    a.refresh_from_db()
    assert a.upload_reason == "audit"
    return subnet, nodes[a.node_id], job, a


def test_a_node_back_after_a_disconnect_is_asked_again_for_its_outstanding_upload(settings):
    subnet, keys, job, assignment = committed_and_asked(settings)

    async def scenario():
        socket = await handshake(dataclasses.replace(keys, session=protocol.new_private_key()), subnet)
        welcome = await socket.receive_json_from(timeout=5)
        asked = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return welcome, asked

    welcome, asked = run(scenario)
    assert welcome["type"] == "welcome"
    assert asked == {
        "type": "upload_request", "job_id": str(job.pk), "assignment_id": str(assignment.pk), "reason": "audit",
        "with_inputs": True,
    }


def test_an_upload_already_made_is_not_asked_again(settings):
    subnet, keys, job, assignment = committed_and_asked(settings)
    from tests.p2p_jobs import upload_message

    results.result_record(node_id=keys.node.pk, message=upload_message(keys, job, assignment, unit_vectors(1), inputs=INPUTS))

    async def scenario():
        socket = await handshake(dataclasses.replace(keys, session=protocol.new_private_key()), subnet)
        welcome = await socket.receive_json_from(timeout=5)
        await socket.send_json_to({"type": "heartbeat"})
        after = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return welcome, after

    welcome, after = run(scenario)
    assert welcome["type"] == "welcome" and after["type"] == "pong"
