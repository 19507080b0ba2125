from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0014_node_sanction"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="terms",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
