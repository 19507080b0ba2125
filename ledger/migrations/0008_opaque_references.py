"""The ledger keeps no foreign key into the registry: nodes, jobs and assignments become
the opaque ids the registry passes in. The columns keep their names and values (only the
foreign-key constraints go), and the constraints and indexes that named the old fields
are made again over the same columns. SQLite alters a table by copying it, which drops
its triggers: the transfers' append-only trigger is put back there."""

from django.db import migrations, models
from django.db.models import Q

from bim_site.db_triggers import refuse_changes_after_remake

# (model, old field, the column's field once it is a plain id)
REFERENCES = [
    ("account", "node", dict(null=True, blank=True)),
    ("transfer", "job", dict(null=True, blank=True)),
    ("withdrawal", "node", dict()),
    ("slash", "node", dict(db_index=True)),
    ("slash", "job", dict(db_index=True)),
    ("slash", "assignment", dict(unique=True)),
]


def _plain_ids():
    for model, name, options in REFERENCES:
        yield migrations.AlterField(model, name, models.UUIDField(db_column=f"{name}_id", **options))
        yield migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RenameField(model, name, f"{name}_id"),
                migrations.AlterField(model, f"{name}_id", models.UUIDField(**options)),
            ]
        )


class Migration(migrations.Migration):
    dependencies = [("ledger", "0007_transfer_fewer_indexes")]

    operations = [
        migrations.RemoveConstraint("account", "account_unique_per_user"),
        migrations.RemoveConstraint("account", "account_unique_per_node"),
        migrations.RemoveConstraint("account", "account_unique_system"),
        migrations.RemoveIndex("transfer", "ledger_tran_job_id_6c6e83_idx"),
        migrations.RemoveIndex("withdrawal", "ledger_with_node_id_951407_idx"),
        *_plain_ids(),
        migrations.AddConstraint(
            "account",
            models.UniqueConstraint(
                fields=["kind", "user"],
                condition=Q(user__isnull=False, node_id__isnull=True),
                name="account_unique_per_user",
            ),
        ),
        migrations.AddConstraint(
            "account",
            models.UniqueConstraint(
                fields=["kind", "node_id"], condition=Q(node_id__isnull=False), name="account_unique_per_node"
            ),
        ),
        migrations.AddConstraint(
            "account",
            models.UniqueConstraint(
                fields=["kind"], condition=Q(user__isnull=True, node_id__isnull=True), name="account_unique_system"
            ),
        ),
        migrations.AddIndex("transfer", models.Index(fields=["job_id", "kind"], name="ledger_tran_job_id_6c6e83_idx")),
        migrations.AddIndex(
            "withdrawal", models.Index(fields=["node_id", "state"], name="ledger_with_node_id_951407_idx")
        ),
        refuse_changes_after_remake(
            "ledger_transfer_append_only",
            "ledger_transfer",
            "transfers are immutable; correct with a reversing transfer",
            refuse_delete=True,
        ),
    ]
