"""Trusted subnets (issue 15) in the registry: a trusted subnet's jobs (its users' jobs,
tie-breakers, honeypots, replacements) are offered to operator-trusted nodes only; a
result from any other node is refused with `node_not_trusted`; with no trusted node
available a job waits and expires as any other; the registry's share is enforced; the
contract and the signed receipt say trusted; a node cannot make itself trusted."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from bim_core import protocol
from bim_core.errors import ServiceError
from bim_sdk import ReceiptInvalid, cli, receipt_trusted, verify_receipt
from ledger.models import Account, AccountKind
from registry import dispatch, honeypots, presence, routing_index, sanctions, submit, sweeper, verify
from registry.keys import registry_private_key, registry_public_key
from registry.models import Assignment, AssignmentState, Honeypot, Job, JobState, Node, Strike
from registry.results import result_record, result_refused
from subnets.lifecycle import subnet_update
from tests.factories import (
    SubnetFactory,
    UserFactory,
    node_vanish,
    online_node,
    result_message,
    unit_vectors,
    user_with_credits,
)

pytestmark = pytest.mark.django_db

TEXTS = ["one", "two", "three"]


def trusted_subnet(**fields):
    return SubnetFactory(trusted=True, split_node_a_bp=3000, split_node_b_bp=3000, split_registry_bp=4000, **fields)


def market(subnet, *, trusted: int, untrusted: int):
    """Trusted and untrusted nodes, every one of another owner and /24; the untrusted ones
    benchmarked, ready and vouched like the rest (a record past probation's offer limit)."""
    good = [online_node(subnet, trusted=True, jobs_agreed=10) for _ in range(trusted)]
    other = [online_node(subnet, jobs_agreed=10) for _ in range(untrusted)]
    return good, other


def submit_job(subnet, key: str = "k", user=None) -> Job:
    job, _ = submit.job_submit(
        user=user or user_with_credits(10), subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key=key
    )
    return job


def answer(job: Job, pool: dict, role: str, vectors) -> None:
    assignment = job.assignments.get(role=role, state=AssignmentState.DISPATCHED)
    keys = pool[assignment.node_id]
    result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, vectors))


def offered_to(jobs) -> set:
    return set(Assignment.objects.filter(job__in=jobs).values_list("node_id", flat=True))


def test_user_jobs_are_offered_to_trusted_nodes_only():
    subnet = trusted_subnet()
    good, other = market(subnet, trusted=2, untrusted=6)
    user = user_with_credits(50)
    jobs = [submit_job(subnet, f"k{i}", user) for i in range(12)]
    for job in jobs:
        dispatch.job_dispatch(job_id=job.id)
    assert offered_to(jobs) == {k.node.pk for k in good}
    assert Job.objects.filter(pk__in=[j.pk for j in jobs], state=JobState.DISPATCHED).count() == 12
    # The subnet's routing index never held the others.
    assert {c.node_id for c in routing_index.routable_index(subnet.pk).candidates} == {str(k.node.pk) for k in good}


def test_an_ordinary_subnet_still_uses_every_node():
    subnet = SubnetFactory()
    good, other = market(subnet, trusted=2, untrusted=6)
    user = user_with_credits(50)
    jobs = [submit_job(subnet, f"k{i}", user) for i in range(12)]
    for job in jobs:
        dispatch.job_dispatch(job_id=job.id)
    assert offered_to(jobs) & {k.node.pk for k in other}


def test_a_tie_breaker_is_trusted_or_the_job_waits_for_one():
    subnet = trusted_subnet()
    good, other = market(subnet, trusted=2, untrusted=4)
    pool = {k.node.pk: k for k in good + other}
    job = submit_job(subnet)
    dispatch.job_dispatch(job_id=job.id)
    answer(job, pool, "A", unit_vectors(3, seed=1))
    answer(job, pool, "B", unit_vectors(3, seed=2))
    verify.job_verify(job_id=job.id)
    job.refresh_from_db()
    assert job.state == JobState.ADJUDICATING
    dispatch.job_dispatch(job_id=job.id)
    # Four untrusted nodes are free; the only trusted ones are A and B.
    assert not job.assignments.filter(role="C").exists()

    third = online_node(subnet, trusted=True)
    pool[third.node.pk] = third
    dispatch.job_dispatch(job_id=job.id)
    assert job.assignments.get(role="C").node_id == third.node.pk


def test_a_honeypot_goes_to_trusted_nodes_only():
    subnet = trusted_subnet(honeypot_rate_bp=10_000)
    Honeypot.objects.create(
        subnet=subnet,
        inputs={"texts": TEXTS},
        result=unit_vectors(3, seed=11).astype("<f4").tobytes(),
        shape=[3, 384],
        model_checksum=subnet.model_checksum,
    )
    good, other = market(subnet, trusted=2, untrusted=6)
    job = honeypots.honeypot_issue(subnet=subnet)
    dispatch.job_dispatch(job_id=job.id)
    assert offered_to([job]) == {k.node.pk for k in good}


