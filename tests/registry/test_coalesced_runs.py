"""Coalesced runs (registry.coalesced): on a worker, a burst of events queues one run of a
task, and the run keeps draining events that come while it works; where tasks run eagerly
(the embedded default, the unit tests) each event's own thread runs one pass for it."""

from __future__ import annotations

import itertools
from unittest import mock

import pytest

from bim_site.celery import app as celery_app
from registry import coalesced
from registry.redis_client import redis_client

_subnets = itertools.count(1)


@pytest.fixture
def task(settings):
    """The task woken, its Celery `delay` recorded rather than run (the test runs `drain`)."""
    if not settings.REDIS_URL:
        pytest.fail("the marks live in Redis: these tests need REDIS_URL (make test provides one)")
    name, subnet = "dispatch_waiting", f"test-{next(_subnets)}"
    stub = mock.Mock()
    with mock.patch.dict("celery.current_app.tasks", {f"registry.tasks.{name}": stub}):
        yield name, subnet, stub
    for args in ((subnet,), ("another-subnet",)):
        redis_client().delete(coalesced._key(name, args))


@pytest.fixture
def on_a_worker():
    celery_app.conf.task_always_eager = False  # tests/conftest.py's _eager_celery restores it


def test_a_burst_of_events_queues_one_run(task, on_a_worker):
    name, subnet, stub = task
    for _ in range(5):
        coalesced.wake(name, subnet)
    coalesced.wake(name, "another-subnet")  # its own run
    assert [c.args for c in stub.delay.call_args_list] == [(subnet,), ("another-subnet",)]


def test_events_during_a_pass_get_another_pass_of_the_same_run_not_a_new_task(task, on_a_worker):
    name, subnet, stub = task
    coalesced.wake(name, subnet)
    passes = []

    def one_pass():
        passes.append(len(passes))
        if len(passes) == 1:  # results free offer slots while the first pass places jobs
            for _ in range(3):
                coalesced.wake(name, subnet)

    assert coalesced.drain(name, (subnet,), one_pass) == 2
    assert passes == [0, 1]
    assert stub.delay.call_count == 1  # the first event's only

    coalesced.wake(name, subnet)  # the run has ended: the next event queues a new one
    assert stub.delay.call_count == 2


def test_a_run_that_fails_lets_the_next_event_queue_a_new_one(task, on_a_worker):
    name, subnet, stub = task
    coalesced.wake(name, subnet)

    def one_pass():
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        coalesced.drain(name, (subnet,), one_pass)
    coalesced.wake(name, subnet)
    assert stub.delay.call_count == 2


def test_a_run_that_keeps_finding_events_hands_over_to_a_fresh_task(task, on_a_worker, monkeypatch):
    name, subnet, stub = task
    monkeypatch.setattr(coalesced, "RUN_FOR_S", 0.0)  # its time is up after the first pass
    coalesced.wake(name, subnet)
    assert coalesced.drain(name, (subnet,), lambda: coalesced.wake(name, subnet)) == 1
    assert stub.delay.call_count == 2  # the first event's, and the hand-over
    coalesced.wake(name, subnet)  # the fresh task is queued: nothing more to queue
    assert stub.delay.call_count == 2


def test_where_tasks_run_eagerly_each_event_runs_one_pass_in_its_own_thread(task):
    """The embedded default: a run in the thread that committed an event would hold that
    user's request for as long as other requests' events kept coming."""
    name, subnet, stub = task
    coalesced.wake(name, subnet)
    coalesced.wake(name, subnet)
    assert stub.delay.call_count == 2  # (eagerly, delay runs the pass there and then)
    passes = []
    assert coalesced.drain(name, (subnet,), lambda: [passes.append(1), coalesced.wake(name, subnet)]) == 1
    assert passes == [1]
    assert redis_client().get(coalesced._key(name, (subnet,))) is None  # no mark kept
