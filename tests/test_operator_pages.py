"""Operators run the market from admin and watch it through /metrics: every admin page
renders for a superuser, and nothing in admin can edit a contract or a transfer."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.urls import reverse

from ledger.models import Transfer
from registry import dispatch, submit, verify
from registry.models import Job
from registry.results import result_record
from tests.factories import SubnetFactory, UserFactory, online_node, result_message, unit_vectors, user_with_credits

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    user = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


@pytest.fixture
def settled_job(django_capture_on_commit_callbacks):
    subnet = SubnetFactory()
    nodes = {n.node.pk: n for n in (online_node(subnet) for _ in range(2))}
    # Committed, as in production: a settlement is counted once it commits.
    with django_capture_on_commit_callbacks(execute=True):
        job, _ = submit.job_submit(user=user_with_credits(5), subnet_slug=subnet.slug, inputs={"texts": ["a", "b"]}, idempotency_key="op")
        dispatch.job_dispatch(job_id=job.id)
        for assignment in job.assignments.all():
            keys = nodes[assignment.node_id]
            result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, unit_vectors(2)))
        verify.job_verify(job_id=job.id)
    return Job.objects.get(pk=job.pk)


def test_every_admin_changelist_and_change_page_renders(operator, settled_job):
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        listing = operator.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        assert listing.status_code == 200, meta.label
        instance = model_admin.get_queryset(_request()).first()
        if instance is not None:
            page = operator.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[instance.pk]))
            assert page.status_code == 200, meta.label


def _request():
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.user = UserFactory.build(is_staff=True, is_superuser=True)
    return request


def test_admin_cannot_change_a_transfer_or_a_job_contract(operator, settled_job):
    transfer = Transfer.objects.filter(job_id=settled_job.pk).first()
    url = reverse("admin:ledger_transfer_change", args=[transfer.pk])
    assert operator.post(url, {"amount": transfer.amount + 1}).status_code == 403
    assert Transfer.objects.get(pk=transfer.pk).amount == transfer.amount
    job_admin = admin.site._registry[Job]
    assert "contract" in job_admin.get_readonly_fields(_request(), settled_job)


def test_metrics_count_submitted_and_settled_jobs(operator, settled_job):
    body = operator.get("/metrics").content.decode()
    assert f'bim_jobs_settled_total{{subnet="{settled_job.subnet.slug}"}}' in body
    assert "bim_jobs_submitted_total" in body
    assert "django_http_requests_total_by_method_total" in body
