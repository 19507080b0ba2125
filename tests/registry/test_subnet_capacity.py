"""The subnets list shows each subnet's market now (issue 12, capacity): nodes online and
routable, jobs waiting, and an estimate of a new job's wait, so a user sees a subnet
without nodes before submitting to it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from registry.models import Job, JobState, Node
from registry.submit import job_submit
from tests.factories import SubnetFactory, UserFactory, online_node, settle, unit_vectors, user_with_credits

pytestmark = pytest.mark.django_db


def listed(user) -> dict[str, dict]:
    client = APIClient()
    client.force_authenticate(user)
    answer = client.get("/api/v1/subnets/")
    assert answer.status_code == 200
    return {row["slug"]: row for row in answer.json()}


def test_the_subnets_list_shows_nodes_queue_and_a_wait_estimate():
    busy, empty = SubnetFactory(), SubnetFactory()
    nodes = [online_node(busy, jobs_agreed=10) for _ in range(4)]  # routable: ready, benchmarked
    online_node(busy, ready=False)  # connected, fetching its model
    banned = online_node(busy)
    Node.objects.filter(pk=banned.node.pk).update(banned_until=timezone.now() + timedelta(hours=1))
    user = user_with_credits(10)
    now = timezone.now()
    for i, seconds in enumerate((2, 4, 9)):  # three jobs settled through the real path
        job, _ = job_submit(user=user, subnet_slug=busy.slug, inputs={"texts": ["t"]}, idempotency_key=f"s{i}")
        settle(job.id, nodes, unit_vectors(1), unit_vectors(1))
        Job.objects.filter(pk=job.pk).update(created_at=now - timedelta(seconds=seconds), finished_at=now)
    assert Job.objects.filter(state=JobState.SETTLED).count() == 3
    job_submit(user=user, subnet_slug=busy.slug, inputs={"texts": ["t"]}, idempotency_key="waiting")

    rows = listed(UserFactory())
    row = rows[busy.slug]
    assert (row["nodes_online"], row["nodes_routable"], row["jobs_waiting"]) == (5, 4, 1)  # the banned one is out
    # The median settle of the last hour (4 s), with one job ahead for two pairs of nodes.
    assert row["wait_estimate_s"] == pytest.approx(4 * (1 + 1 / 2), abs=0.2)
    assert (rows[empty.slug]["nodes_online"], rows[empty.slug]["jobs_waiting"], rows[empty.slug]["wait_estimate_s"]) == (
        0, 0, None,
    )
