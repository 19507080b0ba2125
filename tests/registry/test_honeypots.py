"""Honeypots: registry jobs with known answers, indistinguishable on the wire; a node that
fails one loses reputation, gets a strike and part of its escrow; repeated failure bans it."""

from __future__ import annotations

import pytest
from django.utils import timezone

from ledger.accounts import account_balance, account_get
from ledger.models import AccountKind, Slash, Transfer
from registry import dispatch, honeypots, submit, verify
from registry.models import AssignmentState, Honeypot, Job, JobState, Node, Strike
from registry.results import result_record
from tests.factories import SubnetFactory, online_node, result_message, unit_vectors, user_with_credits

pytestmark = pytest.mark.django_db

TEXTS = ["The library offers free language courses.", "Owls hunt mostly at night.", "A new bakery opened."]


@pytest.fixture
def subnet():
    subnet = SubnetFactory(honeypot_rate_bp=10_000, honeypot_slash_bp=5_000)
    Honeypot.objects.create(
        subnet=subnet,
        inputs={"texts": TEXTS},
        result=unit_vectors(3, seed=11).astype("<f4").tobytes(),
        shape=[3, 384],
        model_checksum=subnet.model_checksum,
    )
    return subnet


def run_honeypot(subnet, pool, vectors_by_role) -> Job:
    job = honeypots.honeypot_issue(subnet=subnet)
    dispatch.job_dispatch(job_id=job.id)
    for assignment in job.assignments.all():
        keys = pool[assignment.node_id]
        vectors = vectors_by_role[assignment.role]
        result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, vectors))
    verify.job_verify(job_id=job.id)
    job.refresh_from_db()
    return job


def with_escrow(keys, amount: int = 1_000_000) -> None:
    """Give a node escrow the way operators would correct a balance: a reasoned transfer."""
    from ledger.posting import transfer_create

    sponsor = user_with_credits(5)
    transfer_create(
        debit=account_get(AccountKind.USER_CREDITS, user=sponsor),
        credit=account_get(AccountKind.NODE_ESCROW, node_id=keys.node.pk),
        amount=amount,
        kind="adjustment",
        idempotency_key=f"escrow-seed:{keys.node.pk}",
        reason="test escrow",
    )


def test_a_honeypot_looks_like_any_job_on_the_wire(subnet):
    for _ in range(2):
        online_node(subnet)
    user_job, _ = submit.job_submit(user=user_with_credits(5), subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key="u")
    trap = honeypots.honeypot_issue(subnet=subnet)
    dispatch.job_dispatch(job_id=user_job.id)
    dispatch.job_dispatch(job_id=trap.id)

    user_message = dispatch._job_message(user_job, user_job.assignments.first())
    trap_message = dispatch._job_message(trap, trap.assignments.first())
    assert user_message.keys() == trap_message.keys()
    assert user_message["contract"].keys() == trap_message["contract"].keys()
    assert trap_message["job_id"] != user_message["job_id"]
    assert "honeypot" not in str(trap_message).lower()
    assert trap.price_micro == 0 and not Transfer.objects.filter(job_id=trap.pk).exists()


def test_honest_nodes_pass_a_honeypot_untouched(subnet):
    pool = {k.node.pk: k for k in (online_node(subnet) for _ in range(2))}
    expected = unit_vectors(3, seed=11)

    job = run_honeypot(subnet, pool, {"A": expected, "B": expected.copy()})

    assert job.state == JobState.SETTLED and job.verification["path"] == "honeypot"
    assert set(job.assignments.values_list("state", flat=True)) == {AssignmentState.AGREED}
    assert not Strike.objects.exists() and not Slash.objects.exists()


def test_a_node_that_fails_a_honeypot_is_struck_and_slashed(subnet):
    pool = {k.node.pk: k for k in (online_node(subnet) for _ in range(2))}
    for keys in pool.values():
        with_escrow(keys)
    expected = unit_vectors(3, seed=11)

    job = run_honeypot(subnet, pool, {"A": expected, "B": unit_vectors(3, seed=99)})

    cheat = job.assignments.get(role="B")
    honest = job.assignments.get(role="A")
    assert cheat.state == AssignmentState.DISAGREED and honest.state == AssignmentState.AGREED
    assert Strike.objects.filter(node_id=cheat.node_id, job=job, reason="failed a honeypot").count() == 1
    slash = Slash.objects.get(assignment_id=cheat.pk)
    assert "failed honeypot" in slash.reason and slash.job_id == job.id
    assert account_balance(account_get(AccountKind.NODE_ESCROW, node_id=cheat.node_id)) == 500_000
    assert account_balance(account_get(AccountKind.NODE_ESCROW, node_id=honest.node_id)) == 1_000_000
    assert Node.objects.get(pk=cheat.node_id).reputation < Node.objects.get(pk=honest.node_id).reputation


def test_repeated_honeypot_failures_ban_the_node(subnet):
    pool = {k.node.pk: k for k in (online_node(subnet) for _ in range(2))}
    forged = unit_vectors(3, seed=42)
    cheater = None
    for _ in range(3):
        job = run_honeypot(subnet, pool, {"A": forged, "B": forged})
        cheater = job.assignments.get(role="A").node_id
    node = Node.objects.get(pk=cheater)
    assert node.banned_until is not None and node.banned_until > timezone.now()


def test_the_beat_issues_honeypots_at_the_subnet_rate(subnet):
    online_node(subnet, ready=False)  # capacity: the registry takes jobs for the subnet
    user = user_with_credits(5)
    for i in range(4):
        submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": [f"text {i}"]}, idempotency_key=f"k{i}")
    assert honeypots.honeypots_issue_due() == 4  # rate 100 % in this subnet
    assert Job.objects.filter(honeypot__isnull=False).count() == 4


@pytest.mark.parametrize("failing_role", [None, "A", "B"])
def test_judging_a_honeypot_locks_its_nodes_in_key_order(subnet, failing_role):
    """Every writer locks node rows in the order of their keys (reputation_record); two
    honeypots judged at once whose nodes sat in opposite roles deadlocked when the judge
    took them role by role. Whatever the roles and verdicts, the locks come sorted."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    pool = {k.node.pk: k for k in (online_node(subnet) for _ in range(2))}
    expected = unit_vectors(3, seed=11)
    for _ in range(3):  # the roles fall by rendezvous: some run has A on the larger key
        job = honeypots.honeypot_issue(subnet=subnet)
        dispatch.job_dispatch(job_id=job.id)
        with CaptureQueriesContext(connection) as queries:  # the last result verifies in place
            for assignment in job.assignments.all():
                vectors = unit_vectors(3, seed=99) if assignment.role == failing_role else expected
                keys = pool[assignment.node_id]
                result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, vectors))
            verify.job_verify(job_id=job.id)
        assert Job.objects.get(pk=job.pk).verification["path"] == "honeypot"
        locked = [
            node_id
            for q in queries.captured_queries
            if q["sql"].startswith('SELECT "registry_node"') and "FOR UPDATE" in q["sql"]
            for node_id in (str(pk) for pk in pool)
            if node_id.replace("-", "") in q["sql"].replace("-", "")
        ]
        assert len(locked) >= 2 and locked == sorted(locked), locked
