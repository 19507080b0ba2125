"""Sentinel re-runs catch a settled result that drifted (two colluders agreeing on a forgery),
and every verified pair feeds the per-environment agreement statistics."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from django.core.management import call_command

from ledger import selectors as ledger_selectors
from ledger.models import Slash
from registry import dispatch, sentinels, submit, verify
from registry.models import AgreementStat, Dispute, Job, JobState, SentinelRun, Strike
from registry.results import result_record
from subnets.models import Subnet
from subnets.services import trusted_run
from tests.factories import SubnetFactory, online_node, result_message, unit_vectors, user_with_credits

pytestmark = pytest.mark.django_db

TEXTS = ["Owls hunt mostly at night.", "The bridge inspection found no structural damage."]


def settle(subnet, vectors_a, vectors_b, envs=({}, {})) -> Job:
    pool = {k.node.pk: k for k in (online_node(subnet, **env) for env in envs)}
    job, _ = submit.job_submit(user=user_with_credits(5), subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key="s")
    dispatch.job_dispatch(job_id=job.id)
    for assignment in job.assignments.all():
        keys = pool[assignment.node_id]
        vectors = vectors_a if assignment.role == "A" else vectors_b
        result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, vectors))
    verify.job_verify(job_id=job.id)
    job.refresh_from_db()
    return job


def user_balance(user) -> int:
    return ledger_selectors.balance_totals(user=user)["credits_micro"]


@pytest.fixture
def real_subnet():
    with open(os.devnull, "w") as quiet:
        call_command("bim_seed", stdout=quiet)
    return Subnet.objects.get(slug="minilm-embed")


def test_a_sentinel_confirms_an_honest_settlement(real_subnet):
    honest = trusted_run(real_subnet, {"texts": TEXTS})
    job = settle(real_subnet, honest, honest.copy())
    assert job.state == JobState.SETTLED

    assert sentinels.sentinels_run() == 1
    run = SentinelRun.objects.get(job=job)
    assert run.passed and run.similarity >= 0.9999
    assert not Dispute.objects.exists()
    assert sentinels.sentinels_run() == 0  # each settled job is checked once


def test_a_colluding_pair_is_caught_by_a_sentinel_and_disputed(real_subnet):
    forged = unit_vectors(len(TEXTS), seed=3)
    job = settle(real_subnet, forged, forged.copy())  # two colluders agree: 2-of-2 passes
    assert job.state == JobState.SETTLED

    paid_before = user_balance(job.user)
    run = sentinels.sentinel_check(job=job)

    assert not run.passed
    # A retroactive honeypot: both colluders struck and slashed, the user refunded.
    colluders = list(job.assignments.values_list("node_id", flat=True))
    assert sorted(Strike.objects.filter(job=job).values_list("node_id", flat=True)) == sorted(colluders)
    assert Slash.objects.filter(job_id=job.pk).count() == 2
    assert user_balance(job.user) == paid_before + job.price_micro
    dispute = Dispute.objects.get(job=job)
    assert "drifted" in dispute.reason and dispute.resolved_at is None
    sentinels.dispute_resolve(dispute=dispute, resolution="nodes slashed by hand")
    dispute.refresh_from_db()
    assert dispute.resolved_at is not None


def test_every_compared_pair_feeds_its_environment_statistics():
    subnet = SubnetFactory()
    vectors = unit_vectors(2, seed=4)
    nudged = vectors + np.float32(1e-4) * unit_vectors(2, seed=5)
    nudged /= np.linalg.norm(nudged, axis=1, keepdims=True)
    envs = ({"runtime": "onnxruntime-1.32", "backend": "cpu"}, {"runtime": "ort-web-1.30", "backend": "wasm"})
    job = settle(subnet, vectors, nudged.astype(np.float32), envs)
    assert job.state == JobState.SETTLED

    stat = AgreementStat.objects.get(subnet=subnet)
    assert {stat.env_a, stat.env_b} == {"onnxruntime-1.32/cpu/?", "ort-web-1.30/wasm/?"}
    assert (stat.samples, stat.passed) == (1, 1)
    assert stat.min_similarity == pytest.approx(job.verification["worst"])
    assert 0.9999 <= stat.mean_similarity < 1.0


def test_texts_the_tokenizer_cannot_read_are_flagged_at_submit(real_subnet):
    online_node(real_subnet, ready=False)  # capacity: the registry takes jobs for the subnet
    user = user_with_credits(5)
    texts = ["The bridge inspection found no structural damage.", "ᚠᚢᚦᚨᚱᚲ ᚷᚹᚺᚾᛁᛃ ᛇᛈᛉᛊᛏᛒ"]
    job, _ = submit.job_submit(user=user, subnet_slug=real_subnet.slug, inputs={"texts": texts}, idempotency_key="runes")
    assert len(job.warnings) == 1 and job.warnings[0].startswith("texts[1]:")
    assert "unknown to the model's tokenizer" in job.warnings[0]


def test_the_tokenizer_is_found_once_not_on_every_submit(real_subnet, monkeypatch):
    """Locating the tokenizer's package walks sys.path (3 % of daphne's CPU in
    bench/throughput.py when each submit did it): it is found once per process."""
    online_node(real_subnet, ready=False)
    user = user_with_credits(5)
    submit.job_submit(user=user, subnet_slug=real_subnet.slug, inputs={"texts": ["warm"]}, idempotency_key="t0")
    lookups: list[str] = []
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: lookups.append(name) or find_spec(name, *a))
    for index, text in enumerate(["The bridge held.", "ᚠᚢᚦᚨᚱᚲ ᚷᚹᚺᚾᛁᛃ"]):
        job, _ = submit.job_submit(user=user, subnet_slug=real_subnet.slug, inputs={"texts": [text]}, idempotency_key=f"t{index + 1}")
        assert len(job.warnings) == index  # still read with the subnet's tokenizer
    assert lookups == []
