"""Results of peer-to-peer jobs (docs/p2p.md §4): nodes commit signed hashes, the user
confirms what it received, and the registry asks for a payload only when it must judge or
deliver it itself. Every path ends settled or failed with the ledger balanced, and every
refusal names its code."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from bim_core import protocol
from ledger.models import Transfer
from registry import dispatch, give_up, p2p, results, sweeper
from registry.models import Assignment, AssignmentState, Job, JobState, Node
from registry.verify import job_verify
from tests.factories import SubnetFactory, online_node, unit_vectors, user_with_credits
from tests.p2p_jobs import commit_message, p2p_job_dispatched, p2p_submit, upload_message, upload_requests

pytestmark = pytest.mark.django_db

INPUTS = {"texts": ["the registry never reads this", "nor this"]}


@pytest.fixture
def p2p_job(settings, django_capture_on_commit_callbacks):
    settings.P2P_AUDIT_BP = 0
    return p2p_job_dispatched(INPUTS, django_capture_on_commit_callbacks)


def commit(job, pair, role, vectors, **overrides):
    assignment, keys = pair[role]
    return results.commit_record(node_id=keys.node.pk, message=commit_message(keys, job, assignment, vectors, **overrides))


def test_the_offer_carries_no_input_and_the_user_learns_each_node(p2p_job, sent):
    job, pair, _ = p2p_job
    offer = dispatch._job_message(job, pair["A"][0])
    assert "inputs" not in offer and offer["transport"] == "p2p" and isinstance(offer["ice_servers"], list)


def test_identical_commits_settle_once_the_user_confirms_delivery(p2p_job, django_capture_on_commit_callbacks):
    job, pair, user = p2p_job
    vectors = unit_vectors(2)
    commit(job, pair, "A", vectors)
    commit(job, pair, "B", vectors)
    assert Job.objects.get(pk=job.pk).state == JobState.VERIFYING  # not delivered yet: waits
    result_hash = protocol.sha256_hex(protocol.encode_vectors(vectors))
    with django_capture_on_commit_callbacks(execute=True):
        assert p2p.delivery_confirm(user=user, job_id=job.pk, assignment_id=pair["B"][0].pk, result_hash=result_hash)
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.SETTLED
    assert job.receipt["result_hash"] == result_hash and job.verification["transport"] == "p2p"
    assert job.verification["path"] == "2-of-2" and job.receipt["verification"]["min_cosine"] == 1.0
    assert not Assignment.objects.filter(job=job, result__isnull=False).exists()  # no payload ever held
    assert job.relay_bytes == 0 and job.inputs == {}
    assert Transfer.objects.filter(kind="capture", amount=job.price_micro).count() == 1
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    detail = client.get(f"/api/v1/jobs/{job.pk}/").json()
    assert detail["state"] == "settled" and detail["result"] is None and detail["receipt"]["result_hash"] == result_hash


def test_unconfirmed_delivery_makes_the_registry_fetch_and_deliver_the_payload(
    p2p_job, sent, settings, django_capture_on_commit_callbacks
):
    job, pair, _ = p2p_job
    vectors = unit_vectors(2)
    commit(job, pair, "A", vectors)
    commit(job, pair, "B", vectors)
    settings.P2P_DELIVERY_S = 0
    with django_capture_on_commit_callbacks(execute=True):
        job_verify(job_id=job.pk)
    asked = upload_requests(sent)
    assert [(m["assignment_id"], m["reason"]) for m in asked] == [(str(pair["A"][0].pk), "undelivered")]
    assignment, keys = pair["A"]
    with django_capture_on_commit_callbacks(execute=True):
        results.result_record(node_id=keys.node.pk, message=upload_message(keys, job, assignment, vectors))
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.SETTLED and job.relay_bytes == 2 * 384 * 4
    assert bytes(Assignment.objects.get(pk=assignment.pk).result) == protocol.encode_vectors(vectors)


def test_differing_commits_bring_both_payloads_and_the_input_then_verify_as_relay(
    p2p_job, sent, django_capture_on_commit_callbacks
):
    job, pair, _ = p2p_job
    base = unit_vectors(2)
    nudged = base.copy()
    nudged[0, 0] = np.nextafter(nudged[0, 0], np.float32(2))  # other bits, within tolerance
    with django_capture_on_commit_callbacks(execute=True):
        commit(job, pair, "A", base)
        commit(job, pair, "B", nudged)
    asked = {m["assignment_id"]: m for m in upload_requests(sent)}
    assert {m["reason"] for m in asked.values()} == {"mismatch"} and len(asked) == 2
    assert all(m["with_inputs"] for m in asked.values())
    for role, vectors in (("A", base), ("B", nudged)):
        assignment, keys = pair[role]
        with django_capture_on_commit_callbacks(execute=True):
            results.result_record(node_id=keys.node.pk, message=upload_message(keys, job, assignment, vectors, inputs=INPUTS))
    job = Job.objects.get(pk=job.pk)
    assert job.inputs == INPUTS  # the registry holds the input of a job it had to judge
    assert job.state == JobState.SETTLED and job.verification["path"] == "2-of-2"
    assert job.verification["worst"] < 1.0


def test_an_upload_that_is_not_the_committed_result_strikes_its_node_once_and_asks_its_partner(
    p2p_job, sent, settings, django_capture_on_commit_callbacks
):
    job, pair, user = p2p_job
    vectors = unit_vectors(2)
    commit(job, pair, "A", vectors)
    commit(job, pair, "B", vectors)
    settings.P2P_DELIVERY_S = 0
    with django_capture_on_commit_callbacks(execute=True):
        job_verify(job_id=job.pk)
    assignment, keys = pair["A"]
    forged = upload_message(keys, job, assignment, unit_vectors(2, seed=9))
    with pytest.raises(protocol.ProtocolError) as refused:
        results.result_record(node_id=keys.node.pk, message=forged)
    assert refused.value.code == "bad_result_hash"
    assert results.result_refused(node_id=keys.node.pk, message=forged, code="bad_result_hash")
    strikes_before = Node.objects.get(pk=keys.node.pk).strikes
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert sweeper.sweep()["uploads_overdue"] == 1
    job = Job.objects.get(pk=job.pk)
    assert Node.objects.get(pk=keys.node.pk).strikes == strikes_before + 1
    assert Node.objects.get(pk=pair["B"][1].node.pk).strikes == 0
    # Its partner does not pay for it: asked for its own bytes, for a tie-breaker
    # (tests/registry/test_p2p_silent_upload.py follows it to the end).
    assert job.state == JobState.VERIFYING
    assert [(m["assignment_id"], m["reason"]) for m in upload_requests(sent)] == [(str(pair["B"][0].pk), "partner_silent")]
    assert not Transfer.objects.filter(kind="release", job_id=job.pk).exists()


def test_a_disputed_delivery_is_judged_on_the_uploaded_bytes_and_still_paid(
    p2p_job, sent, django_capture_on_commit_callbacks
):
    job, pair, user = p2p_job
    vectors = unit_vectors(2)
    commit(job, pair, "A", vectors)
    commit(job, pair, "B", vectors)
    with django_capture_on_commit_callbacks(execute=True):
        matched = p2p.delivery_confirm(user=user, job_id=job.pk, assignment_id=pair["A"][0].pk, result_hash="0" * 64)
    assert not matched
    assert [m["reason"] for m in upload_requests(sent)] == ["dispute"]
    assignment, keys = pair["A"]
    with django_capture_on_commit_callbacks(execute=True):
        results.result_record(node_id=keys.node.pk, message=upload_message(keys, job, assignment, vectors))
    job = Job.objects.get(pk=job.pk)
    # The bytes were the committed ones: the claim gains the user nothing.
    assert job.state == JobState.SETTLED
    assert Transfer.objects.filter(kind="capture", amount=job.price_micro).count() == 1


def test_audited_jobs_upload_the_input_for_sentinels(p2p_job, sent, settings, django_capture_on_commit_callbacks):
    job, pair, _ = p2p_job
    settings.P2P_AUDIT_BP = 10_000
    vectors = unit_vectors(2)
    with django_capture_on_commit_callbacks(execute=True):
        commit(job, pair, "A", vectors)
        commit(job, pair, "B", vectors)
    asked = upload_requests(sent)
    assert [(m["reason"], m["with_inputs"]) for m in asked] == [("audit", True)]


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"size": 17}, "bad_shape"),
        ({"shape": [3, 384]}, "bad_shape"),
        ({"input_hash": "1" * 64}, "bad_input_hash"),
        ({"transport": {"relayed": "yes"}}, "bad_message"),
        ({"transport": {"relayed": True, "bytes_sent": -1}}, "out_of_range"),
    ],
)
def test_commits_that_cannot_be_the_answer_are_refused(p2p_job, overrides, code):
    job, pair, _ = p2p_job
    assignment, keys = pair["A"]
    message = commit_message(keys, job, assignment, unit_vectors(2))
    message.update(overrides)
    with pytest.raises(protocol.ProtocolError) as refused:
        results.commit_record(node_id=keys.node.pk, message=message)
    assert refused.value.code == code
    assert Assignment.objects.get(pk=assignment.pk).state == AssignmentState.DISPATCHED


def test_a_forged_commit_signature_costs_the_node_the_assignment(p2p_job):
    job, pair, _ = p2p_job
    assignment, keys = pair["A"]
    message = commit_message(keys, job, assignment, unit_vectors(2), signing_key=protocol.new_private_key())
    with pytest.raises(protocol.ProtocolError) as refused:
        results.commit_record(node_id=keys.node.pk, message=message)
    assert refused.value.code == "bad_signature"
    assert results.result_refused(node_id=keys.node.pk, message=message, code="bad_signature")
    assert Assignment.objects.get(pk=assignment.pk).state == AssignmentState.LOST
    assert Node.objects.get(pk=keys.node.pk).strikes == 1


def test_a_relay_job_takes_no_commit():
    subnet = SubnetFactory()
    nodes = {n.node.pk: n for n in (online_node(subnet) for _ in range(2))}
    from registry import submit

    job, _ = submit.job_submit(user=user_with_credits(5), subnet_slug=subnet.slug, inputs=INPUTS, idempotency_key="r")
    dispatch.job_dispatch(job_id=job.id)
    assignment = job.assignments.first()
    keys = nodes[assignment.node_id]
    with pytest.raises(protocol.ProtocolError) as refused:
        results.commit_record(node_id=keys.node.pk, message=commit_message(keys, job, assignment, unit_vectors(2)))
    assert refused.value.code == "bad_message"


def test_a_node_whose_user_never_brought_the_input_gives_up_without_blame(p2p_job):
    job, pair, _ = p2p_job
    assignment, keys = pair["A"]
    give_up.assignment_give_up(node_id=keys.node.pk, assignment_id=str(assignment.pk), reason=p2p.INPUT_NOT_RECEIVED)
    node = Node.objects.get(pk=keys.node.pk)
    assert node.jobs_failed == 0 and node.strikes == 0
    assert Assignment.objects.get(pk=assignment.pk).state == AssignmentState.LOST


def test_commit_deadlines_still_apply(p2p_job):
    job, pair, _ = p2p_job
    Job.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(protocol.ProtocolError) as refused:
        commit(Job.objects.get(pk=job.pk), pair, "A", unit_vectors(2))
    assert refused.value.code == "deadline_passed"


def test_the_database_lets_a_p2p_job_inputs_be_filled_once_and_never_changed(p2p_job):
    from django.db import IntegrityError, transaction

    job, _, _ = p2p_job
    Job.objects.filter(pk=job.pk).update(inputs=INPUTS)
    with pytest.raises(IntegrityError, match="immutable"), transaction.atomic():
        Job.objects.filter(pk=job.pk).update(inputs={"texts": ["forged"]})
    assert Job.objects.get(pk=job.pk).inputs == INPUTS


def test_relayed_bytes_carry_the_subnets_surcharge_within_the_reserve_of_the_hold(
    settings, django_capture_on_commit_callbacks
):
    settings.P2P_AUDIT_BP = 0
    subnet = SubnetFactory(relay_surcharge_micro_per_mb=1_000, relay_reserve_mb=2)
    nodes = {n.node.pk: n for n in (online_node(subnet) for _ in range(2))}
    user = user_with_credits(5)
    job = p2p_submit(user, subnet, INPUTS)
    from registry.terms import JobTerms

    units_price = JobTerms.of_subnet(subnet).price_for(2)
    assert job.price_micro == units_price + 2_000  # the hold reserves 2 MB of relaying
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.job_dispatch(job_id=job.id)
    pair = {a.role: (a, nodes[a.node_id]) for a in Job.objects.get(pk=job.pk).assignments.all()}
    vectors = unit_vectors(2)
    relayed = {"relayed": True, "bytes_sent": 1_000_000, "bytes_received": 500_000}
    commit(job, pair, "A", vectors, transport=relayed)
    commit(job, pair, "B", vectors)
    assert Job.objects.get(pk=job.pk).turn_bytes == 1_500_000
    with django_capture_on_commit_callbacks(execute=True):
        p2p.delivery_confirm(
            user=user, job_id=job.pk, assignment_id=pair["A"][0].pk, result_hash=protocol.sha256_hex(protocol.encode_vectors(vectors))
        )
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.SETTLED
    assert Transfer.objects.get(job_id=job.pk, kind="capture").amount == units_price + 1_500
    assert Transfer.objects.get(job_id=job.pk, kind="release").amount == 500
    assert Transfer.objects.get(idempotency_key=f"job:{job.pk}:payout:relay").amount == 1_500
