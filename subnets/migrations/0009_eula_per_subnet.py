"""Opt-in per subnet, step 1 of 3: an acceptance gets the subnet it opts into (nullable
until 0010 fills it in) and a withdrawal stamp. Apart from the data step because PostgreSQL
creates the new foreign key's index at the end of this migration, which it refuses while the
data step's row changes have pending trigger events."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("subnets", "0008_subnet_output_dim"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="eulaacceptance", name="eula_once_per_license"),
        migrations.AddField(
            model_name="eulaacceptance",
            name="subnet",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="acceptances", to="subnets.subnet"
            ),
        ),
        migrations.AddField(
            model_name="eulaacceptance",
            name="withdrawn_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
