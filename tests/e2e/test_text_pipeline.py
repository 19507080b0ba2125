"""Text jobs end to end: daphne, a real Celery worker on Redis, PostgreSQL and two node
processes running SmolLM2 under llama.cpp; the user streams the tokens as they are
generated and then receives the receipt-verified text."""

from __future__ import annotations

import pytest

from bim_core.runtimes.generator import Generator
from bim_sdk import Client, TextDelta, TextResult
from ledger.checks import ledger_violations
from ledger.models import Transfer
from registry.models import Job, JobState
from subnets import defaults
from subnets.services import packaged_file
from tests.market import running_market

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PROMPTS = [("Give me a one-sentence greeting.", 32), ("Write a short poem about the sea.", 24)]


@pytest.mark.django_db(transaction=True)
def test_text_jobs_stream_tokens_and_settle_with_verified_receipts(tmp_path):
    pair = {name: defaults.TEXT_SLUG for name in ("alice", "bob")}
    with running_market(tmp_path, contributors="alice,bob", nodes=pair) as (url, tokens, _):
        client = Client(url, tokens["demo-user"], timeout=30)
        prompt, max_tokens = PROMPTS[0]
        events = list(client.generate(defaults.TEXT_SLUG, prompt, max_tokens, stream=True, timeout=180))
        plain = client.generate(defaults.TEXT_SLUG, *PROMPTS[1], timeout=180)

    *deltas, streamed = events
    assert all(isinstance(delta, TextDelta) for delta in deltas) and isinstance(streamed, TextResult)
    # The preview grew while the nodes generated, and it was the text that was then verified.
    assert deltas and streamed.text.startswith("".join(d.text for d in deltas))
    local = Generator.from_preprocessing(
        packaged_file(defaults.TEXT_MODEL.package, defaults.TEXT_MODEL.path),
        defaults.text_subnet_settings()["preprocessing"],
    )
    for (prompt, max_tokens), result in zip(PROMPTS, [streamed, plain], strict=True):
        receipt = result.receipt
        assert receipt["verification"]["path"] == "2-of-2" and receipt["verification"]["metric"] == "tokens"
        assert len({n["node_id"] for n in receipt["nodes"]}) == 2
        # What the nodes agreed on is what this machine's copy of the model generates.
        generation = local.generate(prompt, max_tokens)
        assert (result.tokens, result.text, result.finish) == (generation.tokens, generation.text, generation.finish)
        job = Job.objects.get(pk=result.job["id"])
        capture = Transfer.objects.get(job_id=job.pk, kind="capture").amount
        assert capture == 333 + 1_000 * len(result.tokens) <= job.price_micro
    assert Job.objects.filter(state=JobState.SETTLED, subnet__slug=defaults.TEXT_SLUG, user__username="demo-user").count() == 2
    assert ledger_violations() == []
