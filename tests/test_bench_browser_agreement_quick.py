"""Smoke test of bench/browser_agreement.py: `--quick --families embeddings,images,text` runs
the registry on the embedded default in a folder of its own, headless Chromium's engines on 14
texts and 2 small images at 1 and 2 threads and on 4 prompts of 8 tokens, and the native
runtimes on the same inputs. The figures are the benchmark's to report; their shape is
asserted here, and the browser's answers must pass the registry's own verification (no false
reject; a text sequence that differs is accepted by re-scoring)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bim_site.processes import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_browser_agreement_quick_runs_every_family(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/browser_agreement.py", "--quick", "--families", "embeddings,images,text", "--state-dir", str(tmp_path / "state")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=880,
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
    # Where the time goes, per side.
    assert set(report["phases_ms"]) == {"native_1t", "browser_1t", "browser_2t"}
    assert set(report["phases_ms"]["browser_1t"]) == {"tokenizeMs", "modelMs", "poolMs", "transferMs"}
    assert report["model_only_browser_1t_speed_over_native_1t"] > 0
    assert set(images["phases_ms_per_image"]["native_1t"]) == {"decodeMs", "modelMs", "tilingMs"}
    assert set(images["phases_ms_per_image"]["browser_1t"]) == {"decodeMs", "modelMs", "tilingMs", "transferMs", "encodeMs"}

    text = report["text"]
    assert text["runtime"].startswith("wllama-") and text["prompts"] == 4 and text["max_tokens"] == [8]
    assert text["prompt_ids_equal"] == text["prompts"]
    assert text["identical_share"] + text["rescored_share"] == pytest.approx(1.0)
    assert text["false_rejects_after_rescoring"] == 0 and text["native_sequence_rejected"] == 0
    assert text["browser_tokens_per_s_1_thread"] > 0 and text["native_tokens_per_s_1_thread"] > 0
    assert text["browser_1_thread"]["tokenize_ms_median"] >= 0
    assert text["browser_2t_prompts"] == 2 and text["browser_2_threads_used"] == 2
    assert text["load_chunk_requests_empty_cache"] > 90 and text["model_bytes"] > 90_000_000
