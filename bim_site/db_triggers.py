"""Database triggers that refuse changes the application must never make (immutable job
contracts, append-only ledger transfers), for PostgreSQL and SQLite alike: a bug, an admin
or a raw `QuerySet.update()` cannot get past them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import migrations

from subnets.db_guards import SQLITE_ACTIVATION_GUARD, SQLITE_PAID_HOSTING_GUARD, SQLITE_PAID_HOSTING_TRIGGERS

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION bim_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% on % refused: %', TG_OP, TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;
"""


def refuse_changes(
    name: str,
    table: str,
    reason: str,
    *,
    columns: Sequence[str] = (),
    refuse_delete: bool = False,
    once_from: str | None = None,
) -> migrations.RunPython:
    """A migration operation adding trigger `name`: UPDATE of `columns` (all columns when
    empty) and, with `refuse_delete`, DELETE on `table` raise an integrity error. With
    `once_from`, a column may still change while it holds that value (its text form), so
    it is written once: a peer-to-peer job's inputs, {} until the user's fallback or a
    node's upload brings them (docs/p2p.md)."""

    def forward(apps: object, schema_editor: object) -> None:
        vendor = schema_editor.connection.vendor
        if vendor == "postgresql":
            statements = _postgres(name, table, reason, columns, refuse_delete, once_from)
        elif vendor == "sqlite":
            statements = _sqlite(name, table, reason, columns, refuse_delete, once_from)
        else:
            raise NotImplementedError(f"no immutability trigger for {vendor}")
        for statement in statements:
            schema_editor.execute(statement, params=None)

    def backward(apps: object, schema_editor: object) -> None:
        vendor = schema_editor.connection.vendor
        suffixes = ("", "_delete") if vendor == "sqlite" else ("",)
        for suffix in suffixes:
            on_table = f" ON {table}" if vendor == "postgresql" else ""
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}{suffix}{on_table}", params=None)

    return migrations.RunPython(forward, backward)


def refuse_changes_after_remake(
    name: str, table: str, reason: str, *, columns: Sequence[str] = (), refuse_delete: bool = False
) -> migrations.RunPython:
    """Put trigger `name` back on SQLite after a migration that altered `table`: SQLite
    alters a column by copying the table into a new one, which drops the old table's
    triggers. PostgreSQL alters in place and keeps them, so there this does nothing."""

    def forward(apps: object, schema_editor: object) -> None:
        if schema_editor.connection.vendor != "sqlite":
            return
        for suffix in ("", "_delete"):
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}{suffix}", params=None)
        for statement in _sqlite(name, table, reason, columns, refuse_delete):
            schema_editor.execute(statement, params=None)

    return migrations.RunPython(forward, migrations.RunPython.noop)


# A job's contract and what it was priced and charged on (registry migration 0019: its
# inputs have a trigger of their own, registry_job_inputs_written_once).
JOB_CONTRACT_COLUMNS = ("contract", "contract_hash", "price_micro", "user_id", "subnet_id")


@dataclass(frozen=True)
class RefusedChange:
    """A trigger the database keeps on a table, as its migration installed it."""

    name: str
    table: str
    reason: str
    columns: tuple[str, ...] = ()
    refuse_delete: bool = False
    once_from: str | None = None


# Every trigger of the project, as its latest migration states it.
EVERY_TRIGGER = (
    RefusedChange(
        "ledger_transfer_append_only",
        "ledger_transfer",
        "transfers are immutable; correct with a reversing transfer",
        refuse_delete=True,
    ),
    RefusedChange(
        "registry_job_contract_immutable",
        "registry_job",
        "the job contract is immutable",
        columns=JOB_CONTRACT_COLUMNS,
    ),
    RefusedChange(
        "registry_job_inputs_written_once",
        "registry_job",
        "job inputs are written once",
        columns=("inputs",),
        once_from="{}",
    ),
)


