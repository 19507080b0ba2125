"""Comparing two nodes' embeddings under nondeterminism, and the wire decoding that
feeds it. Pure: no database."""

from __future__ import annotations

import numpy as np
import pytest

from bim_core import protocol
from bim_core.verification import Verdict, verify_embedding_pair, verify_pair
from tests.factories import unit_vectors

TAU = 0.9999


def noisy(vectors: np.ndarray, scale: float, seed: int = 99) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(vectors.shape) * scale
    return (vectors + noise).astype(np.float32)


def test_identical_vectors_pass_with_a_worst_cosine_of_one():
    a = unit_vectors(5)
    verdict = verify_embedding_pair(a, a.copy(), cosine_min=TAU)
    assert verdict.passed
    assert verdict.worst == pytest.approx(1.0, abs=1e-6)
    assert verdict.metric == "cosine"
    assert verdict.reason == ""
    assert len(verdict.per_item) == 5


def test_tiny_numerical_noise_passes_the_subnet_tolerance():
    a = unit_vectors(16)
    b = noisy(a, 1e-6)
    assert not np.array_equal(a, b)
    verdict = verify_embedding_pair(a, b, cosine_min=TAU)
    assert verdict.passed, verdict.reason
    assert TAU < verdict.worst <= 1.0 + 1e-9


def test_noise_beyond_the_tolerance_fails():
    a = unit_vectors(4)
    b = noisy(a, 1e-2)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    verdict = verify_embedding_pair(a, b, cosine_min=TAU)
    assert not verdict.passed
    assert verdict.worst < TAU


def test_vectors_of_another_input_fail_and_the_reason_names_the_worst_item():
    a, b = unit_vectors(3, seed=1), unit_vectors(3, seed=2)
    verdict = verify_embedding_pair(a, b, cosine_min=TAU)
    assert not verdict.passed
    assert verdict.worst == pytest.approx(min(verdict.per_item))
    worst_item = int(np.argmin(verdict.per_item))
    assert f"item {worst_item} " in verdict.reason
    assert abs(verdict.worst) < 0.5  # unrelated directions in 384-d are near orthogonal


def test_one_bad_item_among_many_fails_the_whole_pair():
    a = unit_vectors(32)
    b = a.copy()
    b[17] = unit_vectors(1, seed=7)[0]
    verdict = verify_embedding_pair(a, b, cosine_min=TAU)
    assert not verdict.passed
    assert verdict.reason.startswith("item 17 ")
    assert int(np.argmin(verdict.per_item)) == 17
    others = np.delete(np.array(verdict.per_item), 17)
    assert np.all(others > 1 - 1e-6)


def test_the_threshold_is_inclusive():
    a = unit_vectors(4)
    b = noisy(a, 1e-4)
    worst = verify_embedding_pair(a, b, cosine_min=TAU).worst
    assert verify_embedding_pair(a, b, cosine_min=worst).passed
    assert not verify_embedding_pair(a, b, cosine_min=float(np.nextafter(worst, 2.0))).passed


@pytest.mark.parametrize(
    ("shape_a", "shape_b"),
    [((3, 384), (4, 384)), ((3, 384), (3, 383)), ((3, 384), (384, 3))],
)
def test_a_shape_mismatch_fails(shape_a, shape_b):
    a = unit_vectors(shape_a[0], shape_a[1])
    b = unit_vectors(shape_b[0], shape_b[1])
    verdict = verify_embedding_pair(a, b, cosine_min=TAU)
    assert not verdict.passed
    assert verdict.worst is None
    assert "shapes differ" in verdict.reason


def test_single_vectors_that_are_not_a_matrix_fail():
    a = unit_vectors(1)[0]
    verdict = verify_embedding_pair(a, a.copy(), cosine_min=TAU)
    assert not verdict.passed
    assert verdict.worst is None


