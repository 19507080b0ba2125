"""Peer-to-peer jobs end to end (docs/p2p.md): daphne, a Celery worker with beat, PostgreSQL,
Redis and node processes of different owners; the SDK in this process signals through the
registry's user socket and talks to the nodes over WebRTC data channels on loopback
(`BIM_P2P_LOOPBACK` for the node processes, `allow_loopback()` here).

The input must never reach the registry: a marker in the texts is looked for in a dump of
the whole database and in the registry's and the worker's logs, next to the input hash,
which must be there. A node with WebRTC off makes the SDK fall back to the relay."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import numpy as np
import pytest
from django.db import connection

from bim_core import protocol
from bim_core.peer import allow_loopback
from bim_sdk import Client, TextDelta, TextResult, verify_receipt
from ledger.checks import ledger_violations
from registry.models import AssignmentState, Job, JobState
from subnets import defaults
from tests.market import MarketNode, running_market
from tests.test_sdk_cli import bim

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

# Nodes and the registry on one machine: loopback candidates, and no audit draw (an audit
# uploads the input, which the first test asserts never happens).
P2P_ENV = {"BIM_P2P_LOOPBACK": "1", "BIM_P2P_AUDIT_BP": "0"}
EMBED = defaults.EMBEDDINGS_SLUG


def database_dump() -> str:
    """Every row of the test database, as pg_dump writes them."""
    db = connection.settings_dict
    done = subprocess.run(
        ["pg_dump", "--data-only", "-h", db["HOST"] or "127.0.0.1", "-p", str(db["PORT"] or 5432), "-U", db["USER"], db["NAME"]],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return done.stdout


def figures(job: Job) -> dict[str, object]:
    return {
        "relay_bytes": job.relay_bytes,
        "turn_bytes": job.turn_bytes,
        "fallback_reason": job.fallback_reason,
        "assignments": [
            {"role": a.role, "state": a.state, "size": a.result_size, "held": a.result is not None, "transport": a.transport_stats}
            for a in job.assignments.order_by("role")
        ],
    }


@pytest.mark.django_db(transaction=True)
def test_an_embedding_job_settles_peer_to_peer_and_its_text_never_reaches_the_registry(tmp_path, capsys):
    marker = f"p2p-marker-{uuid.uuid4().hex}"
    texts = [f"A private note about {marker}.", "Nothing here travels through the registry."]
    allow_loopback()
    nodes = {"alice": EMBED, "bob": EMBED}
    with running_market(tmp_path, contributors="alice,bob", nodes=nodes, **P2P_ENV) as (url, tokens, _):
        client = Client(url, tokens["demo-user"], timeout=30)
        started = time.monotonic()
        result = client.embed(EMBED, texts, transport="p2p", timeout=120)
        settle_s = time.monotonic() - started
        registry_key = client.registry_key()
        # The command line too: its JSON is a job `bim verify` checks on its own later.
        auth = ("--url", url, "--token", tokens["demo-user"])
        cli_status, cli_out, _ = bim(capsys, "embed", EMBED, f"Also {marker}.", "--p2p", "--json", "--yes", *auth)
    # The market is stopped: its logs are complete.
    assert cli_status == 0
    cli_job = json.loads(cli_out)
    assert cli_job["transport"] == "p2p" and cli_job["result"]["result_hash"] == cli_job["receipt"]["result_hash"]
    (tmp_path / "cli-job.json").write_text(cli_out)
    (tmp_path / "cli-inputs.json").write_text(json.dumps({"texts": [f"Also {marker}."]}))
    assert bim(capsys, "verify", str(tmp_path / "cli-job.json"), "--registry-key", registry_key,
               "--inputs", str(tmp_path / "cli-inputs.json"))[0] == 0

    outcome = result.p2p
    assert outcome is not None and outcome.fallback_reason == "" and outcome.refusals == {}
    assert len(outcome.opened) == 2 and len(outcome.received) == 2 and all(r.checked for r in outcome.received)
    # The registry delivered no result: it never held one. The receipt verifies against the
    # payload received over a channel, and the job the SDK returns carries it as delivered.
    assert outcome.job["state"] == "settled" and outcome.job["result"] is None
    payload = outcome.payload_for(outcome.job["receipt"]["result_hash"])
    vectors = verify_receipt(outcome.job, registry_key=registry_key, inputs={"texts": texts}, payload=payload)
    assert np.array_equal(vectors, result.vectors) and vectors.shape == (2, 384)
    assert np.array_equal(verify_receipt(result.job, registry_key=registry_key, inputs={"texts": texts}), vectors)
    receipt = result.receipt
    assert receipt["verification"]["path"] == "2-of-2" and len({n["node_id"] for n in receipt["nodes"]}) == 2

    job = Job.objects.get(pk=result.job["id"])
    assert (job.transport, job.state, job.inputs, job.fallback_reason, job.relay_bytes) == ("p2p", JobState.SETTLED, {}, "", 0)
    pair = list(job.assignments.filter(state=AssignmentState.AGREED))
    assert len(pair) == 2 and len({a.node.owner_id for a in pair}) == 2
    for assignment in pair:
        assert assignment.result is None and assignment.delivered_at is not None and assignment.result_size == 2 * 384 * 4
        assert assignment.transport_stats["relayed"] is False
        assert assignment.transport_stats["bytes_sent"] > assignment.result_size
        assert assignment.transport_stats["bytes_received"] > len(protocol.canonical_json({"texts": texts}))

    input_hash = protocol.input_hash({"texts": texts})
    dump = database_dump()
    assert input_hash in dump and marker not in dump
    logs = {name: (tmp_path / "logs" / f"{name}.log").read_text(errors="replace") for name in ("registry", "worker")}
    assert input_hash in logs["registry"]
    assert all(marker not in text for text in logs.values())
    assert ledger_violations() == []
    print("p2p e2e embedding:", json.dumps({"settle_s": round(settle_s, 2), "sdk_s": round(outcome.seconds, 2),
          "bytes_received": outcome.bytes_received, **figures(job)}))


@pytest.mark.django_db(transaction=True)
def test_with_a_node_that_has_no_webrtc_the_sdk_falls_back_to_the_relay(tmp_path):
    allow_loopback()
    nodes = {"alice": EMBED, "bob": MarketNode(EMBED, extra=("--no-webrtc",))}
    texts = ["Falls back to the registry relay.", "A second text."]
    with running_market(tmp_path, contributors="alice,bob", nodes=nodes, **P2P_ENV) as (url, tokens, _):
        client = Client(url, tokens["demo-user"], timeout=30)
        started = time.monotonic()
        result = client.embed(EMBED, texts, transport="p2p", timeout=120, connect_timeout=3)
        settle_s = time.monotonic() - started
        registry_key = client.registry_key()

    outcome = result.p2p
    assert outcome is not None and outcome.fallback_reason == "no_peer_connection"
    assert settle_s >= 3  # it waited the connect timeout for the node without WebRTC
    assert np.array_equal(verify_receipt(result.job, registry_key=registry_key, inputs={"texts": texts}), result.vectors)
    job = Job.objects.get(pk=result.job["id"])
    assert job.state == JobState.SETTLED and job.fallback_reason == "no_peer_connection"
    assert job.inputs == {"texts": texts}  # the user sent it through the registry after all
    # The input, and the relayed node's result, passed through the registry.
    assert job.relay_bytes >= len(protocol.canonical_json({"texts": texts})) + 2 * 384 * 4
    bob = job.assignments.get(node__name="bob", state=AssignmentState.AGREED)
    assert bob.result is not None and bob.transport_stats == {}
    assert ledger_violations() == []
    print("p2p e2e fallback:", json.dumps({"settle_s": round(settle_s, 2), **figures(job)}))


@pytest.mark.django_db(transaction=True)
def test_a_text_job_streams_over_the_channel_and_settles(tmp_path):
    allow_loopback()
    nodes = {"alice": defaults.TEXT_SLUG, "bob": defaults.TEXT_SLUG}
    prompt = "Give me a one-sentence greeting."
    with running_market(tmp_path, contributors="alice,bob", nodes=nodes, **P2P_ENV) as (url, tokens, _):
        client = Client(url, tokens["demo-user"], timeout=30)
        started = time.monotonic()
        *deltas, final = list(client.generate(defaults.TEXT_SLUG, prompt, 24, stream=True, timeout=180, transport="p2p"))
        settle_s = time.monotonic() - started
        registry_key = client.registry_key()

    assert isinstance(final, TextResult) and all(isinstance(d, TextDelta) for d in deltas)
    assert deltas and final.text.startswith("".join(d.text for d in deltas))
    assert final.p2p is not None and final.p2p.fallback_reason == ""
    verified = verify_receipt(final.job, registry_key=registry_key, inputs={"prompt": prompt, "max_tokens": 24})
    assert verified["text"] == final.text and final.receipt["verification"]["path"] == "2-of-2"
    job = Job.objects.get(pk=final.job["id"])
    # The subnet's policy has output rules: the registry fetched node A's text to check it
    # (docs/p2p.md §4), never the prompt.
    assert job.inputs == {} and job.fallback_reason == ""
    assert job.assignments.filter(state=AssignmentState.AGREED, result__isnull=False).count() == 1
    print("p2p e2e text:", json.dumps({"settle_s": round(settle_s, 2), "deltas": len(deltas), **figures(job)}))
