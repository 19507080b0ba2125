"""Metrics that cover every process: daphne's /metrics, scraped as Prometheus would (with
the bearer token), reports the settlements a separate Celery worker made, passes
`promtool check metrics`, and carries the database's gauges and the pipeline's histograms
without `_created` clutter. Real daphne, a real worker with beat, PostgreSQL, Redis and
two node processes (tests/market.py)."""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bim_sdk import Client
from registry.models import Job, JobState
from tests.market import running_market
from tests.site.test_monitoring import promtool

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SUBNET = "minilm-embed"
TOKEN = "scrape-token-for-the-e2e-test-0123456789"
TEXTS = [["Counted in the worker."], ["Reported by daphne.", "Both agree."], ["Three jobs."]]


def sample_sum(samples: Iterable[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def scrape(url: str, **headers: str) -> requests.Response:
    return requests.get(f"{url}/metrics", headers=headers, timeout=30)


@pytest.mark.django_db(transaction=True)
def test_metrics_of_every_process_are_scraped_from_daphne(tmp_path):
    pair = {name: SUBNET for name in ("alice", "bob")}
    env = {
        # Every verification goes through the worker (none in place in daphne), so what
        # daphne reports below was counted in another process.
        "BIM_VERIFY_IN_PLACE": "0",
        "BIM_METRICS_PUBLIC": "0",
        "BIM_METRICS_TOKEN": TOKEN,
        "BIM_LEDGER_CHECK_S": "2",  # beat's invariant check, soon enough to be reported
    }
    with running_market(tmp_path, contributors="alice,bob", nodes=pair, **env) as (url, tokens, group):
        client = Client(url, tokens["demo-user"], timeout=30)
        jobs = [client.submit_embeddings(SUBNET, texts, idempotency_key=f"metrics-{i}") for i, texts in enumerate(TEXTS)]
        finals = [client.wait(job["id"], timeout=180) for job in jobs]
        assert [f["state"] for f in finals] == ["settled"] * len(TEXTS), finals

        assert scrape(url).status_code == 401
        assert scrape(url, Authorization="Bearer not-the-token").status_code == 401
        deadline = time.monotonic() + 30
        while "bim_ledger_violations" not in (body := scrape(url, Authorization=f"Bearer {TOKEN}").text):
            assert time.monotonic() < deadline, "beat's ledger check never reached /metrics"
            time.sleep(0.5)
        worker_pid = next(child.pid for name, child in group.children if name == "worker")
        daphne_pid = next(child.pid for name, child in group.children if name == "registry")
        metrics_dir = group.metrics_dir
        group.check_alive()

    checked = promtool("check", "metrics", stdin=body)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "_created" not in body

    samples = [s for family in text_string_to_metric_families(body) for s in family.samples]
    settled = Job.objects.filter(state=JobState.SETTLED, honeypot__isnull=True).count()
    assert settled >= len(TEXTS)
    assert sample_sum(samples, "bim_jobs_settled_total", subnet=SUBNET) == settled
    assert sample_sum(samples, "bim_jobs_submitted_total", subnet=SUBNET) >= len(TEXTS)
    # The settlements were the worker's: its own file holds every one, daphne's none.
    by_process = {}
    for pid in (worker_pid, daphne_pid):
        files = [str(path) for path in metrics_dir.glob(f"*_{pid}.db")]
        own = [s for m in MultiProcessCollector.merge(files) for s in m.samples]
        by_process[pid] = sample_sum(own, "bim_jobs_settled_total", subnet=SUBNET)
    assert by_process == {worker_pid: settled, daphne_pid: 0}
    # django-prometheus's request metrics come through the same files.
    assert sample_sum(samples, "django_http_requests_total_by_method_total", method="POST") >= len(TEXTS)

    # Histograms: one submit-to-settle time per settlement, one similarity per compared pair.
    assert sample_sum(samples, "bim_job_settle_seconds_count", subnet=SUBNET) == settled
    assert 0 < sample_sum(samples, "bim_job_settle_seconds_sum", subnet=SUBNET) < 180 * settled
    assert sample_sum(samples, "bim_verification_similarity_count", subnet=SUBNET) >= settled
    assert sample_sum(samples, "bim_verification_similarity_bucket", subnet=SUBNET, le="0.999") == 0

    # Gauges read from the database at scrape time.
    assert sample_sum(samples, "bim_nodes_online", subnet=SUBNET) == 2
    assert sample_sum(samples, "bim_nodes_routable", subnet=SUBNET) == 2
    assert any(s.name == "bim_jobs_open" and s.labels == {"subnet": SUBNET, "state": "queued"} for s in samples)
    assert sample_sum(samples, "bim_ledger_balance_micro_credits", kind="node_earnings") > 0
    assert any(s.name == "bim_ledger_balance_micro_credits" and s.labels == {"kind": "user_hold"} for s in samples)
    assert sample_sum(samples, "bim_ledger_violations") == 0
    assert abs(sample_sum(samples, "bim_ledger_last_check_timestamp_seconds") - time.time()) < 120

