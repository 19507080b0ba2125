import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bim_site.settings")

app = Celery("bim")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _count_sql_statements(**kwargs: object) -> None:
    from bim_site import sqlstats

    sqlstats.install_from_env()
