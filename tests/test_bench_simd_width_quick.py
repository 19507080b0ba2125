"""Smoke test of bench/simd_width.py (issue 17's root-cause measurement): `--quick` builds
bench/simd_width.c natively at each SIMD width this CPU runs and for WebAssembly, runs the
wasm builds in headless Chromium, and every build must compute the same sums."""

from __future__ import annotations

import pytest

from tests.bench_quick import bench_quick

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_simd_width_quick_builds_and_agrees():
    report = bench_quick("simd_width.py", database_suffix=None, timeout=150)
    assert report["rounds"] == 2 and "sse4.2" in report["native"]
    builds = [*report["native"].values(), *report["chromium_wasm"].values()]
    assert all(b["sgemm_gflops"] > 0 and b["q41_generic_gweights_per_s"] > 0 for b in builds)
    # One source, every build: the same SGEMM and Q4_1 sums up to float rounding.
    for key in ("checksum_sgemm", "checksum_q41"):
        values = [b[key] for b in builds]
        assert max(values) - min(values) <= 1e-3 * max(1.0, max(abs(v) for v in values)), (key, values)
    assert report["chromium_wasm"]["wasm_simd128"]["q41_simd128_gweights_per_s"] > 0
