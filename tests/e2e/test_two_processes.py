"""Beyond one machine: the registry's processes share nothing but PostgreSQL and Redis. Two
daphne processes and two Celery workers (one with beat) run on loopback against the one
database and the one Redis; alice's two nodes are connected to the first process and bob's
two to the second. The subnet's diversity rule (distinct owners) pairs an alice node with a
bob node, so every job's two nodes sit on different processes: its offers cross the channel
layer from whichever process or worker dispatched it, its two results arrive at different
processes, and it must settle with a receipt that verifies. Jobs are submitted through
both processes' APIs and read back through the other one's."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from django.core.management import call_command

from bim_sdk import Client, verify_receipt
from bim_site.celery import app as celery_app
from ledger.accounts import account_balance
from ledger.models import Account, AccountKind
from registry.models import Assignment, Job, JobState, Node
from tests.market import MarketNode, running_market

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SUBNET = "minilm-embed"
# Node name -> (owner, which registry process it connects to).
NODES = {
    "alice-1": MarketNode(SUBNET, owner="alice", registry=0),
    "alice-2": MarketNode(SUBNET, owner="alice", registry=0),
    "bob-1": MarketNode(SUBNET, owner="bob", registry=1),
    "bob-2": MarketNode(SUBNET, owner="bob", registry=1),
}
JOBS_PER_PROCESS = 4


def texts_for(process: int, i: int) -> list[str]:
    return [f"Submitted on registry process {process + 1}, job {i}.", "Its two nodes sit on different processes."]


def channel_layer_instance(channel_name: str) -> str:
    """channels-redis names a socket's channel `specific.<prefix>!<id>`, the prefix drawn
    once per channel layer, that is once per daphne process."""
    assert channel_name.startswith("specific.") and "!" in channel_name, channel_name
    return channel_name.split("!", 1)[0]


def node_processes() -> dict[str, str]:
    """Each online node's channel-layer instance, by node name."""
    return {node.name: channel_layer_instance(node.channel_name) for node in Node.objects.filter(is_online=True)}


@pytest.mark.django_db(transaction=True)
def test_jobs_whose_nodes_sit_on_two_registry_processes_settle(tmp_path):
    market = running_market(tmp_path, contributors="alice,bob", nodes=NODES, registries=2, workers=2)
    with market as (_, tokens, group):
        urls = list(group.registries.values())
        assert len(urls) == 2 and urls[0] != urls[1]
        clients = [Client(url, tokens["demo-user"], timeout=30) for url in urls]
        # Both processes sign with the one registry key.
        registry_key = clients[0].registry_key()
        assert clients[1].registry_key() == registry_key

        # Which process holds each node's socket: the one whose log says it connected, and
        # the nodes on one process share its channel-layer instance, the two processes' differ.
        logs = [(group.log_dir / f"{name}.log").read_text(errors="replace") for name in group.registries]
        for node in Node.objects.all():
            on = [f"node {node.pk} connected from" in log for log in logs]
            assert on == [p == NODES[node.name].registry for p in (0, 1)], (node.name, on)
        before = node_processes()
        assert set(before) == set(NODES)
        instance = {p: {before[n] for n, spec in NODES.items() if spec.registry == p} for p in (0, 1)}
        assert len(instance[0]) == len(instance[1]) == 1 and instance[0] != instance[1], before

        submitted = []  # (process it was submitted on, texts, job)
        for i in range(JOBS_PER_PROCESS):
            for p, client in enumerate(clients):
                texts = texts_for(p, i)
                submitted.append((p, texts, client.submit_embeddings(SUBNET, texts, idempotency_key=f"p{p}-{i}")))
        # A retry on the other process is the same job, not a second charge.
        p, texts, job = submitted[0]
        assert clients[1 - p].submit_embeddings(SUBNET, texts, idempotency_key=f"p{p}-0")["id"] == job["id"]

        # Each job is read back, to the end, through the process it was not submitted on.
        finals = [clients[1 - p].wait(job["id"], timeout=180) for p, _, job in submitted]
        after = node_processes()
        worker_stats = celery_app.control.inspect(timeout=5).stats() or {}
        group.check_alive()

    # No node moved between processes while the jobs ran.
    assert after == before
    process_of = {node.pk: after[node.name] for node in Node.objects.all()}
    pairs: dict[str, tuple[str, ...]] = {}
    for (_, texts, job), final in zip(submitted, finals, strict=True):
        assert final["state"] == "settled", final
        vectors = verify_receipt(final, registry_key=registry_key, inputs={"texts": texts})
        assert vectors.shape == (len(texts), 384)
        receipt = final["receipt"]
        assert receipt["verification"]["path"] == "2-of-2" and receipt["verification"]["min_cosine"] >= 0.9999
        nodes = {n["node_id"] for n in receipt["nodes"]}
        assert len(nodes) == 2
        agreed = Assignment.objects.filter(job_id=job["id"], state="agreed").values_list("node_id", flat=True)
        assert {str(node_id) for node_id in agreed} == nodes
        pairs[job["id"]] = tuple(sorted(process_of[node_id] for node_id in agreed))
    # Every job's two nodes sat on the two different processes (the owners rule forces it).
    assert all(a != b for a, b in pairs.values()), pairs
    by_node = Counter(
        Assignment.objects.filter(job_id__in=pairs, state="agreed").values_list("node__name", flat=True)
    )
    # Both workers took tasks off the one broker.
    tasks_by_worker = {name: sum(stats.get("total", {}).values()) for name, stats in worker_stats.items()}
    # The figures (`pytest -s` shows them).
    print("two processes:", json.dumps({"jobs": len(pairs), "agreed_by_node": by_node, "tasks_by_worker": tasks_by_worker}))
    assert len(tasks_by_worker) == 2 and all(n > 0 for n in tasks_by_worker.values()), worker_stats

    # The user's jobs (beat may have added honeypots, which settle as well), and the books.
    assert Job.objects.filter(state=JobState.SETTLED, honeypot__isnull=True).count() == len(submitted)
    out = io.StringIO()
    call_command("ledger_check", stdout=out)
    assert "balanced" in out.getvalue()
    spent = sum(Job.objects.filter(state=JobState.SETTLED).values_list("price_micro", flat=True))
    received = sum(
        account_balance(account)
        for account in Account.objects.filter(
            kind__in=[AccountKind.NODE_EARNINGS, AccountKind.NODE_ESCROW, AccountKind.REGISTRY_REVENUE]
        )
    )
    assert spent == received > 0
