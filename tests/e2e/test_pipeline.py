"""End to end with real servers: daphne, a real Celery worker (with beat) on Redis,
PostgreSQL, and two contributor node processes running the real model on loopback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bim_sdk import Client, verify_receipt
from bim_site.processes import ROOT, child_env
from ledger.accounts import account_balance
from ledger.checks import ledger_violations
from ledger.models import Account, AccountKind
from registry.models import Job, JobState
from tests.market import running_market

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

TEXTS = [
    ["Two independent contributors computed this.", "The registry verified it."],
    ["Café crème et croissant.", "東京は日本の首都です。", "A third sentence."],
    ["Credits are held on submit and captured on settle."],
]


@pytest.mark.django_db(transaction=True)
def test_jobs_settle_through_daphne_a_celery_worker_and_two_node_processes(tmp_path):
    pair = {name: "minilm-embed" for name in ("alice", "bob")}
    with running_market(tmp_path, contributors="alice,bob", nodes=pair) as (url, tokens, _):
        client = Client(url, tokens["demo-user"], timeout=30)
        jobs = [client.submit_embeddings("minilm-embed", texts, idempotency_key=f"e2e-{i}") for i, texts in enumerate(TEXTS)]
        # A retry of the first submit is the same job, not a second charge.
        assert client.submit_embeddings("minilm-embed", TEXTS[0], idempotency_key="e2e-0")["id"] == jobs[0]["id"]
        finals = [client.wait(job["id"], timeout=180) for job in jobs]
        registry_key = client.registry_key()

    for final, texts in zip(finals, TEXTS):
        assert final["state"] == "settled", final
        vectors = verify_receipt(final, registry_key=registry_key, inputs={"texts": texts})
        assert vectors.shape == (len(texts), 384)
        receipt = final["receipt"]
        assert len({n["node_id"] for n in receipt["nodes"]}) == 2
        assert receipt["verification"]["min_cosine"] >= 0.9999
    # The user's jobs (beat may have added a honeypot, which settles as well).
    assert Job.objects.filter(state=JobState.SETTLED, honeypot__isnull=True).count() == len(TEXTS)
    assert ledger_violations() == []
    spent = sum(Job.objects.values_list("price_micro", flat=True))
    received = sum(
        account_balance(account)
        for account in Account.objects.filter(
            kind__in=[AccountKind.NODE_EARNINGS, AccountKind.NODE_ESCROW, AccountKind.REGISTRY_REVENUE]
        )
    )
    assert spent == received > 0


def test_make_demo_path_settles_jobs_on_the_embedded_default(tmp_path):
    """The README's first command, on SQLite + in-memory layer + eager Celery."""
    env = child_env(
        DATABASE_URL=None,
        REDIS_URL=None,
        BIM_DEMO_DIR=str(tmp_path / "demo"),
        BIM_DEMO_JOBS="4",
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=200
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "embedded default" in done.stdout
    summary_line = [line for line in done.stdout.splitlines() if line.startswith("demo summary: ")][-1]
    summary = json.loads(summary_line.removeprefix("demo summary: "))
    assert summary["settled"] == 4 and summary["receipts_verified"] == 4
    assert summary["ledger_balanced"] is True
    assert summary["min_cosine"] >= 0.9999
    assert summary["user_spent_micro"] == summary["nodes_received_micro"] + summary["registry_received_micro"]
    assert (tmp_path / "demo" / "bim.sqlite3").exists()
