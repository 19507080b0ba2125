"""Node scores and reputation (paper section 4, Appendix B): benchmark figures from runs,
the base score against the reference node, age decay of stale figures, the reputation EMA
with its warm-up ceiling, idle decay, and the strike penalty. Pure: no database."""

from __future__ import annotations

import pytest

from bim_core.scoring import (
    BenchmarkFigures,
    ReputationPolicy,
    ScorePolicy,
    benchmark_figures,
    node_score,
    reputation_after_idle,
    reputation_after_job,
    routing_weight,
)

POLICY = ScorePolicy()
REPUTATION = ReputationPolicy()
REFERENCE = BenchmarkFigures(
    items_per_s=POLICY.reference_items_per_s,
    latency_p50_ms=POLICY.reference_latency_ms,
    latency_p95_ms=POLICY.reference_latency_ms,
)


def score(
    figures: BenchmarkFigures = REFERENCE,
    *,
    uptime: float = 1.0,
    fail_rate: float = 0.0,
    age_h: float = 0.0,
    policy: ScorePolicy = POLICY,
) -> float:
    return node_score(figures, uptime=uptime, fail_rate=fail_rate, age_h=age_h, policy=policy)


def figures(items_per_s: float = 30.0, latency_ms: float = 250.0) -> BenchmarkFigures:
    return BenchmarkFigures(items_per_s=items_per_s, latency_p50_ms=latency_ms, latency_p95_ms=latency_ms)


# ---------------------------------------------------------------- benchmark figures


def test_figures_are_the_median_run_and_the_nearest_rank_p95():
    # Runs out of order, one outlier: the median ignores it, p95 of 3 runs is the slowest.
    result = benchmark_figures([120.0, 100.0, 900.0], items=8)
    assert result.latency_p50_ms == 120.0
    assert result.items_per_s == pytest.approx(8 * 1000 / 120)
    assert result.latency_p95_ms == 900.0


def test_an_even_number_of_runs_takes_the_mean_of_the_middle_two():
    result = benchmark_figures([10.0, 40.0, 20.0, 30.0], items=4)
    assert result.latency_p50_ms == 25.0
    assert result.items_per_s == pytest.approx(4 * 1000 / 25)
    assert result.latency_p95_ms == 40.0


@pytest.mark.parametrize(("runs", "p95"), [(20, 19.0), (100, 95.0), (1, 1.0)])
def test_p95_is_the_nearest_rank_of_the_sorted_runs(runs, p95):
    timings = [float(t) for t in reversed(range(1, runs + 1))]
    assert benchmark_figures(timings, items=1).latency_p95_ms == p95


@pytest.mark.parametrize(("timings", "items"), [([], 4), ([10.0, 0.0], 4), ([10.0, -5.0], 4), ([10.0], 0)])
def test_it_refuses_empty_or_non_positive_benchmarks(timings, items):
    with pytest.raises(ValueError):
        benchmark_figures(timings, items=items)


# ---------------------------------------------------------------- the base score


def test_the_default_weights_sum_to_one():
    assert POLICY.alpha + POLICY.beta + POLICY.gamma + POLICY.delta == pytest.approx(1.0)


def test_a_reference_node_with_full_uptime_and_no_failures_scores_one():
    assert score() == pytest.approx(1.0)


def test_each_term_carries_its_policy_weight():
    # No uptime removes exactly gamma; a fail rate of 1 halves the reliability term (delta / 2).
    assert score(uptime=0.0) == pytest.approx(1.0 - POLICY.gamma)
    assert score(fail_rate=1.0) == pytest.approx(1.0 - POLICY.delta / 2)
    # Twice the reference speed adds alpha once; half the reference latency adds beta once.
    assert score(figures(items_per_s=60.0)) == pytest.approx(1.0 + POLICY.alpha)
    assert score(figures(latency_ms=125.0)) == pytest.approx(1.0 + POLICY.beta)


def test_uptime_is_clamped_to_zero_one_and_fail_rate_to_non_negative():
    assert score(uptime=3.0) == pytest.approx(1.0)
    assert score(uptime=-1.0) == pytest.approx(1.0 - POLICY.gamma)
    assert score(fail_rate=-0.5) == pytest.approx(1.0)


