"""Smoke test of bench/bandwidth.py: `--quick` runs the relay and the P2P path through the
counting proxy (daphne, a Celery worker, simulated image and embedding nodes, the user's
data channels on loopback) for two image sizes, a few jobs and an embedding job, on its own
database next to the test's and the test's Redis db (which the tests flush anyway). Every job
must settle and the ledger balance; the figures are the benchmark's to report, but their
shape is H3's: the relay carries the payload, the P2P path only its control messages."""

from __future__ import annotations

import pytest

from tests.bench_quick import bench_quick

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


def test_bandwidth_quick_runs_clean():
    report = bench_quick("bandwidth.py", database_suffix="_bandwidth", timeout=400)
    assert report["checks"]["ok"], report["checks"]
    small, large = report["sizes"]
    assert (small["side"], large["side"]) == (8, 128)
    # The relay carries the payload (the input once, to two nodes, two results, the result
    # to the user): more than it, and growing with it.
    assert large["relay"]["registry_bytes_per_job"] > 2 * large["payload_bytes"]
    # The P2P path does not: 230x the payload, about the same registry bytes.
    assert large["p2p"]["registry_bytes_per_job"] < 1.1 * small["p2p"]["registry_bytes_per_job"]
    assert large["p2p"]["registry_bytes_per_job"] < large["payload_bytes"] / 5
    for row in (small, large):
        assert row["relay"]["by_party"]["user_ws"] == 0 < row["p2p"]["by_party"]["user_ws"]
        assert row["p2p"]["relay_bytes_recorded"] == 0 or row["p2p"]["uploads"]  # only an audit upload relays
    for row in report["job_counts"]:
        assert row["p2p"]["registry_bytes"] < row["relay"]["registry_bytes"]
    embedding = report["embedding"]
    assert embedding["relay"]["registry_bytes_per_job"] > 0 and embedding["p2p"]["registry_bytes_per_job"] > 0
    assert report["node_setup"]["bytes_per_node"][0] > report["node_setup"]["model_bytes"]
