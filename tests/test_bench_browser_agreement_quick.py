"""Smoke test of bench/browser_agreement.py's text part: `--quick --families text` runs the
registry on the embedded default (its own state folder), Chromium with the text engine and the
Python node's generator, and must report a clean comparison: the browser's prompt ids equal
the node's, every sequence that differs is accepted by re-scoring, both runtimes produce
tokens at a measurable rate and the GGUF came through the verified chunks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bim_site.processes import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_browser_agreement_quick_text_runs_clean():
    done = subprocess.run(
        [sys.executable, "bench/browser_agreement.py", "--quick", "--families", "text"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}\n{done.stdout[-4000:]}"
    report = json.loads(done.stdout)
    assert "embedding" not in report
    text = report["text"]
    assert text["runtime"] == "wllama-2.3.7" and text["prompts"] == 4 and text["max_tokens"] == [8]
    assert text["prompt_ids_equal"] == text["prompts"]
    assert text["identical_share"] + text["rescored_share"] == pytest.approx(1.0)
    assert text["false_rejects_after_rescoring"] == 0 and text["native_sequence_rejected"] == 0
    assert text["browser_tokens_per_s_1_thread"] > 0 and text["native_tokens_per_s_1_thread"] > 0
    assert text["browser_2t_prompts"] == 2 and text["browser_2_threads_used"] == 2
    assert text["load_chunk_requests_empty_cache"] > 90 and text["model_bytes"] > 90_000_000
