"""Comparing two nodes' generated token sequences, and the re-scoring rule that settles a
mismatch. Pure: no database, no model."""

from __future__ import annotations

import math

import pytest

from bim_core.verification import judge_rescored, token_edit_distance, verify_pair, verify_text_pair

TOLERANCES = {"edit_distance": 0.1, "logit_margin": 0.5}


def result(tokens: list[int], finish: str = "length") -> dict:
    return {"tokens": tokens, "text": "", "finish": finish}


def test_identical_tokens_and_finish_pass():
    verdict = verify_text_pair(result([5, 6, 7, 2], "stop"), result([5, 6, 7, 2], "stop"), edit_distance_max=0.1)
    assert verdict.passed
    assert verdict.metric == "tokens"
    assert verdict.worst == 1.0
    assert verdict.reason == ""


def test_one_flipped_token_fails_and_names_where_the_sequences_diverge():
    a = list(range(100, 140))
    b = a.copy()
    b[17] = 9
    verdict = verify_text_pair(result(a), result(b), edit_distance_max=0.1)
    assert not verdict.passed
    assert verdict.worst == pytest.approx(1 - 1 / 40)
    assert "position 17" in verdict.reason
    # Close enough for the paper's rule, which would have paid it: re-scoring decides instead.
    assert "within the paper's 0.1" in verdict.reason


def test_a_sequence_that_drifts_far_apart_is_beyond_the_papers_distance():
    verdict = verify_text_pair(result([1, 2, 3, 4, 5, 6]), result([1, 9, 9, 9, 9, 9]), edit_distance_max=0.1)
    assert not verdict.passed
    assert verdict.worst == pytest.approx(1 - 5 / 6)
    assert "beyond" in verdict.reason


def test_same_tokens_with_another_finish_reason_fail():
    verdict = verify_text_pair(result([4, 5], "stop"), result([4, 5], "length"), edit_distance_max=0.1)
    assert not verdict.passed
    assert verdict.worst == 1.0
    assert "finish differs" in verdict.reason


def test_a_truncated_sequence_fails_with_its_length_in_the_reason():
    full = list(range(10, 30))
    verdict = verify_text_pair(result(full), result(full[:12], "stop"), edit_distance_max=0.5)
    assert not verdict.passed
    assert "position 12 (20 vs 12 tokens)" in verdict.reason
    assert verdict.worst == pytest.approx(12 / 20)
    assert "beyond" in verdict.reason  # the finish differs, so not even the paper's rule passes it


def test_same_tokens_with_another_text_fail():
    a = {"tokens": [4, 5], "text": "Paris.", "finish": "length"}
    verdict = verify_text_pair(a, {**a, "text": "Lyon."}, edit_distance_max=0.1)
    assert not verdict.passed
    assert verdict.reason == "same tokens, text differs"


def test_two_empty_sequences_that_stopped_at_once_agree():
    assert verify_text_pair(result([], "stop"), result([], "stop"), edit_distance_max=0.1).passed


def test_verify_pair_picks_the_text_verifier_by_task_type():
    verdict = verify_pair("text", result([1, 2]), result([1, 3]), TOLERANCES)
    assert verdict.metric == "tokens"
    assert not verdict.passed


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([], [], 0),
        ([1, 2, 3], [], 3),
        ([1, 2, 3], [1, 2, 3], 0),
        ([1, 2, 3], [1, 3], 1),  # deletion
        ([1, 2, 3], [1, 2, 4, 3], 1),  # insertion
        ([1, 2, 3], [7, 2, 3], 1),  # substitution
        ([1, 2, 3, 4], [2, 3, 4, 5], 2),  # shifted by one
    ],
)
def test_token_edit_distance(a, b, expected):
    assert token_edit_distance(a, b) == expected
    assert token_edit_distance(b, a) == expected


def test_rescoring_accepts_a_sequence_whose_every_token_was_the_top_choice():
    assert judge_rescored([(3.0, 3.0), (11.5, 11.5), (-2.0, -2.0)], margin=0.5) == (True, [])


def test_rescoring_accepts_a_near_tie_within_the_margin():
    # Honest nodes on different CPUs can flip a token whose logit is 0.0012 below the top.
    assert judge_rescored([(8.0, 8.0012), (5.0, 5.0)], margin=0.5) == (True, [])


def test_rescoring_rejects_a_forged_token_and_names_its_position():
    accepted, failing = judge_rescored([(8.0, 8.0), (1.5, 9.25), (4.0, 4.0), (0.0, 6.0)], margin=0.5)
    assert not accepted
    assert failing == [1, 3]


def test_the_margin_is_inclusive():
    assert judge_rescored([(2.0, 2.5)], margin=0.5) == (True, [])


def test_a_nan_logit_never_passes():
    assert judge_rescored([(math.nan, 4.0)], margin=0.5) == (False, [0])
    assert judge_rescored([(4.0, math.nan)], margin=0.5) == (False, [0])


def test_an_empty_sequence_has_nothing_to_reject():
    assert judge_rescored([], margin=0.5) == (True, [])
