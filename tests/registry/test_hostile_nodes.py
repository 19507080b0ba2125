"""Hostile or unlucky nodes (issue 11): a refused result costs its node the job at once, a
silent node costs seconds, a result must have the subnet's declared shape, a registry
restart is nobody's fault, and one broken job never stops the sweeper."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from bim_core import protocol
from ledger.errors import HoldEnded
from registry import dispatch, jobs, presence, results, sweeper, verify
from registry.models import Assignment, AssignmentState, Job, JobEvent, JobState, Node, NodeSubnet, Strike
from registry.submit import job_submit
from subnets import defaults
from tests.factories import SubnetFactory, online_node, result_message, served_subnet, unit_vectors, user_with_credits

pytestmark = pytest.mark.django_db

TEXTS = ["one small text", "another text", "a third one"]


def submit(subnet, key="k1", user=None) -> Job:
    job, _ = job_submit(
        user=user or user_with_credits(10), subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key=key
    )
    return job


def dispatched(subnet, capture, spares=1):
    """A dispatched pair job and every node's keys (spares stay free for replacements)."""
    pool = {keys.node.pk: keys for keys in (online_node(subnet) for _ in range(2 + spares))}
    job = submit(subnet)
    with capture(execute=True):
        dispatch.job_dispatch(job_id=job.id)
    by_role = {a.role: a for a in job.assignments.all()}
    return job, pool, by_role


def _forged(code, keys, job, assignment):
    vectors = unit_vectors(len(TEXTS))
    honest = result_message(keys, job, assignment, vectors)
    nan = vectors.copy()
    nan[1, 3] = np.nan
    return {
        "bad_signature": lambda: result_message(keys, job, assignment, vectors, signing_key=protocol.new_private_key()),
        "bad_input_hash": lambda: result_message(
            keys, job, assignment, vectors, input_hash=protocol.input_hash({"texts": ["other"]})
        ),
        "bad_result_hash": lambda: {**honest, "data": protocol.b64encode(protocol.encode_vectors(unit_vectors(3, seed=9)))},
        "bad_shape": lambda: result_message(keys, job, assignment, unit_vectors(len(TEXTS) + 1)),
        "bad_message": lambda: result_message(keys, job, assignment, nan),
    }[code]()


# Item 1: a refused result is the node's fault and its role goes to another node now.
@pytest.mark.parametrize("code", ["bad_signature", "bad_input_hash", "bad_result_hash", "bad_shape", "bad_message"])
def test_a_refused_result_strikes_its_node_and_redispatches_the_role_keeping_the_partners(
    code, django_capture_on_commit_callbacks
):
    subnet = SubnetFactory()
    job, pool, by_role = dispatched(subnet, django_capture_on_commit_callbacks)
    honest_b, cheat_a = by_role["B"], by_role["A"]
    vectors = unit_vectors(len(TEXTS))
    results.result_record(node_id=honest_b.node_id, message=result_message(pool[honest_b.node_id], job, honest_b, vectors))
    cheat = pool[cheat_a.node_id]
    failed_before = Node.objects.get(pk=cheat.node.pk).jobs_failed
    message = _forged(code, cheat, job, cheat_a)

    with pytest.raises(protocol.ProtocolError) as refused:
        results.result_record(node_id=cheat.node.pk, message=message)
    assert refused.value.code == code
    with django_capture_on_commit_callbacks(execute=True):
        results.result_refused(node_id=cheat.node.pk, message=message, code=refused.value.code)

    cheat_a.refresh_from_db()
    assert cheat_a.state == AssignmentState.LOST and code in cheat_a.failure_reason
    assert Strike.objects.filter(node=cheat.node, job=job).count() == 1
    assert Node.objects.get(pk=cheat.node.pk).jobs_failed == failed_before + 1
    replacement = job.assignments.get(role="A", state=AssignmentState.DISPATCHED)
    assert replacement.node_id not in {cheat_a.node_id, honest_b.node_id}
    honest_b.refresh_from_db()
    assert honest_b.state == AssignmentState.SUBMITTED  # the partner's work is kept

    # The replacement answers and the job settles, paying the honest partner.
    results.result_record(
        node_id=replacement.node_id, message=result_message(pool[replacement.node_id], job, replacement, vectors)
    )
    verify.job_verify(job_id=job.id)
    job.refresh_from_db()
    assert job.state == JobState.SETTLED
    assert set(job.assignments.filter(state=AssignmentState.AGREED).values_list("node_id", flat=True)) == {
        honest_b.node_id,
        replacement.node_id,
    }


