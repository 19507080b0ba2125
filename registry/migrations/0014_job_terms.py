from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0013_job_queued_by_age"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="terms",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
