"""Celery tasks: take ids, call one service, safe to run twice."""

from celery import shared_task

from . import nodes, services


@shared_task
def dispatch_job(job_id: str) -> None:
    services.job_dispatch(job_id=job_id)


@shared_task
def dispatch_waiting(subnet_id: str) -> None:
    services.jobs_dispatch_waiting(subnet_id=int(subnet_id))


@shared_task
def verify_job(job_id: str) -> None:
    services.job_verify(job_id=job_id)


@shared_task
def sweep() -> dict[str, int]:
    return services.sweep()


@shared_task
def benchmarks_due() -> int:
    return nodes.benchmarks_due()
