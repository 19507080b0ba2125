"""A peer-to-peer job is created without its inputs ({}); the user's fallback or a node's
upload brings them later (docs/p2p.md), which the contract trigger of 0002 refused, since it
kept `inputs` with the contract. The contract keeps its trigger without `inputs`, and
`inputs` gets one of its own that lets it change only from {}: written once, as a relay
job's are at submit. (The registry checks them against the contract's input_hash first.)"""

from django.db import migrations

from bim_site.db_triggers import JOB_CONTRACT_COLUMNS, refuse_changes

OLD_COLUMNS = ("contract", "contract_hash", "inputs", "price_micro", "user_id", "subnet_id")


def drop_contract_trigger(apps: object, schema_editor: object) -> None:
    vendor = schema_editor.connection.vendor
    on_table = " ON registry_job" if vendor == "postgresql" else ""
    for suffix in ("", "_delete") if vendor == "sqlite" else ("",):
        schema_editor.execute(f"DROP TRIGGER IF EXISTS registry_job_contract_immutable{suffix}{on_table}", params=None)


class Migration(migrations.Migration):
    dependencies = [("registry", "0018_job_transport")]

    operations = [
        # Backwards, the trigger 0002 installed comes back.
        migrations.RunPython(
            drop_contract_trigger,
            refuse_changes("registry_job_contract_immutable", "registry_job", "the job contract is immutable", columns=OLD_COLUMNS).code,
        ),
        refuse_changes(
            "registry_job_contract_immutable", "registry_job", "the job contract is immutable", columns=JOB_CONTRACT_COLUMNS
        ),
        refuse_changes(
            "registry_job_inputs_written_once", "registry_job", "job inputs are written once", columns=("inputs",), once_from="{}"
        ),
    ]
