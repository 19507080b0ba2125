from django.apps import AppConfig


class DeveloperConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "developer"
    verbose_name = "Developers: API keys and the OpenAI-compatible API"

    def ready(self) -> None:
        from . import schema  # noqa: F401  (registers the Bearer scheme with drf-spectacular)
