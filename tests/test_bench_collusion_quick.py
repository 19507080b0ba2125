"""Smoke test of bench/collusion.py (hypothesis H2): `--quick` simulates 2,000 jobs over
3,000 honest nodes and two adversaries under the three diversity policies (no services).
The bench itself fails when its vectorized picks differ from `select_nodes`; here the
report must have its shape, its Monte Carlo must agree with the exact values, and the
full policy must keep a one-fingerprint farm from ever being both nodes of a job."""

from __future__ import annotations

import pytest

from tests.bench_quick import bench_quick

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_collusion_quick_matches_the_exact_values():
    # Tables come first on stdout, the JSON report is its last line.
    report = bench_quick("collusion.py", database_suffix=None, timeout=160, report_last_line=True)
    assert report["config"]["jobs"] == 2_000 and report["config"]["honest"] == 3_000
    assert report["equivalence"]["jobs_x_policies_checked"] > 0 and report["equivalence"]["mismatches"] == 0
    rows = report["collusion"]
    assert {(r["adversary"], r["fraction"], r["policy"]) for r in rows} == {
        (adversary, fraction, policy)
        for adversary in ("farm", "rented")
        for fraction in (0.01, 0.05, 0.2)
        for policy in "abc"
    }
    for row in rows:
        assert 0 <= row["p_exact"] <= row["p_first_pick_sybil_exact"] <= 1, row
        if row["collusions"] >= 20:  # enough pairs for the sample to say something
            assert abs(row["p_mc"] - row["p_exact"]) <= 0.5 * row["p_exact"], row
    # The farm reports one OS and GPU: policy (c) never pairs two of its nodes.
    for row in rows:
        if row["adversary"] == "farm" and row["policy"] == "c":
            assert row["p_exact"] == 0 and row["collusions"] == 0, row
    # An honest fleet of 3,000 always has a second node, whatever the policy.
    assert [row["fail_exact"] for row in report["cost_honest_fleet"]] == [0.0, 0.0, 0.0]
