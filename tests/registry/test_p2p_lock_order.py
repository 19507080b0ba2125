"""A node's upload and its user's delivery confirmation of the same result, at the same
moment, on real PostgreSQL: both go through, in one lock order (the job's row, then the
assignment's). bench/bandwidth.py met them deadlocking on an audited P2P job: the upload
locked the assignment and waited for the job, the confirmation held the job and waited for
the assignment, and the user got a 500."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection

from bim_core import protocol
from registry import dispatch, effects, p2p, results
from registry.models import Assignment, Job
from tests.factories import SubnetFactory, online_node, unit_vectors, user_with_credits
from tests.p2p_jobs import commit_message, p2p_submit, upload_message

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

INPUTS = {"texts": ["audited", "and confirmed"]}
WAIT_S = 10


def in_thread(work: Any, errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            work()
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_an_upload_and_the_users_confirmation_of_it_at_once_both_go_through(settings, monkeypatch):
    assert connection.vendor == "postgresql", "this test is about PostgreSQL's row locks"
    settings.P2P_AUDIT_BP = 10_000  # every job is audited: node A is asked for its payload
    monkeypatch.setattr(effects, "group_send", lambda group, event: None)
    subnet = SubnetFactory()
    nodes = {n.node.pk: n for n in (online_node(subnet, ip=f"10.{i}.0.1") for i in range(2))}
    user = user_with_credits(5)
    job = p2p_submit(user, subnet, INPUTS)
    dispatch.job_dispatch(job_id=job.id)
    job = Job.objects.get(pk=job.pk)
    pair = {a.role: (a, nodes[a.node_id]) for a in job.assignments.all()}
    vectors = unit_vectors(2)
    for role in ("A", "B"):
        assignment, keys = pair[role]
        results.commit_record(node_id=keys.node.pk, message=commit_message(keys, job, assignment, vectors))
    audited, keys = pair["A"]
    assert Assignment.objects.get(pk=audited.pk).upload_reason == "audit"

    # The confirmation takes the job's row, then waits until the upload is under way.
    confirming_holds_job, upload_started = threading.Event(), threading.Event()
    real_job_locked = p2p.job_locked

    def job_locked_then_wait(job_id: Any) -> Any:
        locked = real_job_locked(job_id)
        confirming_holds_job.set()
        assert upload_started.wait(WAIT_S)
        return locked

    monkeypatch.setattr(p2p, "job_locked", job_locked_then_wait)
    errors: list[BaseException] = []
    result_hash = protocol.sha256_hex(protocol.encode_vectors(vectors))
    confirming = in_thread(
        lambda: p2p.delivery_confirm(user=user, job_id=job.pk, assignment_id=audited.pk, result_hash=result_hash),
        errors,
    )
    assert confirming_holds_job.wait(WAIT_S)
    upload = upload_message(keys, job, audited, vectors, inputs=INPUTS)
    uploading = in_thread(lambda: results.result_record(node_id=keys.node.pk, message=upload), errors)
    uploading.join(0.5)  # it waits on a row lock now
    upload_started.set()
    confirming.join(WAIT_S)
    uploading.join(WAIT_S)

    assert errors == []  # no deadlock on either side
    audited = Assignment.objects.get(pk=audited.pk)
    assert audited.delivered_at is not None and audited.result is not None
