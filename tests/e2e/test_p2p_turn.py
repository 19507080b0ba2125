"""Peer-to-peer jobs through a real TURN server (docs/p2p.md §2, §6): the registry's ICE
transport policy is "relay", so the SDK and both node processes gather TURN candidates only,
with credentials the registry computed from the secret it shares with coturn (the TURN REST
convention). The job settles over relayed data channels, the job records the bytes relayed,
and coturn's own per-session report bounds them."""

from __future__ import annotations

import json
import re
import sys
import time

import numpy as np
import pytest

from bim_core.peer import allow_loopback
from bim_sdk import Client, verify_receipt
from ledger.checks import ledger_violations
from registry import turn_usage
from registry.models import AssignmentState, Job, JobState, TurnAllocation
from subnets import defaults
from tests.market import running_market
from tests.turn import REALM

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EMBED = defaults.EMBEDDINGS_SLUG


def turn_reported_bytes(log: str) -> int:
    """Bytes coturn says it relayed, from its session usage lines (received + sent)."""
    total = 0
    for match in re.finditer(r"usage: .*?rb=(\d+), .*?sb=(\d+)", log):
        total += int(match.group(1)) + int(match.group(2))
    return total


@pytest.mark.django_db(transaction=True)
def test_a_relay_only_job_settles_through_coturn_and_records_the_relayed_bytes(tmp_path, turn_server):
    allow_loopback()
    env = {
        "BIM_P2P_LOOPBACK": "1",
        "BIM_P2P_AUDIT_BP": "0",
        "BIM_ICE_TRANSPORT_POLICY": "relay",
        "BIM_TURN_URLS": ",".join(turn_server.turn_urls),
        "BIM_TURN_SECRET": turn_server.secret,
        # coturn publishes each allocation's bytes on the tests' Redis; turn_usage records them
        # and the job waits for them at verification (registry.turn_usage).
        "BIM_TURN_STATS": "1",
        "BIM_TURN_REALM": REALM,
    }
    texts = ["Relayed by coturn, never through the registry.", "A second text."]
    nodes = {"alice": EMBED, "bob": EMBED}
    with running_market(tmp_path, contributors="alice,bob", nodes=nodes, **env) as (url, tokens, group):
        group.start("turn-usage", [sys.executable, "manage.py", "turn_usage"])
        time.sleep(3)  # subscribed before coturn publishes (Redis pub/sub keeps nothing)
        client = Client(url, tokens["demo-user"], timeout=30)
        started = time.monotonic()
        result = client.embed(EMBED, texts, transport="p2p", timeout=120, connect_timeout=20)
        settle_s = time.monotonic() - started
        registry_key = client.registry_key()
        time.sleep(1)  # coturn writes a session's usage when it ends

    outcome = result.p2p
    assert outcome is not None and outcome.fallback_reason == "" and len(outcome.opened) == 2
    payload = outcome.payload_for(outcome.job["receipt"]["result_hash"])
    vectors = verify_receipt(outcome.job, registry_key=registry_key, inputs={"texts": texts}, payload=payload)
    assert np.array_equal(vectors, result.vectors)
    job = Job.objects.get(pk=result.job["id"])
    assert job.state == JobState.SETTLED and job.relay_bytes == 0 and job.fallback_reason == ""
    pair = list(job.assignments.filter(state=AssignmentState.AGREED))
    assert len(pair) == 2 and all(a.transport_stats["relayed"] for a in pair)
    # What the nodes report of their channels, recorded on the job...
    reported = sum(a.transport_stats["bytes_sent"] + a.transport_stats["bytes_received"] for a in pair)
    assert job.turn_bytes == reported and reported > 2 * 2 * 384 * 4
    # ...and coturn, which relayed every packet of both channels, saw at least that much.
    log = turn_server.log()
    assert "allocation" in log.lower()
    seen = turn_reported_bytes(log)
    assert seen >= reported, (seen, reported)
    # The registry heard coturn's own figures before it settled: every allocation of the job
    # (the user's, one per node, and each node's), and charged no more than they say.
    allocations = list(TurnAllocation.objects.filter(job=job).values_list("party", "bytes"))
    assert sorted(party for party, _ in allocations) == ["node", "node", "user", "user"], allocations
    from_turn = turn_usage.turn_bytes_reported(job)
    assert from_turn >= reported and turn_usage.turn_bytes_charged(job) == min(reported, from_turn)
    assert job.turn_allocations.filter(reported_at__lte=job.finished_at).count() >= 2
    assert ledger_violations() == []
    print("p2p e2e relay-only:", json.dumps({"settle_s": round(settle_s, 2), "turn_bytes": job.turn_bytes,
          "coturn_log_bytes": seen, "coturn_redis_bytes": from_turn, "allocations": allocations}))
