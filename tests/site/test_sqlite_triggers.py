"""The embedded default (SQLite) keeps the database's guarantees: after every migration the
triggers that refuse changes to transfers and job contracts are in place. SQLite drops a
table's triggers whenever a migration alters one of its columns (it copies the table), so
this migrates a fresh SQLite database the way `make demo` does and tries the forbidden
writes on a row of each table."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def migrate(var: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env["BIM_VAR_DIR"] = str(var)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True, timeout=240)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    var = tmp_path_factory.mktemp("embedded")
    migrate(var)
    return var


@pytest.fixture(scope="module")
def database(embedded) -> sqlite3.Connection:
    connection = sqlite3.connect(embedded / "bim.sqlite3", isolation_level=None)
    connection.execute("PRAGMA foreign_keys = OFF")  # rows stand alone: no users, subnets or accounts
    return connection


def a_row(database: sqlite3.Connection, table: str, **values: object) -> None:
    """Insert a row of filler values into every NOT NULL column the caller leaves out."""
    for _, name, kind, not_null, default, primary in database.execute(f"PRAGMA table_info({table})").fetchall():
        numeric = any(t in kind.lower() for t in ("int", "bool", "real", "decimal"))
        if name in values or (primary and numeric):  # an integer key numbers itself
            continue
        if primary:
            values[name] = uuid.uuid4().hex
        elif not_null and default is None:
            values[name] = 1 if numeric else "{}"
    columns = ", ".join(values)
    database.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(values))})", list(values.values()))


@pytest.mark.parametrize(
    ("table", "row", "statement"),
    [
        ("ledger_transfer", {"debit_id": 1, "credit_id": 2}, "UPDATE ledger_transfer SET amount = amount + 1"),
        ("ledger_transfer", {"debit_id": 1, "credit_id": 2}, "DELETE FROM ledger_transfer"),
        ("registry_job", {}, "UPDATE registry_job SET price_micro = price_micro + 1"),
        ("registry_job", {}, "UPDATE registry_job SET contract = '{\"forged\": 1}'"),
        ("registry_job", {"inputs": '{"texts": ["x"]}'}, "UPDATE registry_job SET inputs = '{\"texts\": [\"y\"]}'"),
    ],
)
def test_the_embedded_database_refuses_the_forbidden_write(database, table, row, statement):
    database.execute("BEGIN")
    try:
        a_row(database, table, **row)
        with pytest.raises(sqlite3.IntegrityError, match="refused"):
            database.execute(statement)
    finally:
        database.execute("ROLLBACK")


def test_the_embedded_database_allows_the_writes_the_registry_makes(database):
    database.execute("BEGIN")
    try:
        a_row(database, "registry_job")
        database.execute("UPDATE registry_job SET state = 'expired'")  # state moves; the contract does not
        # A peer-to-peer job's inputs ({} at submit) are written when the user falls back.
        database.execute("UPDATE registry_job SET inputs = '{\"texts\": [\"x\"]}'")
    finally:
        database.execute("ROLLBACK")


def test_every_migrate_puts_back_a_trigger_a_table_copy_dropped(embedded):
    """A future migration that alters registry_job or ledger_transfer copies the table on
    SQLite and drops its triggers: the next `migrate` (its own run) puts them back."""
    database = sqlite3.connect(embedded / "bim.sqlite3", isolation_level=None)
    database.execute("DROP TRIGGER registry_job_contract_immutable")
    database.execute("DROP TRIGGER registry_job_inputs_written_once")
    database.execute("DROP TRIGGER ledger_transfer_append_only_delete")
    database.execute("DROP TRIGGER subnet_activation_guard")
    database.close()
    migrate(embedded)
    database = sqlite3.connect(embedded / "bim.sqlite3", isolation_level=None)
    triggers = {name for (name,) in database.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert {
        "registry_job_contract_immutable",
        "registry_job_inputs_written_once",
        "ledger_transfer_append_only_delete",
        "subnet_activation_guard",
    } <= triggers


def test_the_embedded_database_refuses_a_subnet_active_without_a_benchmark_reference(database):
    """Migrations after the guard's own (a new subnet column) copy the subnets table on
    SQLite: the guard must still be there once `migrate` is done."""
    database.execute("BEGIN")
    try:
        a_row(
            database,
            "subnets_subnet",
            state="draft",
            model_checksum="ab" * 32,
            split_node_a_bp=4000,
            split_node_b_bp=4000,
            split_registry_bp=2000,
            escrow_share_bp=1000,
        )
        with pytest.raises(sqlite3.IntegrityError, match="benchmark reference"):
            database.execute("UPDATE subnets_subnet SET state = 'active'")
    finally:
        database.execute("ROLLBACK")
