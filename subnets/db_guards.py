"""The subnet activation guard's SQLite statement, shared by the migration that installs it
(subnets 0013) and by bim_site's post_migrate handler, which puts it back after any
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
