import os

from django.apps import AppConfig

from .asn import default_resolver


class RegistryConfig(AppConfig):
    name = "registry"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Services queue tasks by name (effects.queue_task); every process that runs them,
        # eager or not, needs them registered. Imported here, once the models are loaded.
        from ledger.checks import job_outcomes_register

        from . import lookups, selectors, tasks  # noqa: F401 (lookups: `__any` on every field)

        job_outcomes_register(selectors.job_hold_outcomes)

        # A full prefix-to-ASN table takes seconds to load: pay that at start-up, not
        # inside the first node's websocket handshake.
        if os.environ.get("BIM_ASN_TABLE"):
            default_resolver()
