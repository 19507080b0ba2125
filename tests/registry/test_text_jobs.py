"""Text jobs through the registry with the real SmolLM2 model: submit holds max_tokens,
settlement captures the tokens generated, and a pair that differs is settled by re-scoring
both claimed sequences on the registry's trusted runner (one teacher-forced pass each)."""

from __future__ import annotations

import functools
import hashlib

import pytest

from bim_core import families, protocol
from bim_sdk import verify_receipt
from ledger.accounts import account_balance
from ledger.models import Account, AccountKind, Transfer
from registry import benchmarks, dispatch, honeypots, submit, verify
from registry.honeypots import honeypot_pool_refresh
from registry.keys import registry_public_key
from registry.models import AssignmentState, BenchmarkState, JobState, NodeSubnet, Strike
from registry.results import partial_record, result_record
from subnets import defaults
from subnets.models import Artifact
from subnets.services import benchmark_reference_compute, packaged_file, trusted_rescore, trusted_run
from tests.factories import LicenseFactory, SubnetFactory, online_node, result_message, user_with_credits

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(300)]

INPUTS = {"prompt": "What is 2 + 2?", "max_tokens": 48}
TEXT = families.family_for("text")


@functools.cache
def model_checksum() -> str:
    path = packaged_file(defaults.TEXT_MODEL.package, defaults.TEXT_MODEL.path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def text_subnet(**overrides):
    """The text subnet's real settings and model file (registered without chunking it:
    the registry's trusted runner reads the packaged file)."""
    settings = {**defaults.text_subnet_settings(), **overrides}
    subnet = SubnetFactory(**settings, model_checksum=model_checksum(), license=LicenseFactory(slug="apache-smollm2"))
    Artifact.objects.create(
        subnet=subnet,
        role=Artifact.Role.MODEL,
        name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256=model_checksum(),
        size=1,
        chunk_size=1,
        source=f"{defaults.TEXT_MODEL.package}:{defaults.TEXT_MODEL.path}",
    )
    return subnet


def run_pair(subnet, a_result: dict, b_result: dict, inputs: dict = INPUTS):
    pool = {keys.node.pk: keys for keys in (online_node(subnet) for _ in range(3))}
    user = user_with_credits(10)
    job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs=inputs, idempotency_key="text")
    dispatch.job_dispatch(job_id=job.id)
    for role, result in (("A", a_result), ("B", b_result)):
        assignment = job.assignments.get(role=role, state=AssignmentState.DISPATCHED)
        keys = pool[assignment.node_id]
        result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, result))
    verify.job_verify(job_id=job.id)
    job.refresh_from_db()
    return job, user


def honest(subnet, inputs: dict = INPUTS) -> dict:
    return trusted_run(subnet, inputs)


def with_token(subnet, result: dict, position: int, token: int) -> dict:
    """The same generation with one token replaced, and a text that matches it (a careful
    forger keeps the text consistent: only the logits can tell)."""
    tokens = list(result["tokens"])
    tokens[position] = token
    generator = trusted_run.__globals__["_trusted_runner_for"](subnet).generator
    body = tokens[:-1] if result["finish"] == "stop" else tokens
    return {"finish": result["finish"], "text": generator.detokenize(body), "tokens": tokens}


def node_income(node_id) -> int:
    return sum(account_balance(a) for a in Account.objects.filter(node_id=node_id))


def test_a_text_job_holds_max_tokens_and_captures_the_tokens_generated():
    subnet = text_subnet()
    result = honest(subnet)
    job, user = run_pair(subnet, result, result)

    assert job.state == JobState.SETTLED and job.verification["path"] == "2-of-2"
    assert job.price_micro == 333 + 1_000 * 48
    used = len(result["tokens"])
    assert result["finish"] == "stop" and used < 48  # the model stops by itself here
    capture = Transfer.objects.get(job_id=job.pk, kind="capture")
    release = Transfer.objects.get(job_id=job.pk, kind="release")
    assert capture.amount == 333 + 1_000 * used
    assert release.amount == job.price_micro - capture.amount
    assert account_balance(Account.objects.get(kind=AccountKind.USER_CREDITS, user=user)) == 10_000_000 - capture.amount
    assert job.receipt["settlement"]["price_micro"] == capture.amount
    assert job.receipt["verification"]["metric"] == "tokens"