def test_a_result_signed_by_a_later_session_loses_the_role_without_a_strike(django_capture_on_commit_callbacks):
    """After a reconnect a node holds a new session key; a result it signs with that key
    cannot be checked against the offer's session, but it proves no cheating either."""
    subnet = SubnetFactory()
    job, pool, by_role = dispatched(subnet, django_capture_on_commit_callbacks)
    assignment = by_role["A"]
    keys = pool[assignment.node_id]
    new_session = protocol.new_private_key()
    presence.node_connect(
        node=keys.node,
        channel_name=f"again.{keys.node.pk}",
        session_key_pub=protocol.public_key_b64(new_session),
        nonce=protocol.b64encode(b"m" * 32),
        session_cert="cert",
        ip=keys.node.ip,
    )
    message = result_message(keys, job, assignment, unit_vectors(len(TEXTS)), signing_key=new_session)
    with pytest.raises(protocol.ProtocolError) as refused:
        results.result_record(node_id=keys.node.pk, message=message)
    assert refused.value.code == "bad_signature"

    with django_capture_on_commit_callbacks(execute=True):
        results.result_refused(node_id=keys.node.pk, message=message, code="bad_signature")

    assert Assignment.objects.get(pk=assignment.pk).state == AssignmentState.LOST
    assert job.assignments.filter(role="A", state=AssignmentState.DISPATCHED).exists()
    assert not Strike.objects.filter(node=keys.node).exists()
    assert Node.objects.get(pk=keys.node.pk).jobs_failed == 0


@pytest.mark.parametrize("code", ["deadline_passed", "already_submitted", "not_assigned"])
def test_a_race_refusal_costs_the_node_nothing(code, django_capture_on_commit_callbacks):
    subnet = SubnetFactory()
    job, pool, by_role = dispatched(subnet, django_capture_on_commit_callbacks)
    assignment = by_role["A"]
    keys = pool[assignment.node_id]
    message = result_message(keys, job, assignment, unit_vectors(len(TEXTS)))

    with django_capture_on_commit_callbacks(execute=True):
        results.result_refused(node_id=keys.node.pk, message=message, code=code)

    assignment.refresh_from_db()
    assert assignment.state == AssignmentState.DISPATCHED
    assert not Strike.objects.filter(node=keys.node).exists()
    assert job.assignments.count() == 2


# Item 2: each assignment has its own deadline; a silent node costs seconds.
def test_an_assignment_deadline_follows_the_nodes_speed_within_the_jobs(django_capture_on_commit_callbacks, settings):
    settings.NODE_ASSIGNMENT_MIN_S = 5
    subnet = SubnetFactory(latency_ms=60_000)
    job, _, by_role = dispatched(subnet, django_capture_on_commit_callbacks)
    for assignment in by_role.values():
        # 3 texts at 30 texts/s: far under the floor, so the floor decides.
        left = (assignment.deadline - assignment.dispatched_at).total_seconds()
        assert 4 <= left <= 6
        assert assignment.deadline < job.expires_at

    # Slow nodes are given longer, never past the job's own deadline.
    slow_subnet = SubnetFactory(latency_ms=60_000)
    slow_job, _, slow_roles = dispatched(slow_subnet, django_capture_on_commit_callbacks, spares=0)
    Job.objects.filter(pk=slow_job.pk).update(state=JobState.QUEUED)
    Assignment.objects.filter(job=slow_job).delete()
    for assignment in slow_roles.values():
        assignment.node.nodesubnet_set.update(items_per_s=0.01)  # 300 s for 3 texts
    with django_capture_on_commit_callbacks(execute=True):
        made = dispatch.job_dispatch(job_id=slow_job.id)
    assert len(made) == 2
    slow_job.refresh_from_db()
    assert {a.deadline for a in made} == {slow_job.expires_at}


