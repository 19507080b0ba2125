"""The coalesced dispatcher: one run per burst of events places waiting jobs in batches,
keeps every node's queue limit within a batch, costs the same whatever the backlog, and
verification of a cheap pair happens where its second result arrives."""

from __future__ import annotations

from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from ledger.checks import ledger_violations
from ledger.models import Transfer, TransferKind
from registry import dispatch, effects
from registry.models import Assignment, AssignmentState, Job, JobState
from registry.results import result_record
from registry.submit import job_submit
from tests.factories import SubnetFactory, online_node, result_message, unit_vectors, user_with_credits

pytestmark = pytest.mark.django_db


def queued_jobs(user, subnet, count: int, prefix: str = "k") -> list[Job]:
    # Submitting queues a dispatcher run; here the test runs it itself.
    with mock.patch.object(effects, "queue_task_coalesced"):
        return [
            job_submit(
                user=user, subnet_slug=subnet.slug, inputs={"texts": [f"{prefix} {i}"]}, idempotency_key=f"{prefix}{i}"
            )[0]
            for i in range(count)
        ]


def test_one_run_places_every_waiting_job_oldest_first(settings):
    settings.NODE_QUEUE_DEPTH = 64
    subnet = SubnetFactory()
    for _ in range(2):
        online_node(subnet, jobs_agreed=20)  # past probation: a long queue
    jobs = queued_jobs(user_with_credits(100), subnet, dispatch.DISPATCH_BATCH + 10)

    placed = dispatch.jobs_dispatch_waiting(subnet_id=subnet.pk)

    assert placed == 2 * len(jobs)
    assert set(Job.objects.values_list("state", flat=True)) == {JobState.DISPATCHED}


def test_a_batch_fills_each_nodes_queue_to_its_limit_and_no_further(settings):
    settings.NODE_QUEUE_DEPTH = 64
    subnet = SubnetFactory()
    for _ in range(2):
        online_node(subnet)  # new nodes: probation allows 2 open offers each
    jobs = queued_jobs(user_with_credits(100), subnet, 5)

    assert dispatch.jobs_dispatch_waiting(subnet_id=subnet.pk) == 4
    states = [Job.objects.get(pk=job.pk).state for job in jobs]
    assert states == [JobState.DISPATCHED] * 2 + [JobState.QUEUED] * 3


def test_placing_one_job_costs_the_same_whatever_the_backlog(settings):
    settings.NODE_QUEUE_DEPTH = 64
    costs = {}
    for backlog in (10, 60):  # each more than the queues hold plus the misses a run tries
        subnet = SubnetFactory()
        for _ in range(2):
            online_node(subnet)
        queued_jobs(user_with_credits(100), subnet, backlog, prefix=f"b{backlog}-")
        dispatch.jobs_dispatch_waiting(subnet_id=subnet.pk)  # both queues full (2 offers each)
        open_offers = Assignment.objects.filter(job__subnet=subnet, state=AssignmentState.DISPATCHED)
        first_per_node = {}
        for pk, node_id in open_offers.order_by("dispatched_at", "pk").values_list("pk", "node_id"):
            first_per_node.setdefault(node_id, pk)
        Assignment.objects.filter(pk__in=first_per_node.values()).update(state=AssignmentState.SUBMITTED)

        with CaptureQueriesContext(connection) as queries:
            assert dispatch.jobs_dispatch_waiting(subnet_id=subnet.pk) == 2
        costs[backlog] = len(queries)

    assert costs[60] == costs[10], costs


def test_a_run_reads_no_more_queued_jobs_than_the_free_offer_slots_can_take(settings):
    # Reading a full batch of 50 to place one job made a placement cost more with 10,000
    # jobs waiting than with 10 (bench/throughput.py --backlog).
    settings.NODE_QUEUE_DEPTH = 64
    subnet = SubnetFactory()
    for _ in range(2):
        online_node(subnet)  # probation: 2 open offers each, 4 free slots
    queued_jobs(user_with_credits(100), subnet, 60)
    reads = []
    queued_locked = dispatch._queued_locked

    def spy(limit):
        prepared = queued_locked(limit)
        return mock.Mock(all=lambda subnet_id: reads.append(prepared.all(subnet_id)) or reads[-1])

    with mock.patch.object(dispatch, "_queued_locked", spy):
        assert dispatch.jobs_dispatch_waiting(subnet_id=subnet.pk) == 4
        assert [len(rows) for rows in reads] == [4 + dispatch.MISSES_ENDING_A_PASS]

        reads.clear()  # every queue full: not one queued row is read (or locked)
        assert dispatch.jobs_dispatch_waiting(subnet_id=subnet.pk) == 0
        assert reads == []
    assert Job.objects.filter(subnet=subnet, state=JobState.QUEUED).count() == 58


