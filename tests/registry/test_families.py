"""Task families: inputs, result encoding and the shape the signature covers."""

import numpy as np
import pytest

from bim_core import families, protocol
from bim_core.job_inputs import InputInvalid, SubnetLimits

LIMITS = SubnetLimits(max_items=3, max_chars=10, preprocessing={})
EMBEDDING = families.family_for("embedding")


def test_an_embedding_job_takes_a_short_list_of_texts():
    inputs = EMBEDDING.validate_inputs({"texts": ["a", "b"]}, LIMITS)

    assert inputs == {"texts": ["a", "b"]}
    assert EMBEDDING.item_count(inputs) == 2
    assert EMBEDDING.price_units(inputs) == 2


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"texts": ["a"], "prompt": "x"}, "only texts"),
        ({}, "non-empty list"),
        ({"texts": ["a"] * 4}, "at most 3"),
        ({"texts": ["x" * 11]}, "exceeds 10"),
        ({"texts": [7]}, "non-empty string"),
    ],
)
def test_it_refuses_embedding_inputs_that_do_not_fit(raw, reason):
    with pytest.raises(InputInvalid, match=reason):
        EMBEDDING.validate_inputs(raw, LIMITS)


def test_an_embedding_result_round_trips_through_its_encoding():
    vectors = np.eye(2, 4, dtype=np.float32)
    inputs = {"texts": ["a", "b"]}

    payload, shape = EMBEDDING.encode_result(vectors)

    assert shape == (2, 4) and len(payload) == 2 * 4 * 4
    assert np.array_equal(EMBEDDING.decode_result(payload, shape, inputs), vectors)
    delivered = EMBEDDING.result_for_user(EMBEDDING.decode_result(payload, shape, inputs))
    assert EMBEDDING.encode_result(EMBEDDING.result_from_user(delivered))[0] == payload


@pytest.mark.parametrize("shape", [(3, 4), (2, 4, 1), (8,)])
def test_it_refuses_vectors_that_do_not_answer_the_inputs(shape):
    payload = np.zeros(8, dtype="<f4").tobytes()
    with pytest.raises(protocol.ProtocolError) as error:
        EMBEDDING.decode_result(payload, shape, {"texts": ["a", "b"]})
    assert error.value.code == "bad_shape"


def test_an_unknown_task_type_has_no_family():
    with pytest.raises(InputInvalid, match="no task family"):
        families.family_for("audio")


def test_the_signed_shape_of_two_dimensions_is_the_embedding_one():
    message = protocol.result_message(
        job_id="j", assignment_id="a", contract_hash="c", input_hash="i", result_hash="r", shape=(2, 384)
    )
    assert message.endswith(b"\nr\n2x384\n")
    assert protocol.shape_text((512, 512, 3)) == "512x512x3"


@pytest.mark.parametrize("raw", [None, [], [0, 3], [1, -2], [1.5], ["2"], [True], [1, 2, 3, 4, 5]])
def test_a_message_shape_is_one_to_four_positive_integers(raw):
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_shape(raw)
