"""Smoke test of bench/throughput.py (it once crashed on main unseen): `--quick` runs the
real pipeline (daphne, a Celery worker with beat, simulated nodes answering benchmarks,
honeypots and jobs) on its own database, next to the test's, and the test's Redis db
(which the tests flush anyway); every job it submitted must settle and the ledger balance."""

from __future__ import annotations

import pytest

from tests.bench_quick import bench_quick

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


def test_throughput_quick_runs_clean():
    report = bench_quick("throughput.py", database_suffix="_throughput", timeout=400)
    assert report["checks"]["ok"], report["checks"]
    assert report["checks"]["jobs_settled"] == report["checks"]["jobs_total"] > 0
    assert report["median"]["end_to_end_jobs_per_s"] > 0 and report["median"]["in_process_jobs_per_s"] > 0
