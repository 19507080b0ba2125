"""Smoke test of bench/throughput.py (it once crashed on main unseen): `--quick` runs the
real pipeline (daphne, a Celery worker with beat, simulated nodes answering benchmarks,
honeypots and jobs) on its own database, next to the test's, and the test's Redis db
(which the tests flush anyway); every job it submitted must settle and the ledger balance."""

from __future__ import annotations

import pytest

from tests.bench_quick import bench_quick

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


def test_throughput_quick_runs_clean():
    # Paced (--rate): 30 jobs offered at 20 a second cannot settle faster than that.
    report = bench_quick("throughput.py", "--rate", "20", database_suffix="_throughput", timeout=400)
    assert report["checks"]["ok"], report["checks"]
    assert report["config"]["rate"] == 20.0 and report["median"]["end_to_end_jobs_per_s"] <= 20 * 1.05
    assert report["checks"]["jobs_settled"] == report["checks"]["jobs_total"] > 0
    median = report["median"]
    assert median["end_to_end_jobs_per_s"] > 0 and median["in_process_jobs_per_s"] > 0
    # Submissions one by one and in batches, all accepted, none a 5xx; their jobs settled too.
    for phase in ("single", "single_paced", "batch"):
        assert median["submissions"][phase]["jobs_per_s"] > 0
        assert median["submissions"][phase]["http_5xx"] == 0
    # Offered at 20 a second (--quick): sent no faster than that.
    assert report["config"]["submit_rate"] == 20.0 and median["submissions"]["single_paced"]["jobs_per_s"] <= 20 * 1.05
    # The per-job counts come from the children (bim_site/sqlstats.py) and PostgreSQL.
    assert median["end_to_end_postgres"]["statements_per_job"] > 0
    assert median["end_to_end_postgres"]["transactions_per_job"] > 0
    assert median["in_process_postgres"]["statements_per_job"] > 0


def test_throughput_backlog_quick_runs_clean():
    report = bench_quick("throughput.py", "--backlog", database_suffix="_backlog", timeout=300)
    assert report["ok"] and report["ledger_violations"] == []
    assert [row["backlog"] for row in report["sizes"]] == [10, 300]
    assert all(row["dispatch_one_ms_p50"] > 0 for row in report["sizes"])
    # The dispatcher reads the same statements whatever the backlog.
    assert report["statements_ratio"] == 1.0
