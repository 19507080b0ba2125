"""Opt-in per subnet, step 3 of 3 (apart from the data step, for the same reason as 0009):
every acceptance names its subnet now."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("subnets", "0010_eula_one_per_subnet"),
    ]

    operations = [
        migrations.AlterField(
            model_name="eulaacceptance",
            name="subnet",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="acceptances", to="subnets.subnet"
            ),
        ),
        migrations.AddConstraint(
            model_name="eulaacceptance",
            constraint=models.UniqueConstraint(
                condition=models.Q(("withdrawn_at__isnull", True)),
                fields=("user", "subnet", "license", "license_version"),
                name="eula_one_active_per_subnet_version",
            ),
        ),
    ]
