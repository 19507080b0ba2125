"""The paid hosting guard (subnets migration 0033) on the embedded SQLite database too: the
same forbidden writes as on PostgreSQL are refused, the allowed ones go through."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from subnets.db_guards import SQLITE_PAID_HOSTING_TRIGGERS
from tests.site.test_sqlite_triggers import a_row, migrate


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    var: Path = tmp_path_factory.mktemp("embedded-licensing")
    migrate(var)
    return var


@pytest.fixture(scope="module")
def database(embedded: Path) -> sqlite3.Connection:
    var = embedded
    connection = sqlite3.connect(var / "bim.sqlite3", isolation_level=None)
    connection.execute("PRAGMA foreign_keys = OFF")
    return connection


@pytest.fixture
def rows(database):
    database.execute("BEGIN")
    a_row(database, "subnets_license", id=1, slug="open", version="1", allows_paid_hosting=1, allows_redistribution=1)
    a_row(
        database, "subnets_license", id=2, slug="research", version="1", allows_paid_hosting=0, allows_redistribution=1
    )
    try:
        yield database
    finally:
        database.execute("ROLLBACK")


def subnet(database, pk: int, *, license_id: int, state: str, price: int) -> None:
    fields = {"split_node_a_bp": 4000, "split_node_b_bp": 4000, "split_registry_bp": 2000, "escrow_share_bp": 1000}
    a_row(
        database,
        "subnets_subnet",
        id=pk,
        slug=f"s{pk}",
        license_id=license_id,
        state=state,
        model_checksum="ab",
        price_per_call_micro=0,
        price_per_item_micro=price,
        **fields,
    )
    # Activation needs a benchmark reference for the model (migration 0013): this one has it.
    a_row(database, "subnets_benchmarkreference", subnet_id=pk, model_checksum="ab")


@pytest.mark.parametrize(
    ("setup", "statement"),
    [
        ((2, "draft", 5), "UPDATE subnets_subnet SET state = 'active' WHERE id = 10"),
        ((2, "active", 0), "UPDATE subnets_subnet SET price_per_item_micro = 5 WHERE id = 10"),
        ((1, "active", 5), "UPDATE subnets_subnet SET license_id = 2 WHERE id = 10"),
        ((1, "active", 5), "UPDATE subnets_license SET allows_paid_hosting = 0 WHERE id = 1"),
    ],
)
def test_the_embedded_database_refuses_paid_hosting_the_license_forbids(rows, setup, statement):
    license_id, state, price = setup
    subnet(rows, 10, license_id=license_id, state=state, price=price)
    with pytest.raises(sqlite3.IntegrityError, match="forbids paid hosting"):
        rows.execute(statement)


def test_an_active_priced_subnet_is_not_inserted_under_such_a_license(rows):
    with pytest.raises(sqlite3.IntegrityError, match="forbids paid hosting"):
        subnet(rows, 11, license_id=2, state="active", price=5)


def test_the_embedded_database_allows_what_the_license_allows(rows):
    subnet(rows, 12, license_id=2, state="active", price=0)  # free
    subnet(rows, 13, license_id=2, state="paused", price=5)  # priced, not serving
    subnet(rows, 14, license_id=1, state="active", price=5)
    rows.execute("UPDATE subnets_subnet SET latency_ms = 10 WHERE id = 12")
    rows.execute("UPDATE subnets_subnet SET state = 'retired' WHERE id = 13")
    rows.execute("UPDATE subnets_subnet SET state = 'paused' WHERE id = 14")
    rows.execute("UPDATE subnets_license SET allows_paid_hosting = 0 WHERE id = 1")


def test_every_migrate_puts_the_guard_back_after_a_table_copy_dropped_it(embedded):
    database = sqlite3.connect(embedded / "bim.sqlite3", isolation_level=None)
    for name in SQLITE_PAID_HOSTING_TRIGGERS:
        database.execute(f"DROP TRIGGER {name}")
    database.close()
    migrate(embedded)
    database = sqlite3.connect(embedded / "bim.sqlite3", isolation_level=None)
    triggers = {name for (name,) in database.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert set(SQLITE_PAID_HOSTING_TRIGGERS) <= triggers
