"""The registry's own faults, injected during traffic on real servers: daphne and the Celery
worker are killed with SIGKILL and restarted, every PostgreSQL connection of the registry is
terminated, and Redis (broker, channel layer, cache, presence) is killed and restarted empty.
Through all of it every job must end by rule (settled, or expired at its deadline with its
hold released), the books must balance, the market must recover (jobs submitted after the
last fault settle), and no node may be blamed for what the registry did."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
from django.db import connection

from bim_sdk import Client
from bim_site.processes import ProcessGroup, free_port, wait_http
from ledger.checks import ledger_violations
from ledger.selectors import balance_totals
from registry.models import TERMINAL_STATES, Job, JobState, Node, Strike
from tests.market import running_market

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SUBNET = "minilm-embed"
TEXTS = ["The registry restarted under this job.", "Nothing may be lost."]


class Traffic:
    """A user submitting a job every `interval` seconds until stopped; a submission the
    registry could not take (it was down) is retried with the same idempotency key."""

    def __init__(self, client: Client, *, interval: float = 0.7) -> None:
        self.client, self.interval = client, interval
        self.keys: list[str] = []
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.is_set():
            key = f"fault-{len(self.keys)}"
            self.keys.append(key)
            for _ in range(20):
                try:
                    self.client.submit_embeddings(SUBNET, TEXTS, idempotency_key=key)
                    break
                except Exception as exc:  # the registry is down: try the same key again
                    self.refused.append(f"{key}: {exc}")
                    if self._stop.wait(1.0):
                        return
            self._stop.wait(self.interval)


def wait_until(condition: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


def settled_count() -> int:
    return Job.objects.filter(state=JobState.SETTLED, honeypot__isnull=True).count()


def terminate_registry_connections() -> int:
    """pg_terminate_backend on every connection to the test database but this test's own."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_every_job_ends_by_rule_through_the_registrys_own_faults(tmp_path):
    infra = ProcessGroup(log_dir=tmp_path / "infra", env={})
    redis_port = free_port()
    redis_url = infra.start_redis(redis_port)
    nodes = {"alice": SUBNET, "bob": SUBNET}
    try:
        with running_market(tmp_path, contributors="alice,bob", nodes=nodes, redis_url=redis_url) as (url, tokens, group):
            # Deployed, the worker runs under a service manager that restarts it: Celery
            # 5.7's worker can exit ("Unrecoverable error" in kombu's Redis transport) when
            # Redis dies under it with messages unacknowledged; the market must recover.
            group.supervise("worker")
            client = Client(url, tokens["demo-user"], timeout=30)
            with Traffic(client) as traffic:
                wait_until(lambda: settled_count() >= 2, timeout=180, what="the market to settle its first jobs")

                group.kill("registry")
                time.sleep(2)
                group.start_registry(int(url.rsplit(":", 1)[1]))
                time.sleep(6)

                group.kill("worker")
                time.sleep(2)
                group.start_worker(beat=True)
                time.sleep(6)

                assert terminate_registry_connections() > 0
                time.sleep(6)

                infra.kill("redis")
                time.sleep(2)
                infra.start_redis(redis_port)
                wait_http(f"{url}/api/v1/registry/", timeout=30, group=group)
                time.sleep(6)
            submitted = len(traffic.keys)

            # Recovered: jobs submitted after the last fault settle.
            after = [client.submit_embeddings(SUBNET, TEXTS, idempotency_key=f"after-{i}") for i in range(2)]
            finals = [client.wait(job["id"], timeout=180) for job in after]
            assert [f["state"] for f in finals] == ["settled", "settled"], finals

            # Every job ends by rule: settled, or expired at its deadline by the sweeper.
            wait_until(
                lambda: not Job.objects.exclude(state__in=TERMINAL_STATES).exists(),
                timeout=180,
                what="every job to end",
            )
    finally:
        infra.stop()

    jobs = Job.objects.filter(honeypot__isnull=True)
    states = dict(Counter(Job.objects.values_list("state", flat=True)))
    # The figures docs/reliability.md quotes (`pytest -s` shows them).
    print(
        "fault test:",
        json.dumps(
            {
                "submitted": submitted,
                "jobs_by_state": states,
                "submits_retried": len(traffic.refused),
                "worker_restarts": group.restarts,
            }
        ),
    )
    assert jobs.count() >= submitted - 1  # the last key may not have reached the registry
    assert set(jobs.values_list("state", flat=True)) <= {JobState.SETTLED, JobState.EXPIRED}
    assert settled_count() >= 4
    assert ledger_violations() == []
    user = Job.objects.filter(idempotency_key="after-0").get().user
    assert balance_totals(user=user)["held_micro"] == 0
    # Nobody is blamed for the registry's faults.
    assert not Strike.objects.exists()
    assert list(Node.objects.filter(jobs_failed__gt=0).values_list("name", "jobs_failed")) == []