def test_vectors_that_are_not_unit_normalized_fail_even_when_they_agree():
    a = unit_vectors(3) * 2.0
    verdict = verify_embedding_pair(a, a.copy(), cosine_min=TAU)
    assert not verdict.passed
    assert verdict.worst is None
    assert "not unit-normalized" in verdict.reason


def test_the_reason_names_the_item_that_is_not_normalized():
    a = unit_vectors(6)
    b = a.copy()
    b[4] *= 1.01
    verdict = verify_embedding_pair(a, b, cosine_min=TAU)
    assert not verdict.passed
    assert verdict.reason == "item 4 is not unit-normalized"


def test_the_norm_tolerance_is_honoured():
    a = unit_vectors(3)
    b = a * np.float32(1.0005)
    assert verify_embedding_pair(a, b, cosine_min=TAU, norm_tolerance=1e-3).passed
    assert not verify_embedding_pair(a, b, cosine_min=TAU, norm_tolerance=1e-4).passed


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("side", ["a", "b"])
def test_a_non_finite_value_never_passes(bad, side):
    a = unit_vectors(3)
    b = a.copy()
    (a if side == "a" else b)[1, 5] = bad
    verdict = verify_embedding_pair(a, b, cosine_min=TAU)
    assert verdict.passed is False, verdict


# ---------------------------------------------------------------- dispatch by task type


def test_verify_pair_runs_the_embedding_verifier_with_the_subnet_tolerances():
    a = unit_vectors(3)
    b = a * np.float32(1.0005)
    strict = verify_pair("embedding", a, b, {"cosine_min": TAU, "norm_tolerance": 1e-4})
    loose = verify_pair("embedding", a, b, {"cosine_min": TAU, "norm_tolerance": 1e-2})
    assert isinstance(strict, Verdict) and not strict.passed
    assert loose.passed
    assert not verify_pair("embedding", a, unit_vectors(3, seed=5), {"cosine_min": TAU}).passed


def test_verify_pair_defaults_the_norm_tolerance():
    a = unit_vectors(3)
    assert verify_pair("embedding", a, a * np.float32(1.0005), {"cosine_min": TAU}).passed
    assert not verify_pair("embedding", a, a * np.float32(1.01), {"cosine_min": TAU}).passed


@pytest.mark.parametrize("task_type", ["audio", "Embedding", ""])
def test_verify_pair_refuses_a_task_type_it_has_no_verifier_for(task_type):
    a = unit_vectors(2)
    with pytest.raises(ValueError, match="no verifier for task type"):
        verify_pair(task_type, a, a, {"cosine_min": TAU})


def test_the_verdict_serializes_without_its_per_item_list():
    verdict = verify_embedding_pair(unit_vectors(2, seed=1), unit_vectors(2, seed=2), cosine_min=TAU)
    assert set(verdict.as_dict()) == {"passed", "metric", "worst", "reason"}
    assert verdict.as_dict()["passed"] is False


# ---------------------------------------------------------------- the wire format feeding it


def test_vectors_survive_the_wire_encoding_bit_for_bit():
    vectors = unit_vectors(4, 8)
    payload = protocol.encode_vectors(vectors)
    assert len(payload) == 4 * 8 * 4
    decoded = protocol.decode_vectors(payload, (4, 8))
    assert decoded.dtype == np.dtype("<f4")
    assert np.array_equal(decoded, vectors)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_decoding_refuses_non_finite_values(bad):
    vectors = unit_vectors(2, 8)
    vectors[1, 3] = bad
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.decode_vectors(protocol.encode_vectors(vectors), (2, 8))
    assert refused.value.code == "bad_message"


@pytest.mark.parametrize("shape", [(2, 7), (3, 8), (0, 8), (2, 0), (-2, -8)])
def test_decoding_refuses_a_shape_the_bytes_do_not_hold(shape):
    payload = protocol.encode_vectors(unit_vectors(2, 8))
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.decode_vectors(payload, shape)
    assert refused.value.code == "bad_shape"
