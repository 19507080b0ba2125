from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0016_job_dashboard_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="node",
            name="trusted",
            field=models.BooleanField(
                default=False, help_text="registry-operated: may run trusted subnets' jobs"
            ),
        ),
        migrations.AlterField(
            model_name="nodesanction",
            name="kind",
            field=models.CharField(
                choices=[
                    ("ban", "ban"),
                    ("unban", "unban"),
                    ("strikes_cleared", "strikes cleared"),
                    ("trust", "trusted"),
                    ("distrust", "trust withdrawn"),
                ],
                max_length=16,
            ),
        ),
    ]
