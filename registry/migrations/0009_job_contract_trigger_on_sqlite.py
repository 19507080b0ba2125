"""SQLite alters a column by copying the table, which drops its triggers: migration 0008
did so to registry_job, and the embedded default lost the trigger that keeps a job's
contract immutable. Put it back (PostgreSQL kept it; nothing to do there)."""

from django.db import migrations

from bim_site.db_triggers import refuse_changes_after_remake


class Migration(migrations.Migration):
    dependencies = [("registry", "0008_family_inputs_results")]

    operations = [
        refuse_changes_after_remake(
            "registry_job_contract_immutable",
            "registry_job",
            "the job contract is immutable",
            columns=("contract", "contract_hash", "inputs", "price_micro", "user_id", "subnet_id"),
        )
    ]
