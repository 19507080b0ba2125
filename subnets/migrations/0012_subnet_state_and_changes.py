"""Subnet lifecycle: `state` (draft, active, paused, retired) replaces `is_active` (True →
active, False → paused: an inactive subnet had its files and reference, it was switched
off), the status of creation from a package, and the change log."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def states_from_flags(apps, schema_editor):
    Subnet = apps.get_model("subnets", "Subnet")
    Subnet.objects.filter(is_active=True).update(state="active")
    Subnet.objects.filter(is_active=False).update(state="paused")


def flags_from_states(apps, schema_editor):
    Subnet = apps.get_model("subnets", "Subnet")
    Subnet.objects.update(is_active=False)
    Subnet.objects.filter(state="active").update(is_active=True)


class Migration(migrations.Migration):
    dependencies = [
        ("subnets", "0011_eula_subnet_required"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="subnet",
            name="state",
            field=models.CharField(
                choices=[("draft", "Draft"), ("active", "Active"), ("paused", "Paused"), ("retired", "Retired")],
                default="draft",
                max_length=16,
            ),
        ),
        migrations.RunPython(states_from_flags, flags_from_states),
        migrations.RemoveField(model_name="subnet", name="is_active"),
        migrations.AddField(
            model_name="subnet",
            name="setup_status",
            field=models.CharField(
                blank=True,
                choices=[
                    ("", "—"),
                    ("pending", "Queued"),
                    ("running", "Packaging and computing the benchmark reference"),
                    ("ready", "Ready"),
                    ("failed", "Failed"),
                ],
                default="",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="subnet",
            name="setup_detail",
            field=models.TextField(blank=True, help_text="what creation from a package did, or why it failed"),
        ),
        migrations.CreateModel(
            name="SubnetChange",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("at", models.DateTimeField(auto_now_add=True)),
                ("field", models.CharField(max_length=64)),
                ("before", models.JSONField(blank=True, null=True)),
                ("after", models.JSONField(blank=True, null=True)),
                ("reason", models.CharField(blank=True, max_length=500)),
                (
                    "operator",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="subnet_changes",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "subnet",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="changes", to="subnets.subnet"
                    ),
                ),
            ],
            options={
                "ordering": ["-at", "-pk"],
                "indexes": [models.Index(fields=["subnet", "-at"], name="subnet_change_by_time")],
            },
        ),
    ]
