from typing import Any

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps
from django.db import connections
from django.db.models.signals import post_migrate
from prometheus_client import disable_created_metrics

from .db_triggers import triggers_reinstall


class BimSiteConfig(AppConfig):
    """The site itself as an app: it owns what spans the apps below it, such as the
    database triggers that every migrate must leave in place."""

    name = "bim_site"
    default = True  # BimAdminConfig below is installed by its own dotted path

    def ready(self) -> None:
        post_migrate.connect(_triggers_back, dispatch_uid="bim_site.triggers_back")
        # /metrics without prometheus_client's `_created` series: a creation timestamp per
        # label set of every counter and histogram, doubling the output for nothing we graph.
        disable_created_metrics()


class BimAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the market's dashboard as its index (bim_site/admin_site.py)."""

    default = False
    default_site = "bim_site.admin_site.BimAdminSite"


def _triggers_back(sender: Any, using: str = "default", **kwargs: Any) -> None:
    triggers_reinstall(connections[using])
