"""Honeypots on the peer-to-peer path (docs/p2p.md §4, docs/honeypots.md): a P2P honeypot is
offered as a user's P2P job is (no inputs, the same contract keys), its payload is asked for
exactly as an audit draw's is, once both nodes have committed, and it is judged on that
payload: an honest pair passes, a node that committed a wrong answer is struck. The beat sends
honeypots peer to peer in the share the users' jobs went so, while the honeypot peer runs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from registry import dispatch, honeypots, results, submit, sweeper
from registry.models import Assignment, AssignmentState, Honeypot, Job, JobState, JobTransport, ServiceHeartbeat, Strike
from registry.verify import job_verify
from tests.factories import SubnetFactory, online_node, unit_vectors, user_with_credits
from tests.p2p_jobs import commit_message, p2p_submit, upload_message, upload_requests

pytestmark = pytest.mark.django_db

TEXTS = ["The library offers free language courses.", "Owls hunt mostly at night."]
ANSWER = unit_vectors(2, seed=11)


@pytest.fixture
def subnet(settings):
    settings.P2P_AUDIT_BP = 0
    subnet = SubnetFactory(honeypot_rate_bp=10_000, honeypot_slash_bp=5_000)
    Honeypot.objects.create(
        subnet=subnet, inputs={"texts": TEXTS}, result=ANSWER.astype("<f4").tobytes(), shape=[2, 384],
        model_checksum=subnet.model_checksum,
    )
    return subnet


@pytest.fixture
def nodes(subnet):
    return {k.node.pk: k for k in (online_node(subnet) for _ in range(2))}


def dispatched(job, capture):
    with capture(execute=True):
        dispatch.job_dispatch(job_id=job.id)
    return Job.objects.get(pk=job.pk)


def commit_all(job, nodes, results_by_role, capture):
    with capture(execute=True):
        for assignment in job.assignments.order_by("role"):
            keys = nodes[assignment.node_id]
            message = commit_message(keys, job, assignment, results_by_role[assignment.role])
            results.commit_record(node_id=keys.node.pk, message=message)


def upload_asked(job, nodes, sent, results_by_role, capture):
    """Each node asked for its payload uploads it (with the inputs when asked)."""
    for request in upload_requests(sent):
        assignment = job.assignments.get(pk=request["assignment_id"])
        keys = nodes[assignment.node_id]
        inputs = {"texts": TEXTS} if request["with_inputs"] else None
        with capture(execute=True):
            results.result_record(
                node_id=keys.node.pk, message=upload_message(keys, job, assignment, results_by_role[assignment.role], inputs=inputs)
            )


def test_a_p2p_honeypot_is_offered_as_a_users_p2p_job_is(subnet, nodes, django_capture_on_commit_callbacks):
    user_job = dispatched(p2p_submit(user_with_credits(5), subnet, {"texts": TEXTS}), django_capture_on_commit_callbacks)
    trap = dispatched(honeypots.honeypot_issue(subnet=subnet, peer_to_peer=True), django_capture_on_commit_callbacks)

    assert trap.transport == JobTransport.P2P and trap.inputs == {}
    user_offer = dispatch._job_message(user_job, user_job.assignments.first())
    trap_offer = dispatch._job_message(trap, trap.assignments.first())
    assert user_offer.keys() == trap_offer.keys() and "inputs" not in trap_offer
    assert user_offer["contract"].keys() == trap_offer["contract"].keys()
    assert trap_offer["contract"]["input_summary"] == user_offer["contract"]["input_summary"] == {"items": 2}
    assert trap_offer["contract"]["input_hash"] == user_offer["contract"]["input_hash"]
    assert "honeypot" not in str(trap_offer).lower()


def test_an_honest_pair_passes_and_the_upload_is_asked_as_an_audits_is(
    subnet, nodes, sent, settings, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    trap = dispatched(honeypots.honeypot_issue(subnet=subnet, peer_to_peer=True), capture)
    commit_all(trap, nodes, {"A": ANSWER, "B": ANSWER.copy()}, capture)
    job_verify(job_id=trap.pk)
    trap_asked = [(m["reason"], m["with_inputs"]) for m in upload_requests(sent)]

    # A user's job drawn for audit is asked for the same, of the same node role.
    settings.P2P_AUDIT_BP = 10_000
    audited = dispatched(p2p_submit(user_with_credits(5), subnet, {"texts": ["other"]}, key="audited"), capture)
    sent.clear()
    commit_all(audited, nodes, {"A": unit_vectors(1), "B": unit_vectors(1)}, capture)
    job_verify(job_id=audited.pk)
    assert trap_asked == [(m["reason"], m["with_inputs"]) for m in upload_requests(sent)] == [("audit", True)]

    assignment = trap.assignments.get(role="A")
    keys = nodes[assignment.node_id]
    with capture(execute=True):
        results.result_record(node_id=keys.node.pk, message=upload_message(keys, trap, assignment, ANSWER, inputs={"texts": TEXTS}))
    job_verify(job_id=trap.pk)
    trap = Job.objects.get(pk=trap.pk)
    assert trap.state == JobState.SETTLED and trap.verification["path"] == "honeypot"
    assert set(trap.verification["results"]) == {"A", "B"}
    assert set(trap.assignments.values_list("state", flat=True)) == {AssignmentState.AGREED}
    assert not Strike.objects.exists()


def test_a_pair_that_committed_the_same_wrong_answer_is_struck_on_one_upload(
    subnet, nodes, sent, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    forged = unit_vectors(2, seed=42)
    trap = dispatched(honeypots.honeypot_issue(subnet=subnet, peer_to_peer=True), capture)
    commit_all(trap, nodes, {"A": forged, "B": forged}, capture)
    job_verify(job_id=trap.pk)
    assert len(upload_requests(sent)) == 1
    upload_asked(trap, nodes, sent, {"A": forged, "B": forged}, capture)
    job_verify(job_id=trap.pk)

    trap = Job.objects.get(pk=trap.pk)
    assert trap.state == JobState.SETTLED and trap.verification["path"] == "honeypot"
    assert set(trap.assignments.values_list("state", flat=True)) == {AssignmentState.DISAGREED}
    assert Strike.objects.filter(job=trap, reason="failed a honeypot").count() == 2


def test_of_a_pair_that_differs_only_the_wrong_node_is_struck(subnet, nodes, sent, django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    answers = {"A": ANSWER, "B": unit_vectors(2, seed=99)}
    trap = dispatched(honeypots.honeypot_issue(subnet=subnet, peer_to_peer=True), capture)
    commit_all(trap, nodes, answers, capture)
    job_verify(job_id=trap.pk)
    assert sorted(m["reason"] for m in upload_requests(sent)) == ["mismatch", "mismatch"]
    upload_asked(trap, nodes, sent, answers, capture)
    job_verify(job_id=trap.pk)

    trap = Job.objects.get(pk=trap.pk)
    cheat, honest = trap.assignments.get(role="B"), trap.assignments.get(role="A")
    assert trap.state == JobState.SETTLED
    assert (honest.state, cheat.state) == (AssignmentState.AGREED, AssignmentState.DISAGREED)
    assert list(Strike.objects.filter(job=trap).values_list("node_id", flat=True)) == [cheat.node_id]


def test_the_beat_sends_honeypots_peer_to_peer_as_users_jobs_go_while_the_peer_runs(subnet):
    online_node(subnet, ready=False)
    user = user_with_credits(5)
    for i in range(4):
        p2p_submit(user, subnet, {"texts": [f"text {i}"]}, key=f"p{i}")

    assert not honeypots.peer_alive()
    assert honeypots.honeypots_issue_due() == 4
    assert set(Job.objects.filter(honeypot__isnull=False).values_list("transport", flat=True)) == {JobTransport.RELAY}

    honeypots.peer_heartbeat()
    assert honeypots.peer_alive()
    assert honeypots.honeypots_issue_due() == 4
    assert Job.objects.filter(honeypot__isnull=False, transport=JobTransport.P2P).count() == 4
    assert {job_id for job_id, _, _ in honeypots.peer_jobs_waiting()} == {
        str(pk) for pk in Job.objects.filter(honeypot__isnull=False, transport=JobTransport.P2P).values_list("pk", flat=True)
    }

    # A heartbeat older than PEER_STALE_S: the peer is gone, honeypots use the relay again.
    stale = timezone.now() - timedelta(seconds=honeypots.PEER_STALE_S + 1)
    ServiceHeartbeat.objects.filter(name=honeypots.PEER_NAME).update(seen_at=stale)
    assert not honeypots.peer_alive()


def test_the_beat_keeps_relay_honeypots_for_a_subnet_whose_users_use_the_relay(subnet):
    online_node(subnet, ready=False)
    honeypots.peer_heartbeat()
    user = user_with_credits(5)
    for i in range(3):
        submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": [f"text {i}"]}, idempotency_key=f"r{i}")
    assert honeypots.honeypots_issue_due() == 3
    assert set(Job.objects.filter(honeypot__isnull=False).values_list("transport", flat=True)) == {JobTransport.RELAY}


def test_the_honeypot_account_has_no_password_and_its_token_is_stable():
    user = honeypots.honeypot_user()
    assert user.is_active and not user.has_usable_password()
    assert honeypots.peer_token() == honeypots.peer_token()


def test_a_node_silent_on_a_honeypots_upload_is_struck_and_its_partner_judged_alone(
    subnet, nodes, sent, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    answers = {"A": ANSWER, "B": unit_vectors(2, seed=99)}
    trap = dispatched(honeypots.honeypot_issue(subnet=subnet, peer_to_peer=True), capture)
    commit_all(trap, nodes, answers, capture)
    job_verify(job_id=trap.pk)
    # Only node A uploads; B, asked too (the hashes differ), says nothing.
    a = trap.assignments.get(role="A")
    with capture(execute=True):
        results.result_record(
            node_id=a.node_id, message=upload_message(nodes[a.node_id], trap, a, ANSWER, inputs={"texts": TEXTS})
        )
    Assignment.objects.filter(job=trap, role="B").update(upload_due=timezone.now() - timedelta(seconds=1))
    with capture(execute=True):
        sweeper.sweep()

    trap = Job.objects.get(pk=trap.pk)
    assert trap.state == JobState.SETTLED and trap.verification["path"] == "honeypot"
    assert not trap.assignments.filter(role="C").exists()  # no tie-breaker: the registry knows the answer
    assert trap.assignments.get(role="A").state == AssignmentState.AGREED
    assert list(Strike.objects.filter(job=trap).values_list("reason", flat=True)) == ["did not upload a committed result"]
