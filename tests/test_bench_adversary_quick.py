"""Smoke test of bench/adversary.py: `--quick` runs the real market (daphne, a Celery worker
with beat, simulated honest nodes) against three hostile nodes and must neither crash nor
miss a target. It runs in a subprocess on its own database, next to the test's, and on
the test's Redis db (which the tests flush anyway)."""

from __future__ import annotations

import pytest

from tests.bench_quick import bench_quick

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_adversary_quick_meets_its_targets():
    report = bench_quick("adversary.py", database_suffix="_adversary", timeout=280)
    assert report["ok"] and not report["failed_targets"]
    assert set(report["strategies"]) == {"refused", "silence", "wrong_shape"}
    for strategy, figures in report["strategies"].items():
        assert figures["routable"], f"{strategy}: the hostile node never got into the market"
        assert figures["paid_wrong_results"] == 0, strategy