def test_submitting_places_the_job_through_the_dispatcher_run(django_capture_on_commit_callbacks):
    subnet = SubnetFactory()
    for _ in range(2):
        online_node(subnet)

    with django_capture_on_commit_callbacks(execute=True):
        job, _ = job_submit(
            user=user_with_credits(10), subnet_slug=subnet.slug, inputs={"texts": ["a"]}, idempotency_key="k"
        )

    job.refresh_from_db()
    assert job.state == JobState.DISPATCHED  # eager Celery ran the coalesced dispatch on commit
    assert job.assignments.count() == 2


def test_the_second_result_of_an_embedding_pair_settles_it_without_a_task():
    subnet = SubnetFactory()
    nodes = {keys.node.pk: keys for keys in (online_node(subnet), online_node(subnet))}
    job, _ = job_submit(
        user=user_with_credits(10), subnet_slug=subnet.slug, inputs={"texts": ["a", "b"]}, idempotency_key="k"
    )
    dispatch.job_dispatch(job_id=job.id)
    vectors = unit_vectors(2)

    with mock.patch.object(effects, "queue_task") as queued:
        for assignment in job.assignments.all():
            keys = nodes[assignment.node_id]
            result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, vectors))

    job.refresh_from_db()
    assert job.state == JobState.SETTLED
    assert job.receipt["verification"]["path"] == "2-of-2"
    assert not [c for c in queued.call_args_list if c.args[0] == "verify_job"]


def test_a_failure_verifying_in_place_leaves_the_job_to_the_verify_task():
    subnet = SubnetFactory()
    nodes = {keys.node.pk: keys for keys in (online_node(subnet), online_node(subnet))}
    job, _ = job_submit(
        user=user_with_credits(10), subnet_slug=subnet.slug, inputs={"texts": ["a"]}, idempotency_key="k"
    )
    dispatch.job_dispatch(job_id=job.id)
    vectors = unit_vectors(1)

    # Verification fails late: after the ledger posting and the move to settled.
    with (
        mock.patch("registry.reputation.reputation_record", side_effect=RuntimeError("boom")),
        mock.patch.object(effects, "queue_task") as queued,
    ):
        for assignment in job.assignments.all():
            keys = nodes[assignment.node_id]
            result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, vectors))

    job.refresh_from_db()
    assert job.state == JobState.VERIFYING  # what verifying wrote is undone...
    assert not Transfer.objects.filter(job_id=job.id).exclude(kind=TransferKind.HOLD).exists()
    # ... and both results are kept, for the worker's task to verify.
    assert set(job.assignments.values_list("state", flat=True)) == {AssignmentState.SUBMITTED}
    assert ("verify_job", str(job.id)) in [c.args for c in queued.call_args_list]
    assert ledger_violations() == []


def test_a_batch_reads_the_routing_index_and_its_nodes_once_not_per_job(settings):
    """Every job of a batch is placed against the same snapshot (one transaction): reading
    the index's version (a Redis round trip) and the picked nodes' rows for each job was a
    fifth of the worker's CPU in bench/throughput.py."""
    settings.NODE_QUEUE_DEPTH = 64
    subnet = SubnetFactory()
    for _ in range(2):
        online_node(subnet, jobs_agreed=20)
    jobs = queued_jobs(user_with_credits(100), subnet, 20)
    node_reads = []

    def record(execute, sql, params, many, context):
        if sql.lstrip().startswith("SELECT") and 'FROM "registry_node"' in sql:
            node_reads.append(sql)
        return execute(sql, params, many, context)

    with mock.patch.object(dispatch.routing_index, "index_version", wraps=dispatch.routing_index.index_version) as versions:
        with connection.execute_wrapper(record):
            assert dispatch.jobs_dispatch_waiting(subnet_id=subnet.pk) == 2 * len(jobs)
    assert versions.call_count == 1
    assert len(node_reads) == 1, node_reads
