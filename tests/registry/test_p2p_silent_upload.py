"""A node that does not upload a committed payload when asked (docs/p2p.md §4) is struck and
loses its role; its partner, who committed in time, is not made to pay for it: the partner
is asked for its own payload (with the input) where the registry does not hold it, and a
tie-breaker (which gets the input over the relay) decides, 2-of-3 with the silent node out.
Only when neither node shows its bytes does the job fail, the user's hold released."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from ledger.accounts import account_balance, account_get
from ledger.models import AccountKind, Transfer
from registry import dispatch, results, sweeper
from registry.models import Assignment, Job, JobState, Node, Strike
from registry.verify import job_verify
from tests.factories import SubnetFactory, online_node, result_message, unit_vectors, user_with_credits
from tests.p2p_jobs import commit_message, p2p_submit, upload_message, upload_requests

pytestmark = pytest.mark.django_db

INPUTS = {"texts": ["who pays for a silent node", "not its partner"]}


@pytest.fixture
def market(settings, django_capture_on_commit_callbacks):
    settings.P2P_AUDIT_BP = 0
    subnet = SubnetFactory()
    nodes = {n.node.pk: n for n in (online_node(subnet) for _ in range(2))}
    job = p2p_submit(user_with_credits(5), subnet, INPUTS)
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.job_dispatch(job_id=job.id)
    spare = online_node(subnet)  # the tie-breaker's node, once one is needed
    nodes[spare.node.pk] = spare
    return Job.objects.get(pk=job.pk), nodes


def earnings(node_id) -> int:
    return account_balance(account_get(AccountKind.NODE_EARNINGS, node_id=node_id)) + account_balance(
        account_get(AccountKind.NODE_ESCROW, node_id=node_id)
    )


def role(job, name):
    return Job.objects.get(pk=job.pk).assignments.filter(role=name).order_by("-dispatched_at").first()


def commit(job, nodes, name, vectors, capture):
    assignment = role(job, name)
    keys = nodes[assignment.node_id]
    with capture(execute=True):
        results.commit_record(node_id=keys.node.pk, message=commit_message(keys, job, assignment, vectors))


def upload(job, nodes, name, vectors, capture, inputs=None):
    assignment = role(job, name)
    keys = nodes[assignment.node_id]
    with capture(execute=True):
        results.result_record(node_id=keys.node.pk, message=upload_message(keys, job, assignment, vectors, inputs=inputs))


def overdue(job, capture):
    Assignment.objects.filter(job=job).exclude(upload_reason="").update(upload_due=timezone.now() - timedelta(seconds=1))
    with capture(execute=True):
        sweeper.sweep()


def tie_breaker_answers(job, nodes, vectors, capture):
    c = Job.objects.get(pk=job.pk).assignments.get(role="C")
    keys = nodes[c.node_id]
    with capture(execute=True):
        results.result_record(node_id=keys.node.pk, message=result_message(keys, Job.objects.get(pk=job.pk), c, vectors))
    job_verify(job_id=job.pk)
    return c


def test_a_mismatch_whose_other_node_stays_silent_goes_to_a_tie_breaker(market, sent, django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    job, nodes = market
    honest, forged = unit_vectors(2), unit_vectors(2, seed=5)
    commit(job, nodes, "A", honest, capture)
    commit(job, nodes, "B", forged, capture)
    silent = role(job, "B").node_id
    upload(job, nodes, "A", honest, capture, inputs=INPUTS)

    overdue(job, capture)
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.ADJUDICATING and job.inputs == INPUTS
    offer = [e["message"] for _, e in sent if e.get("message", {}).get("type") == "job" and e["message"]["role"] == "C"]
    assert len(offer) == 1 and offer[0]["inputs"] == INPUTS  # the tie-breaker gets the input over the relay
    c = tie_breaker_answers(job, nodes, honest, capture)

    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.SETTLED and job.verification["path"] == "2-of-3"
    assert job.verification["majority"] == ["A", "C"]
    assert list(Strike.objects.filter(job=job).values_list("node_id", flat=True)) == [silent]
    earned = {node_id: earnings(node_id) for node_id in nodes}
    assert earned[role(job, "A").node_id] > 0 and earned[c.node_id] > 0 and earned[silent] == 0


def test_an_audit_upload_never_made_asks_the_partner_then_a_tie_breaker(market, sent, settings, django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    job, nodes = market
    settings.P2P_AUDIT_BP = 10_000
    vectors = unit_vectors(2)
    commit(job, nodes, "A", vectors, capture)
    commit(job, nodes, "B", vectors, capture)
    assert [(m["reason"], m["with_inputs"]) for m in upload_requests(sent)] == [("audit", True)]
    sent.clear()
    silent = role(job, "A").node_id

    overdue(job, capture)
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.VERIFYING
    asked = upload_requests(sent)
    assert [(m["assignment_id"], m["reason"], m["with_inputs"]) for m in asked] == [
        (str(role(job, "B").pk), "partner_silent", True)
    ]
    upload(job, nodes, "B", vectors, capture, inputs=INPUTS)
    job_verify(job_id=job.pk)
    assert Job.objects.get(pk=job.pk).state == JobState.ADJUDICATING
    tie_breaker_answers(job, nodes, vectors, capture)

    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.SETTLED and job.verification["majority"] == ["B", "C"]
    assert list(Strike.objects.filter(job=job).values_list("node_id", flat=True)) == [silent]
    assert Node.objects.get(pk=silent).strikes == 1


def test_a_tie_breaker_that_sides_with_neither_fails_the_job_and_refunds(market, sent, django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    job, nodes = market
    honest = unit_vectors(2)
    commit(job, nodes, "A", honest, capture)
    commit(job, nodes, "B", unit_vectors(2, seed=5), capture)
    upload(job, nodes, "A", honest, capture, inputs=INPUTS)
    overdue(job, capture)
    tie_breaker_answers(job, nodes, unit_vectors(2, seed=77), capture)
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.FAILED
    assert Transfer.objects.filter(job_id=job.pk, kind="release", amount=job.price_micro).count() == 1


def test_when_both_nodes_stay_silent_the_job_fails_and_the_hold_is_released(market, sent, django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    job, nodes = market
    commit(job, nodes, "A", unit_vectors(2), capture)
    commit(job, nodes, "B", unit_vectors(2, seed=5), capture)
    overdue(job, capture)
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.FAILED and "upload" in job.failure_reason
    assert Strike.objects.filter(job=job).count() == 2
    assert Transfer.objects.filter(job_id=job.pk, kind="release", amount=job.price_micro).count() == 1
