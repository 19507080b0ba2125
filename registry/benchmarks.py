"""Benchmarks: issue a subnet's benchmark to a node, judge its answer against the subnet's
reference, and re-benchmark nodes whose measurement is due.
"""

from __future__ import annotations

import logging
import math
import secrets
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from bim_core import families, protocol, scoring
from bim_core.errors import ServiceError
from bim_core.verification import judge_rescored, verify_pair
from subnets.models import BenchmarkInput, BenchmarkReference, Subnet
from subnets.services import trusted_rescore

from . import effects
from .models import (
    Benchmark,
    BenchmarkState,
    NodeSubnet,
)
from .routing_index import index_bump

log = logging.getLogger("bim.registry.benchmarks")


def benchmark_due(link: NodeSubnet) -> bool:
    if link.benchmarked_at is None or link.score <= 0:
        return True
    too_old = timezone.now() - link.benchmarked_at > timedelta(hours=link.subnet.benchmark_max_age_h)
    return too_old or link.jobs_since_benchmark >= link.subnet.benchmark_every_jobs


def _suite_draw(reference: BenchmarkReference) -> BenchmarkInput | None:
    """A suite drawn at random from the reference and its pool (None: the reference's own):
    a node cannot know in advance which inputs it will be asked to compute."""
    pool = list(reference.pool.values_list("pk", flat=True))
    choice = secrets.randbelow(len(pool) + 1)
    return None if choice == len(pool) else BenchmarkInput.objects.get(pk=pool[choice])


def benchmark_issue(*, link: NodeSubnet) -> Benchmark | None:
    """Send a benchmark suite drawn from the subnet's pool to an online node (one open
    benchmark at a time). The registry's clock starts at issue (`issued_at`)."""
    reference = BenchmarkReference.objects.filter(subnet_id=link.subnet_id).first()
    if reference is None:
        log.warning("subnet %s has no benchmark reference; node %s cannot be scored", link.subnet_id, link.node_id)
        return None
    if Benchmark.objects.filter(node_id=link.node_id, subnet_id=link.subnet_id, state=BenchmarkState.ISSUED).exists():
        return None
    node = link.node
    drawn = _suite_draw(reference)
    benchmark = Benchmark.objects.create(
        node_id=link.node_id,
        subnet_id=link.subnet_id,
        runs=link.subnet.benchmark_runs,
        session_key_pub=node.session_key_pub,
        inputs=(drawn or reference).inputs,
        pool_item=drawn,
    )
    effects.send_to_node(
        link.node_id,
        {
            "type": "job.offer",
            "message": {
                "type": "benchmark",
                "benchmark_id": str(benchmark.id),
                "subnet": link.subnet.slug,
                "inputs": benchmark.inputs,
                "runs": benchmark.runs,
            },
        },
    )
    return benchmark


def benchmark_record(*, node_id: object, message: dict[str, Any]) -> Benchmark:
    """Check a node's benchmark answer: signed by its session, outputs matching the
    registry's own outputs for the drawn suite within the subnet's tolerance. Only then do
    its timings, bounded by the registry's clock, become the node's score; wrong outputs are
    refused (recorded, then ProtocolError benchmark_refused) whatever the timings claim.

    A text answer that differs from the reference is re-scored first, as a text job's pair
    is (`registry.verify`): another runtime of the same model (a browser's llama.cpp in
    WebAssembly, another CPU) flips near-ties, and a node that would be paid for such a
    sequence on a job must not be refused a score for it."""
    rescoring = _benchmark_rescoring(node_id=node_id, message=message)
    benchmark = _benchmark_judge(node_id=node_id, message=message, rescoring=rescoring)
    if benchmark.state == BenchmarkState.REFUSED:
        raise protocol.ProtocolError("benchmark_refused", benchmark.reason)
    return benchmark


