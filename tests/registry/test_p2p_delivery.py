"""What the clients of a peer-to-peer job (docs/p2p.md) read and write through the registry's
API: the job detail of a job settled on commits alone (its bytes only ever went to the user),
and the relay fallback, which writes the inputs of a job created without them."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from rest_framework.test import APIClient

from bim_core import protocol
from registry import dispatch, p2p, results, verify
from registry.models import Job, JobState
from tests.factories import SubnetFactory, online_node, unit_vectors, user_with_credits
from tests.p2p_jobs import commit_message, p2p_submit

pytestmark = pytest.mark.django_db

INPUTS = {"texts": ["a private text", "another one"]}


@pytest.fixture
def market(settings):
    settings.P2P_AUDIT_BP = 0  # no audit draw: the payload stays with the user
    subnet = SubnetFactory()
    nodes = [online_node(subnet), online_node(subnet)]
    user = user_with_credits()
    api = APIClient()
    api.force_authenticate(user)
    return subnet, nodes, user, api


def test_a_job_settled_on_commits_alone_has_no_result_to_deliver(market):
    subnet, nodes, user, api = market
    job = p2p_submit(user, subnet, INPUTS)
    dispatch.job_dispatch(job_id=job.id)
    by_node = {keys.node.pk: keys for keys in nodes}
    vectors = unit_vectors(2)
    for assignment in job.assignments.all():
        results.commit_record(node_id=assignment.node_id, message=commit_message(by_node[assignment.node_id], job, assignment, vectors))
    first = job.assignments.order_by("role").first()
    p2p.delivery_confirm(user=user, job_id=job.id, assignment_id=first.pk, result_hash=first.result_hash)
    verify.job_verify(job_id=job.id)

    detail = api.get(f"/api/v1/jobs/{job.id}/")
    assert detail.status_code == 200, detail.content
    body = detail.json()
    assert body["state"] == JobState.SETTLED and body["transport"] == "p2p"
    assert body["result"] is None  # the user has the bytes; the registry never held them
    assert body["receipt"]["result_hash"] == protocol.sha256_hex(protocol.encode_vectors(vectors))


def test_the_relay_fallback_writes_the_inputs_of_a_job_created_without_them(market):
    subnet, _, user, api = market
    job = p2p_submit(user, subnet, INPUTS)
    dispatch.job_dispatch(job_id=job.id)

    answer = api.post(f"/api/v1/jobs/{job.id}/inputs/", {"inputs": INPUTS, "reason": "no_peer_connection"}, format="json")
    assert answer.status_code == 200, answer.content
    job.refresh_from_db()
    assert (job.inputs, job.fallback_reason) == (INPUTS, "no_peer_connection")
    assert job.relay_bytes == len(protocol.canonical_json(INPUTS))
    # Written once: the database refuses to change them afterwards, as a relay job's.
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.filter(pk=job.pk).update(inputs={"texts": ["something else"]})
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.filter(pk=job.pk).update(inputs={})
    assert Job.objects.get(pk=job.pk).inputs == INPUTS