def test_the_sweeper_takes_an_overdue_assignment_from_a_silent_node(django_capture_on_commit_callbacks):
    subnet = SubnetFactory()
    job, pool, by_role = dispatched(subnet, django_capture_on_commit_callbacks)
    silent = by_role["A"]
    Assignment.objects.filter(pk=silent.pk).update(deadline=timezone.now() - timedelta(seconds=1))

    with django_capture_on_commit_callbacks(execute=True):
        sweeper.sweep()

    silent.refresh_from_db()
    assert silent.state == AssignmentState.LOST
    assert Strike.objects.filter(node_id=silent.node_id, job=job).count() == 1
    replacement = job.assignments.get(role="A", state=AssignmentState.DISPATCHED)
    assert replacement.node_id not in {silent.node_id, by_role["B"].node_id}
    job.refresh_from_db()
    assert job.state == JobState.DISPATCHED  # the job goes on; only the silent node paid
    assert not Strike.objects.filter(node_id=by_role["B"].node_id).exists()


def test_silence_after_a_reconnect_is_not_struck(django_capture_on_commit_callbacks):
    """A node that came back with a new session (after a registry restart, say) only as
    the deadline passed had no time to answer or give up the work `welcome` listed: it
    moves on without a strike (tests/registry/test_reconnect_blame.py has the other side)."""
    subnet = SubnetFactory()
    job, pool, by_role = dispatched(subnet, django_capture_on_commit_callbacks)
    back = pool[by_role["A"].node_id].node
    presence.node_connect(
        node=back,
        channel_name=f"again.{back.pk}",
        session_key_pub=protocol.public_key_b64(protocol.new_private_key()),
        nonce=protocol.b64encode(b"m" * 32),
        session_cert="cert",
        ip=back.ip,
    )
    Assignment.objects.filter(pk=by_role["A"].pk).update(deadline=timezone.now() - timedelta(seconds=1))

    with django_capture_on_commit_callbacks(execute=True):
        sweeper.sweep()

    assert Assignment.objects.get(pk=by_role["A"].pk).state == AssignmentState.LOST
    assert job.assignments.filter(role="A", state=AssignmentState.DISPATCHED).exclude(node=back).exists()
    back.refresh_from_db()
    assert back.jobs_failed == 0 and not Strike.objects.filter(node=back).exists()


# Item 3: a result has the subnet's declared shape.
def test_a_result_of_another_dimension_than_the_subnets_is_refused(django_capture_on_commit_callbacks):
    subnet = SubnetFactory(output_dim=384)
    job, pool, by_role = dispatched(subnet, django_capture_on_commit_callbacks)
    # Truncated and renormalised: unit vectors of 192 dimensions, identical on both nodes.
    truncated = unit_vectors(len(TEXTS), dim=192)
    for assignment in by_role.values():
        with pytest.raises(protocol.ProtocolError) as refused:
            results.result_record(
                node_id=assignment.node_id, message=result_message(pool[assignment.node_id], job, assignment, truncated)
            )
        assert refused.value.code == "bad_shape"
    assert set(job.assignments.values_list("state", flat=True)) == {AssignmentState.DISPATCHED}


def test_the_demo_embedding_subnet_declares_its_dimension():
    assert defaults.embeddings_subnet_settings()["output_dim"] == 384


