"""Celery tasks: take ids, call one service, safe to run twice."""

from celery import shared_task
from django.db import OperationalError

from . import benchmarks, dispatch, honeypots, sentinels, sweeper, verify

# Tasks are idempotent, so a deadlock victim or a dropped connection is simply run again.
retried = shared_task(autoretry_for=(OperationalError,), retry_backoff=0.2, max_retries=5)


@retried
def dispatch_job(job_id: str) -> None:
    dispatch.job_dispatch(job_id=job_id)


@retried
def dispatch_waiting(subnet_id: str) -> None:
    dispatch.jobs_dispatch_waiting(subnet_id=int(subnet_id))


@retried
def verify_job(job_id: str) -> None:
    verify.job_verify(job_id=job_id)


@retried
def sweep() -> dict[str, int]:
    return sweeper.sweep()


@retried
def benchmarks_due() -> int:
    return benchmarks.benchmarks_due()


@retried
def honeypots_issue_due() -> int:
    return honeypots.honeypots_issue_due()


@retried
def sentinels_run() -> int:
    return sentinels.sentinels_run()
