"""What the clients of a peer-to-peer job (docs/p2p.md) read and write through the registry's
API: the relay fallback writes the inputs of a job created without them."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from rest_framework.test import APIClient

from bim_core import protocol
from registry import dispatch
from registry.models import Job
from tests.factories import SubnetFactory, online_node, user_with_credits
from tests.p2p_jobs import p2p_submit

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
