"""When no data channel opens, the user sends a peer-to-peer job's input through the
registry (docs/p2p.md §5): it must be the contract's input and meet its policy; the nodes
still waiting get it and answer as relay jobs."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from bim_core import protocol
from ledger.models import Transfer
from registry import dispatch, effects, results
from registry.models import Job, JobState
from tests.factories import SubnetFactory, online_node, result_message, unit_vectors, user_with_credits
from tests.p2p_jobs import p2p_submit

pytestmark = pytest.mark.django_db

INPUTS = {"texts": ["no channel opened", "so it goes through the registry"]}


@pytest.fixture
def waiting(monkeypatch, django_capture_on_commit_callbacks):
    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(effects, "group_send", lambda group, event: sent.append((group, event)))
    subnet = SubnetFactory()
    nodes = {n.node.pk: n for n in (online_node(subnet) for _ in range(2))}
    user = user_with_credits(5)
    job = p2p_submit(user, subnet, INPUTS)
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.job_dispatch(job_id=job.id)
    client = APIClient()
    client.force_authenticate(user)
    return Job.objects.get(pk=job.pk), nodes, client, sent


def test_the_input_reaches_the_waiting_nodes_and_the_job_settles_over_the_relay(waiting, django_capture_on_commit_callbacks):
    job, nodes, client, sent = waiting
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/jobs/{job.pk}/inputs/", {"inputs": INPUTS, "reason": "ice_failed"}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["fallback_reason"] == "ice_failed"
    relayed = [e["message"] for _, e in sent if e.get("message", {}).get("type") == "job_inputs"]
    assert len(relayed) == 2 and all(m["inputs"] == INPUTS for m in relayed)
    job = Job.objects.get(pk=job.pk)
    assert job.inputs == INPUTS and job.relay_bytes == len(protocol.canonical_json(INPUTS))
    vectors = unit_vectors(2)
    for assignment in job.assignments.all():
        keys = nodes[assignment.node_id]
        results.result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, vectors))
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.SETTLED
    assert client.get(f"/api/v1/jobs/{job.pk}/").json()["result"]["result_hash"] == job.receipt["result_hash"]
    # Sent twice, the input changes nothing more.
    again = client.post(f"/api/v1/jobs/{job.pk}/inputs/", {"inputs": INPUTS}, format="json")
    assert again.status_code == 200 and Job.objects.get(pk=job.pk).relay_bytes == job.relay_bytes


@pytest.mark.parametrize(
    ("inputs", "status", "code"),
    [
        ({"texts": ["another input", "entirely"]}, 409, "input_hash_mismatch"),
        ({"texts": []}, 400, "invalid_input"),
        ({"prompt": "wrong family"}, 400, "invalid_input"),
    ],
)
def test_an_input_that_is_not_the_contracts_is_refused(waiting, inputs, status, code):
    job, _, client, sent = waiting
    response = client.post(f"/api/v1/jobs/{job.pk}/inputs/", {"inputs": inputs}, format="json")
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert Job.objects.get(pk=job.pk).inputs == {}
    assert not [e for _, e in sent if e.get("message", {}).get("type") == "job_inputs"]


def test_only_the_jobs_user_may_send_its_input(waiting):
    job, _, _, _ = waiting
    stranger = APIClient()
    stranger.force_authenticate(user_with_credits(1))
    response = stranger.post(f"/api/v1/jobs/{job.pk}/inputs/", {"inputs": INPUTS}, format="json")
    assert (response.status_code, response.json()["code"]) == (404, "not_found")
    delivered = stranger.post(f"/api/v1/jobs/{job.pk}/delivered/", {"assignment_id": str(job.pk), "result_hash": "0" * 64}, format="json")
    assert delivered.status_code == 404


def test_an_input_the_policy_forbids_fails_the_job_and_releases_the_hold(waiting, django_capture_on_commit_callbacks):
    job, _, client, _ = waiting
    forbidden = {"texts": ["forbidden words", "here"]}
    subnet = job.subnet
    subnet.content_policy = {"id": "p", "version": 1, "input": {"blocked": [{"name": "test.words", "patterns": ["forbidden"]}]}}
    subnet.save(update_fields=["content_policy"])
    user = job.user
    job = p2p_submit(user, subnet, forbidden, key="p2p-2")
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.job_dispatch(job_id=job.id)
    response = client.post(f"/api/v1/jobs/{job.pk}/inputs/", {"inputs": forbidden}, format="json")
    assert response.status_code == 422 and response.json()["code"] == "content_policy"
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.FAILED and job.failure_reason.startswith("content_policy_input:")
    assert Transfer.objects.filter(kind="release", amount=job.price_micro).count() == 1


def test_a_relay_job_takes_no_fallback(waiting):
    job, _, client, _ = waiting
    from registry import submit

    relay, _ = submit.job_submit(user=job.user, subnet_slug=job.subnet.slug, inputs=INPUTS, idempotency_key="relay")
    response = client.post(f"/api/v1/jobs/{relay.pk}/inputs/", {"inputs": INPUTS}, format="json")
    assert (response.status_code, response.json()["code"]) == (409, "not_p2p")