def _benchmark_rescoring(*, node_id: object, message: dict[str, Any]) -> dict[str, Any] | None:
    """The re-scoring evidence for a text benchmark answer that is not the reference's
    bytes: {"result_hash", "accepted", "max_gap", "failing_positions", "problems"}, or None
    when there is nothing to re-score (another family, the reference's own bytes, a
    malformed answer, which the judge refuses) or no runner here. Runs a model pass, so
    outside any transaction and without locks: the judge checks the hash it names."""
    try:
        benchmark_id = uuid.UUID(str(message["benchmark_id"]))
        payload = protocol.b64decode(str(message.get("data", "")))
        shape = protocol.parse_shape(message.get("shape"))
    except (KeyError, TypeError, ValueError, protocol.ProtocolError):
        return None
    benchmark = (
        Benchmark.objects.select_related("subnet", "pool_item")
        .filter(pk=benchmark_id, node_id=node_id, state=BenchmarkState.ISSUED)
        .first()
    )
    if benchmark is None:
        return None
    family = families.family_for(benchmark.subnet.task_type)
    if not family.rescored_on_mismatch:
        return None
    reference = benchmark.pool_item or BenchmarkReference.objects.filter(subnet=benchmark.subnet).first()
    if reference is None or bytes(reference.result) == payload:
        return None
    inputs = benchmark.inputs or reference.inputs
    try:
        claimed = family.decode_result(payload, shape, inputs)
        rescoring = trusted_rescore(benchmark.subnet, inputs, claimed)
    except protocol.ProtocolError:
        return None
    except ServiceError as exc:
        log.warning("benchmark %s: cannot re-score here (%s)", benchmark.id, exc.detail)
        return None
    margin = float(benchmark.subnet.tolerances["logit_margin"])
    within, failing = judge_rescored(rescoring.positions, margin)
    worst_gap = max((top - claimed for claimed, top in rescoring.positions), default=0.0)
    return {
        "result_hash": protocol.sha256_hex(payload),
        "accepted": within and not rescoring.problems,
        "max_gap": round(worst_gap, 4) if math.isfinite(worst_gap) else None,
        "failing_positions": failing[:20],
        "problems": rescoring.problems,
    }


