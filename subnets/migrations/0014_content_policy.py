import django.db.models
from django.db import migrations

import subnets.models


class Migration(migrations.Migration):
    dependencies = [("subnets", "0013_subnet_activation_guard")]

    operations = [
        migrations.AddField(
            model_name="subnet",
            name="content_policy",
            field=django.db.models.JSONField(
                blank=True,
                default=dict,
                help_text="bim_core.content_policy document",
                validators=[subnets.models.validate_content_policy],
            ),
        ),
    ]
