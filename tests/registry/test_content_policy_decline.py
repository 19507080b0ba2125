"""A node declines a job under its contract's content policy (`job_failed` reason
`content_policy:<rule>`). The registry runs the same check: upheld, the job fails without
charging the user and the decline costs the node nothing (no failure, no strike, no
reputation change); not upheld, it is an ordinary give-up and the role moves on."""

from __future__ import annotations

import pytest

from ledger import selectors as ledger_selectors
from ledger.models import Transfer
from registry import dispatch, give_up, submit
from registry.models import AssignmentState, JobState, Node, Strike
from tests.factories import SubnetFactory, online_node, user_with_credits

pytestmark = pytest.mark.django_db

POLICY = {
    "id": "decline-test",
    "version": 1,
    "input": {"blocked": [{"name": "example.weapons", "patterns": [r"\bsarin\b"]}]},
}


def dispatched_job(texts, capture):
    """A job whose contract carries POLICY, written past submit's check (what a bypass or
    an operator's policy race would leave), dispatched to a pair with one spare node."""
    subnet = SubnetFactory(content_policy=POLICY)
    pool = {keys.node.pk: keys for keys in (online_node(subnet) for _ in range(3))}
    user = user_with_credits(1)
    job = submit.job_create(user=user, subnet=subnet, inputs={"texts": texts}, idempotency_key="k", session_key_pub=None)
    with capture(execute=True):
        dispatch.job_dispatch(job_id=job.id)
    return job, user, pool, {a.role: a for a in job.assignments.all()}


def record(node_id):
    node = Node.objects.get(pk=node_id)
    return node.jobs_failed, node.jobs_agreed, node.reputation, Strike.objects.filter(node=node).count()


def test_a_decline_the_registry_upholds_fails_the_job_at_no_cost_to_anyone(django_capture_on_commit_callbacks):
    job, user, pool, by_role = dispatched_job(["how is sarin made"], django_capture_on_commit_callbacks)
    decliner, partner = by_role["A"].node_id, by_role["B"].node_id
    before = {node_id: record(node_id) for node_id in pool}

    with django_capture_on_commit_callbacks(execute=True):
        give_up.assignment_give_up(
            node_id=decliner, assignment_id=str(by_role["A"].pk), reason="content_policy:example.weapons"
        )

    job.refresh_from_db()
    assert job.state == JobState.FAILED and job.failure_reason == "content_policy_input:example.weapons"
    assert ledger_selectors.balance_totals(user=user)["held_micro"] == 0
    assert not Transfer.objects.filter(job_id=job.pk, kind="capture").exists()
    assert Transfer.objects.filter(job_id=job.pk, kind="release").get().amount == job.price_micro
    assert job.assignments.get(role="B").state == AssignmentState.CANCELLED
    assert {node_id: record(node_id) for node_id in pool} == before
    assert not job.assignments.filter(node_id__in=set(pool) - {decliner, partner}).exists()


def test_a_decline_the_policy_does_not_support_is_an_ordinary_give_up(django_capture_on_commit_callbacks):
    job, _user, pool, by_role = dispatched_job(["a harmless text"], django_capture_on_commit_callbacks)
    decliner = by_role["A"].node_id
    failed_before = record(decliner)[0]

    with django_capture_on_commit_callbacks(execute=True):
        give_up.assignment_give_up(
            node_id=decliner, assignment_id=str(by_role["A"].pk), reason="content_policy:example.weapons"
        )

    job.refresh_from_db()
    assert job.state == JobState.DISPATCHED
    assert job.assignments.get(pk=by_role["A"].pk).state == AssignmentState.LOST
    replacement = job.assignments.get(role="A", state=AssignmentState.DISPATCHED)
    assert replacement.node_id not in {decliner, by_role["B"].node_id}
    assert record(decliner)[0] == failed_before + 1
    assert Strike.objects.filter(node_id=decliner).count() == 0
