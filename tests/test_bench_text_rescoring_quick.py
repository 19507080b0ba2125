"""Smoke test of bench/text_rescoring.py: `--quick` generates 2 prompts of 8 tokens with the
text subnet's real model (1 and 2 threads) and re-scores them as the registry does (no
services). Honest tokens must stay within the subnet's logit margin, the forged token of each
sequence must fall outside it, and the thread count must not change the tokens."""

from __future__ import annotations

import pytest

from tests.bench_quick import bench_quick

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_text_rescoring_quick_tells_honest_from_forged():
    report = bench_quick("text_rescoring.py", database_suffix=None, timeout=280)
    assert report["quick"] and (report["prompts"], report["max_tokens"]) == (2, 8)
    margin = report["logit_margin"]
    for threads in ("threads_1", "threads_2"):
        figures = report[threads]
        assert 0 < figures["tokens"] <= 2 * 8, figures
        assert figures["generate_tokens_per_s"] > 0 and figures["rescore_tokens_per_s"] > 0, figures
        assert figures["honest_positions_above_margin"] == 0 and figures["honest_gap_max"] <= margin, figures
        assert figures["forged_caught"] == figures["forged_total"] == 2, figures
        assert figures["forged_gap_min"] > margin, figures
    assert report["threads_1_vs_2_identical_tokens"]
