"""Smoke test of bench/routing.py: `--quick` times the routing index against hashing every
node, at 1,000 and 10,000 nodes (no services). The bench itself fails when the index picks
other nodes than `select_nodes`; here the report must show the index the faster of the two."""

from __future__ import annotations

import pytest

from tests.bench_quick import bench_quick

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_routing_quick_beats_the_scan():
    report = bench_quick("routing.py", database_suffix=None, timeout=100)
    assert report["benchmark"] == "routing"
    assert [(row["nodes"], row["k"]) for row in report["results"]] == [(1_000, 2), (1_000, 3), (10_000, 2), (10_000, 3)]
    for row in report["results"]:
        assert 0 < row["index_median_ms"] <= row["index_p95_ms"]
        assert row["target_5ms_met"], row
    # At 10,000 nodes the scan hashes every node per pick (about 100x the index here, loaded).
    for row in report["results"][2:]:
        assert row["speedup_vs_scan"] > 5, row
