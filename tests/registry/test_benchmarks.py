"""Benchmarks (paper section 4): a node that reports ready without a fresh benchmark is sent
the registry's suite, and becomes routable only after a signed answer whose outputs match
the registry's reference; wrong outputs are refused whatever timings they claim. Nodes are
re-benchmarked after N jobs or hours, and a closed session expires the open benchmark."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from bim_core import protocol
from registry import benchmarks, presence, reputation, routing_index, submit
from registry.models import Benchmark, BenchmarkState, JobState, Node, NodeSubnet
from subnets.models import BenchmarkReference, Subnet
from tests.factories import NodeKeys, SubnetFactory, online_node, unit_vectors, user_with_credits
from tests.registry.test_node_socket import handshake, run

pytestmark = pytest.mark.django_db

BENCH_TEXTS = [f"benchmark sentence number {i}" for i in range(8)]
REFERENCE_SEED = 11


def reference_for(subnet) -> np.ndarray:
    """The subnet's benchmark reference: fixed texts and a trusted run's unit vectors."""
    vectors = unit_vectors(len(BENCH_TEXTS), seed=REFERENCE_SEED)
    BenchmarkReference.objects.create(
        subnet=subnet,
        inputs={"texts": BENCH_TEXTS},
        result=np.ascontiguousarray(vectors, dtype="<f4").tobytes(),
        shape=list(vectors.shape),
        model_checksum=subnet.model_checksum,
    )
    return vectors


def benchmark_answer(
    keys: NodeKeys,
    benchmark: Benchmark,
    vectors: np.ndarray,
    timings: tuple[float, ...] = (110.0, 100.0, 120.0),
    *,
    signing_key=None,
    **overrides: Any,
) -> dict[str, Any]:
    """The `benchmark_result` an honest node would send; overrides forge single fields."""
    payload = protocol.encode_vectors(vectors)
    result_hash = protocol.sha256_hex(payload)
    signed = protocol.benchmark_message(
        benchmark_id=str(benchmark.id), result_hash=result_hash, shape=vectors.shape, timings_ms=list(timings)
    )
    message = {
        "type": "benchmark_result",
        "benchmark_id": str(benchmark.id),
        "encoding": "f32le",
        "data": protocol.b64encode(payload),
        "result_hash": result_hash,
        "shape": list(vectors.shape),
        "timings_ms": list(timings),
        "signature": protocol.sign(signing_key or keys.session, signed),
    }
    message.update(overrides)
    return message


def make_ready(keys: NodeKeys, subnet, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        presence.node_ready(
            node_id=keys.node.pk, subnet_slug=subnet.slug, model_checksum=subnet.model_checksum, max_concurrent=1
        )


def routable_ids(subnet) -> set[str]:
    return {c.node_id for c in routing_index.routable_index(subnet.pk).candidates}


def link_of(keys: NodeKeys, subnet) -> NodeSubnet:
    return NodeSubnet.objects.get(node=keys.node, subnet=subnet)


@pytest.fixture
def subnet():
    return SubnetFactory()


@pytest.fixture
def reference(subnet) -> np.ndarray:
    return reference_for(subnet)


@pytest.fixture
def newcomer(subnet, reference, django_capture_on_commit_callbacks) -> tuple[NodeKeys, Benchmark]:
    """A connected node that reported ready for the first time, with its issued benchmark."""
    keys = online_node(subnet, ready=False, benchmarked=False)
    make_ready(keys, subnet, django_capture_on_commit_callbacks)
    return keys, Benchmark.objects.get(node=keys.node, subnet=subnet)


# ---------------------------------------------------------------- issue


def test_a_ready_node_without_a_benchmark_is_sent_one_and_is_not_routable(subnet, newcomer):
    keys, benchmark = newcomer
    assert benchmark.state == BenchmarkState.ISSUED
    assert benchmark.runs == subnet.benchmark_runs
    assert benchmark.session_key_pub == keys.node.session_key_pub
    link = link_of(keys, subnet)
    assert link.ready_at is not None and link.score == 0
    assert str(keys.node.pk) not in routable_ids(subnet)


def test_a_second_ready_does_not_issue_a_second_open_benchmark(subnet, newcomer, django_capture_on_commit_callbacks):
    keys, _ = newcomer
    make_ready(keys, subnet, django_capture_on_commit_callbacks)
    assert Benchmark.objects.filter(node=keys.node, subnet=subnet).count() == 1


def test_a_node_with_a_fresh_benchmark_is_sent_none_and_is_routable(
    subnet, reference, django_capture_on_commit_callbacks
):
    keys = online_node(subnet, ready=False)
    make_ready(keys, subnet, django_capture_on_commit_callbacks)
    assert not Benchmark.objects.filter(node=keys.node).exists()
    assert str(keys.node.pk) in routable_ids(subnet)


def test_without_a_reference_no_benchmark_is_issued_and_the_node_stays_unroutable(
    subnet, django_capture_on_commit_callbacks
):
    keys = online_node(subnet, ready=False, benchmarked=False)
    make_ready(keys, subnet, django_capture_on_commit_callbacks)
    assert not Benchmark.objects.exists()
    assert str(keys.node.pk) not in routable_ids(subnet)


# ---------------------------------------------------------------- record


def test_a_correct_signed_answer_scores_the_node_and_makes_it_routable(
    subnet, reference, newcomer, django_capture_on_commit_callbacks
):
    keys, benchmark = newcomer
    assert str(keys.node.pk) not in routable_ids(subnet)  # the index is built and cached here
    with django_capture_on_commit_callbacks(execute=True):
        passed = benchmarks.benchmark_record(
            node_id=keys.node.pk, message=benchmark_answer(keys, benchmark, reference.copy())
        )

    assert passed.state == BenchmarkState.PASSED
    benchmark.refresh_from_db()
    assert benchmark.state == BenchmarkState.PASSED and benchmark.completed_at is not None
    assert benchmark.min_cosine == pytest.approx(1.0)
    assert benchmark.timings_ms == [110.0, 100.0, 120.0]
    link = link_of(keys, subnet)
    assert link.score > 0
    assert link.latency_p50_ms == 110.0 and link.latency_p95_ms == 120.0
    assert link.items_per_s == pytest.approx(len(BENCH_TEXTS) * 1000 / 110.0)
    assert link.benchmarked_at is not None and link.jobs_since_benchmark == 0
    assert (benchmark.items_per_s, benchmark.latency_p50_ms) == (link.items_per_s, link.latency_p50_ms)
    # The commit bumped the index version: the cached index is replaced, not reused.
    assert str(keys.node.pk) in routable_ids(subnet)


def test_an_answer_within_tolerance_but_not_bit_exact_passes(subnet, reference, newcomer):
    keys, benchmark = newcomer
    drifted = reference + np.float32(1e-5) * unit_vectors(len(BENCH_TEXTS), seed=99)
    drifted = (drifted / np.linalg.norm(drifted, axis=1, keepdims=True)).astype(np.float32)
    assert not np.array_equal(drifted, reference)
    benchmarks.benchmark_record(node_id=keys.node.pk, message=benchmark_answer(keys, benchmark, drifted))
    assert link_of(keys, subnet).score > 0


def test_a_faster_node_scores_higher_than_a_slower_one(subnet, reference, django_capture_on_commit_callbacks):
    scores = []
    for timings in ((400.0, 410.0, 420.0), (100.0, 105.0, 110.0)):
        keys = online_node(subnet, ready=False, benchmarked=False)
        make_ready(keys, subnet, django_capture_on_commit_callbacks)
        benchmark = Benchmark.objects.get(node=keys.node)
        benchmarks.benchmark_record(node_id=keys.node.pk, message=benchmark_answer(keys, benchmark, reference, timings))
        scores.append(link_of(keys, subnet).score)
    assert 0 < scores[0] < scores[1]


@pytest.mark.parametrize(
    "timings", [(110.0, 100.0, 120.0), (0.5, 0.5, 0.5)], ids=["honest-timings", "implausibly-fast-timings"]
)
def test_outputs_of_other_inputs_are_refused_whatever_the_timings(subnet, reference, newcomer, timings):
    keys, benchmark = newcomer
    other_inputs = unit_vectors(len(BENCH_TEXTS), seed=REFERENCE_SEED + 1)

    with pytest.raises(protocol.ProtocolError) as refused:
        benchmarks.benchmark_record(node_id=keys.node.pk, message=benchmark_answer(keys, benchmark, other_inputs, timings))

    assert refused.value.code == "benchmark_refused"
    link = link_of(keys, subnet)
    assert (link.score, link.items_per_s, link.benchmarked_at) == (0.0, None, None)
    assert str(keys.node.pk) not in routable_ids(subnet)


def test_a_refused_benchmark_is_recorded_as_refused(subnet, reference, newcomer, django_capture_on_commit_callbacks):
    """The refusal is the audit trail operators see in admin, and it closes the benchmark
    so the node is sent a new one instead of retrying answers against the same id."""
    keys, benchmark = newcomer
    other_inputs = unit_vectors(len(BENCH_TEXTS), seed=REFERENCE_SEED + 1)
    with pytest.raises(protocol.ProtocolError):
        benchmarks.benchmark_record(node_id=keys.node.pk, message=benchmark_answer(keys, benchmark, other_inputs))

    benchmark.refresh_from_db()
    assert benchmark.state == BenchmarkState.REFUSED
    assert benchmark.reason and benchmark.min_cosine is not None and benchmark.min_cosine < 0.5
    assert benchmark.completed_at is not None

    # The refused benchmark is closed: the right outputs come too late for it...
    with pytest.raises(protocol.ProtocolError) as closed:
        benchmarks.benchmark_record(node_id=keys.node.pk, message=benchmark_answer(keys, benchmark, reference))
    assert closed.value.code == "not_assigned"
    assert link_of(keys, subnet).score == 0
    # ...and the node's next ready is sent a new one.
    make_ready(keys, subnet, django_capture_on_commit_callbacks)
    renewed = Benchmark.objects.get(node=keys.node, state=BenchmarkState.ISSUED)
    benchmarks.benchmark_record(node_id=keys.node.pk, message=benchmark_answer(keys, renewed, reference))
    assert link_of(keys, subnet).score > 0


@pytest.mark.parametrize(
    "shape", [(len(BENCH_TEXTS) - 1, 384), (len(BENCH_TEXTS), 128)], ids=["fewer-rows", "other-dim"]
)
def test_outputs_of_another_shape_are_refused(subnet, reference, newcomer, shape):
    keys, benchmark = newcomer
    vectors = unit_vectors(shape[0], dim=shape[1], seed=REFERENCE_SEED)
    with pytest.raises(protocol.ProtocolError) as refused:
        benchmarks.benchmark_record(node_id=keys.node.pk, message=benchmark_answer(keys, benchmark, vectors))
    assert refused.value.code == "benchmark_refused"
    assert link_of(keys, subnet).score == 0


def test_fewer_runs_than_the_subnet_asks_for_are_refused(subnet, reference, newcomer):
    keys, benchmark = newcomer
    assert subnet.benchmark_runs == 3
    with pytest.raises(protocol.ProtocolError) as refused:
        benchmarks.benchmark_record(
            node_id=keys.node.pk, message=benchmark_answer(keys, benchmark, reference, (100.0, 100.0))
        )
    assert refused.value.code == "benchmark_refused"
    assert link_of(keys, subnet).score == 0


def test_forged_answers_are_refused_and_the_honest_one_still_counts(subnet, reference, newcomer):
    keys, benchmark = newcomer
    honest = benchmark_answer(keys, benchmark, reference)
    other_payload = protocol.encode_vectors(unit_vectors(len(BENCH_TEXTS), seed=5))
    forgeries = [
        ("bad_signature", benchmark_answer(keys, benchmark, reference, signing_key=protocol.new_private_key())),
        # Signed by the long-term key instead of the session key the benchmark was issued to.
        ("bad_signature", benchmark_answer(keys, benchmark, reference, signing_key=keys.long_term)),
        # Faster timings than the ones signed.
        ("bad_signature", {**honest, "timings_ms": [1.0, 1.0, 1.0]}),
        ("bad_result_hash", {**honest, "data": protocol.b64encode(other_payload)}),
        ("bad_message", {**honest, "encoding": "f16"}),
        ("bad_message", {**honest, "timings_ms": []}),
        ("bad_message", {key: value for key, value in honest.items() if key != "signature"}),
    ]
    for code, forged in forgeries:
        with pytest.raises(protocol.ProtocolError) as refused:
            benchmarks.benchmark_record(node_id=keys.node.pk, message=forged)
        assert refused.value.code == code, forged
        assert link_of(keys, subnet).score == 0

    benchmarks.benchmark_record(node_id=keys.node.pk, message=honest)
    assert link_of(keys, subnet).score > 0


def test_a_benchmark_of_another_node_is_not_assigned(subnet, reference, newcomer, django_capture_on_commit_callbacks):
    _, benchmark = newcomer
    intruder = online_node(subnet, ready=False, benchmarked=False)
    make_ready(intruder, subnet, django_capture_on_commit_callbacks)
    # The intruder answers the newcomer's benchmark with a perfect, self-signed answer.
    with pytest.raises(protocol.ProtocolError) as refused:
        benchmarks.benchmark_record(node_id=intruder.node.pk, message=benchmark_answer(intruder, benchmark, reference))
    assert refused.value.code == "not_assigned"
    assert link_of(intruder, subnet).score == 0
    benchmark.refresh_from_db()
    assert benchmark.state == BenchmarkState.ISSUED


def test_a_passed_benchmark_cannot_be_answered_again(subnet, reference, newcomer):
    keys, benchmark = newcomer
    benchmarks.benchmark_record(node_id=keys.node.pk, message=benchmark_answer(keys, benchmark, reference))
    first = link_of(keys, subnet)
    with pytest.raises(protocol.ProtocolError) as refused:
        benchmarks.benchmark_record(
            node_id=keys.node.pk, message=benchmark_answer(keys, benchmark, reference, (1.0, 1.0, 1.0))
        )
    assert refused.value.code == "not_assigned"
    assert link_of(keys, subnet).score == first.score


# ---------------------------------------------------------------- re-benchmarking


def benchmarked(subnet, reference, django_capture_on_commit_callbacks) -> NodeKeys:
    """A ready node whose benchmark passed just now."""
    keys = online_node(subnet, ready=False, benchmarked=False)
    make_ready(keys, subnet, django_capture_on_commit_callbacks)
    benchmark = Benchmark.objects.get(node=keys.node)
    benchmarks.benchmark_record(node_id=keys.node.pk, message=benchmark_answer(keys, benchmark, reference))
    return keys


def test_a_node_is_re_benchmarked_after_the_subnets_number_of_jobs(django_capture_on_commit_callbacks):
    subnet = SubnetFactory(benchmark_every_jobs=3)
    reference = reference_for(subnet)
    keys = benchmarked(subnet, reference, django_capture_on_commit_callbacks)
    for _ in range(2):
        reputation.reputation_record(node_ids=[keys.node.pk], outcome=1.0, subnet=subnet)
    assert link_of(keys, subnet).jobs_since_benchmark == 2
    assert benchmarks.benchmarks_due() == 0

    reputation.reputation_record(node_ids=[keys.node.pk], outcome=1.0, subnet=subnet)
    assert benchmarks.benchmarks_due() == 1
    assert Benchmark.objects.filter(node=keys.node, state=BenchmarkState.ISSUED).count() == 1
    assert benchmarks.benchmarks_due() == 0  # one open benchmark at a time
    # A node keeps its jobs while it re-benchmarks.
    routing_index.index_forget()
    assert str(keys.node.pk) in routable_ids(subnet)

    renewed = Benchmark.objects.get(node=keys.node, state=BenchmarkState.ISSUED)
    benchmarks.benchmark_record(node_id=keys.node.pk, message=benchmark_answer(keys, renewed, reference))
    assert link_of(keys, subnet).jobs_since_benchmark == 0
    assert benchmarks.benchmarks_due() == 0


def test_a_node_is_re_benchmarked_when_its_benchmark_is_too_old(subnet, reference, django_capture_on_commit_callbacks):
    keys = benchmarked(subnet, reference, django_capture_on_commit_callbacks)
    max_age = timedelta(hours=subnet.benchmark_max_age_h)
    NodeSubnet.objects.filter(node=keys.node).update(benchmarked_at=timezone.now() - max_age + timedelta(minutes=5))
    assert benchmarks.benchmarks_due() == 0

    NodeSubnet.objects.filter(node=keys.node).update(benchmarked_at=timezone.now() - max_age - timedelta(minutes=5))
    assert benchmarks.benchmarks_due() == 1
    assert Benchmark.objects.filter(node=keys.node, state=BenchmarkState.ISSUED).count() == 1


def test_offline_or_unready_nodes_are_not_re_benchmarked(subnet, reference):
    old = timezone.now() - timedelta(hours=subnet.benchmark_max_age_h + 1)
    offline = online_node(subnet)
    unready = online_node(subnet, ready=False)
    NodeSubnet.objects.update(benchmarked_at=old)
    presence.node_disconnect(node_id=offline.node.pk, channel_name=f"test.{offline.node.pk}")
    assert benchmarks.benchmarks_due() == 0
    assert not Benchmark.objects.filter(node__in=[offline.node, unready.node]).exists()


def test_a_disconnect_expires_the_open_benchmark_and_the_next_ready_gets_a_new_one(
    subnet, newcomer, django_capture_on_commit_callbacks
):
    keys, benchmark = newcomer
    presence.node_disconnect(node_id=keys.node.pk, channel_name=f"test.{keys.node.pk}")
    benchmark.refresh_from_db()
    assert benchmark.state == BenchmarkState.EXPIRED and benchmark.completed_at is not None
    with pytest.raises(protocol.ProtocolError) as refused:
        benchmarks.benchmark_record(
            node_id=keys.node.pk, message=benchmark_answer(keys, benchmark, unit_vectors(8, seed=REFERENCE_SEED))
        )
    assert refused.value.code == "not_assigned"

    Node.objects.filter(pk=keys.node.pk).update(is_online=True, channel_name=f"test.{keys.node.pk}")
    make_ready(keys, subnet, django_capture_on_commit_callbacks)
    fresh = Benchmark.objects.get(node=keys.node, state=BenchmarkState.ISSUED)
    assert fresh.pk != benchmark.pk


# ---------------------------------------------------------------- over the socket


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_over_the_socket_a_new_node_is_benchmarked_then_given_a_waiting_job():
    subnet = SubnetFactory()
    reference = reference_for(subnet)
    partner = online_node(subnet)  # already benchmarked and routable, but alone
    newcomer = online_node(subnet, ready=False, benchmarked=False)
    job, _ = submit.job_submit(
        user=user_with_credits(10), subnet_slug=subnet.slug, inputs={"texts": ["wait for a pair"]}, idempotency_key="bench-socket"
    )
    job.refresh_from_db()
    assert job.state == JobState.QUEUED

    async def scenario() -> tuple[dict, dict]:
        socket = await handshake(newcomer, subnet)
        assert (await socket.receive_json_from(timeout=5))["type"] == "welcome"
        await socket.send_json_to({"type": "ready", "subnet": subnet.slug, "model_checksum": subnet.model_checksum})
        received = {}
        for _ in range(2):
            message = await socket.receive_json_from(timeout=5)
            received[message["type"]] = message
        assert set(received) == {"ready_ok", "benchmark"}, received
        offer = received["benchmark"]
        assert offer["inputs"] == {"texts": BENCH_TEXTS} and offer["runs"] == subnet.benchmark_runs
        benchmark = await database_sync_to_async(Benchmark.objects.get)(pk=offer["benchmark_id"])
        await socket.send_json_to(benchmark_answer(newcomer, benchmark, reference))
        ok = await socket.receive_json_from(timeout=5)
        assert ok["type"] == "benchmark_ok" and ok["benchmark_id"] == offer["benchmark_id"], ok
        job_offer = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return ok, job_offer

    ok, job_offer = run(scenario)

    assert ok["latency_p50_ms"] == 110.0
    assert job_offer["type"] == "job" and job_offer["job_id"] == str(job.id), job_offer
    job.refresh_from_db()
    assert job.state == JobState.DISPATCHED
    assert set(job.assignments.values_list("node_id", flat=True)) == {partner.node.pk, newcomer.node.pk}


@pytest.mark.parametrize("state", [Subnet.State.PAUSED, Subnet.State.RETIRED])
def test_nodes_of_a_paused_or_retired_subnet_are_not_re_benchmarked(subnet, reference, state):
    online_node(subnet)
    NodeSubnet.objects.update(benchmarked_at=timezone.now() - timedelta(hours=subnet.benchmark_max_age_h + 1))
    Subnet.objects.filter(pk=subnet.pk).update(state=state)
    assert benchmarks.benchmarks_due() == 0


def test_a_resumed_subnets_stale_benchmarks_are_renewed(subnet, reference):
    online_node(subnet)
    NodeSubnet.objects.update(benchmarked_at=timezone.now() - timedelta(hours=subnet.benchmark_max_age_h + 1))
    Subnet.objects.filter(pk=subnet.pk).update(state=Subnet.State.PAUSED)
    assert benchmarks.benchmarks_due() == 0
    Subnet.objects.filter(pk=subnet.pk).update(state=Subnet.State.ACTIVE)
    assert benchmarks.benchmarks_due() == 1