def test_a_forged_token_is_caught_by_rescoring_and_the_honest_node_is_paid_alone(client):
    subnet = text_subnet()
    result = honest(subnet)
    forged = with_token(subnet, result, 3, 1000)
    job, user = run_pair(subnet, result, forged)

    assert job.state == JobState.SETTLED
    verification = job.verification
    assert verification["path"] == "rescored" and verification["majority"] == ["A"]
    assert verification["rescoring"]["A"]["accepted"] and verification["rescoring"]["A"]["max_gap"] < 1.5
    assert not verification["rescoring"]["B"]["accepted"]
    assert verification["rescoring"]["B"]["failing_positions"][0] == 3
    a, b = job.assignments.get(role="A"), job.assignments.get(role="B")
    assert (a.state, b.state) == (AssignmentState.AGREED, AssignmentState.DISAGREED)
    assert Strike.objects.filter(node_id=b.node_id, job=job).count() == 1
    assert node_income(b.node_id) == 0
    capture = Transfer.objects.get(job_id=job.pk, kind="capture").amount
    # A earns node A's share; the registry, which re-scored, keeps the tie-breaker's.
    assert node_income(a.node_id) == capture * 4000 // 10_000

    from rest_framework.authtoken.models import Token

    client.defaults["HTTP_AUTHORIZATION"] = f"Token {Token.objects.create(user=user).key}"
    body = client.get(f"/api/v1/jobs/{job.id}/").json()
    delivered = verify_receipt(body, registry_key=registry_public_key(), inputs=INPUTS)
    assert delivered["tokens"] == result["tokens"] and delivered["text"] == result["text"]
    assert body["receipt"]["verification"]["path"] == "rescored"
    assert [n["role"] for n in body["receipt"]["nodes"]] == ["A"]


def test_both_sequences_within_the_margin_settle_as_honest_nondeterminism():
    # A margin wide enough that a substituted ordinary token passes stands in for two
    # honest nodes whose CPUs flipped a near-tie.
    subnet = text_subnet(tolerances={"edit_distance": 0.1, "logit_margin": 100.0})
    result = honest(subnet)
    flipped = with_token(subnet, result, 3, 1000)
    job, _ = run_pair(subnet, result, flipped)

    assert job.state == JobState.SETTLED and job.verification["path"] == "rescored"
    assert job.verification["majority"] == ["A", "B"]
    assert not Strike.objects.filter(job=job).exists()
    assert {n["role"] for n in job.receipt["nodes"]} == {"A", "B"}
    assert job.receipt["result_hash"] == job.assignments.get(role="A").result_hash


def test_neither_sequence_within_the_margin_fails_the_job_and_refunds_the_user():
    subnet = text_subnet()
    result = honest(subnet)
    job, user = run_pair(subnet, with_token(subnet, result, 2, 1000), with_token(subnet, result, 4, 777))

    assert job.state == JobState.FAILED and job.verification["path"] == "rescored"
    assert job.verification["majority"] == []
    assert not Transfer.objects.filter(job_id=job.pk, kind__in=["capture", "payout"]).exists()
    assert account_balance(Account.objects.get(kind=AccountKind.USER_CREDITS, user=user)) == 10_000_000
    assert Strike.objects.filter(job=job).count() == 2


def test_a_truncated_generation_that_claims_to_stop_is_rejected():
    subnet = text_subnet()
    result = honest(subnet)
    generator = trusted_run.__globals__["_trusted_runner_for"](subnet).generator
    cut = [*result["tokens"][:5], 2]  # <|im_end|> where the model did not stop
    truncated = {"finish": "stop", "text": generator.detokenize(cut[:-1]), "tokens": cut}
    job, _ = run_pair(subnet, truncated, result)

    assert job.state == JobState.SETTLED and job.verification["majority"] == ["B"]
    assert job.verification["rescoring"]["A"]["failing_positions"] == [5]


def test_a_text_that_is_not_the_tokens_text_is_rejected():
    subnet = text_subnet()
    result = honest(subnet)
    lying = {**result, "text": result["text"] + " Buy credits now!"}
    job, _ = run_pair(subnet, result, lying)

    assert job.verification["majority"] == ["A"]
    assert job.verification["rescoring"]["B"]["problems"] == ["text is not the decoded tokens"]


