"""The SDK's side of peer-to-peer jobs (docs/p2p.md) that needs no data channel: what a p2p
submit sends the registry (pytest-django's live server), how a result received over a channel
is checked, and how the receipt of a job settled on commits alone is verified against the
payload the user holds. tests/e2e/test_p2p_pipeline.py runs the channels themselves."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token

from bim_core import protocol
from bim_sdk import Client, ReceiptInvalid, verify_receipt
from bim_sdk.p2p import family_of_inputs, result_checked, user_socket_url
from bim_sdk.receipts import delivered_result
from registry import dispatch, p2p, results, verify
from registry.models import Job
from tests.factories import SubnetFactory, online_node, unit_vectors, user_with_credits
from tests.p2p_jobs import commit_message

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]

INPUTS = {"texts": ["a private text", "and another"]}


@pytest.fixture
def market(live_server, settings):
    settings.P2P_AUDIT_BP = 0
    subnet = SubnetFactory()
    nodes = [online_node(subnet), online_node(subnet)]
    user = user_with_credits()
    client = Client(live_server.url, Token.objects.create(user=user).key, retries=0)
    return subnet, nodes, user, client


def test_a_p2p_submit_sends_the_registry_the_inputs_hash_and_summary_only(market):
    subnet, _, _, client = market
    submitted = client.submit(subnet.slug, INPUTS, transport="p2p")

    job = Job.objects.get(pk=submitted["id"])
    assert (job.transport, job.inputs) == ("p2p", {})
    assert job.contract["input_hash"] == protocol.input_hash(INPUTS)
    assert job.contract["input_summary"] == {"items": 2} and job.item_count == 2
    assert submitted["contract"]["transport"] == "p2p"


def test_the_family_of_inputs_and_the_user_socket_url():
    assert family_of_inputs({"texts": ["x"]}).task_type == "embedding"
    assert family_of_inputs({"prompt": "p", "max_tokens": 3}).task_type == "text"
    assert family_of_inputs({"image": "iVBOR"}).task_type == "image"
    with pytest.raises(ValueError):
        family_of_inputs({"texts": ["x"], "extra": 1})
    assert user_socket_url("https://bim.example/prefix/", "a b") == "wss://bim.example/prefix/ws/user/?token=a%20b"


def settled_on_commits(market) -> tuple[dict, bytes]:
    """A p2p job both nodes committed the same vectors for and whose delivery the user
    confirmed: settled without its bytes ever reaching the registry. (job detail, payload)."""
    subnet, nodes, user, client = market
    job = Job.objects.get(pk=client.submit(subnet.slug, INPUTS, transport="p2p")["id"])
    dispatch.job_dispatch(job_id=job.id)
    by_node = {keys.node.pk: keys for keys in nodes}
    vectors = unit_vectors(2, seed=3)
    for assignment in job.assignments.all():
        results.commit_record(node_id=assignment.node_id, message=commit_message(by_node[assignment.node_id], job, assignment, vectors))
    first = job.assignments.order_by("role").first()
    p2p.delivery_confirm(user=user, job_id=job.id, assignment_id=first.pk, result_hash=first.result_hash)
    verify.job_verify(job_id=job.id)
    return client.job(str(job.id)), protocol.encode_vectors(vectors)


def test_a_receipt_with_no_delivered_result_is_verified_against_the_payload_received(market):
    detail, payload = settled_on_commits(market)
    key = market[3].registry_key()
    assert detail["state"] == "settled" and detail["result"] is None

    vectors = verify_receipt(detail, registry_key=key, inputs=INPUTS, payload=payload)
    assert protocol.encode_vectors(vectors) == payload
    with pytest.raises(ReceiptInvalid, match="pass the payload"):
        verify_receipt(detail, registry_key=key, inputs=INPUTS)
    other = protocol.encode_vectors(unit_vectors(2, seed=4))
    with pytest.raises(ReceiptInvalid, match="does not hash"):
        verify_receipt(detail, registry_key=key, inputs=INPUTS, payload=other)
    with pytest.raises(ReceiptInvalid, match="not the job's inputs"):
        verify_receipt(detail, registry_key=key, inputs={"texts": ["x", "y"]}, payload=payload)
    # Written into the job as the registry delivers results, it verifies later on its own.
    kept = {**detail, "result": delivered_result(detail, vectors)}
    assert protocol.encode_vectors(verify_receipt(kept, registry_key=key, inputs=INPUTS)) == payload


def test_a_result_over_a_channel_is_checked_against_its_nodes_session_signature(market):
    subnet, nodes, _, client = market
    submitted = client.submit(subnet.slug, INPUTS, transport="p2p")
    job = Job.objects.get(pk=submitted["id"])
    dispatch.job_dispatch(job_id=job.id)
    assignment = job.assignments.order_by("role").first()
    keys = next(k for k in nodes if k.node.pk == assignment.node_id)
    detail = client.job(str(job.id))
    commit = commit_message(keys, job, assignment, unit_vectors(2))
    header = {"kind": "result", **{k: commit[k] for k in ("job_id", "assignment_id", "input_hash", "result_hash", "shape", "encoding", "signature")}}
    entry = {"assignment_id": str(assignment.id), "session_key_pub": assignment.session_key_pub}

    assert result_checked(detail, entry, header, commit["result_hash"])
    assert not result_checked(detail, entry, header, "0" * 64)  # other bytes than the signed ones
    other_node = {**entry, "session_key_pub": protocol.public_key_b64(protocol.new_private_key())}
    assert not result_checked(detail, other_node, header, commit["result_hash"])
    assert not result_checked(detail, entry, {**header, "shape": [3, 384]}, commit["result_hash"])
