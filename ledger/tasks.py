from celery import shared_task

from . import checks, services


@shared_task
def pending_rollup() -> int:
    return services.pending_rollup()


@shared_task
def invariants_check() -> int:
    """The full check on beat's schedule; its outcome is what /metrics reports."""
    return len(checks.ledger_check_record())
