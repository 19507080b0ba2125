"""The text task family: inputs a user may submit, the canonical JSON a node signs, and
what a result may claim for its inputs. Pure: no database, no model."""

from __future__ import annotations

import pytest

from bim_core import families, protocol
from bim_core.job_inputs import InputInvalid, SubnetLimits

TEXT = families.family_for("text")
LIMITS = SubnetLimits(max_items=1, max_chars=100, preprocessing={"max_new_tokens": 64})
INPUTS = {"prompt": "Say hello.", "max_tokens": 8}


def test_inputs_are_a_prompt_and_max_tokens_within_the_subnets_limits():
    assert TEXT.validate_inputs({"prompt": "hi", "max_tokens": 64}, LIMITS) == {"prompt": "hi", "max_tokens": 64}
    for raw, message in [
        ({"prompt": "hi", "max_tokens": 65}, "from 1 to 64"),
        ({"prompt": "hi", "max_tokens": 0}, "from 1 to 64"),
        ({"prompt": "hi", "max_tokens": True}, "from 1 to 64"),
        ({"prompt": "hi", "max_tokens": "8"}, "from 1 to 64"),
        ({"prompt": "  ", "max_tokens": 8}, "non-empty string"),
        ({"prompt": "é" * 51, "max_tokens": 8}, "100 bytes"),  # 51 characters, 102 bytes
        ({"prompt": "hi", "max_tokens": 8, "temperature": 1}, "only prompt and max_tokens"),
    ]:
        with pytest.raises(InputInvalid, match=message):
            TEXT.validate_inputs(raw, LIMITS)


def test_the_hold_covers_max_tokens_and_the_capture_the_tokens_generated():
    assert TEXT.item_count(INPUTS) == 1
    assert TEXT.price_units(INPUTS) == 8
    assert TEXT.used_units(INPUTS, {"tokens": [5, 6, 2]}) == 3


def test_a_result_round_trips_through_canonical_json():
    result = {"finish": "stop", "text": "Hallo, Köln!", "tokens": [10, 11, 2]}
    payload, shape = TEXT.encode_result(result)
    assert payload == protocol.canonical_json(result) and shape == (3,)
    assert TEXT.decode_result(payload, shape, INPUTS) == result
    assert TEXT.result_from_user(TEXT.result_for_user(result)) == result


@pytest.mark.parametrize(
    ("payload", "shape", "code"),
    [
        (b'{"finish":"stop","text":"a","tokens":[1,2]}', (3,), "bad_shape"),  # shape is not the token count
        (b'{"finish":"length","text":"a","tokens":[1,2]}', (2,), "bad_shape"),  # "length" before max_tokens
        (b'{"finish":"stop","text":"a","tokens":[1,2,3,4,5,6,7,8,9]}', (9,), "bad_shape"),  # over max_tokens
        (b'{"finish":"stop","text":"a","tokens":[1,-2]}', (2,), "bad_message"),
        (b'{"finish":"stop","text":"a","tokens":[1,true]}', (2,), "bad_message"),
        (b'{"finish":"eos","text":"a","tokens":[1,2]}', (2,), "bad_message"),
        (b'{"finish":"stop","text":"a","tokens":[1,2],"logits":[]}', (2,), "bad_message"),
        (b'{"finish": "stop", "text": "a", "tokens": [1, 2]}', (2,), "bad_message"),  # not canonical
        (b"\xff", (1,), "bad_message"),
    ],
)
def test_a_result_that_cannot_answer_the_inputs_is_refused(payload, shape, code):
    with pytest.raises(protocol.ProtocolError) as refused:
        TEXT.decode_result(payload, shape, INPUTS)
    assert refused.value.code == code
