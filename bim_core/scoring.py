"""Node scores and reputation (paper section 4, Appendix B). Pure: no Django.

base = α·speed + β·(1/latency) + γ·uptime + δ·1/(1 + fail_rate), with speed and latency
taken relative to the subnet's reference node so the weights mean what they say; stale
benchmark figures decay toward the reference (a node must re-benchmark to keep an edge).

Reputation R ∈ [0, 1]: R ← (1 − λ)R + λ·r_j per job, capped for new nodes so trust is
earned over many jobs, decaying toward the starting value while a node is idle.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any


def _from_dict(cls: type, values: dict[str, Any] | None) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in (values or {}).items() if k in known})


@dataclass(frozen=True)
class ScorePolicy:
    alpha: float = 0.4  # speed
    beta: float = 0.3  # 1 / latency
    gamma: float = 0.2  # uptime
    delta: float = 0.1  # 1 / (1 + fail rate)
    reference_items_per_s: float = 30.0
    reference_latency_ms: float = 250.0
    # Benchmark figures lose half their distance from the reference every this many hours.
    half_life_h: float = 24.0
    # Speed and latency ratios are clipped: one fast machine must not take every job.
    max_ratio: float = 4.0

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ScorePolicy:
        return _from_dict(cls, values)


@dataclass(frozen=True)
class BenchmarkFigures:
    items_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float


def benchmark_figures(timings_ms: Sequence[float], items: int) -> BenchmarkFigures:
    """Median-based figures over several runs of the same fixed batch."""
    if not timings_ms or min(timings_ms) <= 0 or items <= 0:
        raise ValueError("benchmark timings must be positive and the batch non-empty")
    ordered = sorted(float(t) for t in timings_ms)
    median = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return BenchmarkFigures(items_per_s=items * 1000.0 / median, latency_p50_ms=median, latency_p95_ms=p95)


def ewma(previous: float | None, sample: float, alpha: float) -> float:
    """Exponentially weighted average; the first sample stands alone."""
    return sample if previous is None else (1 - alpha) * previous + alpha * sample


def benchmark_figures_bounded(
    timings_ms: Sequence[float], items: int, *, observed_ms: float, transport_ms: float
) -> BenchmarkFigures:
    """Figures from a node's reported run times, bounded by the registry's own clock: the
    runs happened between issue and answer, so together they took at least what the
    registry observed less a transport allowance. Each run reported faster than its share
    of that is clamped up to it; a node cannot be faster than the registry saw it be."""
    floor = max(0.0, observed_ms - transport_ms) / max(1, len(timings_ms))
    return benchmark_figures([max(float(t), floor) for t in timings_ms], items)


def node_score(
    figures: BenchmarkFigures,
    *,
    uptime: float,
    fail_rate: float,
    age_h: float,
    policy: ScorePolicy,
) -> float:
    """Appendix B's base score; 1.0 for a node exactly like the reference with full uptime."""
    keep = 0.5 ** (max(0.0, age_h) / policy.half_life_h)
    speed = 1 + (min(figures.items_per_s / policy.reference_items_per_s, policy.max_ratio) - 1) * keep
    quickness = 1 + (min(policy.reference_latency_ms / figures.latency_p50_ms, policy.max_ratio) - 1) * keep
    uptime = min(max(uptime, 0.0), 1.0)
    reliability = 1.0 / (1.0 + max(fail_rate, 0.0))
    return policy.alpha * speed + policy.beta * quickness + policy.gamma * uptime + policy.delta * reliability


@dataclass(frozen=True)
class ReputationPolicy:
    lam: float = 0.05  # weight of the latest job
    initial: float = 0.2  # where a new node starts
    warmup_jobs: int = 100  # jobs before a node may reach full reputation
    idle_half_life_h: float = 72.0  # idle nodes drift back toward `initial`
    strikes_to_ban: int = 3  # active strikes that trigger a ban
    strike_ttl_h: float = 168.0  # a strike counts for a week
    ban_h: float = 24.0  # time-boxed ban
    strike_penalty: float = 0.5  # routing weight multiplier per active strike

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ReputationPolicy:
        return _from_dict(cls, values)


def reputation_after_job(reputation: float, outcome: float, *, jobs_done: int, policy: ReputationPolicy) -> float:
    """One job's outcome r_j (1 consensus winner, 0 minority or failed honeypot)."""
    updated = (1 - policy.lam) * reputation + policy.lam * outcome
    # New nodes grow slowly: the ceiling rises linearly over the warm-up.
    ceiling = policy.initial + (1 - policy.initial) * min(1.0, jobs_done / max(1, policy.warmup_jobs))
    return min(max(updated, 0.0), ceiling)


def reputation_after_idle(reputation: float, *, idle_h: float, policy: ReputationPolicy) -> float:
    if reputation <= policy.initial:
        return reputation
    keep = 0.5 ** (max(0.0, idle_h) / policy.idle_half_life_h)
    return policy.initial + (reputation - policy.initial) * keep


def routing_weight(score: float, reputation: float, *, active_strikes: int, policy: ReputationPolicy) -> float:
    """w = base · R, softened by each active strike."""
    return max(score, 0.0) * max(reputation, 0.0) * policy.strike_penalty**active_strikes
