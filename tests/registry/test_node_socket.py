"""The node websocket through Channels' Redis layer: handshake, presence, job offers, and
every kind of tampered result refused with a clear error (docs/protocol.md)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from bim_core import protocol
from bim_site.asgi import application
from ledger.models import Transfer
from registry import submit, sweeper
from registry.models import Assignment, AssignmentState, Job, JobState
from tests.factories import (
    NodeKeys,
    SubnetFactory,
    UserFactory,
    online_node,
    result_message,
    unit_vectors,
    user_with_credits,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

TEXTS = ["the registry never trusts a node", "every result is signed"]


def run(coro_fn, *args: Any) -> Any:
    return async_to_sync(coro_fn)(*args)


_client_addresses = itertools.count(1)


async def connect(token: str | None) -> WebsocketCommunicator:
    path = "/ws/node/" + (f"?token={token}" if token else "")
    socket = WebsocketCommunicator(application, path)
    # Each socket comes from its own /24, as real nodes do (diversity rules key on it).
    socket.scope["client"] = (f"10.200.{next(_client_addresses) % 256}.9", 50000)
    connected, _ = await socket.connect(timeout=5)
    assert connected
    return socket


async def handshake(keys: NodeKeys, subnet, *, signer=None) -> WebsocketCommunicator:
    """Connect as the node's owner, answer the challenge and report the model ready."""
    token = await database_sync_to_async(lambda: Token.objects.get_or_create(user=keys.node.owner)[0].key)()
    socket = await connect(token)
    challenge = await socket.receive_json_from(timeout=5)
    assert challenge["type"] == "challenge"
    session_pub = protocol.public_key_b64(keys.session)
    signed = protocol.hello_message(node_id=str(keys.node.pk), nonce=challenge["nonce"], session_key_pub=session_pub)
    await socket.send_json_to(
        {
            "type": "hello",
            "node_id": str(keys.node.pk),
            "session_key_pub": session_pub,
            "signature": protocol.sign(signer or keys.long_term, signed),
            "env": {"os": "linux"},
        }
    )
    return socket


async def ready(socket: WebsocketCommunicator, subnet) -> None:
    welcome = await socket.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome"
    await socket.send_json_to({"type": "ready", "subnet": subnet.slug, "model_checksum": subnet.model_checksum})
    assert (await socket.receive_json_from(timeout=5))["type"] == "ready_ok"


async def ready_spare(subnet) -> tuple[NodeKeys, WebsocketCommunicator]:
    """Another connected, ready node: where a role goes when its node loses it."""
    spare = await database_sync_to_async(online_node)(subnet, ready=False)
    socket = await handshake(spare, subnet)
    await ready(socket, subnet)
    return spare, socket


async def closed_with(socket: WebsocketCommunicator) -> int:
    while True:
        output = await socket.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            return output.get("code")


def offline_nodes(subnet, count: int) -> list[NodeKeys]:
    return [online_node(subnet, ready=False) for _ in range(count)]


async def paired_job(subnet) -> tuple[Job, dict[str, tuple[NodeKeys, WebsocketCommunicator, dict]]]:
    """Two connected, ready nodes and a submitted job; returns the offers each received."""
    nodes = await database_sync_to_async(offline_nodes)(subnet, 2)
    sockets = []
    for keys in nodes:
        socket = await handshake(keys, subnet)
        await ready(socket, subnet)
        sockets.append(socket)
    user = await database_sync_to_async(user_with_credits)(10)
    job, _ = await database_sync_to_async(submit.job_submit)(
        user=user, subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key="socket-test"
    )
    offers = {}
    for keys, socket in zip(nodes, sockets):
        offer = await socket.receive_json_from(timeout=5)
        assert offer["type"] == "job"
        offers[offer["role"]] = (keys, socket, offer)
    return job, offers


def test_it_closes_a_socket_without_a_valid_token():
    async def scenario():
        socket = await connect("not-a-token")
        assert await closed_with(socket) == protocol.CLOSE_UNAUTHENTICATED

    run(scenario)


def test_it_closes_when_the_first_message_is_not_hello_or_not_json():
    user = UserFactory()
    token = Token.objects.create(user=user).key

    async def scenario():
        for frame in ('{"type": "heartbeat"}', "this is not json", "[1, 2]"):
            socket = await connect(token)
            await socket.receive_json_from(timeout=5)
            await socket.send_to(text_data=frame)
            assert await closed_with(socket) == protocol.CLOSE_PROTOCOL_ERROR

    run(scenario)


def test_it_refuses_a_hello_signed_by_another_key():
    subnet = SubnetFactory()
    keys = online_node(subnet, ready=False)

    async def scenario():
        socket = await handshake(keys, subnet, signer=protocol.new_private_key())
        assert await closed_with(socket) == protocol.CLOSE_AUTH_FAILED

    run(scenario)


