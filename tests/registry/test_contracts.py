"""The Appendix A job contract: built and validated against its schema, bound to the job's
inputs by its hashes, and immutable once written: the database refuses to change it."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction

from bim_core import protocol
from bim_core.contracts import CONTRACT_SCHEMA, ContractInvalid, build_contract, validate_contract
from registry.models import Job, JobState
from registry.submit import job_submit
from tests.factories import served_subnet, user_with_credits

TEXTS = ["one small text", "another text", "a third one"]
SESSION_KEY = protocol.public_key_b64(protocol.new_private_key())


def contract_fields(**overrides: Any) -> dict[str, Any]:
    fields = {
        "job_id": str(uuid.UUID(int=1)),
        "subnet": "minilm-embed",
        "task_type": "embedding",
        "model_id": "sentence-transformers/all-MiniLM-L6-v2:onnx-int8",
        "model_checksum": "ab" * 32,
        "runtime_id": "onnxruntime/opset17-int8w-fp32",
        "tokenizer_checksum": "cd" * 32,
        "determinism": {"temperature": 0, "top_p": 1, "seed": 0},
        "tolerances": {"cosine_min": 0.9999, "norm_tolerance": 0.001},
        "preprocessing": {"max_tokens": 256, "pooling": "mean", "normalize": True},
        "input_hash": protocol.input_hash({"texts": TEXTS}),
        "limits": {"max_items": 64, "latency_ms": 60_000},
        "session_key_pub": SESSION_KEY,
        "trusted": False,
    }
    fields.update(overrides)
    return fields


# ---------------------------------------------------------------- schema (pure)


def test_a_built_contract_holds_every_field_and_validates():
    fields = contract_fields()
    contract = build_contract(**fields)
    assert contract == fields
    validate_contract(contract)


@pytest.mark.parametrize("flag", ["yes", 1, None])
def test_the_trusted_flag_is_a_boolean(flag):
    assert build_contract(**contract_fields(trusted=True))["trusted"] is True
    with pytest.raises(ContractInvalid, match="trusted"):
        validate_contract({**build_contract(**contract_fields()), "trusted": flag})


def test_a_contract_from_before_the_trusted_flag_still_validates():
    contract = build_contract(**contract_fields())
    del contract["trusted"]
    validate_contract(contract)


def test_the_tokenizer_checksum_may_be_empty():
    validate_contract(build_contract(**contract_fields(tokenizer_checksum="")))


@pytest.mark.parametrize("field", CONTRACT_SCHEMA["required"])
def test_it_refuses_a_contract_missing_a_required_field(field):
    contract = contract_fields()
    del contract[field]
    with pytest.raises(ContractInvalid, match=field):
        validate_contract(contract)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_checksum", "AB" * 32),  # hashes are lower-case hex
        ("model_checksum", "ab" * 31),
        ("model_checksum", "ab" * 32 + "0"),
        ("model_checksum", "zz" * 32),
        ("model_checksum", ""),
        ("input_hash", "0" * 63),
        ("input_hash", "g" * 64),
        ("input_hash", "sha256:" + "0" * 64),
        ("tokenizer_checksum", "abc"),
    ],
)
def test_it_refuses_a_malformed_hash(field, value):
    with pytest.raises(ContractInvalid, match=field):
        validate_contract(contract_fields(**{field: value}))
    with pytest.raises(ContractInvalid):
        build_contract(**contract_fields(**{field: value}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("session_key_pub", "not a key"),
        ("session_key_pub", SESSION_KEY[:-1]),
        ("job_id", ""),
        ("task_type", "audio"),
        ("determinism", {"temperature": -1}),
        ("determinism", {"top_p": 1.5}),
        ("determinism", {"seed": 0.5}),
        ("tolerances", {"cosine_min": 1.1}),
        ("tolerances", {"norm_tolerance": -0.1}),
        ("limits", {"max_items": 64}),
        ("limits", {"latency_ms": 0}),
        ("preprocessing", "mean"),
        ("license", {"slug": "apache-2.0"}),
        ("license", {"slug": "apache-2.0", "version": ""}),
        ("license", {"slug": "apache-2.0", "version": "2.0", "paid": True}),
    ],
)
def test_it_refuses_an_out_of_range_field(field, value):
    with pytest.raises(ContractInvalid, match=field):
        validate_contract(contract_fields(**{field: value}))


def test_it_refuses_an_unknown_field():
    contract = contract_fields()
    contract["price"] = 0
    with pytest.raises(ContractInvalid, match="price"):
        validate_contract(contract)


def test_the_contract_hash_does_not_depend_on_key_order():
    contract = contract_fields()
    reordered = dict(reversed(list(copy.deepcopy(contract).items())))
    assert protocol.contract_hash(reordered) == protocol.contract_hash(contract)
    assert protocol.contract_hash(contract_fields(runtime_id="other")) != protocol.contract_hash(contract)


# ---------------------------------------------------------------- contracts of submitted jobs


def submitted_job(**job_kwargs: Any) -> Job:
    subnet = served_subnet(tokenizer_checksum="ef" * 32, determinism={"temperature": 0, "top_p": 1, "seed": 0})
    job, _ = job_submit(
        user=user_with_credits(10), subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key="k1", **job_kwargs
    )
    return Job.objects.get(pk=job.pk)  # as stored, not as built


@pytest.mark.usefixtures("db")
def test_a_submitted_job_carries_a_valid_contract_bound_to_its_inputs():
    job = submitted_job(session_key_pub=SESSION_KEY)
    subnet = job.subnet
    contract = job.contract

    validate_contract(contract)
    assert contract["input_hash"] == protocol.input_hash({"texts": TEXTS})
    assert contract["input_hash"] == protocol.input_hash(job.inputs)
    assert job.contract_hash == protocol.contract_hash(contract)
    assert contract["job_id"] == str(job.pk)
    assert contract["session_key_pub"] == SESSION_KEY
    assert (contract["subnet"], contract["task_type"], contract["model_id"]) == (
        subnet.slug,
        subnet.task_type,
        subnet.model_id,
    )
    assert (contract["model_checksum"], contract["runtime_id"], contract["tokenizer_checksum"]) == (
        subnet.model_checksum,
        subnet.runtime_id,
        subnet.tokenizer_checksum,
    )
    assert contract["tolerances"] == subnet.tolerances
    assert contract["determinism"] == subnet.determinism
    assert contract["limits"] == {"max_items": subnet.max_items_per_job, "latency_ms": subnet.latency_ms}


@pytest.mark.usefixtures("db")
def test_a_job_submitted_without_a_session_key_gets_a_fresh_one():
    job = submitted_job()
    validate_contract(job.contract)
    assert len(protocol.b64decode(job.contract["session_key_pub"])) == 32


# ---------------------------------------------------------------- immutability in the database


IMMUTABLE = {
    "contract": lambda job: {**job.contract, "model_checksum": "00" * 32},
    "contract_hash": lambda job: "00" * 32,
    "inputs": lambda job: {"texts": ["something else"]},
    "price_micro": lambda job: 1,
    "subnet_id": lambda job: served_subnet().pk,
    "user_id": lambda job: user_with_credits(0).pk,
}


def assert_unchanged(job: Job) -> None:
    stored = Job.objects.get(pk=job.pk)
    assert (stored.contract, stored.contract_hash) == (job.contract, job.contract_hash)
    assert protocol.contract_hash(stored.contract) == stored.contract_hash


@pytest.mark.usefixtures("db")
@pytest.mark.parametrize("column", IMMUTABLE)
def test_the_database_refuses_an_update_of_the_contract(column):
    job = submitted_job()
    value = IMMUTABLE[column](job)

    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.filter(pk=job.pk).update(**{column: value})

    assert_unchanged(job)


@pytest.mark.usefixtures("db")
def test_the_database_refuses_saving_a_changed_contract():
    job = submitted_job()
    original = copy.deepcopy(job.contract)

    job.contract["input_hash"] = "0" * 64
    with pytest.raises(IntegrityError), transaction.atomic():
        job.save()
    with pytest.raises(IntegrityError), transaction.atomic():
        job.save(update_fields=["contract"])

    job.contract = original
    assert_unchanged(job)


@pytest.mark.usefixtures("db")
def test_the_database_refuses_raw_sql_changing_the_contract():
    job = submitted_job()
    forged = json.dumps({**job.contract, "model_checksum": "00" * 32})

    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE registry_job SET contract = %s WHERE id = %s", [forged, job.pk.hex])
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE registry_job SET contract_hash = %s WHERE id = %s", ["00" * 32, job.pk.hex])

    assert_unchanged(job)


@pytest.mark.usefixtures("db")
def test_the_rest_of_a_job_may_still_change():
    job = submitted_job()

    Job.objects.filter(pk=job.pk).update(state=JobState.DISPATCHED)
    job.refresh_from_db()
    job.state = JobState.VERIFYING  # not terminal: a failed job would also need its release
    job.failure_reason = "test"
    job.save()  # a full save rewrites the contract columns with equal values: allowed
    with connection.cursor() as cursor:
        cursor.execute("UPDATE registry_job SET verification = %s WHERE id = %s", ['{"passed": false}', job.pk.hex])

    job.refresh_from_db()
    assert (job.state, job.failure_reason, job.verification) == (JobState.VERIFYING, "test", {"passed": False})
    assert_unchanged(job)


# ---------------------------------------------------------------- the fast validator


def _mutations() -> Any:
    """A valid contract with one field (or a nested field) replaced by arbitrary JSON, or
    removed, or an unknown field added: the shapes a hostile or broken peer could send."""
    from hypothesis import strategies as st

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=80),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
        max_leaves=6,
    )
    base = contract_fields(license={"slug": "apache-2.0", "version": "2.0"})
    nested = {"determinism": ["temperature", "top_p", "seed"], "tolerances": ["cosine_min", "phash_max"],
              "limits": ["max_items", "latency_ms", "max_chars"], "license": ["slug", "version"]}
    replace_top = st.builds(lambda f, v: {**base, f: v}, st.sampled_from([*base, "transport", "input_summary", "policy"]), json_values)
    replace_nested = st.sampled_from(sorted(nested)).flatmap(
        lambda f: st.builds(lambda k, v: {**base, f: {**base[f], k: v}}, st.sampled_from(nested[f]), json_values)
    )
    hashes_nearly = st.builds(
        lambda f, suffix: {**base, f: "ab" * 32 + suffix}, st.sampled_from(["model_checksum", "input_hash"]), st.sampled_from(["\n", " ", "0", ""])
    )
    key_nearly = st.builds(lambda suffix: {**base, "session_key_pub": SESSION_KEY + suffix}, st.sampled_from(["\n", " ", "=", ""]))
    removed = st.sampled_from(sorted(base)).map(lambda f: {k: v for k, v in base.items() if k != f})
    return replace_top | replace_nested | hashes_nearly | key_nearly | removed


def test_the_fast_validator_passes_nothing_jsonschema_refuses():
    """validate_contract asks jsonschema-rs first and trusts its "valid": sound only while
    every contract it passes, jsonschema passes too (the refusals and their messages are
    jsonschema's). Checked on every refusal case above and on generated hostile shapes."""
    from hypothesis import given, settings

    from bim_core.contracts import _FAST_VALIDATOR, _VALIDATOR

    @settings(max_examples=600, deadline=None, database=None)
    @given(_mutations())
    def check(contract: dict[str, Any]) -> None:
        if _FAST_VALIDATOR.is_valid(contract):
            assert _VALIDATOR.is_valid(contract), contract

    check()
    for contract in (contract_fields(model_checksum="AB" * 32), contract_fields(session_key_pub="x"), {**contract_fields(), "price": 0}):
        assert not _FAST_VALIDATOR.is_valid(contract)
