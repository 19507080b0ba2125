"""Users' opt-in per subnet (issue 15): each subnet's data-handling terms, versioned, and
users' acknowledgements of them. Existing subnets keep blank terms (their task family's
default text) at version 1."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("subnets", "0014_content_policy"),
    ]

    operations = [
        migrations.AddField(
            model_name="subnet",
            name="data_terms",
            field=models.TextField(
                blank=True, help_text="data-handling terms users acknowledge; blank: the default"
            ),
        ),
        migrations.AddField(
            model_name="subnet",
            name="data_terms_version",
            field=models.PositiveIntegerField(default=1),
        ),
        migrations.CreateModel(
            name="UserDataAcknowledgement",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("terms_version", models.PositiveIntegerField()),
                ("accepted_at", models.DateTimeField(auto_now_add=True)),
                ("ip", models.GenericIPAddressField(blank=True, null=True)),
                ("withdrawn_at", models.DateTimeField(blank=True, null=True)),
                (
                    "subnet",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="data_acknowledgements",
                        to="subnets.subnet",
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="data_acknowledgements",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["user", "subnet"], name="subnets_use_user_id_684b4e_idx")],
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(("withdrawn_at__isnull", True)),
                        fields=("user", "subnet", "terms_version"),
                        name="data_ack_one_active_per_subnet_version",
                    )
                ],
            },
        ),
    ]
