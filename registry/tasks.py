"""Celery tasks: take ids, call one service, safe to run twice. In embedded mode (tasks run
eagerly, no beat) `embedded_beat` runs the periodic ones in-process instead."""

import logging
import math
import time

from celery import shared_task
from django.conf import settings
from django.db import OperationalError
from django.utils.module_loading import import_string

from . import benchmarks, coalesced, dispatch, honeypots, lifecycle, presence, sentinels, sweeper, verify

# Tasks are idempotent, so a deadlock victim or a dropped connection is simply run again.
retried = shared_task(autoretry_for=(OperationalError,), retry_backoff=0.2, max_retries=5)


@retried
def dispatch_job(job_id: str) -> None:
    dispatch.job_dispatch(job_id=job_id)


@retried
def dispatch_waiting(subnet_id: str) -> None:
    coalesced.drain("dispatch_waiting", (subnet_id,), lambda: dispatch.jobs_dispatch_waiting(subnet_id=int(subnet_id)))


@shared_task
def subnet_prepare(subnet_id: str, package_key: str, operator_id: str, activate: str) -> None:
    # Not retried on its own: a failure is recorded on the subnet for the operator to see.
    lifecycle.subnet_prepare(
        subnet_id=int(subnet_id), package_key=package_key, operator_id=int(operator_id) if operator_id else None, activate=bool(activate)
    )


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


@retried
def session_keys_prune() -> int:
    return presence.session_keys_prune()


log = logging.getLogger("bim.registry.tasks")

# The beat entries embedded mode runs itself (the sweeper has its own, faster due-check).
EMBEDDED_BEAT = (
    "registry-benchmarks",
    "registry-honeypots",
    "registry-sentinels",
    "registry-session-keys",
    "ledger-check",
)
_beat_last_run: dict[str, float] = {}


def embedded_beat() -> list[str]:
    """Embedded mode has no Celery beat, so node heartbeats drive it: the sweeper, then each
    of EMBEDDED_BEAT whose CELERY_BEAT_SCHEDULE interval has passed in this process (due at
    the first heartbeat). Heartbeats rather than a thread: no thread to start and stop with
    the ASGI server, nothing runs while no node is connected (when there is nothing to
    benchmark, honeypot or re-run), and the work runs in the thread pool the database
    calls already use. With a real worker (not eager) beat does all of it and this is a no-op."""
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        return []
    sweeper.sweep_if_due()
    ran = []
    for name in EMBEDDED_BEAT:
        entry = settings.CELERY_BEAT_SCHEDULE[name]
        now = time.monotonic()
        if now - _beat_last_run.get(name, -math.inf) < float(entry["schedule"]):
            continue
        _beat_last_run[name] = now
        task = import_string(entry["task"])
        try:
            task()
        except Exception:
            # One failing defence must not end the node's socket nor stop the others.
            log.exception("embedded beat: %s failed", name)
        ran.append(name)
    return ran


def embedded_beat_reset() -> None:
    """Forget when each periodic task last ran (tests; a fresh process starts so)."""
    _beat_last_run.clear()