def test_a_lost_node_is_replaced_by_a_trusted_one(django_capture_on_commit_callbacks):
    subnet = trusted_subnet()
    good, other = market(subnet, trusted=3, untrusted=6)
    job = submit_job(subnet)
    dispatch.job_dispatch(job_id=job.id)
    gone = job.assignments.get(role="A")
    node_vanish(gone.node_id)
    routing_index.index_forget()
    dispatch.job_dispatch(job_id=job.id)
    replacement = job.assignments.get(role="A", state=AssignmentState.DISPATCHED)
    assert replacement.node_id in {k.node.pk for k in good} - {gone.node_id}


def test_a_forged_assignment_of_an_untrusted_node_gets_no_result_in():
    subnet = trusted_subnet()
    good, other = market(subnet, trusted=2, untrusted=1)
    job = submit_job(subnet)
    dispatch.job_dispatch(job_id=job.id)
    intruder = other[0]
    # An assignment row the dispatcher never makes (a bug, a hand edit): still refused.
    Assignment.objects.filter(job=job, role="B").update(
        node=intruder.node,
        session_key_pub=intruder.node.session_key_pub,
        session_nonce=intruder.node.session_nonce,
        session_cert=intruder.node.session_cert,
    )
    assignment = job.assignments.get(role="B")
    with pytest.raises(protocol.ProtocolError) as refused:
        result_record(node_id=intruder.node.pk, message=result_message(intruder, job, assignment, unit_vectors(3)))
    assert refused.value.code == "node_not_trusted"
    assignment.refresh_from_db()
    assert (assignment.state, assignment.result_hash) == (AssignmentState.DISPATCHED, "")


def test_a_subnet_made_trusted_refuses_results_of_untrusted_nodes_and_reroutes_without_blame(
    django_capture_on_commit_callbacks,
):
    subnet = SubnetFactory(split_node_a_bp=3000, split_node_b_bp=3000, split_registry_bp=4000)
    other = [online_node(subnet) for _ in range(2)]
    job = submit_job(subnet)
    dispatch.job_dispatch(job_id=job.id)
    operator = UserFactory(is_staff=True)
    subnet_update(subnet_id=subnet.pk, changes={"trusted": True}, operator=operator, reason="sensitive data")
    good = [online_node(subnet, trusted=True) for _ in range(2)]
    routing_index.index_forget()
    pool = {k.node.pk: k for k in good + other}
    a = job.assignments.get(role="A")
    message = result_message(pool[a.node_id], job, a, unit_vectors(3))
    with pytest.raises(protocol.ProtocolError) as refused:
        result_record(node_id=a.node_id, message=message)
    assert refused.value.code == "node_not_trusted"

    with django_capture_on_commit_callbacks(execute=True):
        penalised = result_refused(node_id=a.node_id, message=message, code="node_not_trusted")
    assert penalised is False and not Strike.objects.filter(node_id=a.node_id).exists()
    a.refresh_from_db()
    assert a.state == AssignmentState.LOST
    replacement = job.assignments.get(role="A", state=AssignmentState.DISPATCHED)
    assert replacement.node_id in {k.node.pk for k in good}


def test_withdrawn_trust_takes_the_nodes_trusted_offers_back(django_capture_on_commit_callbacks):
    subnet = trusted_subnet()
    good, other = market(subnet, trusted=3, untrusted=3)
    job = submit_job(subnet)
    dispatch.job_dispatch(job_id=job.id)
    held = job.assignments.get(role="A")
    operator = UserFactory(is_staff=True)
    with django_capture_on_commit_callbacks(execute=True):
        sanctions.node_distrust(node_id=held.node_id, operator=operator, reason="hardware returned to vendor")
    held.refresh_from_db()
    assert held.state == AssignmentState.LOST and not Strike.objects.filter(node_id=held.node_id).exists()
    replacement = job.assignments.get(role="A", state=AssignmentState.DISPATCHED)
    assert replacement.node_id in {k.node.pk for k in good} - {held.node_id}


def test_with_no_trusted_node_routable_a_job_waits_then_expires_with_its_hold_released():
    subnet = trusted_subnet()
    online_node(subnet, trusted=True, ready=False)  # connected, still fetching the model
    [online_node(subnet) for _ in range(4)]
    user = user_with_credits(10)
    job = submit_job(subnet, user=user)
    dispatch.job_dispatch(job_id=job.id)
    job.refresh_from_db()
    assert job.state == JobState.QUEUED and not job.assignments.exists()
    Job.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert sweeper.jobs_expire_overdue() == 1
    job.refresh_from_db()
    assert job.state == JobState.EXPIRED
    assert Account.objects.get(kind=AccountKind.USER_CREDITS, user=user).balance == 10_000_000
    assert Account.objects.get(kind=AccountKind.USER_HOLD, user=user).balance == 0


def test_with_no_trusted_node_online_the_submit_is_refused_for_capacity():
    subnet = trusted_subnet()
    [online_node(subnet) for _ in range(4)]
    with pytest.raises(ServiceError) as refused:
        submit_job(subnet)
    assert refused.value.code == "no_capacity"


