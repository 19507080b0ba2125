from django.apps import AppConfig


class SubnetsConfig(AppConfig):
    name = "subnets"
    default_auto_field = "django.db.models.BigAutoField"
