"""Trusted answers hold a task family's inputs and encoded result, not only texts and vectors."""

from django.db import migrations, models


def texts_to_inputs(apps, schema_editor):
    for row in apps.get_model("registry", "honeypot").objects.all():
        if isinstance(row.inputs, list):
            row.inputs = {"texts": row.inputs}
            row.save(update_fields=["inputs"])


def inputs_to_texts(apps, schema_editor):
    for row in apps.get_model("registry", "honeypot").objects.all():
        if isinstance(row.inputs, dict):
            row.inputs = row.inputs.get("texts", [])
            row.save(update_fields=["inputs"])


class Migration(migrations.Migration):
    dependencies = [("registry", "0007_adaptive_replication")]

    operations = [
        migrations.RenameField("honeypot", "texts", "inputs"),
        migrations.RenameField("honeypot", "vectors", "result"),
        migrations.AlterField(
            "honeypot",
            "inputs",
            models.JSONField(help_text="job inputs, as a user of the subnet's task family sends them"),
        ),
        migrations.AlterField(
            "honeypot",
            "result",
            models.BinaryField(help_text="the trusted answer, encoded as the task family's nodes encode it"),
        ),
        migrations.RunPython(texts_to_inputs, inputs_to_texts),
    ]
