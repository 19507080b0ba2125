"""Careless or malicious operators in the registry's admin (issue 11): changing a node's
standing or resolving a dispute needs a real permission, and history (settled jobs,
node ownership, strikes, benchmarks, agreement statistics, sentinel runs, disputes,
assignments) can be neither edited nor deleted, not even by a superuser."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django import forms
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from registry import submit
from registry.models import (
    AgreementStat,
    Assignment,
    Benchmark,
    BenchmarkState,
    Dispute,
    Honeypot,
    Job,
    JobEvent,
    JobState,
    Node,
    SentinelRun,
    Strike,
)
from tests.factories import SubnetFactory, UserFactory, online_node, settle, unit_vectors, user_with_credits

pytestmark = pytest.mark.django_db


def staff_with(*codenames: str):
    """A staff user holding exactly these registry permissions (codenames)."""
    user = UserFactory(is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="registry", codename__in=codenames))
    assert user.user_permissions.count() == len(codenames)
    return user


def change_form_data(response) -> dict[str, Any]:
    """What a browser would post back from an admin change form, unedited: every editable
    field of the form and of its inline formsets, with the inlines' management forms."""
    forms_on_page = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        forms_on_page += [inline.formset.management_form, *inline.formset.forms]
    data: dict[str, Any] = {}
    for form in forms_on_page:
        for bound in form:
            value, field = bound.value(), bound.field
            if isinstance(field, forms.SplitDateTimeField):
                value = value or ["", ""]
                if not isinstance(value, list):
                    value = [timezone.localtime(value).date().isoformat(), timezone.localtime(value).time().isoformat()]
                data[f"{bound.html_name}_0"], data[f"{bound.html_name}_1"] = value
            elif isinstance(field, forms.BooleanField):
                if value:
                    data[bound.html_name] = "on"
            elif isinstance(field, forms.JSONField):
                data[bound.html_name] = field.prepare_value(value)
            elif value is not None:
                data[bound.html_name] = value
    return data


def post_change_form(client, obj, **edits: Any):
    """GET the object's change form, then POST it back with `edits`."""
    url = reverse(f"admin:registry_{obj._meta.model_name}_change", args=[obj.pk])
    page = client.get(url)
    assert page.status_code == 200
    return client.post(url, {**change_form_data(page), **edits})


@pytest.fixture
def superuser_client(client):
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def subnet():
    return SubnetFactory()


@pytest.fixture
def settled_job(subnet) -> Job:
    """A job two honest nodes agreed on and were paid for."""
    nodes = [online_node(subnet), online_node(subnet)]
    job, _ = submit.job_submit(
        user=user_with_credits(10), subnet_slug=subnet.slug, inputs={"texts": ["a", "b"]}, idempotency_key="history"
    )
    vectors = unit_vectors(2)
    settle(str(job.id), nodes, vectors, vectors.copy())
    job.refresh_from_db()
    assert job.state == JobState.SETTLED and job.assignments.count() == 2
    return job


@pytest.fixture
def honeypot(subnet) -> Honeypot:
    return Honeypot.objects.create(subnet=subnet, inputs={"texts": ["x"]}, result=b"\0", shape=[1, 384], model_checksum="ab" * 32)


@pytest.fixture
def dispute(settled_job) -> Dispute:
    run = SentinelRun.objects.create(job=settled_job, similarity=0.5, passed=False, detail="sentinel disagrees")
    return Dispute.objects.create(job=settled_job, sentinel=run, reason="sentinel disagrees")


def banned(node: Node) -> Node:
    Strike.objects.create(node=node, reason="minority", expires_at=timezone.now() + timedelta(days=7))
    Node.objects.filter(pk=node.pk).update(banned_until=timezone.now() + timedelta(days=1), strikes=1)
    node.refresh_from_db()
    return node


# ---------------------------------------------------------------- standing: permissions


def test_a_view_only_staff_user_cannot_unban_a_node(client, subnet):
    node = banned(online_node(subnet).node)
    client.force_login(staff_with("view_node"))

    client.post(reverse("admin:registry_node_changelist"), {"action": "unban_nodes", "_selected_action": [str(node.pk)], "apply": "1", "reason": "appeal"})

    node.refresh_from_db()
    assert node.banned_until is not None
    assert Strike.objects.filter(node=node, lifted_at__isnull=True).count() == 1


def test_a_staff_user_with_the_change_node_permission_unbans_a_node(client, subnet, django_capture_on_commit_callbacks):
    node = banned(online_node(subnet).node)
    client.force_login(staff_with("view_node", "change_node"))

    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("admin:registry_node_changelist"), {"action": "unban_nodes", "_selected_action": [str(node.pk)], "apply": "1", "reason": "appeal"})

    node.refresh_from_db()
    assert node.banned_until is None
    assert not Strike.objects.filter(node=node, lifted_at__isnull=True).exists()


def test_a_view_only_staff_user_cannot_resolve_a_dispute(client, dispute):
    client.force_login(staff_with("view_dispute"))
    url = reverse("admin:registry_dispute_change", args=[dispute.pk])

    response = client.post(url, {"resolution": "refunded"})

    assert response.status_code == 403
    dispute.refresh_from_db()
    assert dispute.resolved_at is None and dispute.resolution == ""


