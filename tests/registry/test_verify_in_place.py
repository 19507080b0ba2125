"""Where a job with all its results in is verified: in place, by the process that took the
last result, when that is a comparison (the default); by a Celery worker, after commit,
with BIM_VERIFY_IN_PLACE=0 (daphne kept to its sockets)."""

from __future__ import annotations

import pytest

from registry import submit
from registry.models import Job, JobState
from tests.factories import SubnetFactory, answer, online_node, unit_vectors, user_with_credits

pytestmark = pytest.mark.django_db


def answered_job():
    subnet = SubnetFactory()
    nodes = [online_node(subnet) for _ in range(2)]
    job, _ = submit.job_submit(user=user_with_credits(5), subnet_slug=subnet.slug, inputs={"texts": ["a"]}, idempotency_key="p")
    answer(job.id, nodes, unit_vectors(1), unit_vectors(1))
    return job


def test_by_default_the_last_result_settles_the_job_where_it_arrived(settings):
    settings.VERIFY_IN_PLACE = True
    job = answered_job()
    assert Job.objects.get(pk=job.pk).state == JobState.SETTLED


def test_with_verify_in_place_off_a_worker_verifies_once_the_results_are_committed(
    settings, django_capture_on_commit_callbacks
):
    settings.VERIFY_IN_PLACE = False
    with django_capture_on_commit_callbacks(execute=False) as queued:
        job = answered_job()
    # Still verifying here; what settles it is the task queued for after commit.
    assert Job.objects.get(pk=job.pk).state == JobState.VERIFYING
    for callback in queued:
        callback()
    assert Job.objects.get(pk=job.pk).state == JobState.SETTLED
