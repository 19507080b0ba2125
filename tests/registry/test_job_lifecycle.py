"""The job state machine driven through its services: submit, dispatch, results,
verification, settlement, expiry and re-dispatch."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from bim_core.errors import ServiceError
from ledger.accounts import account_get
from ledger.models import Account, AccountKind, Transfer
from ledger.posting import transfer_create
from registry import dispatch, sweeper, verify
from registry.models import Assignment, AssignmentState, Job, JobEvent, JobState
from registry.results import result_record
from registry.submit import job_submit
from tests.factories import (
    SubnetFactory,
    node_vanish,
    online_node,
    result_message,
    served_subnet,
    unit_vectors,
    user_with_credits,
)

pytestmark = pytest.mark.django_db

TEXTS = ["one small text", "another text", "a third one"]


def submit(user, subnet, key="k1", texts=TEXTS) -> Job:
    job, _ = job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": texts}, idempotency_key=key)
    return job


def run_pair(job: Job, nodes, vectors_a, vectors_b) -> Job:
    dispatch.job_dispatch(job_id=job.id)
    by_node = {n.node.pk: n for n in nodes}
    for assignment in job.assignments.all():
        vectors = vectors_a if assignment.role == "A" else vectors_b
        keys = by_node[assignment.node_id]
        result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, vectors))
    verify.job_verify(job_id=job.id)
    job.refresh_from_db()
    return job


def test_it_settles_a_job_two_nodes_agree_on():
    subnet = SubnetFactory()
    user = user_with_credits(10)
    nodes = [online_node(subnet) for _ in range(3)]
    job = submit(user, subnet)
    vectors = unit_vectors(len(TEXTS))

    job = run_pair(job, nodes, vectors, vectors.copy())

    assert job.state == JobState.SETTLED
    assigned = list(job.assignments.order_by("role"))
    assert [a.role for a in assigned] == ["A", "B"]
    assert assigned[0].node_id != assigned[1].node_id
    assert {a.state for a in assigned} == {AssignmentState.AGREED}
    assert job.verification["passed"] is True
    # 3,333 micro-credits: 40 % floors to 1,333 per node; the registry's 667 includes the remainder.
    payouts = Transfer.objects.filter(job_id=job.pk, kind="payout")
    assert sorted(t.amount for t in payouts) == [667, 1333, 1333]
    assert [e.to_state for e in JobEvent.objects.filter(job=job)] == ["queued", "dispatched", "verifying", "settled"]
    receipt = job.receipt
    assert receipt["verification"]["path"] == "2-of-2"
    assert {n["node_id"] for n in receipt["nodes"]} == {str(a.node_id) for a in assigned}
    assert sorted(t["id"] for t in receipt["settlement"]["transfers"]) == sorted(
        Transfer.objects.filter(job_id=job.pk).exclude(kind="hold").values_list("id", flat=True)
    )


def test_it_refuses_a_job_the_user_cannot_pay_for():
    subnet = served_subnet()
    poor = user_with_credits(0)
    with pytest.raises(ServiceError) as refused:
        submit(poor, subnet)
    assert refused.value.status == 402
    assert Job.objects.count() == 0


def test_a_repeated_idempotency_key_returns_the_first_job():
    subnet = served_subnet()
    user = user_with_credits(10)
    first = submit(user, subnet, key="same")
    again, created = job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key="same")
    assert not created and again.pk == first.pk
    assert Transfer.objects.filter(kind="hold").count() == 1
    with pytest.raises(ServiceError) as conflict:
        submit(user, subnet, key="same", texts=["something else"])
    assert conflict.value.status == 409


def test_a_job_waits_queued_until_two_owners_are_online():
    subnet = SubnetFactory()
    owner = user_with_credits(0)
    online_node(subnet, owner)
    online_node(subnet, owner)  # same owner: may never verify itself
    job = submit(user_with_credits(10), subnet)

    assert dispatch.job_dispatch(job_id=job.id) == []
    job.refresh_from_db()
    assert job.state == JobState.QUEUED

    online_node(subnet)
    assert len(dispatch.job_dispatch(job_id=job.id)) == 2
    job.refresh_from_db()
    assert job.state == JobState.DISPATCHED


def test_a_vanished_node_is_replaced_by_another_owner():
    subnet = SubnetFactory()
    nodes = [online_node(subnet) for _ in range(3)]
    job = submit(user_with_credits(10), subnet)
    dispatch.job_dispatch(job_id=job.id)
    gone = job.assignments.get(role="A")

    node_vanish(gone.node_id)
    dispatch.job_dispatch(job_id=job.id)

    gone.refresh_from_db()
    assert gone.state == AssignmentState.LOST
    replacement = job.assignments.get(role="A", state=AssignmentState.DISPATCHED)
    assert replacement.node_id not in {gone.node_id, job.assignments.get(role="B").node_id}
    assert replacement.node_id in {n.node.pk for n in nodes}


def test_an_overdue_job_expires_and_its_hold_is_released():
    subnet = SubnetFactory()
    user = user_with_credits(10)
    [online_node(subnet) for _ in range(2)]
    job = submit(user, subnet)
    dispatch.job_dispatch(job_id=job.id)
    Job.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert sweeper.jobs_expire_overdue() == 1

    job.refresh_from_db()
    assert job.state == JobState.EXPIRED
    assert set(job.assignments.values_list("state", flat=True)) == {AssignmentState.CANCELLED}
    credits = Account.objects.get(kind=AccountKind.USER_CREDITS, user=user)
    assert credits.balance == 10_000_000
    assert Account.objects.get(kind=AccountKind.USER_HOLD, user=user).balance == 0


def test_a_mismatch_is_held_for_adjudication_and_pays_nobody():
    subnet = SubnetFactory()
    nodes = [online_node(subnet) for _ in range(2)]
    job = submit(user_with_credits(10), subnet)

    job = run_pair(job, nodes, unit_vectors(3, seed=1), unit_vectors(3, seed=2))

    assert job.state == JobState.ADJUDICATING
    assert job.verification["passed"] is False
    assert not Transfer.objects.filter(job_id=job.pk, kind__in=["capture", "payout"]).exists()
    assert not Assignment.objects.filter(job=job, state=AssignmentState.AGREED).exists()


def test_a_node_with_a_full_queue_gets_no_more_offers_until_it_answers(settings):
    settings.NODE_QUEUE_DEPTH = 1
    subnet = SubnetFactory()
    pool = [online_node(subnet) for _ in range(2)]
    user = user_with_credits(10)
    first, second = submit(user, subnet, key="first"), submit(user, subnet, key="second")

    assert len(dispatch.job_dispatch(job_id=first.id)) == 2
    assert dispatch.job_dispatch(job_id=second.id) == []  # both nodes hold an unanswered offer
    second.refresh_from_db()
    assert second.state == JobState.QUEUED

    by_node = {n.node.pk: n for n in pool}
    for assignment in first.assignments.all():
        keys = by_node[assignment.node_id]
        result_record(node_id=keys.node.pk, message=result_message(keys, first, assignment, unit_vectors(3)))
    assert dispatch.jobs_dispatch_waiting(subnet_id=subnet.pk) == 2
    second.refresh_from_db()
    assert second.state == JobState.DISPATCHED


def test_a_node_below_its_escrow_requirement_carries_a_shorter_queue(settings):
    settings.NODE_QUEUE_DEPTH = 5
    subnet = SubnetFactory(escrow_required_micro=1_000, queue_depth_below_escrow=1)
    pool = [online_node(subnet, jobs_agreed=10) for _ in range(2)]  # past probation: the escrow rule decides
    user = user_with_credits(10)
    jobs = [submit(user, subnet, key=f"k{i}") for i in range(3)]

    assert len(dispatch.job_dispatch(job_id=jobs[0].id)) == 2
    assert dispatch.job_dispatch(job_id=jobs[1].id) == []  # no escrow yet: one open offer each

    # Escrow filled (as settlements would fill it): the full queue applies again.
    for keys in pool:
        transfer_create(
            debit=account_get(AccountKind.USER_CREDITS, user=user),
            credit=account_get(AccountKind.NODE_ESCROW, node_id=keys.node.pk),
            amount=1_000,
            kind="adjustment",
            idempotency_key=f"escrow:{keys.node.pk}",
            reason="test escrow",
        )
    assert len(dispatch.job_dispatch(job_id=jobs[1].id)) == 2
    assert len(dispatch.job_dispatch(job_id=jobs[2].id)) == 2
