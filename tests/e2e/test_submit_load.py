"""The API under load: 64 concurrent submitters for a few seconds against daphne on
PostgreSQL, four times the connections its pool holds. Every submission is answered
without a 5xx (a request waits for a pooled connection instead of opening one past the
server's limit), every accepted job settles, and the ledger balances."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest

from ledger.checks import ledger_violations
from registry.models import TERMINAL_STATES, Job, JobState
from tests.market import running_market

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SUBMITTERS = 64
POOL_MAX = SUBMITTERS // 4
BURST_S = 4.0


def submit_for(url: str, token: str, prefix: str, until: float, statuses: Counter, lock: threading.Lock) -> None:
    """One submitter: a kept-alive connection, one job after another until `until`."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    index = 0
    while time.monotonic() < until:
        body = {
            "subnet": "minilm-embed",
            "inputs": {"texts": [f"load {prefix} {index}"]},
            "idempotency_key": f"{prefix}-{index}",
        }
        try:
            connection.request("POST", "/api/v1/jobs/", body=json.dumps(body), headers=headers)
            response = connection.getresponse()
            payload = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            status = f"connection error: {type(exc).__name__}"
            payload = b""
            connection.close()
        with lock:
            statuses[status] += 1
            if status != 201:
                statuses[f"{status}: {payload[:120]!r}"] += 0
        index += 1
    connection.close()


@pytest.mark.django_db(transaction=True)
def test_64_concurrent_submitters_get_no_5xx_and_the_ledger_balances(tmp_path):
    pair = {name: "minilm-embed" for name in ("alice", "bob")}
    with running_market(tmp_path, contributors="alice,bob", nodes=pair, BIM_DB_POOL_MAX=str(POOL_MAX)) as (
        url,
        tokens,
        _,
    ):
        statuses: Counter = Counter()
        lock = threading.Lock()
        until = time.monotonic() + BURST_S
        threads = [
            threading.Thread(target=submit_for, args=(url, tokens["demo-user"], f"s{i}", until, statuses, lock))
            for i in range(SUBMITTERS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        accepted = statuses[201]
        # Every accepted job runs to its end: none is stuck behind the burst.
        deadline = time.monotonic() + 180
        while Job.objects.filter(honeypot__isnull=True).exclude(state__in=TERMINAL_STATES).exists():
            assert time.monotonic() < deadline, Counter(Job.objects.values_list("state", flat=True))
            time.sleep(0.5)

    print(f"load: {accepted} jobs accepted from {SUBMITTERS} submitters in {BURST_S} s ({accepted / BURST_S:.0f}/s)")
    answered = {status: n for status, n in statuses.items() if n}
    assert answered == {201: accepted}, answered
    assert accepted >= SUBMITTERS  # each submitter got at least one job through
    jobs = Job.objects.filter(honeypot__isnull=True)
    assert jobs.count() == accepted
    assert Counter(jobs.values_list("state", flat=True)) == {JobState.SETTLED: accepted}
    assert ledger_violations() == []
