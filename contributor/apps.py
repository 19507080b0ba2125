from django.apps import AppConfig


class ContributorConfig(AppConfig):
    name = "contributor"
    default_auto_field = "django.db.models.BigAutoField"
