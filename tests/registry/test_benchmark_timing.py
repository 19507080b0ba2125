"""Hostile nodes, benchmarks (issue 11, item 4): a benchmark's inputs are drawn fresh from
the subnet's pool, the registry bounds reported timings by its own clock, and routing
follows the speed the registry observes on real jobs, not what a node says about itself."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from bim_core import protocol
from registry import benchmarks, routing_index
from registry.models import Assignment, Benchmark, BenchmarkState, Node, NodeSubnet
from subnets import models as subnet_models
from subnets.models import BenchmarkReference
from tests.factories import SubnetFactory, online_node, result_message, unit_vectors
from tests.registry.test_benchmarks import benchmark_answer, make_ready, reference_for
from tests.registry.test_node_socket import TEXTS, paired_job, run

pytestmark = pytest.mark.django_db


def pool_for(subnet, size: int = 4) -> dict[str, np.ndarray]:
    """A reference with a pool of other inputs, each with its own trusted outputs."""
    reference_for(subnet)
    reference = BenchmarkReference.objects.get(subnet=subnet)
    answers = {}
    for i in range(size):
        texts = [f"pool batch {i} sentence {j}" for j in range(6)]
        vectors = unit_vectors(len(texts), seed=100 + i)
        subnet_models.BenchmarkInput.objects.create(
            reference=reference, inputs={"texts": texts}, result=protocol.encode_vectors(vectors), shape=list(vectors.shape)
        )
        answers[texts[0]] = vectors
    return answers


def test_benchmark_inputs_are_drawn_from_the_pool_and_judged_against_their_own_outputs(
    django_capture_on_commit_callbacks,
):
    subnet = SubnetFactory()
    answers = pool_for(subnet)
    drawn = set()
    for _ in range(12):
        keys = online_node(subnet, ready=False, benchmarked=False)
        make_ready(keys, subnet, django_capture_on_commit_callbacks)
        benchmark = Benchmark.objects.get(node=keys.node)
        drawn.add(benchmark.inputs["texts"][0])
    assert len(drawn) >= 2 and drawn <= set(answers) | {"benchmark sentence number 0"}

    keys = online_node(subnet, ready=False, benchmarked=False)
    make_ready(keys, subnet, django_capture_on_commit_callbacks)
    benchmark = Benchmark.objects.get(node=keys.node)
    while benchmark.inputs["texts"][0] not in answers:  # a pool item, not the fixed suite
        Benchmark.objects.filter(pk=benchmark.pk).update(state=BenchmarkState.EXPIRED)
        make_ready(keys, subnet, django_capture_on_commit_callbacks)
        benchmark = Benchmark.objects.get(node=keys.node, state=BenchmarkState.ISSUED)
    # The answer to another pool item (say, a memorised one) is refused...
    other = next(v for k, v in answers.items() if k != benchmark.inputs["texts"][0])
    with pytest.raises(protocol.ProtocolError) as refused:
        benchmarks.benchmark_record(node_id=keys.node.pk, message=benchmark_answer(keys, benchmark, other))
    assert refused.value.code == "benchmark_refused"
    # ...and the answer to the drawn inputs passes.
    Benchmark.objects.filter(pk=benchmark.pk).update(state=BenchmarkState.EXPIRED)
    make_ready(keys, subnet, django_capture_on_commit_callbacks)
    renewed = Benchmark.objects.get(node=keys.node, state=BenchmarkState.ISSUED)
    right = answers.get(renewed.inputs["texts"][0])
    if right is None:
        right = unit_vectors(8, seed=11)  # the fixed suite (tests.registry.test_benchmarks)
    benchmarks.benchmark_record(node_id=keys.node.pk, message=benchmark_answer(keys, renewed, right))
    assert NodeSubnet.objects.get(node=keys.node).score > 0


def weight_of(subnet, keys) -> float:
    routing_index.index_forget()
    return {c.node_id: c.weight for c in routing_index.routable_index(subnet.pk).candidates}[str(keys.node.pk)]


def test_forged_timings_do_not_outweigh_an_honest_node_of_the_same_real_speed(django_capture_on_commit_callbacks):
    subnet = SubnetFactory()
    vectors = reference_for(subnet)
    nodes = {}
    for name, timings in (("honest", (110.0, 100.0, 120.0)), ("forger", (0.001, 0.001, 0.001))):
        keys = online_node(subnet, ready=False, benchmarked=False)
        make_ready(keys, subnet, django_capture_on_commit_callbacks)
        benchmark = Benchmark.objects.get(node=keys.node)
        # Both took the same real time on the registry's clock: issued 400 ms ago.
        Benchmark.objects.filter(pk=benchmark.pk).update(issued_at=timezone.now() - timedelta(milliseconds=400))
        with django_capture_on_commit_callbacks(execute=True):
            benchmarks.benchmark_record(node_id=keys.node.pk, message=benchmark_answer(keys, benchmark, vectors, timings))
        nodes[name] = keys
    link = NodeSubnet.objects.get(node=nodes["forger"].node)
    assert link.latency_p50_ms >= 100.0  # clamped up to what the registry saw
    # Taken at their word, 0.001 ms runs would have outweighed the honest node by far;
    # clamped to the registry's clock, the two differ only by clock and uptime noise (under
    # 2 %, on a busy machine too).
    assert weight_of(subnet, nodes["forger"]) <= weight_of(subnet, nodes["honest"]) * 1.02


def backdate_offer(assignment_id: str, seconds: float) -> None:
    Assignment.objects.filter(pk=assignment_id).update(dispatched_at=timezone.now() - timedelta(seconds=seconds))


@pytest.mark.django_db(transaction=True)
def test_routing_follows_the_speed_the_registry_observes_on_real_jobs():
    subnet = SubnetFactory()

    async def scenario():
        job, offers = await paired_job(subnet)
        for role, (keys, socket, offer) in offers.items():
            # A took 0.2 s from offer to result, B 4 s: whatever their benchmarks said.
            seconds = 0.2 if role == "A" else 4.0
            await database_sync_to_async(backdate_offer)(offer["assignment_id"], seconds)
            assignment = await database_sync_to_async(Assignment.objects.get)(pk=offer["assignment_id"])
            await socket.send_json_to(
                await database_sync_to_async(result_message)(keys, job, assignment, unit_vectors(len(TEXTS)))
            )
            assert (await socket.receive_json_from(timeout=5))["type"] == "result_ok"
        for _, socket, _ in offers.values():
            await socket.disconnect()
        return {role: keys for role, (keys, _, _) in offers.items()}

    nodes = run(scenario)
    fast, slow = (NodeSubnet.objects.get(node=nodes[r].node) for r in ("A", "B"))
    assert fast.observed_items_per_s == pytest.approx(len(TEXTS) / 0.2, rel=0.2)
    assert slow.observed_items_per_s == pytest.approx(len(TEXTS) / 4.0, rel=0.2)
    # Same benchmark figures (the factory's), but the routing weight follows the observed speed.
    Node.objects.filter(pk__in=[nodes["A"].node.pk, nodes["B"].node.pk]).update(is_online=True, last_seen=timezone.now())
    NodeSubnet.objects.filter(node__in=[nodes["A"].node, nodes["B"].node]).update(ready_at=timezone.now())
    assert weight_of(subnet, nodes["A"]) > weight_of(subnet, nodes["B"])


@pytest.mark.django_db
def test_the_observed_speed_is_scoring_ewma_to_the_last_bit(settings):
    """speed_observe computes the moving average in SQL (one UPDATE, no row lock held
    across round trips): it must be scoring.ewma's number exactly, sample after sample."""
    from bim_core import scoring
    from registry import dispatch, submit
    from registry.models import AssignmentState
    from tests.factories import user_with_credits

    settings.NODE_SPEED_EWMA_ALPHA = 0.3
    subnet = SubnetFactory()
    keys, _ = online_node(subnet), online_node(subnet)
    user = user_with_credits(5)
    expected_speed = expected_latency = None
    for i, seconds in enumerate((0.7, 0.13, 2.9, 0.4)):
        job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": TEXTS[: i + 1]}, idempotency_key=f"k{i}")
        dispatch.job_dispatch(job_id=job.id)
        assignment = Assignment.objects.select_related("job").get(job=job, node=keys.node)
        now = timezone.now()
        Assignment.objects.filter(job=job).update(
            state=AssignmentState.SUBMITTED, dispatched_at=now - timedelta(seconds=seconds), submitted_at=now
        )
        assignment.refresh_from_db()
        routing_index.speed_observe(
            node_id=keys.node.pk,
            subnet_id=subnet.pk,
            items=job.item_count,
            dispatched_at=assignment.dispatched_at,
            submitted_at=assignment.submitted_at,
        )
        elapsed_ms = max(1.0, timedelta(seconds=seconds).total_seconds() * 1000)
        expected_speed = scoring.ewma(expected_speed, assignment.job.item_count * 1000.0 / elapsed_ms, 0.3)
        expected_latency = scoring.ewma(expected_latency, elapsed_ms, 0.3)
        link = NodeSubnet.objects.get(node=keys.node, subnet=subnet)
        assert (link.observed_items_per_s, link.observed_latency_ms) == (expected_speed, expected_latency)