def test_rescoring_an_honest_generation_finds_every_token_within_the_margin():
    subnet = text_subnet()
    result = honest(subnet, {"prompt": "Write a short poem about the sea.", "max_tokens": 64})
    rescoring = trusted_rescore(subnet, {"prompt": "Write a short poem about the sea.", "max_tokens": 64}, result)
    assert rescoring.problems == []
    gaps = [top - claimed for claimed, top in rescoring.positions]
    assert len(gaps) == len(result["tokens"]) and max(gaps) <= 1.5


def test_submit_refuses_more_tokens_than_the_subnet_allows_and_prompts_over_its_byte_bound():
    subnet = text_subnet()
    user = user_with_credits(1)
    from bim_core.errors import ServiceError

    with pytest.raises(ServiceError, match="max_tokens must be an integer from 1 to 256"):
        submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"prompt": "hi", "max_tokens": 257}, idempotency_key="k1")
    with pytest.raises(ServiceError, match="1600 bytes"):
        submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"prompt": "東" * 600, "max_tokens": 8}, idempotency_key="k2")


def test_the_streamed_text_is_shown_unverified_while_the_job_runs(client):
    subnet = text_subnet()
    pool = {keys.node.pk: keys for keys in (online_node(subnet) for _ in range(3))}
    user = user_with_credits(1)
    job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs=INPUTS, idempotency_key="stream")
    dispatch.job_dispatch(job_id=job.id)
    a, b = job.assignments.get(role="A"), job.assignments.get(role="B")
    outsider = online_node(subnet)

    from rest_framework.authtoken.models import Token

    client.defaults["HTTP_AUTHORIZATION"] = f"Token {Token.objects.create(user=user).key}"
    assert client.get(f"/api/v1/jobs/{job.id}/").json()["partial"] is None
    partial_record(node_id=a.node_id, message={"assignment_id": str(a.id), "text": "The answer", "tokens": 2})
    partial_record(node_id=b.node_id, message={"assignment_id": str(b.id), "text": "The", "tokens": 1})
    # Another node's assignment id: ignored, like a partial for a closed assignment.
    partial_record(node_id=outsider.node.pk, message={"assignment_id": str(a.id), "text": "spam", "tokens": 99})
    partial = client.get(f"/api/v1/jobs/{job.id}/").json()["partial"]
    assert partial == {"text": "The answer", "tokens": 2, "role": "A", "verified": False}
    with pytest.raises(protocol.ProtocolError, match="malformed partial"):
        partial_record(node_id=a.node_id, message={"assignment_id": str(a.id), "text": 5, "tokens": 1})

    result = honest(subnet)
    for assignment in (a, b):
        keys = pool[assignment.node_id]
        result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, result))
    verify.job_verify(job_id=job.id)
    body = client.get(f"/api/v1/jobs/{job.id}/").json()
    assert body["state"] == "settled" and body["partial"] is None
    assert verify_receipt(body, registry_key=registry_public_key(), inputs=INPUTS)["text"] == result["text"]


def run_text_honeypot(subnet):
    """A honeypot whose A answers the registry's own tokens and B one token changed."""
    honeypot_pool_refresh(subnet=subnet, pool=defaults.text_honeypot_pool()[:1])
    pool = {keys.node.pk: keys for keys in (online_node(subnet) for _ in range(3))}
    job = honeypots.honeypot_issue(subnet=subnet)
    assert job.price_micro == 0 and job.inputs == defaults.text_honeypot_pool()[0]
    dispatch.job_dispatch(job_id=job.id)
    answer = honest(subnet, job.inputs)
    for assignment in job.assignments.all():
        claimed = answer if assignment.role == "A" else with_token(subnet, answer, 1, 1000)
        keys = pool[assignment.node_id]
        result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, claimed))
    verify.job_verify(job_id=job.id)
    job.refresh_from_db()
    assert job.verification["path"] == "honeypot"
    return job


def test_a_text_honeypot_strikes_the_node_that_forged_its_answer():
    job = run_text_honeypot(text_subnet(honeypot_rate_bp=10_000))
    results = job.verification["results"]
    assert results["A"]["passed"] and "rescoring" not in results["A"]
    assert not results["B"]["passed"] and results["B"]["rescoring"]["failing_positions"][0] == 1
    assert Strike.objects.filter(job=job, node_id=job.assignments.get(role="B").node_id).count() == 1