def test_the_score_grows_with_speed_and_falls_with_latency():
    speeds = [score(figures(items_per_s=v)) for v in (10.0, 30.0, 45.0, 90.0)]
    assert speeds == sorted(speeds) and len(set(speeds)) == len(speeds)
    latencies = [score(figures(latency_ms=v)) for v in (100.0, 250.0, 500.0, 2000.0)]
    assert latencies == sorted(latencies, reverse=True) and len(set(latencies)) == len(latencies)
    assert score(figures(latency_ms=500.0)) < 1.0 < score(figures(latency_ms=200.0))


def test_speed_and_quickness_are_clipped_at_max_ratio():
    clipped = score(figures(items_per_s=POLICY.reference_items_per_s * POLICY.max_ratio))
    assert clipped == pytest.approx(1.0 + (POLICY.max_ratio - 1) * POLICY.alpha)
    assert score(figures(items_per_s=30_000.0)) == pytest.approx(clipped)
    quick = score(figures(latency_ms=POLICY.reference_latency_ms / POLICY.max_ratio))
    assert score(figures(latency_ms=0.001)) == pytest.approx(quick)
    both = score(figures(items_per_s=1e9, latency_ms=1e-6))
    assert both == pytest.approx(1.0 + (POLICY.max_ratio - 1) * (POLICY.alpha + POLICY.beta))


def test_a_subnet_policy_moves_the_reference_and_the_clip():
    policy = ScorePolicy.from_dict({"reference_items_per_s": 60.0, "max_ratio": 2.0, "not_a_field": 1})
    assert score(figures(items_per_s=60.0), policy=policy) == pytest.approx(1.0)
    assert score(figures(items_per_s=600.0), policy=policy) == pytest.approx(1.0 + policy.alpha)
    assert ScorePolicy.from_dict(None) == POLICY


def test_stale_figures_decay_toward_the_reference_by_half_each_half_life():
    fast = figures(items_per_s=90.0, latency_ms=125.0)  # speed ratio 3, quickness ratio 2
    edge = score(fast) - 1.0
    assert edge == pytest.approx(2 * POLICY.alpha + 1 * POLICY.beta)
    assert score(fast, age_h=POLICY.half_life_h) - 1.0 == pytest.approx(edge / 2)
    assert score(fast, age_h=2 * POLICY.half_life_h) - 1.0 == pytest.approx(edge / 4)
    assert score(fast, age_h=50 * POLICY.half_life_h) == pytest.approx(1.0, abs=1e-9)
    # A slow node's deficit decays the same way: an old bad benchmark does not stick forever.
    slow = figures(items_per_s=15.0, latency_ms=500.0)
    assert score(slow) < score(slow, age_h=POLICY.half_life_h) < 1.0
    # A clock skew (benchmark "in the future") counts as fresh, not as extra edge.
    assert score(fast, age_h=-10.0) == pytest.approx(score(fast))


def test_age_decay_leaves_uptime_and_reliability_alone():
    old = score(uptime=0.5, fail_rate=1.0, age_h=1000.0)
    assert old == pytest.approx(POLICY.alpha + POLICY.beta + POLICY.gamma * 0.5 + POLICY.delta / 2)


# ---------------------------------------------------------------- reputation


def test_one_win_moves_reputation_by_lambda_toward_one_after_warm_up():
    after = reputation_after_job(0.5, 1.0, jobs_done=REPUTATION.warmup_jobs, policy=REPUTATION)
    assert after == pytest.approx((1 - REPUTATION.lam) * 0.5 + REPUTATION.lam)


def test_a_zero_outcome_lowers_reputation():
    after = reputation_after_job(0.8, 0.0, jobs_done=500, policy=REPUTATION)
    assert after == pytest.approx((1 - REPUTATION.lam) * 0.8)
    assert after < 0.8
    assert reputation_after_job(0.0, 0.0, jobs_done=500, policy=REPUTATION) == 0.0


