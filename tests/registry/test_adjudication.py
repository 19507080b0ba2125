"""2-of-3 adjudication: on a mismatch a third node breaks the tie; the majority pair is
paid, the minority gets nothing and a strike; no majority fails the job and refunds."""

from __future__ import annotations

import numpy as np
import pytest

from bim_sdk import verify_receipt
from ledger.accounts import account_balance
from ledger.models import Account, AccountKind, Transfer
from registry import dispatch, submit, sweeper, verify
from registry.keys import registry_public_key
from registry.models import AssignmentState, Job, JobState, Strike
from registry.results import result_record
from tests.factories import SubnetFactory, online_node, result_message, unit_vectors, user_with_credits

pytestmark = pytest.mark.django_db

TEXTS = ["one", "two", "three"]


def answer(job: Job, pool, role: str, vectors: np.ndarray) -> None:
    assignment = job.assignments.get(role=role, state=AssignmentState.DISPATCHED)
    keys = pool[assignment.node_id]
    result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, vectors))


def disputed_job(honest: np.ndarray, forged: np.ndarray, *, forger: str = "B"):
    """A job whose A and B disagree, with a tie-breaker dispatched."""
    subnet = SubnetFactory()
    pool = {keys.node.pk: keys for keys in (online_node(subnet) for _ in range(4))}
    user = user_with_credits(10)
    job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key="dispute")
    dispatch.job_dispatch(job_id=job.id)
    answer(job, pool, "A", forged if forger == "A" else honest)
    answer(job, pool, "B", forged if forger == "B" else honest)
    verify.job_verify(job_id=job.id)
    job.refresh_from_db()
    assert job.state == JobState.ADJUDICATING
    dispatch.job_dispatch(job_id=job.id)
    return job, pool, user


def node_income(node_id) -> int:
    return sum(account_balance(a) for a in Account.objects.filter(node_id=node_id))


def test_a_tie_breaker_settles_with_the_majority_and_strikes_the_minority():
    honest, forged = unit_vectors(3, seed=1), unit_vectors(3, seed=2)
    job, pool, user = disputed_job(honest, forged, forger="B")
    c = job.assignments.get(role="C")
    a, b = job.assignments.get(role="A"), job.assignments.get(role="B")
    # The tie-breaker is a third owner, never one of the disputing nodes.
    assert c.node_id not in {a.node_id, b.node_id}
    assert c.node.owner_id not in {a.node.owner_id, b.node.owner_id}
    assert c.node.ip_block not in {a.node.ip_block, b.node.ip_block}

    answer(job, pool, "C", honest)
    verify.job_verify(job_id=job.id)

    job.refresh_from_db()
    assert job.state == JobState.SETTLED
    assert job.verification["path"] == "2-of-3" and job.verification["majority"] == ["A", "C"]
    assert node_income(b.node_id) == 0 and node_income(a.node_id) > 0 and node_income(c.node_id) > 0
    assert Strike.objects.filter(node_id=b.node_id, job=job).count() == 1
    assert not Strike.objects.filter(node_id__in=[a.node_id, c.node_id]).exists()
    states = dict(job.assignments.values_list("role", "state"))
    assert states == {"A": AssignmentState.AGREED, "B": AssignmentState.DISAGREED, "C": AssignmentState.AGREED}
    receipt = job.receipt
    assert receipt["verification"]["path"] == "2-of-3"
    assert {n["role"] for n in receipt["nodes"]} == {"A", "C"}


def test_the_majority_may_be_b_and_c_and_the_receipt_verifies(client):
    honest, forged = unit_vectors(3, seed=3), unit_vectors(3, seed=4)
    job, pool, user = disputed_job(honest, forged, forger="A")
    answer(job, pool, "C", honest)
    verify.job_verify(job_id=job.id)
    job.refresh_from_db()
    assert job.state == JobState.SETTLED and job.verification["majority"] == ["B", "C"]

    from rest_framework.authtoken.models import Token

    client.defaults["HTTP_AUTHORIZATION"] = f"Token {Token.objects.create(user=user).key}"
    body = client.get(f"/api/v1/jobs/{job.id}/").json()
    vectors = verify_receipt(body, registry_key=registry_public_key(), inputs={"texts": TEXTS})
    assert np.allclose(vectors, honest)


def test_no_majority_fails_the_job_and_refunds_the_user():
    job, pool, user = disputed_job(unit_vectors(3, seed=5), unit_vectors(3, seed=6))
    answer(job, pool, "C", unit_vectors(3, seed=7))
    verify.job_verify(job_id=job.id)

    job.refresh_from_db()
    assert job.state == JobState.FAILED and job.failure_reason == "no majority"
    assert not Transfer.objects.filter(job_id=job.pk, kind__in=["capture", "payout"]).exists()
    assert Transfer.objects.filter(job_id=job.pk, kind="release").count() == 1
    assert account_balance(Account.objects.get(kind=AccountKind.USER_CREDITS, user=user)) == 10_000_000
    assert set(job.assignments.values_list("state", flat=True)) == {AssignmentState.DISAGREED}


def test_a_tie_breaker_close_to_both_sides_settles_without_a_strike():
    base = unit_vectors(3, seed=8)
    nudge = unit_vectors(3, seed=9) * 0.012
    a_side = base + nudge
    b_side = base - nudge
    a_side /= np.linalg.norm(a_side, axis=1, keepdims=True)
    b_side /= np.linalg.norm(b_side, axis=1, keepdims=True)
    subnet_tau = 0.9999
    cos_ab = float(np.min(np.einsum("ij,ij->i", a_side.astype(np.float64), b_side.astype(np.float64))))
    cos_ac = float(np.min(np.einsum("ij,ij->i", a_side.astype(np.float64), base.astype(np.float64))))
    assert cos_ab < subnet_tau <= cos_ac  # A and B disagree; C (the middle) agrees with both

    job, pool, user = disputed_job(a_side.astype(np.float32), b_side.astype(np.float32), forger="B")
    answer(job, pool, "C", base)
    verify.job_verify(job_id=job.id)
    job.refresh_from_db()
    assert job.state == JobState.SETTLED
    assert not Strike.objects.filter(job=job).exists()


def test_a_dispute_nobody_can_break_expires_and_refunds_the_user():
    from datetime import timedelta

    from django.utils import timezone

    subnet = SubnetFactory()
    pool = {keys.node.pk: keys for keys in (online_node(subnet) for _ in range(2))}  # no third node
    user = user_with_credits(10)
    job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key="stuck")
    dispatch.job_dispatch(job_id=job.id)
    answer(job, pool, "A", unit_vectors(3, seed=1))
    answer(job, pool, "B", unit_vectors(3, seed=2))
    verify.job_verify(job_id=job.id)
    assert dispatch.job_dispatch(job_id=job.id) == []  # nobody may break the tie
    Job.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert sweeper.jobs_expire_overdue() == 1
    job.refresh_from_db()
    assert job.state == JobState.EXPIRED
    assert account_balance(Account.objects.get(kind=AccountKind.USER_CREDITS, user=user)) == 10_000_000
