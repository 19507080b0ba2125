"""Capacity and cancelling (issue 12): a job for a subnet no node can serve is refused at
once with 503 and Retry-After (it would only wait for its deadline), and a user can cancel
a job no node was offered yet and get its hold back. Capacity is a connected, unbanned node
registered for the subnet: one still fetching its model or benchmarking takes the job in
seconds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from ledger import selectors as ledger_selectors
from registry.models import Job, JobState, Node
from tests.factories import SubnetFactory, online_node, user_with_credits

pytestmark = pytest.mark.django_db

BODY = {"inputs": {"texts": ["a text"]}, "idempotency_key": "k1"}


def api_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_a_job_for_a_subnet_without_routable_nodes_is_refused_with_503(settings):
    settings.BIM_RETRY_AFTER_S = 30
    subnet = SubnetFactory()
    offline = online_node(subnet)
    Node.objects.filter(pk=offline.node.pk).update(is_online=False)  # its only node left
    banned = online_node(subnet)
    Node.objects.filter(pk=banned.node.pk).update(banned_until=timezone.now() + timedelta(hours=1))
    user = user_with_credits(5)
    answer = api_for(user).post("/api/v1/jobs/", {"subnet": subnet.slug, **BODY}, format="json")
    assert answer.status_code == 503 and answer["Retry-After"] == "30"
    assert answer.json()["code"] == "no_capacity"
    assert not Job.objects.exists()
    assert ledger_selectors.balance_totals(user=user)["held_micro"] == 0


def test_a_queued_job_is_cancelled_with_its_hold_released():
    subnet = SubnetFactory()
    online_node(subnet)
    user = user_with_credits(5)
    client = api_for(user)
    job = client.post("/api/v1/jobs/", {"subnet": subnet.slug, **BODY}, format="json").json()
    assert job["state"] == "queued"  # dispatch waits for the commit, which a test never makes
    assert ledger_selectors.balance_totals(user=user)["held_micro"] > 0
    answer = client.post(f"/api/v1/jobs/{job['id']}/cancel/")
    assert answer.status_code == 200 and answer.json()["state"] == JobState.FAILED
    assert answer.json()["failure_reason"] == "cancelled by its user"
    totals = ledger_selectors.balance_totals(user=user)
    assert (totals["held_micro"], totals["credits_micro"]) == (0, 5_000_000)
    again = client.post(f"/api/v1/jobs/{job['id']}/cancel/")
    assert again.status_code == 409 and again.json()["code"] == "job_not_queued"


def test_nobody_cancels_another_users_job():
    subnet = SubnetFactory()
    online_node(subnet)
    owner, stranger = user_with_credits(5), user_with_credits(5)
    job = api_for(owner).post("/api/v1/jobs/", {"subnet": subnet.slug, **BODY}, format="json").json()
    answer = api_for(stranger).post(f"/api/v1/jobs/{job['id']}/cancel/")
    assert answer.status_code == 404
    assert Job.objects.get(pk=job["id"]).state == JobState.QUEUED