def test_the_contract_and_the_signed_receipt_say_trusted_and_the_sdk_checks_it(client, tmp_path, capsys):
    subnet = trusted_subnet()
    good, _ = market(subnet, trusted=2, untrusted=2)
    pool = {k.node.pk: k for k in good}
    user = user_with_credits(10)
    job = submit_job(subnet, user=user)
    assert job.contract["trusted"] is True
    dispatch.job_dispatch(job_id=job.id)
    vectors = unit_vectors(3, seed=5)
    answer(job, pool, "A", vectors)
    answer(job, pool, "B", vectors)
    verify.job_verify(job_id=job.id)
    job.refresh_from_db()
    assert job.state == JobState.SETTLED and job.receipt["trusted"] is True
    client.force_login(user)
    body = client.get(f"/api/v1/jobs/{job.id}/").json()
    verify_receipt(body, registry_key=registry_public_key(), inputs={"texts": TEXTS}, require_trusted=True)
    assert receipt_trusted(body) is True

    # A contract edited to say otherwise no longer hashes to the receipt's contract_hash;
    # a receipt re-signed with a flipped flag disagrees with the contract.
    flipped = {k: v for k, v in body["receipt"].items() if k != "registry_signature"}
    flipped["trusted"] = False
    flipped["registry_signature"] = protocol.sign(registry_private_key(), protocol.receipt_message(
        {k: v for k, v in flipped.items() if k != "registry_signature"}
    ))
    with pytest.raises(ReceiptInvalid, match="trusted flag differs"):
        verify_receipt({**body, "receipt": flipped}, registry_key=registry_public_key())

    # `bim receipt verify` reports it too.
    path = tmp_path / "job.json"
    path.write_text(json.dumps(body))
    assert cli.main(["receipt", "verify", str(path), "--registry-key", registry_public_key(), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trusted"] is True
    assert cli.main(["receipt", "verify", str(path)]) == 0
    assert "ran on a trusted subnet" in capsys.readouterr().out


def test_an_ordinary_receipt_says_untrusted_and_fails_require_trusted(client):
    subnet = SubnetFactory()
    nodes = [online_node(subnet) for _ in range(2)]
    pool = {k.node.pk: k for k in nodes}
    user = user_with_credits(10)
    job = submit_job(subnet, user=user)
    assert job.contract["trusted"] is False
    dispatch.job_dispatch(job_id=job.id)
    vectors = unit_vectors(3, seed=6)
    answer(job, pool, "A", vectors)
    answer(job, pool, "B", vectors)
    verify.job_verify(job_id=job.id)
    client.force_login(user)
    body = client.get(f"/api/v1/jobs/{job.id}/").json()
    assert body["receipt"]["trusted"] is False
    verify_receipt(body, registry_key=registry_public_key())
    with pytest.raises(ReceiptInvalid, match="not run on a trusted subnet"):
        verify_receipt(body, registry_key=registry_public_key(), require_trusted=True)


@override_settings(TRUSTED_MIN_REGISTRY_BP=3500)
def test_a_trusted_subnet_needs_the_minimum_registry_share():
    subnet = SubnetFactory()  # 40 / 40 / 20
    operator = UserFactory(is_staff=True)
    with pytest.raises(ServiceError) as refused:
        subnet_update(subnet_id=subnet.pk, changes={"trusted": True}, operator=operator)
    assert refused.value.code == "invalid_subnet" and "at least 3500 bp" in refused.value.detail
    subnet.refresh_from_db()
    assert subnet.trusted is False and not subnet.changes.exists()

    subnet_update(
        subnet_id=subnet.pk,
        changes={"trusted": True, "split_node_a_bp": 3250, "split_node_b_bp": 3250, "split_registry_bp": 3500},
        operator=operator,
    )
    with pytest.raises(ServiceError, match="at least 3500 bp"):
        subnet_update(
            subnet_id=subnet.pk, changes={"split_node_a_bp": 3300, "split_registry_bp": 3450}, operator=operator
        )
    subnet.refresh_from_db()
    assert (subnet.trusted, subnet.split_registry_bp) == (True, 3500)


def test_a_node_cannot_declare_itself_trusted():
    subnet = SubnetFactory()
    owner = UserFactory()
    from subnets.models import EulaAcceptance

    EulaAcceptance.objects.create(user=owner, subnet=subnet, license=subnet.license, license_version=subnet.license.version)
    node, _ = presence.node_register(
        owner=owner,
        public_key=protocol.public_key_b64(protocol.new_private_key()),
        name="me",
        env={"os": "linux", "trusted": True},
        subnet_slugs=[subnet.slug],
        ip="10.9.9.9",
    )
    node.refresh_from_db()
    assert node.trusted is False and "trusted" not in node.capabilities
    assert Node.objects.filter(trusted=True).count() == 0


def test_the_subnet_list_tells_users_which_subnets_are_trusted(client):
    trusted_subnet(slug="sensitive")
    SubnetFactory(slug="ordinary")
    client.force_login(UserFactory())
    listed = client.get("/api/v1/subnets/").json()
    rows = listed if isinstance(listed, list) else listed["results"]
    assert {row["slug"]: row["trusted"] for row in rows} == {"sensitive": True, "ordinary": False}
