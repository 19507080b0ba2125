"""The subnets app's SQLite guards (activation needs a benchmark reference, 0013; no paid
hosting a license forbids, 0033), shared by the migrations that install them and by bim_site's post_migrate handler, which puts it back after any
migration that remakes the subnets table (SQLite copies a table to alter a column and
drops its triggers). PostgreSQL alters tables in place and keeps its trigger."""

SQLITE_ACTIVATION_GUARD = [
    """
    CREATE TRIGGER subnet_activation_guard BEFORE UPDATE OF state ON subnets_subnet
    FOR EACH ROW WHEN NEW.state = 'active' AND OLD.state <> 'active' AND NOT EXISTS (
        SELECT 1 FROM subnets_benchmarkreference r
        WHERE r.subnet_id = NEW.id AND r.model_checksum = NEW.model_checksum
    )
    BEGIN
        SELECT RAISE(ABORT, 'a subnet cannot become active without a benchmark reference for its model');
    END;
    """,
]

PAID_HOSTING_MESSAGE = "license forbids paid hosting: an active subnet under it must have no price"

_PAID_HOSTING_VIOLATED = """
    NEW.state = 'active' AND (NEW.price_per_call_micro > 0 OR NEW.price_per_item_micro > 0) AND EXISTS (
        SELECT 1 FROM subnets_license l WHERE l.id = NEW.license_id AND NOT l.allows_paid_hosting
    )
"""
SQLITE_PAID_HOSTING_TRIGGERS = ["subnet_paid_hosting_guard_insert", "subnet_paid_hosting_guard_update", "license_paid_hosting_guard"]
SQLITE_PAID_HOSTING_GUARD = [
    f"""
    CREATE TRIGGER subnet_paid_hosting_guard_insert BEFORE INSERT ON subnets_subnet
    FOR EACH ROW WHEN {_PAID_HOSTING_VIOLATED}
    BEGIN
        SELECT RAISE(ABORT, '{PAID_HOSTING_MESSAGE}');
    END;
    """,
    f"""
    CREATE TRIGGER subnet_paid_hosting_guard_update
    BEFORE UPDATE OF state, price_per_call_micro, price_per_item_micro, license_id ON subnets_subnet
    FOR EACH ROW WHEN (
        OLD.state IS NOT NEW.state OR OLD.price_per_call_micro IS NOT NEW.price_per_call_micro
        OR OLD.price_per_item_micro IS NOT NEW.price_per_item_micro OR OLD.license_id IS NOT NEW.license_id
    ) AND {_PAID_HOSTING_VIOLATED}
    BEGIN
        SELECT RAISE(ABORT, '{PAID_HOSTING_MESSAGE}');
    END;
    """,
    f"""
    CREATE TRIGGER license_paid_hosting_guard BEFORE UPDATE OF allows_paid_hosting ON subnets_license
    FOR EACH ROW WHEN OLD.allows_paid_hosting AND NOT NEW.allows_paid_hosting AND EXISTS (
        SELECT 1 FROM subnets_subnet s
        WHERE s.license_id = NEW.id AND s.state = 'active'
          AND (s.price_per_call_micro > 0 OR s.price_per_item_micro > 0)
    )
    BEGIN
        SELECT RAISE(ABORT, 'active priced subnets use this license; {PAID_HOSTING_MESSAGE}');
    END;
    """,
]


def sqlite_drop_guards_naming_subnets(apps: object, schema_editor: object) -> None:
    """A migration step before any that copies subnets_subnet on SQLite (adding or altering
    a column): a trigger on another table that names subnets_subnet
    (license_paid_hosting_guard) makes SQLite refuse the copy's rename ("no such table").
    Dropped here, every guard is put back by bim_site's post_migrate handler."""
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS license_paid_hosting_guard")
