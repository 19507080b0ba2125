"""Adaptive replication: a trusted node runs a job alone unless the job's check coin sends a
second node; the user pays less for a solo job; any doubt falls back to a pair."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token

from bim_sdk import verify_receipt
from ledger.accounts import account_balance, account_get
from ledger.models import AccountKind, Transfer
from registry import dispatch, presence, reputation, verify
from registry.keys import registry_public_key
from registry.models import JobState
from registry.results import result_record
from registry.submit import job_submit
from tests.factories import SubnetFactory, online_node, result_message, unit_vectors, user_with_credits

pytestmark = pytest.mark.django_db

TEXTS = ["a", "b", "c"]
PRICE = 333 + 3 * 1000


def adaptive_subnet(check_bp: int = 0):
    return SubnetFactory(adaptive_replication=True, adaptive_check_bp=check_bp, adaptive_min_jobs=10, escrow_required_micro=0)


def veteran(subnet, **fields):
    return online_node(subnet, jobs_agreed=50, reputation=0.95, **fields)


def submit(user, subnet, key="k"):
    job, _ = job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key=key)
    return job


def test_a_trusted_node_runs_a_job_alone_and_the_user_pays_the_solo_price(client):
    subnet = adaptive_subnet()
    keys = veteran(subnet)
    user = user_with_credits(1)
    job = submit(user, subnet)

    assert len(dispatch.job_dispatch(job_id=job.id)) == 1
    job.refresh_from_db()
    assert job.solo
    assignment = job.assignments.get()
    result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, unit_vectors(3)))
    verify.job_verify(job_id=job.id)

    job.refresh_from_db()
    assert job.state == JobState.SETTLED and job.verification["path"] == "solo"
    solo_price = PRICE * 6000 // 10_000
    assert account_balance(account_get(AccountKind.USER_CREDITS, user=user)) == 1_000_000 - solo_price
    assert Transfer.objects.get(job_id=job.pk, kind="capture").amount == solo_price
    assert Transfer.objects.get(job_id=job.pk, kind="release").amount == PRICE - solo_price
    # The node earns what it would have in a pair (40 % of the pair price, floored).
    assert account_balance(account_get(AccountKind.NODE_EARNINGS, node_id=keys.node.pk)) == solo_price * (
        4000 * 10_000 // 6000
    ) // 10_000
    client.defaults["HTTP_AUTHORIZATION"] = f"Token {Token.objects.create(user=user).key}"
    body = client.get(f"/api/v1/jobs/{job.id}/").json()
    assert body["receipt"]["verification"]["path"] == "solo" and len(body["receipt"]["nodes"]) == 1
    verify_receipt(body, registry_key=registry_public_key(), inputs={"texts": TEXTS})


def test_a_newcomer_never_runs_alone():
    subnet = adaptive_subnet()
    online_node(subnet)
    online_node(subnet)
    job = submit(user_with_credits(1), subnet)
    assert len(dispatch.job_dispatch(job_id=job.id)) == 2
    job.refresh_from_db()
    assert not job.solo


def test_the_check_coin_sends_a_second_node():
    subnet = adaptive_subnet(check_bp=10_000)  # p = 1: every job is checked
    veteran(subnet)
    veteran(subnet)
    job = submit(user_with_credits(1), subnet)
    assert len(dispatch.job_dispatch(job_id=job.id)) == 2


def test_a_struck_node_loses_its_solo_privilege():
    subnet = adaptive_subnet()
    keys = veteran(subnet)
    online_node(subnet)
    reputation.node_strike(node_id=keys.node.pk, reason="minority in a tie-break")
    job = submit(user_with_credits(1), subnet)
    assert len(dispatch.job_dispatch(job_id=job.id)) == 2


def test_a_solo_job_whose_node_vanishes_goes_back_to_a_pair():
    subnet = adaptive_subnet()
    keys = veteran(subnet)
    job = submit(user_with_credits(1), subnet)
    dispatch.job_dispatch(job_id=job.id)
    job.refresh_from_db()
    assert job.solo
    online_node(subnet)
    online_node(subnet)

    presence.node_disconnect(node_id=keys.node.pk, channel_name=f"test.{keys.node.pk}")
    dispatch.job_dispatch(job_id=job.id)

    job.refresh_from_db()
    assert not job.solo
    assert job.assignments.filter(state="dispatched").count() == 2
