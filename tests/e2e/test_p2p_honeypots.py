"""A peer-to-peer honeypot end to end (docs/p2p.md §4): daphne, a Celery worker with beat,
PostgreSQL, Redis, two node processes of different owners and the honeypot peer process. The
nodes get the honeypot as they get a user's P2P job (no inputs; an offer over the user
socket, the inputs over a data channel, from the peer running the SDK's exchange); the
registry asks node A for its payload as for an audit draw and judges both nodes on it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bim_site.processes import ROOT
from ledger.checks import ledger_violations
from registry import honeypots
from registry.models import TERMINAL_STATES, AssignmentState, Job, JobState, Strike
from subnets import defaults
from subnets.models import Subnet
from tests.market import running_market

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EMBED = defaults.EMBEDDINGS_SLUG
P2P_ENV = {"BIM_P2P_LOOPBACK": "1", "BIM_P2P_AUDIT_BP": "0"}


def wait_until(condition, timeout: float, group) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        group.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.2)


def peer_log_text(tmp_path) -> str:
    return (tmp_path / "logs" / "honeypot-peer.log").read_text(errors="replace")


def issue_in_the_registry(group, slug: str) -> str:
    """Issue a P2P honeypot as the registry's beat does, in a process of the registry's
    (its channel layer and broker: this test process runs Celery eagerly)."""
    code = (
        "from registry import honeypots; from subnets.models import Subnet; "
        f"print(honeypots.honeypot_issue(subnet=Subnet.objects.get(slug={slug!r}), peer_to_peer=True).pk)"
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=group.env, capture_output=True, text=True,
        timeout=60, check=True,
    )
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.django_db(transaction=True)
def test_a_p2p_honeypot_reaches_its_nodes_over_data_channels_and_is_judged(tmp_path):
    nodes = {"alice": EMBED, "bob": EMBED}
    with running_market(tmp_path, contributors="alice,bob", nodes=nodes, **P2P_ENV) as (url, _, group):
        group.start_honeypot_peer(url)
        wait_until(honeypots.peer_alive, 60, group)
        subnet = Subnet.objects.get(slug=EMBED)
        assert subnet.honeypots.exists()
        started = time.monotonic()
        trap = Job.objects.get(pk=issue_in_the_registry(group, EMBED))
        wait_until(lambda: Job.objects.get(pk=trap.pk).state in TERMINAL_STATES, 90, group)
        settle_s = time.monotonic() - started
        # The peer learns the outcome on its next poll: leaving the market first would stop
        # daphne under it (a loaded machine polls late). The assertion below says if it never does.
        logged = f"honeypot job {trap.pk}: settled (peer to peer)"
        try:
            wait_until(lambda: logged in peer_log_text(tmp_path), 30, group)
        except TimeoutError:
            pass
    peer_log = peer_log_text(tmp_path)

    trap = Job.objects.get(pk=trap.pk)
    assert trap.state == JobState.SETTLED and trap.verification["path"] == "honeypot", trap.verification
    assert trap.transport == "p2p" and trap.fallback_reason == ""
    pair = list(trap.assignments.order_by("role"))
    assert [a.state for a in pair] == [AssignmentState.AGREED, AssignmentState.AGREED]
    for assignment in pair:
        # The inputs came over the node's data channel, the result went back over it.
        assert assignment.transport_stats["relayed"] is False and assignment.transport_stats["bytes_received"] > 0
        assert assignment.delivered_at is not None  # the peer confirmed, as a user's client does
    # Node A uploaded its payload (and the inputs) as for an audit draw; B's equal hash is judged on it.
    assert pair[0].result is not None and pair[1].result is None
    assert trap.inputs == subnet.honeypots.get(pk=trap.honeypot_id).inputs
    assert not Strike.objects.filter(job=trap).exists()
    assert logged in peer_log
    assert ledger_violations() == []
    print("p2p honeypot:", json.dumps({"settle_s": round(settle_s, 2), "relay_bytes": trap.relay_bytes,
          "transport": [a.transport_stats for a in pair]}))
