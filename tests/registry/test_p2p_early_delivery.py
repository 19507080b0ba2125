"""A user's delivery confirmation that overtakes its node's commit (docs/p2p.md §4): the node
sends the user its bytes before its commit reaches the registry, so the confirmation often
arrives first. It is kept (202, `matched` null) and judged when the commit arrives: the same
hash confirms delivery, another is the user's dispute. No retry, no 409 on the common path."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from bim_core import protocol
from registry import give_up, results
from registry.models import Job, JobState
from registry.verify import job_verify
from tests.factories import unit_vectors
from tests.p2p_jobs import commit_message, p2p_job_dispatched

pytestmark = pytest.mark.django_db

INPUTS = {"texts": ["sent before the commit", "and this"]}


@pytest.fixture
def p2p_job(settings, django_capture_on_commit_callbacks):
    settings.P2P_AUDIT_BP = 0
    job, pair, user = p2p_job_dispatched(INPUTS, django_capture_on_commit_callbacks)
    api = APIClient()
    api.force_authenticate(user)
    return job, pair, api


def confirm(api, job, assignment, result_hash):
    return api.post(f"/api/v1/jobs/{job.pk}/delivered/", {"assignment_id": str(assignment.pk), "result_hash": result_hash}, format="json")


def commit(job, pair, role, vectors, capture):
    assignment, keys = pair[role]
    with capture(execute=True):
        results.commit_record(node_id=keys.node.pk, message=commit_message(keys, job, assignment, vectors))


def test_confirmations_before_the_commits_settle_the_job_when_they_arrive(p2p_job, django_capture_on_commit_callbacks):
    job, pair, api = p2p_job
    vectors = unit_vectors(2)
    result_hash = protocol.sha256_hex(protocol.encode_vectors(vectors))
    for role in ("A", "B"):
        answer = confirm(api, job, pair[role][0], result_hash)
        assert answer.status_code == 202, answer.content
        assert answer.json() == {"matched": None}
    commit(job, pair, "A", vectors, django_capture_on_commit_callbacks)
    commit(job, pair, "B", vectors, django_capture_on_commit_callbacks)
    job_verify(job_id=job.pk)
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.SETTLED and job.verification["path"] == "2-of-2"
    assert all(a.delivered_at is not None for a in job.assignments.all())


def test_a_confirmation_of_other_bytes_before_the_commit_is_a_dispute_once_it_arrives(
    p2p_job, sent, django_capture_on_commit_callbacks
):
    job, pair, api = p2p_job
    vectors = unit_vectors(2)
    assert confirm(api, job, pair["A"][0], "0" * 64).status_code == 202
    commit(job, pair, "A", vectors, django_capture_on_commit_callbacks)
    asked = [e["message"] for _, e in sent if e.get("message", {}).get("type") == "upload_request"]
    assert [(m["assignment_id"], m["reason"]) for m in asked] == [(str(pair["A"][0].pk), "dispute")]
    assert Job.objects.get(pk=job.pk).assignments.get(role="A").delivered_at is None


def test_a_confirmation_for_an_assignment_that_is_not_the_jobs_is_refused(p2p_job):
    job, pair, api = p2p_job
    answer = api.post(
        f"/api/v1/jobs/{job.pk}/delivered/",
        {"assignment_id": "7d4d5a4c-8d55-4a32-8d4c-2f2f3c1b0a99", "result_hash": "1" * 64}, format="json",
    )
    assert answer.status_code == 404 and answer.json()["code"] == "not_assigned"


def test_a_second_early_confirmation_may_not_change_the_first(p2p_job):
    job, pair, api = p2p_job
    assert confirm(api, job, pair["A"][0], "1" * 64).status_code == 202
    answer = confirm(api, job, pair["A"][0], "2" * 64)
    assert answer.status_code == 409 and answer.json()["code"] == "already_confirmed"
    assert Job.objects.get(pk=job.pk).assignments.get(role="A").delivered_hash == "1" * 64


def test_a_role_given_up_without_a_commit_takes_no_confirmation(p2p_job):
    job, pair, api = p2p_job
    assignment, keys = pair["A"]
    give_up.assignment_give_up(node_id=keys.node.pk, assignment_id=str(assignment.pk), reason="input_not_received")
    answer = confirm(api, job, assignment, "1" * 64)
    assert answer.status_code == 409 and answer.json()["code"] == "not_committed"
