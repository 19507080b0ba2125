"""Subnet.trusted. On SQLite adding a column copies the subnets table, which drops the
activation guard; `bim_site.db_triggers` puts it back after every migrate."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("subnets", "0015_user_data_terms"),
    ]

    operations = [
        migrations.AddField(
            model_name="subnet",
            name="trusted",
            field=models.BooleanField(
                default=False, help_text="jobs only on registry-operated nodes, with a higher registry share"
            ),
        ),
    ]
