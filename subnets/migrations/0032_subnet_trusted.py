"""Subnet.trusted. On SQLite, adding a column remakes the table, which drops the activation
guard of 0013: it is put back here."""

import importlib

from django.db import migrations, models

_guard = importlib.import_module("subnets.migrations.0013_subnet_activation_guard")


def _guard_reinstall(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return  # PostgreSQL keeps a table's triggers across ADD COLUMN
    for statement in _guard.SQLITE_BACKWARD + _guard.SQLITE_FORWARD:
        schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("subnets", "0013_subnet_activation_guard"),
    ]

    operations = [
        migrations.AddField(
            model_name="subnet",
            name="trusted",
            field=models.BooleanField(
                default=False, help_text="jobs only on registry-operated nodes, with a higher registry share"
            ),
        ),
        migrations.RunPython(_guard_reinstall, _guard_reinstall),
    ]
