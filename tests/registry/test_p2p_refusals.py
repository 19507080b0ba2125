"""A node refusing a peer-to-peer job's input (docs/p2p.md §3) sends the input it got as
evidence; the registry judges the refusal on it as it would a relay job's. An upheld refusal
fails the job with the hold released and costs the node nothing; an unfounded one is an
ordinary give-up; bytes that are not even the contract's input are no fault of the node."""

from __future__ import annotations

import pytest

from bim_core import protocol
from ledger.models import Transfer
from registry import dispatch, give_up, submit
from registry.models import Assignment, AssignmentState, Job, JobState, Node
from tests.factories import SubnetFactory, online_node, user_with_credits

pytestmark = pytest.mark.django_db

POLICY = {"id": "p", "version": 1, "input": {"blocked": [{"name": "test.words", "patterns": ["forbidden"]}]}}


def offered(inputs, *, summary=None, policy=None):
    subnet = SubnetFactory(content_policy=policy or {})
    for _ in range(2):
        online_node(subnet)
    job, _ = submit.job_submit(
        user=user_with_credits(5),
        subnet_slug=subnet.slug,
        inputs=None,
        idempotency_key="refused",
        transport="p2p",
        input_hash=protocol.input_hash(inputs),
        input_summary=summary or {"items": len(inputs["texts"])},
    )
    dispatch.job_dispatch(job_id=job.id)
    return Job.objects.get(pk=job.pk), job.assignments.order_by("role").first()


def refuse(assignment, reason, inputs=None):
    give_up.assignment_give_up(node_id=assignment.node_id, assignment_id=str(assignment.pk), reason=reason, inputs=inputs)
    return Node.objects.get(pk=assignment.node_id), Job.objects.get(pk=assignment.job_id)


def test_a_content_policy_refusal_with_the_input_as_evidence_fails_the_job_without_blame():
    inputs = {"texts": ["forbidden words"]}
    job, assignment = offered(inputs, policy=POLICY)
    node, job = refuse(assignment, "content_policy:test.words", inputs)
    assert job.state == JobState.FAILED and job.failure_reason == "content_policy_input:test.words"
    assert node.jobs_failed == 0 and node.strikes == 0
    assert Transfer.objects.filter(kind="release", amount=job.price_micro).count() == 1
    assert not job.assignments.filter(state=AssignmentState.DISPATCHED).exists()


def test_an_input_that_breaks_its_own_summary_fails_the_job_without_blame():
    inputs = {"texts": ["one", "two", "three"]}  # the user declared two
    job, assignment = offered(inputs, summary={"items": 2})
    node, job = refuse(assignment, "bad_input", inputs)
    assert job.state == JobState.FAILED and job.failure_reason == "input_does_not_fit_contract"
    assert node.jobs_failed == 0
    assert Transfer.objects.filter(kind="release", amount=job.price_micro).count() == 1


def test_an_unfounded_refusal_is_an_ordinary_give_up():
    inputs = {"texts": ["perfectly fine"]}
    job, assignment = offered(inputs, policy=POLICY)
    node, job = refuse(assignment, "content_policy:test.words", inputs)
    assert job.state == JobState.DISPATCHED and node.jobs_failed == 1
    assert Assignment.objects.get(pk=assignment.pk).state == AssignmentState.LOST
    node, job = refuse(job.assignments.filter(state=AssignmentState.DISPATCHED).first(), "bad_input", inputs)
    assert job.state == JobState.DISPATCHED and node.jobs_failed == 1


def test_evidence_that_is_not_the_contracts_input_is_ignored():
    inputs = {"texts": ["forbidden words"]}
    job, assignment = offered(inputs, policy=POLICY)
    node, job = refuse(assignment, "content_policy:test.words", {"texts": ["something else"]})
    assert job.inputs == {} and job.state == JobState.DISPATCHED and node.jobs_failed == 1


def test_bytes_that_are_not_the_contracts_input_are_no_fault_of_the_node():
    job, assignment = offered({"texts": ["x"]})
    node, job = refuse(assignment, "bad_input_hash")
    assert node.jobs_failed == 0 and node.strikes == 0 and job.state == JobState.DISPATCHED