# Item 4: a registry restart is not the nodes' fault.
def test_a_node_that_reconnects_within_the_grace_keeps_its_work(django_capture_on_commit_callbacks, settings):
    settings.NODE_RECONNECT_GRACE_S = 30
    subnet = SubnetFactory()
    job, pool, by_role = dispatched(subnet, django_capture_on_commit_callbacks)
    nodes = [pool[a.node_id].node for a in by_role.values()]
    for node in nodes:  # the registry restarts: every socket closes
        with django_capture_on_commit_callbacks(execute=True):
            presence.node_disconnect(node_id=node.pk, channel_name=node.channel_name)
    with django_capture_on_commit_callbacks(execute=True):
        sweeper.sweep()
    for node in nodes:  # and the nodes come back seconds later, with new sessions
        presence.node_connect(
            node=node,
            channel_name=f"again.{node.pk}",
            session_key_pub=protocol.public_key_b64(protocol.new_private_key()),
            nonce=protocol.b64encode(b"m" * 32),
            session_cert="cert",
            ip=node.ip,
        )
    assert set(job.assignments.values_list("state", flat=True)) == {AssignmentState.DISPATCHED}
    vectors = unit_vectors(len(TEXTS))
    for assignment in by_role.values():  # results computed across the restart still count
        keys = pool[assignment.node_id]
        results.result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, vectors))
    verify.job_verify(job_id=job.id)
    job.refresh_from_db()
    assert job.state == JobState.SETTLED
    assert not Node.objects.filter(pk__in=[n.pk for n in nodes], jobs_failed__gt=0).exists()


def test_after_the_grace_a_gone_nodes_work_moves_on_without_blame(django_capture_on_commit_callbacks, settings):
    settings.NODE_RECONNECT_GRACE_S = 30
    subnet = SubnetFactory()
    job, pool, by_role = dispatched(subnet, django_capture_on_commit_callbacks)
    gone = pool[by_role["A"].node_id].node
    with django_capture_on_commit_callbacks(execute=True):
        presence.node_disconnect(node_id=gone.pk, channel_name=gone.channel_name)
    Node.objects.filter(pk=gone.pk).update(last_seen=timezone.now() - timedelta(seconds=31))

    with django_capture_on_commit_callbacks(execute=True):
        sweeper.sweep()

    lost = Assignment.objects.get(pk=by_role["A"].pk)
    assert lost.state == AssignmentState.LOST
    assert job.assignments.filter(role="A", state=AssignmentState.DISPATCHED).exclude(node=gone).exists()
    gone.refresh_from_db()
    assert gone.jobs_failed == 0 and not Strike.objects.filter(node=gone).exists()


# Item 5: one broken job never stops the sweeper.
def test_one_poisoned_job_does_not_stop_the_sweeper_expiring_the_others(monkeypatch):
    subnet = served_subnet()  # no routable node: both jobs wait in the queue
    poisoned, normal = submit(subnet, key="poisoned"), submit(subnet, key="normal")
    Job.objects.filter(pk__in=[poisoned.pk, normal.pk]).update(expires_at=timezone.now() - timedelta(seconds=1))
    release = jobs.ledger.job_release

    def refusing_release(*, job_id, **kwargs):
        if job_id == poisoned.pk:
            raise HoldEnded(f"the hold of job {job_id} was reversed")
        return release(job_id=job_id, **kwargs)

    monkeypatch.setattr(jobs.ledger, "job_release", refusing_release)

    outcome = sweeper.sweep()

    assert outcome["jobs_expired"] == 1
    normal.refresh_from_db()
    poisoned.refresh_from_db()
    assert normal.state == JobState.EXPIRED
    assert poisoned.state == JobState.QUEUED
    failure = JobEvent.objects.filter(job=poisoned).exclude(to_state=JobState.QUEUED, from_state="").last()
    assert failure is not None and "reversed" in failure.detail


def test_a_new_node_holds_two_unanswered_offers_whatever_it_claims(django_capture_on_commit_callbacks):
    """`max_concurrent` is the node's own word: a newcomer that claims 1,024 slots and then
    stays silent must cost users two deadlines, not a queue's worth."""
    subnet = SubnetFactory()
    newcomer, *veterans = (online_node(subnet) for _ in range(3))
    NodeSubnet.objects.filter(subnet=subnet).update(max_concurrent=1024)
    Node.objects.filter(pk__in=[v.node.pk for v in veterans]).update(jobs_agreed=40)
    user = user_with_credits(100)
    for i in range(20):
        job = submit(subnet, key=f"many-{i}", user=user)
        with django_capture_on_commit_callbacks(execute=True):
            dispatch.job_dispatch(job_id=job.id)
    held = Assignment.objects.filter(node=newcomer.node, state=AssignmentState.DISPATCHED).count()
    assert held == 2
    assert Job.objects.filter(state=JobState.DISPATCHED).count() == 20  # the veterans took the rest
