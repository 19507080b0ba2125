"""Subnet.trusted. On SQLite adding a column copies the subnets table, which drops its
guards (and a guard on the license table that names it must go first);
`bim_site.db_triggers` puts them all back after every migrate."""

from django.db import migrations, models

from subnets.db_guards import sqlite_drop_guards_naming_subnets


class Migration(migrations.Migration):
    dependencies = [
        ("subnets", "0016_license_paid_hosting_guard"),
    ]

    operations = [
        migrations.RunPython(sqlite_drop_guards_naming_subnets, migrations.RunPython.noop),
        migrations.AddField(
            model_name="subnet",
            name="trusted",
            field=models.BooleanField(
                default=False, help_text="jobs only on registry-operated nodes, with a higher registry share"
            ),
        ),
    ]
