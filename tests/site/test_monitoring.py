"""/metrics and what ships to watch it (docs/monitoring.md): the gauges read from the
database at scrape time, the settlement and verification histograms, no `_created` series,
output that `promtool check metrics` accepts, alert rules that `promtool check rules`
accepts and that fire on the series they should (`promtool test rules`), a Grafana
dashboard that graphs only metrics the registry exports, and the endpoint's protection.
The same scrape across a real daphne and Celery worker: tests/e2e/test_metrics_processes.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from django.core.cache import cache
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from bim_site.processes import ROOT
from ledger.checks import LAST_CHECK_KEY, ledger_check_record
from ledger.models import Account, AccountKind
from registry import dispatch, metrics, submit, verify
from registry.models import Job, JobState
from registry.results import result_record
from tests.factories import SubnetFactory, UserFactory, online_node, result_message, unit_vectors, user_with_credits

MONITORING = ROOT / "docs" / "monitoring"
TOKEN = "scrape-token-0123456789abcdef"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """promtool from Debian's prometheus package, installed by scripts/services.sh."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: `apt-get install prometheus` (scripts/test.sh installs it as root)")
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=MONITORING)


def samples_of(body: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def scraper(client, settings):
    settings.BIM_METRICS_PUBLIC = False
    settings.BIM_METRICS_TOKEN = TOKEN

    def scrape() -> str:
        response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert response.status_code == 200
        return response.content.decode()

    return scrape


def settled_job(capture):
    """A job submitted, dispatched to two nodes, answered and verified, committed (the
    settlement's counter and histogram are recorded on commit)."""
    subnet = SubnetFactory()
    nodes = {n.node.pk: n for n in (online_node(subnet) for _ in range(2))}
    with capture(execute=True):
        job, _ = submit.job_submit(user=user_with_credits(5), subnet_slug=subnet.slug, inputs={"texts": ["a", "b"]}, idempotency_key="m")
        dispatch.job_dispatch(job_id=job.id)
        for assignment in job.assignments.all():
            keys = nodes[assignment.node_id]
            result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, unit_vectors(2)))
        verify.job_verify(job_id=job.id)
    return Job.objects.select_related("subnet").get(pk=job.pk)


# ------------------------------------------------------------------ the scrape


@pytest.mark.django_db
def test_a_settlement_is_counted_and_timed_and_its_pair_similarity_recorded(scraper, django_capture_on_commit_callbacks):
    before = samples_of(scraper())
    job = settled_job(django_capture_on_commit_callbacks)
    assert job.state == JobState.SETTLED
    after = samples_of(scraper())
    slug = job.subnet.slug
    assert value(before, "bim_jobs_settled_total", subnet=slug) is None
    assert value(after, "bim_jobs_settled_total", subnet=slug) == 1
    assert value(after, "bim_job_settle_seconds_count", subnet=slug) == 1
    assert value(after, "bim_job_settle_seconds_bucket", subnet=slug, le="+Inf") == 1
    assert 0 <= value(after, "bim_job_settle_seconds_sum", subnet=slug) < 60
    # Identical vectors: cosine 1, in the top bucket only.
    assert value(after, "bim_verification_similarity_count", subnet=slug) == 1
    assert value(after, "bim_verification_similarity_bucket", subnet=slug, le="0.99999") == 0
    assert value(after, "bim_verification_similarity_bucket", subnet=slug, le="1.0") == 1


@pytest.mark.django_db
def test_a_settlement_rolled_back_is_not_counted(scraper, django_capture_on_commit_callbacks):
    subnet = SubnetFactory()
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            metrics.job_settled_record(subnet_slug=subnet.slug, created_at=timezone.now())
            raise RuntimeError("deadlock victim")
    assert value(samples_of(scraper()), "bim_jobs_settled_total", subnet=subnet.slug) is None


@pytest.mark.django_db
def test_gauges_read_nodes_queues_and_balances_from_the_database(scraper):
    served, waiting, empty = SubnetFactory(), SubnetFactory(), SubnetFactory()
    online_node(served, backend="wasm")
    online_node(served, backend="webgpu")
    online_node(served, backend="webgpu", ready=False)
    online_node(waiting, backend="wasm", ready=False)  # still fetching its model
    # Not committed (the test's transaction), so nothing dispatches it: it waits queued.
    job, _ = submit.job_submit(user=user_with_credits(5), subnet_slug=waiting.slug, inputs={"texts": ["a"]}, idempotency_key="q")
    samples = samples_of(scraper())
    assert value(samples, "bim_nodes_online", subnet=served.slug, backend="wasm") == 1
    assert value(samples, "bim_nodes_online", subnet=served.slug, backend="webgpu") == 2
    assert value(samples, "bim_nodes_online", subnet=waiting.slug, backend="wasm") == 1
    assert value(samples, "bim_nodes_routable", subnet=served.slug) == 2
    # A subnet no node can take jobs on reads 0, not nothing: BimSubnetWithoutNodes needs the zero.
    assert value(samples, "bim_nodes_routable", subnet=waiting.slug) == 0
    assert value(samples, "bim_nodes_routable", subnet=empty.slug) == 0
    assert value(samples, "bim_jobs_open", subnet=waiting.slug, state="queued") == 1
    assert value(samples, "bim_jobs_open", subnet=served.slug, state="queued") == 0
    assert value(samples, "bim_ledger_balance_micro_credits", kind="user_hold") == job.price_micro > 0
    assert value(samples, "bim_ledger_balance_micro_credits", kind="node_escrow") == 0


