"""A database guard behind subnets.licensing: no subnet is active with a price under a
license that forbids paid hosting, whatever writes the row (a raw `update()`, a shell, a
future bug), and no license turns paid hosting off while active priced subnets use it.

A subnet row is checked when it is inserted and when its state, prices or license change
(an unrelated edit of a row that predates this guard is let through: the services report
it). Written here rather than with bim_site.db_triggers for the reason 0013 gives; on SQLite
bim_site's post_migrate handler puts them back after a migration that remakes either table."""

from django.db import migrations

from subnets.db_guards import PAID_HOSTING_MESSAGE as MESSAGE
from subnets.db_guards import SQLITE_PAID_HOSTING_GUARD, SQLITE_PAID_HOSTING_TRIGGERS

PG_FORWARD = [
    f"""
    CREATE OR REPLACE FUNCTION bim_subnet_paid_hosting_guard() RETURNS trigger AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND (OLD.state, OLD.price_per_call_micro, OLD.price_per_item_micro, OLD.license_id)
            IS NOT DISTINCT FROM (NEW.state, NEW.price_per_call_micro, NEW.price_per_item_micro, NEW.license_id) THEN
            RETURN NEW;
        END IF;
        IF NEW.state = 'active' AND (NEW.price_per_call_micro > 0 OR NEW.price_per_item_micro > 0) AND EXISTS (
            SELECT 1 FROM subnets_license l WHERE l.id = NEW.license_id AND NOT l.allows_paid_hosting
        ) THEN
            RAISE EXCEPTION 'subnet %: {MESSAGE}', NEW.slug
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END;
    $$ LANGUAGE plpgsql;
    """,
    """
    CREATE TRIGGER subnet_paid_hosting_guard
    BEFORE INSERT OR UPDATE OF state, price_per_call_micro, price_per_item_micro, license_id ON subnets_subnet
    FOR EACH ROW EXECUTE FUNCTION bim_subnet_paid_hosting_guard();
    """,
    f"""
    CREATE OR REPLACE FUNCTION bim_license_paid_hosting_guard() RETURNS trigger AS $$
    BEGIN
        IF OLD.allows_paid_hosting AND NOT NEW.allows_paid_hosting AND EXISTS (
            SELECT 1 FROM subnets_subnet s
            WHERE s.license_id = NEW.id AND s.state = 'active'
              AND (s.price_per_call_micro > 0 OR s.price_per_item_micro > 0)
        ) THEN
            RAISE EXCEPTION 'license % %: active priced subnets use it; {MESSAGE}', NEW.slug, NEW.version
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END;
    $$ LANGUAGE plpgsql;
    """,
    """
    CREATE TRIGGER license_paid_hosting_guard BEFORE UPDATE OF allows_paid_hosting ON subnets_license
    FOR EACH ROW EXECUTE FUNCTION bim_license_paid_hosting_guard();
    """,
]
PG_BACKWARD = [
    "DROP TRIGGER IF EXISTS subnet_paid_hosting_guard ON subnets_subnet",
    "DROP FUNCTION IF EXISTS bim_subnet_paid_hosting_guard()",
    "DROP TRIGGER IF EXISTS license_paid_hosting_guard ON subnets_license",
    "DROP FUNCTION IF EXISTS bim_license_paid_hosting_guard()",
]

SQLITE_FORWARD = SQLITE_PAID_HOSTING_GUARD
SQLITE_BACKWARD = [f"DROP TRIGGER IF EXISTS {name}" for name in SQLITE_PAID_HOSTING_TRIGGERS]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        vendor = schema_editor.connection.vendor
        if vendor not in statements_by_vendor:
            raise NotImplementedError(f"no paid hosting guard for {vendor}")
        for statement in statements_by_vendor[vendor]:
            schema_editor.execute(statement, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("subnets", "0015_user_data_terms"),
    ]

    operations = [
        migrations.RunPython(
            _run({"postgresql": PG_FORWARD, "sqlite": SQLITE_FORWARD}),
            _run({"postgresql": PG_BACKWARD, "sqlite": SQLITE_BACKWARD}),
        ),
    ]
