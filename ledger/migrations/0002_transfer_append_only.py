from django.db import migrations

from bim_site.db_triggers import refuse_changes


class Migration(migrations.Migration):
    dependencies = [("ledger", "0001_initial")]

    operations = [
        refuse_changes(
            "ledger_transfer_append_only",
            "ledger_transfer",
            "transfers are immutable; correct with a reversing transfer",
            refuse_delete=True,
        )
    ]
