from celery import shared_task

from . import services


@shared_task
def pending_rollup() -> int:
    return services.pending_rollup()