def triggers_reinstall(connection: Any) -> list[str]:
    """After every `migrate` (a post_migrate handler): on SQLite, put every trigger back
    on its table, since any migration that alters a column there copies the table and
    drops its triggers. PostgreSQL alters tables in place and keeps them. Returns the
    triggers written."""
    if connection.vendor != "sqlite":
        return []
    tables = set(connection.introspection.table_names())
    written = []
    with connection.cursor() as cursor:
        for trigger in EVERY_TRIGGER:
            if trigger.table not in tables:
                continue  # its app is not migrated yet
            for suffix in ("", "_delete"):
                cursor.execute(f"DROP TRIGGER IF EXISTS {trigger.name}{suffix}")
            for statement in _sqlite(
                trigger.name, trigger.table, trigger.reason, trigger.columns, trigger.refuse_delete, trigger.once_from
            ):
                cursor.execute(statement)
            written.append(trigger.name)
        # The subnets app's own guard (no subnet active without a benchmark reference),
        # once its migrations have given the table its state column.
        if "subnets_subnet" in tables and "state" in _columns(connection, cursor, "subnets_subnet"):
            cursor.execute("DROP TRIGGER IF EXISTS subnet_activation_guard")
            for statement in SQLITE_ACTIVATION_GUARD:
                cursor.execute(statement)
            written.append("subnet_activation_guard")
        # No active priced subnet under a license that forbids paid hosting (subnets 0033),
        # once the subnets table has its state column.
        if {"subnets_subnet", "subnets_license"} <= tables and "state" in _columns(connection, cursor, "subnets_subnet"):
            for name in SQLITE_PAID_HOSTING_TRIGGERS:
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}")
            for statement in SQLITE_PAID_HOSTING_GUARD:
                cursor.execute(statement)
            written.extend(SQLITE_PAID_HOSTING_TRIGGERS)
    return written


def _columns(connection: Any, cursor: Any, table: str) -> set[str]:
    return {column.name for column in connection.introspection.get_table_description(cursor, table)}


def _postgres(
    name: str, table: str, reason: str, columns: Sequence[str], refuse_delete: bool, once_from: str | None = None
) -> list[str]:
    events = "UPDATE" + (f" OF {', '.join(columns)}" if columns else "")
    if refuse_delete:
        events += " OR DELETE"
    changed = " OR ".join(
        f"(OLD.{c} IS DISTINCT FROM NEW.{c}" + (f" AND OLD.{c}::text <> '{once_from}')" if once_from is not None else ")")
        for c in columns
    )
    # WHEN may not mention NEW for DELETE, so only a column list gets a WHEN clause.
    when = f" WHEN ({changed})" if columns and not refuse_delete else ""
    return [
        _PG_FUNCTION,
        f"CREATE TRIGGER {name} BEFORE {events} ON {table} FOR EACH ROW{when} "
        f"EXECUTE FUNCTION bim_refuse_change('{reason}')",
    ]


def _sqlite(
    name: str, table: str, reason: str, columns: Sequence[str], refuse_delete: bool, once_from: str | None = None
) -> list[str]:
    of = f" OF {', '.join(columns)}" if columns else ""
    changed = " OR ".join(
        f"(OLD.{c} IS NOT NEW.{c}" + (f" AND OLD.{c} IS NOT '{once_from}')" if once_from is not None else ")")
        for c in columns
    )
    when = f" WHEN {changed}" if columns else ""
    statements = [
        f"CREATE TRIGGER {name} BEFORE UPDATE{of} ON {table} FOR EACH ROW{when} "
        f"BEGIN SELECT RAISE(ABORT, 'UPDATE on {table} refused: {reason}'); END"
    ]
    if refuse_delete:
        statements.append(
            f"CREATE TRIGGER {name}_delete BEFORE DELETE ON {table} FOR EACH ROW "
            f"BEGIN SELECT RAISE(ABORT, 'DELETE on {table} refused: {reason}'); END"
        )
    return statements
