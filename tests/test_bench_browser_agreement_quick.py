"""Smoke test of bench/browser_agreement.py: `--quick --families embeddings,images` runs the
registry on the embedded default in a folder of its own, headless Chromium's engine on 14
texts and 2 small images at 1 and 2 threads, and native onnxruntime on the same inputs.
The figures are the benchmark's to report; their shape is asserted here, and the
browser's answers must pass the registry's own verification (no false reject)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bim_site.processes import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


def test_browser_agreement_quick_runs_both_families(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/browser_agreement.py", "--quick", "--families", "embeddings,images", "--state-dir", str(tmp_path / "state")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}\n{done.stdout[-4000:]}"
    report = json.loads(done.stdout)

    assert report["texts"] == 14 and report["wasm_1t_vs_native"]["false_reject_rate_per_text"] == 0.0
    assert report["native_sentences_per_s_1_thread"] > 0 and report["browser_sentences_per_s_1_thread"] > 0

    images = report["images"]
    assert images["images"] == 2 and images["input_sizes"] == [[32, 32], [40, 56]]
    assert images["runtime"].startswith("onnxruntime-web")
    for threads in (1, 2):
        pair = images[f"wasm_{threads}t_vs_native"]
        assert pair["false_rejects"] == 0, pair
        assert pair["ssim_min"] >= images["tau_ssim"], pair
        assert 0.0 <= pair["bitwise_identical_share"] <= 1.0
    assert images["native_images_per_s_1_thread"] > 0 and images["browser_images_per_s_1_thread"] > 0
    assert images["browser_1t_speed_over_native_1t"] > 0
    assert report["machine"]["cpus"] >= 1 and len(report["machine"]["load_avg_1_5_15_min_start"]) == 3