def test_a_staff_user_with_the_change_dispute_permission_resolves_a_dispute_once(client, dispute):
    operator = staff_with("view_dispute", "change_dispute")
    client.force_login(operator)

    post_change_form(client, dispute, resolution="refunded the user")
    dispute.refresh_from_db()
    assert dispute.resolved_at is not None
    assert dispute.resolution == f"{operator}: refunded the user"
    resolved_at = dispute.resolved_at

    post_change_form(client, dispute, resolution="on second thoughts, nothing")  # a resolution stands
    dispute.refresh_from_db()
    assert (dispute.resolved_at, dispute.resolution) == (resolved_at, f"{operator}: refunded the user")


# ---------------------------------------------------------------- history: read-only


def test_a_superuser_cannot_edit_a_settled_jobs_history(superuser_client, settled_job, honeypot):
    before = Job.objects.filter(pk=settled_job.pk).values().get()

    post_change_form(
        superuser_client,
        settled_job,
        honeypot=honeypot.pk,
        solo="on",
        warnings=json.dumps(["forged"]),
        state=JobState.FAILED,
        failure_reason="forged",
    )

    assert Job.objects.filter(pk=settled_job.pk).values().get() == before


def test_a_superuser_cannot_delete_a_jobs_events_through_its_change_form(superuser_client, settled_job):
    events = JobEvent.objects.filter(job=settled_job).count()
    assert events
    url = reverse("admin:registry_job_change", args=[settled_job.pk])
    data = change_form_data(superuser_client.get(url))
    data.update({k.replace("-id", "-DELETE"): "on" for k in data if k.startswith("events-") and k.endswith("-id")})

    superuser_client.post(url, data)

    assert JobEvent.objects.filter(job=settled_job).count() == events


def test_a_superuser_cannot_hand_a_node_to_another_owner(superuser_client, subnet):
    node = banned(online_node(subnet).node)
    owner, thief = node.owner, UserFactory()

    post_change_form(
        superuser_client, node, owner=thief.pk, banned_until_0="", banned_until_1="", strikes=0, reputation=1.0, jobs_agreed=999
    )

    node.refresh_from_db()
    assert node.owner == owner
    assert (node.strikes, node.reputation, node.jobs_agreed) == (1, 0.2, 0)
    assert node.banned_until is not None  # lifted by the unban action only, which is recorded


def test_a_superuser_cannot_lift_a_strike_by_editing_it(superuser_client, subnet):
    node = banned(online_node(subnet).node)
    strike = Strike.objects.get(node=node)
    now = timezone.localtime()

    post_change_form(superuser_client, strike, lifted_at_0=now.date().isoformat(), lifted_at_1=now.time().isoformat())

    strike.refresh_from_db()
    assert strike.lifted_at is None


HISTORY = ["job", "node", "assignment", "strike", "benchmark", "agreementstat", "sentinelrun", "dispute"]


@pytest.fixture
def history(subnet, dispute) -> dict[str, Any]:
    """One row of each kind of history, around one settled job."""
    job = dispute.job
    node = job.assignments.first().node
    return {
        "job": job,
        "node": node,
        "assignment": job.assignments.first(),
        "strike": Strike.objects.create(node=node, job=job, reason="minority", expires_at=timezone.now() + timedelta(days=7)),
        "benchmark": Benchmark.objects.create(node=node, subnet=subnet, runs=3, session_key_pub="k", state=BenchmarkState.PASSED),
        "agreementstat": AgreementStat.objects.create(
            subnet=subnet, env_a="a", env_b="b", samples=3, passed=3, min_similarity=0.99, sum_similarity=2.97
        ),
        "sentinelrun": dispute.sentinel,
        "dispute": dispute,
    }


@pytest.mark.parametrize("model", HISTORY)
def test_a_superuser_cannot_delete_history_from_its_delete_page(superuser_client, history, model):
    obj = history[model]

    response = superuser_client.post(reverse(f"admin:registry_{model}_delete", args=[obj.pk]), {"post": "yes"})

    assert response.status_code == 403
    assert type(obj).objects.filter(pk=obj.pk).exists()


@pytest.mark.parametrize("model", HISTORY)
def test_a_superuser_cannot_delete_history_from_its_list(superuser_client, history, model):
    obj = history[model]

    superuser_client.post(
        reverse(f"admin:registry_{model}_changelist"), {"action": "delete_selected", "_selected_action": [str(obj.pk)], "post": "yes"}
    )

    assert type(obj).objects.filter(pk=obj.pk).exists()


@pytest.mark.parametrize("model", ["job", "assignment", "strike", "benchmark", "agreementstat", "sentinelrun"])
def test_a_superuser_may_only_view_history(superuser_client, history, model):
    obj = history[model]
    model_admin = superuser_client.get(reverse(f"admin:registry_{model}_changelist")).context["cl"].model_admin
    request = superuser_client.get(reverse(f"admin:registry_{model}_change", args=[obj.pk])).wsgi_request

    assert model_admin.has_view_permission(request, obj)
    assert not model_admin.has_change_permission(request, obj)
    assert not model_admin.has_delete_permission(request, obj)
    assert not model_admin.has_add_permission(request)
    assert Assignment.objects.exists()
