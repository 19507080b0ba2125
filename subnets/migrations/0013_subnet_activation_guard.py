"""A database guard behind subnets.lifecycle: a subnet enters the active state only with a
benchmark reference computed for its current model checksum, whatever writes the row (a
raw `update()`, a shell, a future bug). Without one no node can pass its benchmark, so the
subnet would take jobs nobody serves.

(Written here rather than with bim_site.db_triggers: subnets sits below the site layer.
On SQLite a migration that remakes the table drops the trigger; bim_site's post_migrate
handler puts it back with subnets.db_guards' statements, as it does its own triggers.)"""

from django.db import migrations

from subnets.db_guards import SQLITE_ACTIVATION_GUARD as SQLITE_FORWARD

PG_FORWARD = [
    """
    CREATE OR REPLACE FUNCTION bim_subnet_activation_guard() RETURNS trigger AS $$
    BEGIN
        IF NEW.state = 'active' AND OLD.state <> 'active' AND NOT EXISTS (
            SELECT 1 FROM subnets_benchmarkreference r
            WHERE r.subnet_id = NEW.id AND r.model_checksum = NEW.model_checksum
        ) THEN
            RAISE EXCEPTION 'subnet % cannot become active without a benchmark reference for its model', NEW.slug
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END;
    $$ LANGUAGE plpgsql;
    """,
    """
    CREATE TRIGGER subnet_activation_guard BEFORE UPDATE OF state ON subnets_subnet
    FOR EACH ROW EXECUTE FUNCTION bim_subnet_activation_guard();
    """,
]
PG_BACKWARD = [
    "DROP TRIGGER IF EXISTS subnet_activation_guard ON subnets_subnet",
    "DROP FUNCTION IF EXISTS bim_subnet_activation_guard()",
]
SQLITE_BACKWARD = ["DROP TRIGGER IF EXISTS subnet_activation_guard"]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        vendor = schema_editor.connection.vendor
        if vendor not in statements_by_vendor:
            raise NotImplementedError(f"no subnet activation guard for {vendor}")
        for statement in statements_by_vendor[vendor]:
            schema_editor.execute(statement, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("subnets", "0012_subnet_state_and_changes"),
    ]

    operations = [
        migrations.RunPython(
            _run({"postgresql": PG_FORWARD, "sqlite": SQLITE_FORWARD}),
            _run({"postgresql": PG_BACKWARD, "sqlite": SQLITE_BACKWARD}),
        ),
    ]
