"""Smoke test of bench/ledger.py (its `--quick` once failed unseen: the client processes
shared the parent's pooled connection): one run of each variant (1 client, 8 clients, 8 on
one user), ORM against raw SQL, on its own database next to the test's (no Redis). Every
run must settle every job with no error and leave exactly the expected transfers, and the
ledger must balance; the rates are the benchmark's to report."""

from __future__ import annotations

import pytest

from tests.bench_quick import bench_quick, database_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_ledger_quick_settles_and_balances():
    report = bench_quick(
        "ledger.py", "--server", database_server(), database_suffix="_ledger", redis=False, timeout=280
    )
    verification = report["verification"]
    assert verification["all_ok"] and verification["failed"] == []
    assert report["config"]["quick"] and set(report["variants"]) == {"clients_1", "clients_8", "clients_8_same_user"}
    # Warm-up (both paths), the query count, the profile, then both paths of each variant.
    assert verification["runs_checked"] == 2 + 1 + 1 + 2 * len(report["variants"])
    for name, variant in report["variants"].items():
        median = variant["median"]
        assert median["orm_settlements_per_s"] > 0 and median["raw_settlements_per_s"] > 0, name
        for run in report["runs"][name]:
            for path in ("orm", "raw"):
                assert run[path]["errors"] == 0, (name, run[path].get("error_samples"))
                assert run[path]["settled"] == variant["settlements_per_run"] and run[path]["verified"], name
    assert report["orm_queries"]["round_trips_per_settlement"] > 0
    assert set(report["profile_1_client"]) >= {"raw", "orm", "orm_lean"}
