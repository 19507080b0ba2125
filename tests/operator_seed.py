"""A small market with a history, as an operator finds it in admin: settled jobs, a 2-of-3
tie-break that a sentinel later disputed (three results), benchmarks and a sanction. Built
through the real services (submit, dispatch, signed results, verification, sentinels'
records), so the admin pages render what production writes. Used by the admin tests and by
scripts/admin_screenshots.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from django.utils import timezone

from registry import dispatch, sanctions, submit, verify
from registry.models import (
    Assignment,
    AssignmentState,
    Benchmark,
    BenchmarkState,
    Dispute,
    Job,
    JobState,
    Node,
    SentinelRun,
)
from registry.results import result_record
from tests.factories import (
    NodeKeys,
    SubnetFactory,
    UserFactory,
    online_node,
    result_message,
    unit_vectors,
    user_with_credits,
)

ENVIRONMENTS = [
    {"os": "Windows 11", "runtime": "chrome-131", "backend": "webgpu", "gpu_family": "nvidia-ada"},
    {"os": "macOS 15", "runtime": "safari-18", "backend": "wasm", "gpu_family": "apple-m3"},
    {"os": "Ubuntu 24.04", "runtime": "bim-node-0.9", "backend": "onnx-cpu", "gpu_family": ""},
    {"os": "Windows 10", "runtime": "edge-131", "backend": "webgpu", "gpu_family": "amd-rdna3"},
]


@dataclass
class OperatorMarket:
    subnet: object
    nodes: dict[object, NodeKeys]
    settled: list[Job]
    disputed: Job
    dispute: Dispute
    operator: object


def _answer(job: Job, pool: dict[object, NodeKeys], role: str, vectors: np.ndarray) -> None:
    assignment = job.assignments.get(role=role, state=AssignmentState.DISPATCHED)
    keys = pool[assignment.node_id]
    result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, vectors))


def _near(vectors: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Honest drift between runtimes: the same vectors a little apart, still unit length."""
    moved = vectors + np.random.default_rng(seed).standard_normal(vectors.shape).astype(np.float32) * noise
    return (moved / np.linalg.norm(moved, axis=1, keepdims=True)).astype(np.float32)


def operator_market(*, settled_jobs: int = 3) -> OperatorMarket:
    operator = UserFactory(username="operator", is_staff=True, is_superuser=True)
    subnet = SubnetFactory()
    pool = {}
    for index, environment in enumerate(ENVIRONMENTS):
        keys = online_node(subnet, UserFactory(username=f"contributor{index + 1}"), **environment)
        Node.objects.filter(pk=keys.node.pk).update(name=f"{environment['runtime']}-{index + 1}")
        keys.node.refresh_from_db()
        pool[keys.node.pk] = keys
    user = user_with_credits(50)

    settled = []
    for index in range(settled_jobs):
        job, _ = submit.job_submit(
            user=user, subnet_slug=subnet.slug, inputs={"texts": [f"document {index}", "a second text"]}, idempotency_key=f"s{index}"
        )
        dispatch.job_dispatch(job_id=job.id)
        vectors = unit_vectors(2, seed=10 + index)
        _answer(job, pool, "A", vectors)
        _answer(job, pool, "B", _near(vectors, 1e-4, seed=index))
        verify.job_verify(job_id=job.id)
        settled.append(Job.objects.get(pk=job.pk))

    # A tie-break: B forged its vectors, C sided with A; a sentinel re-run later found the
    # settled answer itself drifted, and opened a dispute.
    texts = ["the quick brown fox", "jumps over", "the lazy dog"]
    disputed, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": texts}, idempotency_key="disputed")
    dispatch.job_dispatch(job_id=disputed.id)
    honest = unit_vectors(3, seed=1)
    _answer(disputed, pool, "A", honest)
    _answer(disputed, pool, "B", unit_vectors(3, seed=2))
    verify.job_verify(job_id=disputed.id)
    dispatch.job_dispatch(job_id=disputed.id)
    _answer(disputed, pool, "C", _near(honest, 3e-4, seed=7))
    verify.job_verify(job_id=disputed.id)
    disputed = Job.objects.get(pk=disputed.pk)
    assert disputed.state == JobState.SETTLED, disputed.state
    run = SentinelRun.objects.create(
        job=disputed, similarity=0.9712, passed=False, detail="item 1 cosine 0.9712000 < 0.9999"
    )
    dispute = Dispute.objects.create(job=disputed, sentinel=run, reason="sentinel re-run drifted: item 1 cosine 0.9712000 < 0.9999")

    _spread_in_time([*settled, disputed])
    for keys in pool.values():
        _benchmarks(keys.node, subnet)
    forger = disputed.assignments.get(role="B").node
    sanctions.node_ban(node_id=forger.pk, operator=operator, reason="forged vectors on a tie-break; owner contacted", hours=72)
    return OperatorMarket(
        subnet=subnet,
        nodes=pool,
        settled=[Job.objects.get(pk=job.pk) for job in settled],
        disputed=Job.objects.get(pk=disputed.pk),
        dispute=Dispute.objects.get(pk=dispute.pk),
        operator=operator,
    )


def _spread_in_time(jobs: list[Job]) -> None:
    """Eager tasks settle a seeded job within milliseconds: give each job the minutes apart
    and the seconds to settle a real market shows (the tie-break, which waited for a third
    node, the longest)."""
    now = timezone.now()
    for index, job in enumerate(reversed(jobs)):
        created = now - timedelta(minutes=7 * index + 2)
        took = timedelta(seconds=14.6 if job.assignments.count() > 2 else 1.8 + 0.7 * index)
        Job.objects.filter(pk=job.pk).update(
            created_at=created,
            dispatched_at=created + timedelta(seconds=0.2),
            verifying_at=created + took - timedelta(seconds=0.1),
            finished_at=created + took,
        )
        for assignment in job.assignments.all():
            late = timedelta(seconds=12) if assignment.role == "C" else timedelta(0)
            Assignment.objects.filter(pk=assignment.pk).update(
                dispatched_at=created + timedelta(seconds=0.2) + late,
                submitted_at=created + took - timedelta(seconds=0.2),
                elapsed_ms=900 + 150 * index + (300 if assignment.role == "B" else 0),
            )


def _benchmarks(node: Node, subnet: object) -> None:
    now = timezone.now()
    rows = [
        (BenchmarkState.PASSED, 31.5, 240.0, 310.0, 0.99991, ""),
        (BenchmarkState.PASSED, 29.8, 255.0, 330.0, 0.99989, ""),
        (BenchmarkState.REFUSED, None, None, None, 0.912, "output 2 cosine 0.912 < 0.999 against the reference"),
        (BenchmarkState.EXPIRED, None, None, None, None, "no answer within 120 s"),
    ]
    for age, (state, rate, p50, p95, cosine, reason) in enumerate(rows):
        benchmark = Benchmark.objects.create(
            node=node,
            subnet=subnet,
            state=state,
            runs=3,
            session_key_pub="k",
            items_per_s=rate,
            latency_p50_ms=p50,
            latency_p95_ms=p95,
            min_cosine=cosine,
            reason=reason,
            completed_at=now - timedelta(days=age),
        )
        Benchmark.objects.filter(pk=benchmark.pk).update(issued_at=now - timedelta(days=age, minutes=1))