def test_a_text_honeypot_answer_that_differs_within_the_margin_is_not_punished():
    # A wide margin stands in for an honest node whose CPU flipped a near-tie.
    job = run_text_honeypot(text_subnet(honeypot_rate_bp=10_000, tolerances={"edit_distance": 0.1, "logit_margin": 100.0}))
    results = job.verification["results"]
    assert results["B"]["passed"] and results["B"]["rescoring"]["accepted"]
    assert not Strike.objects.filter(job=job).exists()


def text_benchmark_answer(subnet, claimed: dict, capture) -> tuple[object, dict]:
    """A fresh node's benchmark of the subnet, answered with `claimed`, signed by the node."""
    keys = online_node(subnet, benchmarked=False)
    with capture(execute=True):
        benchmark = benchmarks.benchmark_issue(link=NodeSubnet.objects.get(node=keys.node, subnet=subnet))
    payload, shape = TEXT.encode_result(claimed)
    signed = protocol.benchmark_message(
        benchmark_id=str(benchmark.id), result_hash=protocol.sha256_hex(payload), shape=shape, timings_ms=[900.0, 800.0]
    )
    return keys, {
        "type": "benchmark_result",
        "benchmark_id": str(benchmark.id),
        "encoding": TEXT.encoding,
        "data": protocol.b64encode(payload),
        "result_hash": protocol.sha256_hex(payload),
        "shape": list(shape),
        "timings_ms": [900.0, 800.0],
        "signature": protocol.sign(keys.session, signed),
    }


def test_a_text_node_passes_the_benchmark_only_with_the_registrys_own_tokens(django_capture_on_commit_callbacks):
    subnet = text_subnet()
    reference = benchmark_reference_compute(subnet=subnet, inputs=defaults.TEXT_BENCHMARK_INPUTS)
    expected = honest(subnet, defaults.TEXT_BENCHMARK_INPUTS)
    assert TEXT.decode_result(bytes(reference.result), tuple(reference.shape), reference.inputs) == expected
    for claimed, passes in ((expected, True), (with_token(subnet, expected, 2, 1000), False)):
        keys, message = text_benchmark_answer(subnet, claimed, django_capture_on_commit_callbacks)
        if passes:
            assert benchmarks.benchmark_record(node_id=keys.node.pk, message=message).state == BenchmarkState.PASSED
        else:
            with pytest.raises(protocol.ProtocolError, match="benchmark_refused.*re-scored: tokens at \\[2, "):
                benchmarks.benchmark_record(node_id=keys.node.pk, message=message)


def test_a_text_benchmark_that_differs_within_the_margin_passes_by_rescoring(django_capture_on_commit_callbacks):
    # Another runtime of the same model (a browser's llama.cpp in WebAssembly) flips near-ties;
    # a margin wide enough that a substituted ordinary token passes stands in for such a flip,
    # as in test_both_sequences_within_the_margin_settle_as_honest_nondeterminism.
    subnet = text_subnet(tolerances={"edit_distance": 0.1, "logit_margin": 100.0})
    benchmark_reference_compute(subnet=subnet, inputs=defaults.TEXT_BENCHMARK_INPUTS)
    expected = honest(subnet, defaults.TEXT_BENCHMARK_INPUTS)
    flipped = with_token(subnet, expected, 2, 1000)
    keys, message = text_benchmark_answer(subnet, flipped, django_capture_on_commit_callbacks)
    benchmark = benchmarks.benchmark_record(node_id=keys.node.pk, message=message)
    assert benchmark.state == BenchmarkState.PASSED and benchmark.items_per_s > 0
    assert NodeSubnet.objects.get(node=keys.node, subnet=subnet).score > 0

    # Within the margin is not enough: a stop token before the end fails whatever the logits.
    stop_inside = {**expected, "tokens": [expected["tokens"][0], 2, *expected["tokens"][2:]]}
    stop_inside["text"] = with_token(subnet, expected, 1, 2)["text"]
    keys, message = text_benchmark_answer(subnet, stop_inside, django_capture_on_commit_callbacks)
    with pytest.raises(protocol.ProtocolError, match="benchmark_refused.*re-scored: stop token at position 1"):
        benchmarks.benchmark_record(node_id=keys.node.pk, message=message)
