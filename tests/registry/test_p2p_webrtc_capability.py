"""Nodes that say they have no WebRTC (`env.webrtc` false at registration: a node run with
--no-webrtc, a browser without RTCPeerConnection) get peer-to-peer jobs only when no other
node can take them: such a job's input comes over a data channel, and each one offered to
them would make its user wait out the connection timeout before falling back to the relay.
Relay jobs, and P2P jobs whose input the registry already holds, go to them as to anyone."""

from __future__ import annotations

import pytest

from registry import dispatch, presence, submit
from registry.models import Job, Node
from tests.factories import SubnetFactory, online_node, user_with_credits
from tests.p2p_jobs import p2p_submit

pytestmark = pytest.mark.django_db

INPUTS = {"texts": ["a peer-to-peer input"]}


def nodes_of(job) -> set:
    return set(Job.objects.get(pk=job.pk).assignments.values_list("node_id", flat=True))


def without_webrtc(keys) -> None:
    Node.objects.filter(pk=keys.node.pk).update(capabilities={"webrtc": False})


def test_p2p_jobs_go_to_nodes_with_webrtc_while_there_are_enough(settings):
    settings.P2P_AUDIT_BP = 0
    user = user_with_credits(20)
    # Three markets of 2 nodes with WebRTC and 3 without: by chance alone a job would land on
    # the two capable ones once in ten.
    for i in range(3):
        subnet = SubnetFactory()
        capable = [online_node(subnet) for _ in range(2)]
        for keys in [online_node(subnet) for _ in range(3)]:
            without_webrtc(keys)
        job = p2p_submit(user, subnet, INPUTS, key=f"p2p-{i}")
        dispatch.job_dispatch(job_id=job.id)
        assert nodes_of(job) == {k.node.pk for k in capable}


def test_with_too_few_nodes_with_webrtc_the_job_still_runs(settings):
    subnet = SubnetFactory()
    capable = online_node(subnet)
    other = online_node(subnet)
    without_webrtc(other)
    job = p2p_submit(user_with_credits(5), subnet, INPUTS)
    dispatch.job_dispatch(job_id=job.id)
    assert nodes_of(job) == {capable.node.pk, other.node.pk}  # it falls back to the relay if need be


def test_relay_jobs_ignore_the_capability(settings):
    subnet = SubnetFactory()
    for keys in [online_node(subnet) for _ in range(2)]:
        without_webrtc(keys)
    job, _ = submit.job_submit(user=user_with_credits(5), subnet_slug=subnet.slug, inputs=INPUTS, idempotency_key="relay")
    dispatch.job_dispatch(job_id=job.id)
    assert len(nodes_of(job)) == 2


def test_registration_keeps_the_nodes_word_on_webrtc():
    subnet = SubnetFactory()
    keys = online_node(subnet)
    from bim_core import protocol

    node, _ = presence.node_register(
        owner=keys.node.owner, public_key=protocol.public_key_b64(keys.long_term), name="n",
        env={"os": "linux", "webrtc": False}, subnet_slugs=[subnet.slug], ip="10.9.9.9",
    )
    assert node.capabilities["webrtc"] is False


def test_a_node_that_registers_again_without_webrtc_is_routed_by_its_new_word(settings, django_capture_on_commit_callbacks):
    """The capability lives in the routing index (no query per placement); registering
    again bumps the index, so a cached one does not keep the node's old word."""
    from bim_core import protocol
    from registry import routing_index

    settings.P2P_AUDIT_BP = 0
    subnet = SubnetFactory()
    capable = [online_node(subnet) for _ in range(2)]
    others = [online_node(subnet) for _ in range(3)]
    assert len(routing_index.routable_index(subnet.pk).without_webrtc) == 0  # built and cached
    for keys in others:
        with django_capture_on_commit_callbacks(execute=True):
            presence.node_register(
                owner=keys.node.owner, public_key=protocol.public_key_b64(keys.long_term), name="n",
                env={"os": keys.node.os, "webrtc": False}, subnet_slugs=[subnet.slug], ip=keys.node.ip,
            )
    assert len(routing_index.routable_index(subnet.pk).without_webrtc) == 3
    job = p2p_submit(user_with_credits(5), subnet, INPUTS)
    dispatch.job_dispatch(job_id=job.id)
    assert nodes_of(job) == {k.node.pk for k in capable}
