"""Jobs in admin (issue 14): the newest first, with each settled job's submit-to-settle time
in a column the list sorts by, and no column an operator has to scroll for."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse

from registry import submit
from registry.admin import _duration
from registry.models import Job, JobState
from tests.factories import UserFactory, user_with_credits
from tests.operator_seed import operator_market

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def market():
    market = operator_market(settled_jobs=3)
    # Spread the jobs out in time, oldest first as submitted, each settling in its own time.
    base = Job.objects.order_by("created_at").first().created_at
    for index, job in enumerate(Job.objects.order_by("created_at")):
        created = base - timedelta(hours=10 - index)
        finished = created + timedelta(seconds=2 + 30 * index) if job.finished_at else None
        Job.objects.filter(pk=job.pk).update(created_at=created, finished_at=finished)
    return market


def test_jobs_are_listed_newest_first_with_their_submit_to_settle_time(operator, market):
    listing = operator.get(reverse("admin:registry_job_changelist"))

    assert listing.status_code == 200
    rows = list(listing.context["cl"].result_list)
    assert [job.pk for job in rows] == list(Job.objects.order_by("-created_at").values_list("pk", flat=True))
    headers = [h["text"] for h in listing.context["result_headers"]]  # no actions: no checkbox
    assert headers == ["job", "subnet", "user", "state", "item count", "price", "created at", "submit to settle"]
    body = listing.content.decode()
    for job in rows:
        assert job.state == JobState.SETTLED
        assert _duration(job.finished_at - job.created_at) in body
    assert "2.0 s" in body and "1.0 min" in body and "1.5 min" in body


def test_the_jobs_list_sorts_by_submit_to_settle_time(operator, market):
    listing = operator.get(reverse("admin:registry_job_changelist"), {"o": "-7"})

    durations = [job.settle_duration for job in listing.context["cl"].result_list]
    assert durations == sorted(durations, reverse=True)


def test_an_unsettled_job_has_no_settle_time(operator, market):
    queued, _ = submit.job_submit(
        user=user_with_credits(5), subnet_slug=market.subnet.slug, inputs={"texts": ["waiting"]}, idempotency_key="q"
    )

    listing = operator.get(reverse("admin:registry_job_changelist"))

    rows = list(listing.context["cl"].result_list)
    assert rows[0].pk == queued.pk and rows[0].state == JobState.QUEUED
    assert listing.context["cl"].model_admin.settle_time(rows[0]) == "-"
    failed = Job(state=JobState.FAILED, created_at=queued.created_at, finished_at=queued.created_at + timedelta(seconds=9))
    assert listing.context["cl"].model_admin.settle_time(failed) == "-"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.42, "0.4 s"), (59.9, "59.9 s"), (61, "1.0 min"), (3599, "60.0 min"), (7200, "2.0 h")]
)
def test_durations_read_at_a_glance(seconds, text):
    assert _duration(timedelta(seconds=seconds)) == text