@pytest.mark.django_db
def test_a_scrape_costs_six_grouped_queries_however_big_the_market(django_assert_num_queries):
    from bim_site.gauges import DatabaseCollector

    for _ in range(3):
        subnet = SubnetFactory()
        online_node(subnet)
        submit.job_submit(user=user_with_credits(5), subnet_slug=subnet.slug, inputs={"texts": ["a"]}, idempotency_key="c")
    with django_assert_num_queries(6):
        families = list(DatabaseCollector().collect())
    assert {f.name for f in families} >= {"bim_nodes_online", "bim_nodes_routable", "bim_jobs_open", "bim_ledger_balance_micro_credits"}


@pytest.mark.django_db
def test_the_ledger_gauges_report_the_last_full_check(scraper):
    cache.delete(LAST_CHECK_KEY)
    assert "bim_ledger_violations" not in scraper()  # no check yet: absent, not a reassuring 0
    assert ledger_check_record() == []
    samples = samples_of(scraper())
    assert value(samples, "bim_ledger_violations") == 0
    assert value(samples, "bim_ledger_last_check_timestamp_seconds") > 0

    account = Account.objects.filter(kind=AccountKind.USER_CREDITS).first() or user_with_credits(1).accounts.first()
    Account.objects.filter(pk=account.pk).update(balance=F("balance") + 7)  # money from nowhere
    try:
        problems = ledger_check_record()
        assert problems
        assert value(samples_of(scraper()), "bim_ledger_violations") == len(problems)
    finally:
        Account.objects.filter(pk=account.pk).update(balance=F("balance") - 7)
    ledger_check_record()
    assert value(samples_of(scraper()), "bim_ledger_violations") == 0


@pytest.mark.django_db
def test_the_scrape_passes_promtool_and_has_no_created_series(scraper, django_capture_on_commit_callbacks):
    settled_job(django_capture_on_commit_callbacks)
    ledger_check_record()
    body = scraper()
    assert "_created" not in body
    checked = promtool("check", "metrics", stdin=body)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# ------------------------------------------------------------------ who may read it


@pytest.mark.django_db
def test_only_operators_and_the_scraper_read_metrics(client, scraper):
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"bim_" not in anonymous.content
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}x").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 401
    client.force_login(UserFactory())
    refused = client.get("/metrics")
    assert refused.status_code == 403 and b"bim_" not in refused.content
    client.force_login(UserFactory(is_staff=True))
    assert b"bim_nodes_routable" in client.get("/metrics").content
    client.logout()
    assert "bim_nodes_routable" in scraper()


# ------------------------------------------------------------------ what ships in docs/monitoring


def test_the_alert_rules_pass_promtool_check_rules():
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout


def test_the_alerts_fire_on_their_series_and_stay_quiet_otherwise():
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


METRIC_NAME = re.compile(r"\b((?:bim|django)_[a-z_]+)\b")


@pytest.mark.django_db
def test_the_dashboard_and_the_alerts_use_only_exported_metrics(scraper, django_capture_on_commit_callbacks):
    settled_job(django_capture_on_commit_callbacks)
    ledger_check_record()
    exported = set()
    for family in text_string_to_metric_families(scraper()):
        # A family declared but not yet observed (no refusal yet) is exported all the same.
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        exported |= {family.name + suffix for suffix in suffixes}
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    used |= set(METRIC_NAME.findall((MONITORING / "alerts.yml").read_text()))
    assert used - exported == set()
    assert {"bim_jobs_open", "bim_nodes_online", "bim_ledger_violations", "bim_job_settle_seconds_bucket"} <= used
    # Every panel queries through the dashboard's datasource variable, not a fixed uid.
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] if p["type"] != "row")


# ------------------------------------------------------------------ the launchers and the check


def test_a_process_group_gives_its_children_an_emptied_metrics_directory(tmp_path):
    from bim_site.processes import ProcessGroup

    stale = tmp_path / "logs" / "prometheus" / "counter_12345.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's counts")
    env = {"PATH": "/usr/bin"}
    group = ProcessGroup(log_dir=tmp_path / "logs", env=env)
    assert group.env["PROMETHEUS_MULTIPROC_DIR"] == str(stale.parent)
    assert stale.parent.is_dir() and not stale.exists()
    assert "PROMETHEUS_MULTIPROC_DIR" not in env  # the caller's dict is left alone


@pytest.mark.django_db(transaction=True)
def test_the_recorded_check_reads_one_snapshot_of_the_books(monkeypatch):
    """Outside any transaction (beat's worker), the check opens its own, REPEATABLE READ and
    read-only: a settlement committing between two of its queries cannot look like a violation."""
    from django.db import connection

    from ledger import checks

    seen = []

    def violations() -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute("SHOW transaction_isolation")
            seen.append(cursor.fetchone()[0])
            cursor.execute("SHOW transaction_read_only")
            seen.append(cursor.fetchone()[0])
        return []

    monkeypatch.setattr(checks, "ledger_violations", violations)
    assert not connection.in_atomic_block
    assert checks.ledger_check_record() == []
    assert seen == ["repeatable read", "on"]
    assert not connection.in_atomic_block
