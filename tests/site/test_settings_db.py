"""The database settings (bim_site/settings_db.py): PostgreSQL through a pool, with
statements prepared on the server unless BIM_DB_PREPARE_THRESHOLD=0 (a pooler in
transaction mode); SQLite when no DATABASE_URL is set. The last test checks that the
running suite's connection really prepares its repeated statements."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection

from bim_site.settings_db import databases
from registry.models import Job

URL = "postgresql://bim@db.internal:5432/bim"


def test_postgres_statements_are_bound_and_prepared_on_the_server_by_default(monkeypatch):
    monkeypatch.delenv("BIM_DB_PREPARE_THRESHOLD", raising=False)
    options = databases(URL, Path("/tmp"))["default"]["OPTIONS"]
    assert options["server_side_binding"] is True
    assert options["prepare_threshold"] == 2
    assert options["pool"]["max_size"] == 8


def test_a_threshold_of_zero_leaves_binding_to_the_client_for_a_transaction_pooler(monkeypatch):
    monkeypatch.setenv("BIM_DB_PREPARE_THRESHOLD", "0")
    options = databases(URL, Path("/tmp"))["default"]["OPTIONS"]
    assert "server_side_binding" not in options and "prepare_threshold" not in options


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