def test_a_new_node_cannot_pass_the_warm_up_ceiling_however_many_wins_in_a_row():
    reputation = REPUTATION.initial
    assert reputation_after_job(reputation, 1.0, jobs_done=0, policy=REPUTATION) == pytest.approx(REPUTATION.initial)
    for done in range(1, REPUTATION.warmup_jobs // 2 + 1):
        reputation = reputation_after_job(reputation, 1.0, jobs_done=done, policy=REPUTATION)
        ceiling = REPUTATION.initial + (1 - REPUTATION.initial) * done / REPUTATION.warmup_jobs
        assert reputation <= ceiling + 1e-12, done
    # Halfway through the warm-up a node is capped at the halfway ceiling, though an
    # uncapped EMA of 50 straight wins would be far above it.
    halfway = REPUTATION.initial + (1 - REPUTATION.initial) / 2
    uncapped = 1 - (1 - REPUTATION.initial) * (1 - REPUTATION.lam) ** (REPUTATION.warmup_jobs // 2)
    assert reputation == pytest.approx(halfway)
    assert uncapped > halfway + 0.1


def test_reputation_reaches_near_one_after_the_warm_up():
    reputation = REPUTATION.initial
    for done in range(1, 3 * REPUTATION.warmup_jobs + 1):
        reputation = reputation_after_job(reputation, 1.0, jobs_done=done, policy=REPUTATION)
    assert 0.99 < reputation <= 1.0


def test_reputation_stays_within_zero_one():
    assert reputation_after_job(1.0, 1.0, jobs_done=10_000, policy=REPUTATION) == pytest.approx(1.0)
    assert reputation_after_job(1.0, 5.0, jobs_done=10_000, policy=REPUTATION) <= 1.0
    assert reputation_after_job(0.0, -3.0, jobs_done=10_000, policy=REPUTATION) >= 0.0


def test_idle_reputation_decays_toward_initial_with_its_half_life():
    policy = REPUTATION
    above = policy.initial + 0.6
    assert reputation_after_idle(above, idle_h=0.0, policy=policy) == pytest.approx(above)
    assert reputation_after_idle(above, idle_h=policy.idle_half_life_h, policy=policy) == pytest.approx(
        policy.initial + 0.3
    )
    assert reputation_after_idle(above, idle_h=2 * policy.idle_half_life_h, policy=policy) == pytest.approx(
        policy.initial + 0.15
    )
    forever = reputation_after_idle(above, idle_h=1e6, policy=policy)
    assert forever == pytest.approx(policy.initial) and forever >= policy.initial


def test_idle_decay_never_lifts_a_low_reputation_or_pushes_below_initial():
    assert reputation_after_idle(0.05, idle_h=1000.0, policy=REPUTATION) == 0.05
    assert reputation_after_idle(REPUTATION.initial, idle_h=1000.0, policy=REPUTATION) == REPUTATION.initial


def test_reputation_policy_reads_known_fields_only():
    policy = ReputationPolicy.from_dict({"lam": 0.5, "warmup_jobs": 1, "unknown": True})
    assert (policy.lam, policy.warmup_jobs, policy.initial) == (0.5, 1, REPUTATION.initial)
    assert reputation_after_job(0.2, 1.0, jobs_done=1, policy=policy) == pytest.approx(0.6)


# ---------------------------------------------------------------- routing weight


def test_the_routing_weight_is_score_times_reputation():
    assert routing_weight(1.2, 0.5, active_strikes=0, policy=REPUTATION) == pytest.approx(0.6)
    assert routing_weight(-1.0, 0.5, active_strikes=0, policy=REPUTATION) == 0.0
    assert routing_weight(1.0, -0.5, active_strikes=0, policy=REPUTATION) == 0.0


def test_each_active_strike_halves_the_routing_weight():
    weights = [routing_weight(1.0, 0.8, active_strikes=n, policy=REPUTATION) for n in range(4)]
    assert weights == pytest.approx([0.8, 0.4, 0.2, 0.1])
    harsher = ReputationPolicy(strike_penalty=0.25)
    assert routing_weight(1.0, 0.8, active_strikes=2, policy=harsher) == pytest.approx(0.05)