def test_it_refuses_a_node_of_another_owner():
    subnet = SubnetFactory()
    keys = online_node(subnet, ready=False)
    stranger = Token.objects.create(user=UserFactory()).key

    async def scenario():
        socket = await connect(stranger)
        challenge = await socket.receive_json_from(timeout=5)
        session_pub = protocol.public_key_b64(keys.session)
        signed = protocol.hello_message(node_id=str(keys.node.pk), nonce=challenge["nonce"], session_key_pub=session_pub)
        await socket.send_json_to(
            {"type": "hello", "node_id": str(keys.node.pk), "session_key_pub": session_pub, "signature": protocol.sign(keys.long_term, signed)}
        )
        assert await closed_with(socket) == protocol.CLOSE_UNKNOWN_NODE

    run(scenario)


def test_a_node_with_another_model_is_not_made_ready():
    subnet = SubnetFactory()
    keys = online_node(subnet, ready=False)

    async def scenario():
        socket = await handshake(keys, subnet)
        await socket.receive_json_from(timeout=5)
        await socket.send_json_to({"type": "ready", "subnet": subnet.slug, "model_checksum": "cd" * 32})
        error = await socket.receive_json_from(timeout=5)
        assert error["type"] == "error" and error["code"] == "model_mismatch"
        await socket.send_json_to({"type": "heartbeat"})
        assert (await socket.receive_json_from(timeout=5))["type"] == "pong"
        await socket.disconnect()

    run(scenario)
    assert not keys.node.nodesubnet_set.filter(ready_at__isnull=False).exists()


def _forgeries(job: Job, keys: NodeKeys, assignment: Assignment, other: Assignment) -> list[tuple[str, dict]]:
    vectors = unit_vectors(len(TEXTS))
    honest = result_message(keys, job, assignment, vectors)
    wrong_payload = protocol.encode_vectors(unit_vectors(len(TEXTS), seed=9))
    return [
        ("bad_signature", result_message(keys, job, assignment, vectors, signing_key=protocol.new_private_key())),
        ("bad_input_hash", result_message(keys, job, assignment, vectors, input_hash=protocol.input_hash({"texts": ["other"]}))),
        ("bad_result_hash", {**honest, "data": protocol.b64encode(wrong_payload)}),
        ("not_assigned", result_message(keys, job, other, vectors)),
        ("bad_shape", result_message(keys, job, assignment, unit_vectors(len(TEXTS) + 1))),
        ("bad_message", {**honest, "shape": "two by three"}),
    ]


def test_tampered_results_are_refused_with_their_code():
    subnet = SubnetFactory(reputation_policy={"strikes_to_ban": 100})  # one forgery after another, no ban

    async def scenario():
        job, offers = await paired_job(subnet)
        keys, socket, offer = offers["A"]
        assignment = await database_sync_to_async(Assignment.objects.get)(pk=offer["assignment_id"])
        other = await database_sync_to_async(Assignment.objects.get)(pk=offers["B"][2]["assignment_id"])
        # The offer carries the contract whose hash and input hash the node can check.
        assert protocol.contract_hash(offer["contract"]) == offer["contract_hash"]
        assert protocol.input_hash(offer["inputs"]) == offer["contract"]["input_hash"]
        for code, forged in await database_sync_to_async(_forgeries)(job, keys, assignment, other):
            await socket.send_json_to(forged)
            answer = await socket.receive_json_from(timeout=5)
            assert (answer["type"], answer["code"]) == ("error", code), answer
            # Each forgery costs its node this assignment: put it back for the next one.
            await database_sync_to_async(
                Assignment.objects.filter(pk=assignment.pk).update
            )(state=AssignmentState.DISPATCHED)
        for _, sock, _ in offers.values():
            await sock.disconnect()

    run(scenario)


