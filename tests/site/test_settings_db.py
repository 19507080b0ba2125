"""The database settings (bim_site/settings_db.py): PostgreSQL through a pool, with
statements prepared on the server unless BIM_DB_PREPARE_THRESHOLD=0 (a pooler in
transaction mode); SQLite when no DATABASE_URL is set. The last test checks that the
running suite's connection really prepares its repeated statements."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest
from django.db import connection, connections

from bim_site.settings_db import databases
from registry.models import Job, JobState
from registry.results import _one_queued_job
from registry.submit import job_submit
from tests.factories import SubnetFactory, online_node, user_with_credits

URL = "postgresql://bim@db.internal:5432/bim"


def test_postgres_statements_are_bound_and_prepared_on_the_server_by_default(monkeypatch):
    monkeypatch.delenv("BIM_DB_PREPARE_THRESHOLD", raising=False)
    options = databases(URL, Path("/tmp"))["default"]["OPTIONS"]
    assert options["server_side_binding"] is True
    assert options["prepare_threshold"] == 2
    assert options["options"] == "-c plan_cache_mode=force_custom_plan"
    assert options["pool"]["max_size"] == 8


def test_a_threshold_of_zero_leaves_binding_to_the_client_for_a_transaction_pooler(monkeypatch):
    monkeypatch.setenv("BIM_DB_PREPARE_THRESHOLD", "0")
    options = databases(URL, Path("/tmp"))["default"]["OPTIONS"]
    assert "server_side_binding" not in options and "prepare_threshold" not in options
    assert "options" not in options  # bound on the client, each statement reaches the server with its values


def test_libpq_options_in_the_url_are_kept_beside_the_plan_mode(monkeypatch):
    monkeypatch.delenv("BIM_DB_PREPARE_THRESHOLD", raising=False)
    options = databases(URL + "?options=-c%20statement_timeout%3D5000", Path("/tmp"))["default"]["OPTIONS"]
    assert options["options"] == "-c statement_timeout=5000 -c plan_cache_mode=force_custom_plan"


def test_without_a_database_url_the_embedded_sqlite_file_is_used(tmp_path):
    default = databases("", tmp_path)["default"]
    assert default["ENGINE"] == "django.db.backends.sqlite3"
    assert default["NAME"] == str(tmp_path / "bim.sqlite3")


@pytest.mark.django_db
def test_the_suites_connection_prepares_a_statement_it_runs_again():
    if connection.vendor != "postgresql":
        pytest.fail("prepared statements are PostgreSQL's: run the suite with DATABASE_URL set")
    for _ in range(3):
        list(Job.objects.filter(idempotency_key="prepared-check"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", ["%prepared-check%"])
        # Bound on the server, the key is a parameter: the statement text holds $1, not the key.
        assert cursor.fetchone()[0] == 0
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            ['%FROM "registry_job" WHERE "registry_job"."idempotency_key" = $1%'],
        )
        assert cursor.fetchone()[0] >= 1


def _in_a_thread(work):
    """`work()` on a thread of its own, as a request runs under daphne: its connection is
    taken from the pool and handed back when the thread's connections close."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(work())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(20)
    return out[0]


def _backend_pid() -> int:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_a_live_pooled_connection_is_lent_without_a_round_trip(monkeypatch):
    """The pool's health check ran an empty query on every loan: a round trip for each
    request and each node message (4 % of daphne's CPU in bench/throughput.py). A
    connection the server has not closed is lent as it is."""
    if connection.vendor != "postgresql":
        pytest.fail("the pool is PostgreSQL's: run the suite with DATABASE_URL set")
    _in_a_thread(_backend_pid)  # the pool holds an idle connection
    checks: list[str] = []
    execute = psycopg.Connection.execute

    def recorded(self, query, *args, **kwargs):
        if query == "":  # the pool's check_connection: an empty query
            checks.append(threading.current_thread().name)
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", recorded)
    for _ in range(3):
        assert _in_a_thread(_backend_pid) > 0
    assert checks == []


@pytest.mark.django_db(transaction=True)
def test_a_pooled_connection_whose_server_went_away_is_not_lent():
    """A connection whose backend ended (a server restart, pg_terminate_backend) is closed
    and another taken: the request that borrows next does not fail."""
    if connection.vendor != "postgresql":
        pytest.fail("the pool is PostgreSQL's: run the suite with DATABASE_URL set")
    first = _in_a_thread(_backend_pid)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [first])
        assert cursor.fetchone()[0] is True
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [first])
            if cursor.fetchone()[0] == 0:
                break
        time.sleep(0.05)
    second = _in_a_thread(_backend_pid)
    assert second != first


@pytest.mark.django_db
def test_a_prepared_statement_is_planned_for_its_arguments_not_scanning_every_job():
    """Django binds a query's constants as parameters too (`state = $1`), and after five
    runs of a prepared statement PostgreSQL may keep a generic plan, blind to the values:
    "is any job of this subnet queued?" (asked at every result) became a sequential scan of
    every job, LIMIT 1 with none queued, and each run of bench/throughput.py was slower than
    the one before it. Planned for its arguments, it reads the partial index of queued
    jobs, whatever the table holds."""
    if connection.vendor != "postgresql":
        pytest.fail("plans are PostgreSQL's: run the suite with DATABASE_URL set")
    subnet = SubnetFactory()
    online_node(subnet)
    job, _ = job_submit(user=user_with_credits(10), subnet_slug=subnet.slug, inputs={"texts": ["plan"]}, idempotency_key="p")
    fields = [field.column for field in Job._meta.concrete_fields]
    copied = [
        "gen_random_uuid()" if column == "id" else "idempotency_key || '-' || n" if column == "idempotency_key"
        else "'settled'" if column == "state" else column
        for column in fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO registry_job ({', '.join(fields)}) SELECT {', '.join(copied)}"
            " FROM registry_job, generate_series(1, 3000) n WHERE id = %s",
            [job.pk],
        )
        Job.objects.filter(pk=job.pk).update(state=JobState.SETTLED)
        cursor.execute("ANALYZE registry_job")
        cursor.execute("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'registry_job'")
        scans_before = cursor.fetchone()[0]
        for _ in range(12):  # prepared from the second run; a generic plan may follow the fifth
            assert _one_queued_job.all(job.subnet_id) == []
        cursor.execute("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'registry_job'")
        scans = cursor.fetchone()[0] - scans_before
        # The copies have no holds, and the job was never settled: as it was, for the ledger check.
        cursor.execute("DELETE FROM registry_job WHERE user_id = %s AND id <> %s", [job.user_id, job.pk])
        Job.objects.filter(pk=job.pk).update(state=JobState.QUEUED)
    assert scans == 0
