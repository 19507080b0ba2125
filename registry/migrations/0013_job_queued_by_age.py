from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0012_session_key_used_at_index"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("state", "queued")),
                fields=["subnet", "created_at"],
                name="job_queued_by_age",
            ),
        ),
    ]
