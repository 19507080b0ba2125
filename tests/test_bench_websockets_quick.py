"""Smoke test of bench/websockets.py: `--quick` seeds 100 routable nodes, holds their
sockets against daphne (with a Celery worker and beat), restarts daphne under them, and
closes them all at once, on its own database next to the test's and the test's Redis db
(which the tests flush anyway). Every phase must complete with no handler failing, no
handshake refused and no socket dropped; the timings are the benchmark's to report."""

from __future__ import annotations

import pytest

from tests.bench_quick import bench_quick

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


def test_websockets_quick_runs_clean():
    report = bench_quick("websockets.py", database_suffix="_websockets", timeout=400)
    assert report["checks"]["ok"], report["checks"]
    run = report["runs"][0]
    assert run["held"]["connections"] == run["held"]["online"] == report["config"]["nodes"]
    assert report["median"]["reconnect_storm_s"] is not None and report["median"]["disconnect_burst_s"] is not None
    assert run["failures"]["tracebacks"] == 0 and run["index_after_burst"] == 0
