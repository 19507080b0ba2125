import os

from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "registry"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # A full prefix-to-ASN table takes seconds to load: pay that at start-up, not
        # inside the first node's websocket handshake.
        if os.environ.get("BIM_ASN_TABLE"):
            from .asn import default_resolver

            default_resolver()
