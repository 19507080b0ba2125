from django.db import migrations

from bim_site.db_triggers import refuse_changes


class Migration(migrations.Migration):
    dependencies = [("registry", "0001_initial")]

    operations = [
        refuse_changes(
            "registry_job_contract_immutable",
            "registry_job",
            "the job contract is immutable",
            columns=("contract", "contract_hash", "inputs", "price_micro", "user_id", "subnet_id"),
        )
    ]
