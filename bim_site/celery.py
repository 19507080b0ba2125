import os

from celery import Celery
from celery.signals import worker_init, worker_process_shutdown, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bim_site.settings")

app = Celery("bim")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _count_sql_statements(**kwargs: object) -> None:
    from bim_site import sqlstats

    sqlstats.install_from_env()


# Multiprocess metrics (bim_site/metrics.py): a process that exits leaves its counters
# behind (they are still counts), but its live gauges must go with it.
@worker_process_shutdown.connect
def _child_metrics_gone(pid: int | None = None, **kwargs: object) -> None:
    _metrics_process_dead(pid or os.getpid())


@worker_shutdown.connect
def _worker_metrics_gone(**kwargs: object) -> None:
    _metrics_process_dead(os.getpid())


def _metrics_process_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
