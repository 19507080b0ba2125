"""Smoke test of bench/replication.py: `--quick` simulates 50,000 jobs per population under
plain 2-of-2 and adaptive replication (no services). Adaptive replication must run fewer
executions per job than 2-of-2, and with no sleeper in the population neither may accept a
wrong result."""

from __future__ import annotations

import pytest

from tests.bench_quick import bench_quick

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_replication_quick_saves_executions():
    report = bench_quick("replication.py", database_suffix=None, timeout=100)
    assert report["benchmark"] == "replication" and report["jobs"] == 50_000
    rows = report["rows"]
    assert [(row["sleepers"], row["cheat"]) for row in rows] == [
        (sleepers, cheat) for sleepers in (0.0, 0.01, 0.05) for cheat in (0.1, 1.0)
    ]
    for row in rows:
        # Two nodes a job, a third on a mismatch (and honeypots on top).
        assert 2 <= row["pair_executions_per_job"] < 3, row
        assert row["adaptive_executions_per_job"] < row["pair_executions_per_job"], row
        assert 0 < row["redundancy_ratio"] < 1 and 0 < row["adaptive_solo_share"] < 1, row
    for row in rows[:2]:  # no sleepers: nothing to accept wrongly
        assert row["pair_false_accept_rate"] == row["adaptive_false_accept_rate"] == 0, row
