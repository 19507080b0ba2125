"""End to end with real servers: daphne, a real Celery worker (with beat) on Redis,
PostgreSQL, and two contributor node processes running the real model on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from bim_sdk import Client, verify_receipt
from bim_site.processes import ROOT, ProcessGroup, child_env, free_port
from ledger.checks import ledger_violations
from ledger.models import Account, AccountKind
from ledger.services import account_balance
from registry.models import Job, JobState

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

TEXTS = [
    ["Two independent contributors computed this.", "The registry verified it."],
    ["Café crème et croissant.", "東京は日本の首都です。", "A third sentence."],
    ["Credits are held on submit and captured on settle."],
]


def _database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.django_db(transaction=True)
def test_jobs_settle_through_daphne_a_celery_worker_and_two_node_processes(tmp_path, capsys):
    assert connection.vendor == "postgresql", "this test is about PostgreSQL + Redis"
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    with capsys.disabled():
        call_command("bim_seed", "--demo", "--contributors", "alice,bob", "--json", stdout=open(os.devnull, "w"))
    from rest_framework.authtoken.models import Token

    tokens = dict(Token.objects.values_list("user__username", "key"))
    env = child_env(
        DATABASE_URL=_database_url(),
        REDIS_URL=settings.REDIS_URL,
        BIM_CHANNEL_PREFIX=f"e2e{uuid.uuid4().hex[:8]}",
        BIM_ARTIFACT_ROOT=str(settings.ARTIFACT_ROOT),
        BIM_REGISTRY_KEY_PATH=str(settings.REGISTRY_KEY_PATH),
        BIM_NODE_HEARTBEAT_S="2",
    )
    group = ProcessGroup(log_dir=tmp_path / "logs", env=env)
    try:
        url = group.start_registry(free_port())
        group.start_worker(beat=True)
        for name in ("alice", "bob"):
            group.start_node(name, registry=url, token=tokens[name], subnet="minilm-embed", state_dir=tmp_path / "nodes")
        client = Client(url, tokens["demo-user"], timeout=30)
        jobs = [client.submit_embeddings("minilm-embed", texts, idempotency_key=f"e2e-{i}") for i, texts in enumerate(TEXTS)]
        # A retry of the first submit is the same job, not a second charge.
        assert client.submit_embeddings("minilm-embed", TEXTS[0], idempotency_key="e2e-0")["id"] == jobs[0]["id"]
        finals = [client.wait(job["id"], timeout=180) for job in jobs]
        registry_key = client.registry_key()
    finally:
        group.stop()

    for final, texts in zip(finals, TEXTS):
        assert final["state"] == "settled", final
        vectors = verify_receipt(final, registry_key=registry_key, inputs={"texts": texts})
        assert vectors.shape == (len(texts), 384)
        receipt = final["receipt"]
        assert len({n["node_id"] for n in receipt["nodes"]}) == 2
        assert receipt["verification"]["min_cosine"] >= 0.9999
    assert Job.objects.filter(state=JobState.SETTLED).count() == len(TEXTS)
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
