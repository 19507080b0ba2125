"""What the registry does when an operator pauses, resumes or retires a subnet, or changes
its terms (registry.lifecycle): submissions refused with their own codes, queued jobs kept
(they wait, or expire with their holds released), no offers while paused, a retirement
ending the unfinished jobs, and terms applying to new jobs only."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bim_core.errors import ServiceError
from ledger.models import Transfer
from ledger.selectors import balance_totals
from registry import dispatch, sweeper
from registry.lifecycle import subnet_state_set
from registry.models import Job, JobState
from registry.submit import job_submit
from subnets.lifecycle import subnet_update
from subnets.models import Subnet
from tests.factories import (
    SubnetFactory,
    UserFactory,
    benchmark_reference,
    online_node,
    served_subnet,
    settle,
    unit_vectors,
    user_with_credits,
)

pytestmark = pytest.mark.django_db

State = Subnet.State
TEXTS = ["one small text", "another text", "a third one"]
PRICE = 333 + 3 * 1000


def submit(user, subnet, key="k1") -> Job:
    job, _ = job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key=key)
    return job


def set_state(subnet: Subnet, to: str, capture) -> Subnet:
    with capture(execute=True):
        subnet_state_set(subnet_id=subnet.pk, to=to, operator=UserFactory(), reason="maintenance")
    subnet.refresh_from_db()
    return subnet


def api_submit(user, subnet) -> dict:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    response = client.post(
        "/api/v1/jobs/", {"subnet": subnet.slug, "inputs": {"texts": TEXTS}, "idempotency_key": "api-1"}, format="json"
    )
    return {"status": response.status_code, **response.json()}


@pytest.mark.parametrize(
    ("state", "status", "code"),
    [(State.PAUSED, 409, "subnet_paused"), (State.RETIRED, 410, "subnet_retired"), (State.DRAFT, 404, "unknown_subnet")],
)
def test_submissions_to_a_subnet_that_takes_no_jobs_are_refused_with_its_code(state, status, code):
    user = user_with_credits(10)
    subnet = served_subnet(state=state)

    answer = api_submit(user, subnet)

    assert (answer["status"], answer["code"]) == (status, code)
    assert not Job.objects.exists()
    assert balance_totals(user=user)["held_micro"] == 0


def test_a_paused_subnet_offers_nothing_and_its_queued_job_waits_for_the_resume(django_capture_on_commit_callbacks):
    user = user_with_credits(10)
    subnet = served_subnet()
    benchmark_reference(subnet)
    job = submit(user, subnet)
    set_state(subnet, State.PAUSED, django_capture_on_commit_callbacks)
    nodes = [online_node(subnet) for _ in range(2)]

    dispatch.jobs_dispatch_waiting(subnet_id=subnet.pk)
    dispatch.job_dispatch(job_id=job.id)

    job.refresh_from_db()
    assert job.state == JobState.QUEUED and not job.assignments.exists()
    assert balance_totals(user=user)["held_micro"] == PRICE  # held, not lost

    set_state(subnet, State.ACTIVE, django_capture_on_commit_callbacks)  # resuming dispatches the waiting jobs

    job.refresh_from_db()
    assert job.state == JobState.DISPATCHED
    assert {a.node_id for a in job.assignments.all()} == {n.node.pk for n in nodes}


def test_a_queued_job_whose_deadline_passes_during_the_pause_expires_with_its_hold_released(
    django_capture_on_commit_callbacks,
):
    user = user_with_credits(10)
    subnet = served_subnet()
    job = submit(user, subnet)
    set_state(subnet, State.PAUSED, django_capture_on_commit_callbacks)
    Job.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    sweeper.jobs_expire_overdue()

    job.refresh_from_db()
    assert job.state == JobState.EXPIRED
    assert balance_totals(user=user) == {"credits_micro": 10_000_000, "held_micro": 0, "earnings_micro": 0, "escrow_micro": 0}


def test_retiring_ends_the_unfinished_jobs_and_releases_their_holds(django_capture_on_commit_callbacks):
    user = user_with_credits(10)
    subnet = SubnetFactory()
    nodes = [online_node(subnet) for _ in range(2)]
    offered = submit(user, subnet, key="offered")
    dispatch.job_dispatch(job_id=offered.id)
    Subnet.objects.filter(pk=subnet.pk).update(state=State.PAUSED)
    set_state(subnet, State.RETIRED, django_capture_on_commit_callbacks)

    offered.refresh_from_db()
    assert offered.state == JobState.EXPIRED
    assert offered.failure_reason == f"subnet {subnet.slug} retired"
    assert {a.state for a in offered.assignments.all()} == {"cancelled"}
    assert balance_totals(user=user)["held_micro"] == 0
    assert balance_totals(node_ids=[n.node.pk for n in nodes])["earnings_micro"] == 0


def test_activation_needs_the_benchmark_reference():
    subnet = SubnetFactory(state=State.DRAFT)
    with pytest.raises(ServiceError) as refused:
        subnet_state_set(subnet_id=subnet.pk, to=State.ACTIVE, operator=None, reason="launch")
    assert refused.value.code == "benchmark_reference_missing"
    benchmark_reference(subnet)
    assert subnet_state_set(subnet_id=subnet.pk, to=State.ACTIVE, operator=None, reason="launch").state == State.ACTIVE


def test_a_change_of_price_split_or_tolerance_applies_to_new_jobs_only():
    user = user_with_credits(10)
    subnet = SubnetFactory()
    nodes = [online_node(subnet) for _ in range(3)]
    before = submit(user, subnet, key="before")

    subnet_update(
        subnet_id=subnet.pk,
        changes={
            "price_per_item_micro": 2000,
            "split_node_a_bp": 4500,
            "split_node_b_bp": 4500,
            "split_registry_bp": 1000,
            "tolerances": {"cosine_min": 0.5, "norm_tolerance": 0.001},
        },
        operator=UserFactory(),
        reason="new tariff",
    )
    after = submit(user, subnet, key="after")
    vectors = unit_vectors(len(TEXTS))
    settle(str(before.id), nodes, vectors, vectors.copy())
    settle(str(after.id), nodes, vectors, vectors.copy())

    before.refresh_from_db()
    after.refresh_from_db()
    assert (before.state, after.state) == (JobState.SETTLED, JobState.SETTLED)
    # The old job: its price, contract and payout split as submitted.
    assert before.price_micro == PRICE and before.contract["tolerances"]["cosine_min"] == 0.9999
    assert sorted(t.amount for t in Transfer.objects.filter(job_id=before.pk, kind="payout")) == [667, 1333, 1333]
    # The new one: the new terms.
    assert after.price_micro == 333 + 3 * 2000 and after.contract["tolerances"]["cosine_min"] == 0.5
    assert sorted(t.amount for t in Transfer.objects.filter(job_id=after.pk, kind="payout")) == [635, 2849, 2849]