def _benchmark_judge(*, node_id: object, message: dict[str, Any], rescoring: dict[str, Any] | None = None) -> Benchmark:
    try:
        benchmark_id = uuid.UUID(str(message["benchmark_id"]))
        result_hash = str(message["result_hash"])
        signature = str(message["signature"])
        encoding = str(message.get("encoding", ""))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise protocol.ProtocolError("bad_message", f"malformed benchmark result: {exc}") from None
    timings = protocol.parse_timings(message.get("timings_ms"))
    shape = protocol.parse_shape(message.get("shape"))
    payload = protocol.b64decode(str(message.get("data", "")))
    with transaction.atomic():
        benchmark = (
            Benchmark.objects.select_for_update()
            .select_related("subnet", "node")
            .filter(pk=benchmark_id, node_id=node_id)
            .first()
        )
        if benchmark is None or benchmark.state != BenchmarkState.ISSUED:
            raise protocol.ProtocolError("not_assigned", "no open benchmark with that id for this node")
        signed = protocol.benchmark_message(
            benchmark_id=str(benchmark.id), result_hash=result_hash, shape=shape, timings_ms=timings
        )
        if not protocol.signature_valid(benchmark.session_key_pub, signature, signed):
            raise protocol.ProtocolError("bad_signature", "benchmark signature does not verify with the session key")
        if protocol.sha256_hex(payload) != result_hash:
            raise protocol.ProtocolError("bad_result_hash", "result_hash is not the SHA-256 of data")
        family = families.family_for(benchmark.subnet.task_type)
        if encoding != family.encoding:
            raise protocol.ProtocolError("bad_message", f"a {family.task_type} result is encoded {family.encoding}")
        # Judged against the suite this benchmark drew (an issue before pools: the reference).
        reference = benchmark.pool_item or BenchmarkReference.objects.get(subnet=benchmark.subnet)
        inputs = benchmark.inputs or reference.inputs
        expected = family.decode_result(bytes(reference.result), tuple(reference.shape), inputs)
        verdict = (
            verify_pair(
                family.task_type,
                family.decode_result(payload, shape, inputs),
                expected,
                benchmark.subnet.tolerances,
            )
            if shape == tuple(reference.shape)
            else None
        )
        if (
            verdict is not None
            and not verdict.passed
            and rescoring is not None
            and rescoring["result_hash"] == result_hash
            and rescoring["accepted"]
        ):
            # Differs from the reference, and every token is within the margin of the
            # registry's own top choice: honest nondeterminism, as on a job.
            log.info("benchmark %s: %s; accepted by re-scoring (max gap %s)", benchmark.id, verdict.reason, rescoring["max_gap"])
            verdict = replace(verdict, passed=True, reason="")
        elif verdict is not None and not verdict.passed and rescoring is not None and rescoring["result_hash"] == result_hash:
            why = "; ".join(rescoring["problems"]) or f"tokens at {rescoring['failing_positions']} beyond the logit margin"
            verdict = replace(verdict, reason=f"re-scored: {why}"[:200])
        now = timezone.now()
        benchmark.timings_ms = timings[:100]
        benchmark.completed_at = now
        if verdict is None or not verdict.passed or len(timings) < benchmark.runs or min(timings) <= 0:
            benchmark.state = BenchmarkState.REFUSED
            if verdict is None:
                benchmark.reason = "output shape differs from the reference"
            elif not verdict.passed:
                benchmark.reason = verdict.reason
            else:
                benchmark.reason = f"{len(timings)} positive run times needed, {benchmark.runs} asked"
            benchmark.min_cosine = verdict.worst if verdict else None
            benchmark.save()
            return benchmark  # committed as refused; the caller tells the node
        # The registry's clock bounds the node's: runs reported faster than the exchange took
        # are clamped up (docs/routing.md), so forged timings gain nothing.
        figures = scoring.benchmark_figures_bounded(
            timings,
            family.item_count(inputs),
            observed_ms=(now - benchmark.issued_at).total_seconds() * 1000,
            transport_ms=settings.NODE_BENCHMARK_TRANSPORT_MS,
        )
        node = benchmark.node
        score = scoring.node_score(
            figures,
            uptime=node.uptime(now),
            fail_rate=node.jobs_failed / max(1, node.jobs_assigned),
            age_h=0.0,
            policy=scoring.ScorePolicy.from_dict(benchmark.subnet.score_policy),
        )
        benchmark.state = BenchmarkState.PASSED
        benchmark.min_cosine = verdict.worst
        benchmark.items_per_s = figures.items_per_s
        benchmark.latency_p50_ms = figures.latency_p50_ms
        benchmark.latency_p95_ms = figures.latency_p95_ms
        benchmark.save()
        NodeSubnet.objects.filter(node_id=node_id, subnet=benchmark.subnet).update(
            score=score,
            items_per_s=figures.items_per_s,
            latency_p50_ms=figures.latency_p50_ms,
            latency_p95_ms=figures.latency_p95_ms,
            benchmarked_at=now,
            jobs_since_benchmark=0,
        )
        index_bump(benchmark.subnet_id)
        effects.queue_task_coalesced("dispatch_waiting", str(benchmark.subnet_id))
        return benchmark


def benchmarks_due() -> int:
    """Beat: re-benchmark ready nodes every N jobs or after the subnet's maximum age, and
    let stale scores decay meanwhile (a node keeps its jobs while it re-benchmarks). Only
    active subnets: a paused one is benchmarked again once it resumes, a retired one never."""
    issued = 0
    links = NodeSubnet.objects.filter(
        ready_at__isnull=False, node__is_online=True, subnet__state=Subnet.State.ACTIVE
    ).select_related("subnet", "node")
    for link in links:
        if benchmark_due(link):
            with transaction.atomic():
                issued += benchmark_issue(link=link) is not None
    return issued