def test_a_forged_result_costs_its_node_the_job_and_the_honest_one_still_counts():
    subnet = SubnetFactory()

    async def scenario():
        job, offers = await paired_job(subnet)
        spare, spare_socket = await ready_spare(subnet)
        keys, socket, offer = offers["A"]
        assignment = await database_sync_to_async(Assignment.objects.get)(pk=offer["assignment_id"])
        vectors = unit_vectors(len(TEXTS))
        forged = await database_sync_to_async(result_message)(
            keys, job, assignment, vectors, signing_key=protocol.new_private_key()
        )
        await socket.send_json_to(forged)
        assert (await socket.receive_json_from(timeout=5))["code"] == "bad_signature"
        # Its role goes to the spare at once; the forger's honest retry is too late.
        replacement_offer = await spare_socket.receive_json_from(timeout=5)
        assert (replacement_offer["type"], replacement_offer["role"]) == ("job", "A")
        honest = await database_sync_to_async(result_message)(keys, job, assignment, vectors)
        await socket.send_json_to(honest)
        assert (await socket.receive_json_from(timeout=5))["code"] == "not_assigned"
        replacement = await database_sync_to_async(Assignment.objects.get)(pk=replacement_offer["assignment_id"])
        keys_b, socket_b, offer_b = offers["B"]
        assignment_b = await database_sync_to_async(Assignment.objects.get)(pk=offer_b["assignment_id"])
        for node_keys, sock, answer in ((keys_b, socket_b, assignment_b), (spare, spare_socket, replacement)):
            await sock.send_json_to(await database_sync_to_async(result_message)(node_keys, job, answer, vectors))
            assert (await sock.receive_json_from(timeout=5)) == {"type": "result_ok", "assignment_id": str(answer.id)}
            await sock.send_json_to(await database_sync_to_async(result_message)(node_keys, job, answer, vectors))
            assert (await sock.receive_json_from(timeout=5))["code"] == "already_submitted"
        for sock in (socket, socket_b, spare_socket):
            await sock.disconnect()
        return assignment.id

    lost = Assignment.objects.select_related("job").get(pk=run(scenario))
    assert (lost.state, lost.failure_reason) == (AssignmentState.LOST, "result refused: bad_signature")
    assert lost.node.strike_records.filter(job=lost.job).count() == 1
    assert lost.job.state == JobState.SETTLED


def test_a_node_answering_for_another_input_fails_verification_and_is_not_paid():
    subnet = SubnetFactory()

    async def scenario():
        job, offers = await paired_job(subnet)
        honest_vectors = unit_vectors(len(TEXTS), seed=1)
        # B returns well-formed, correctly signed vectors of a different input.
        other_input_vectors = unit_vectors(len(TEXTS), seed=2)
        for role, vectors in (("A", honest_vectors), ("B", other_input_vectors)):
            keys, socket, offer = offers[role]
            assignment = await database_sync_to_async(Assignment.objects.get)(pk=offer["assignment_id"])
            await socket.send_json_to(await database_sync_to_async(result_message)(keys, job, assignment, vectors))
            assert (await socket.receive_json_from(timeout=5))["type"] == "result_ok"
        for _, sock, _ in offers.values():
            await sock.disconnect()
        return job

    job = run(scenario)
    job.refresh_from_db()
    assert job.state == JobState.ADJUDICATING
    assert job.verification["passed"] is False
    assert not Transfer.objects.filter(job_id=job.pk, kind__in=["capture", "payout"]).exists()


def test_a_settled_pair_over_the_socket_pays_both_nodes():
    subnet = SubnetFactory()

    async def scenario():
        job, offers = await paired_job(subnet)
        vectors = unit_vectors(len(TEXTS), seed=3)
        for keys, socket, offer in offers.values():
            assignment = await database_sync_to_async(Assignment.objects.get)(pk=offer["assignment_id"])
            await socket.send_json_to(await database_sync_to_async(result_message)(keys, job, assignment, vectors))
            assert (await socket.receive_json_from(timeout=5))["type"] == "result_ok"
        for _, sock, _ in offers.values():
            await sock.disconnect()
        return job

    job = run(scenario)
    job.refresh_from_db()
    assert job.state == JobState.SETTLED
    paid_nodes = set(Transfer.objects.filter(job_id=job.pk, kind="payout", credit__node_id__isnull=False).values_list("credit__node_id", flat=True))
    assert paid_nodes == set(job.assignments.values_list("node_id", flat=True))
    assert np.isclose(job.verification["worst"], 1.0)


def test_a_disconnected_node_loses_its_work_to_another_node_after_the_grace(settings):
    settings.NODE_RECONNECT_GRACE_S = 0
    subnet = SubnetFactory()

    async def scenario():
        job, offers = await paired_job(subnet)
        spare, spare_socket = await ready_spare(subnet)
        _, socket_a, offer_a = offers["A"]
        await socket_a.disconnect(code=1006)  # dropped, not closed by the node: the grace applies
        await database_sync_to_async(sweeper.sweep)()
        offer = await spare_socket.receive_json_from(timeout=5)
        assert offer["type"] == "job" and offer["role"] == "A" and offer["job_id"] == str(job.id)
        assert offer["assignment_id"] != offer_a["assignment_id"]
        await spare_socket.disconnect()
        await offers["B"][1].disconnect()
        return offer_a["assignment_id"]

    lost = Assignment.objects.get(pk=run(scenario))
    assert (lost.state, lost.failure_reason) == (AssignmentState.LOST, "node offline past the reconnect grace")


def test_the_protocol_document_names_every_error_and_close_code():
    from pathlib import Path

    document = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    for code in protocol.ERROR_CODES:
        assert code in document, code
    for name in dir(protocol):
        if name.startswith("CLOSE_"):
            assert str(getattr(protocol, name)) in document, name
