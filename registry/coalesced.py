"""Coalesced runs: one run of a task for a burst of events, which keeps draining them while
they keep coming.

Every submission and every result that frees an offer slot is an event for the subnet's
dispatcher. Queuing a Celery task per event made the dispatcher a task per event; marking
"queued" in the cache and clearing the mark when the run started still cost daphne a cache
write and a Celery publish per run, and the worker a task per run (7 % of daphne's CPU and
1.2 tasks per job in bench/throughput.py). Here a mark per (task, arguments) has three states:

- absent: no run is queued or running; the event that finds it so queues one;
- DIRTY: a run is queued, or one is running and events came after its pass began;
- CLEAN: a run is in its pass and nothing came since.

An event sets DIRTY (one Redis command) and queues a run only when it found no mark. A run
sets CLEAN, does its pass, and ends only if the mark is still CLEAN (deleting it, in one
script); if an event made it DIRTY meanwhile, the same run does another pass. So an event
never goes unhandled, and under load one long-lived run does every pass, each one covering
all the events that came during the one before. A run hands over to a fresh task after
RUN_FOR_S (it holds one of the worker's threads); a run that fails clears its mark, so
the next event queues another (and the sweeper runs every dispatcher anyway). The mark
expires after MARK_S, should a worker die while it is set.

Where tasks run eagerly (the embedded default, which has no Redis; the unit tests) the
thread that commits an event runs one pass for it, there and then, and no mark is kept: a
run there would hold a user's request for as long as other requests' events kept coming."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery import current_app
from django.core.cache import cache

from .redis_client import redis_client

DIRTY = b"d"
CLEAN = b"c"

# How long a mark may outlive a worker that died holding it; each pass renews it.
MARK_S = 5
# How long one run keeps doing passes before a fresh task takes over.
RUN_FOR_S = 2.0
# Between passes the run waits this long, so the next pass places what several events freed
# (against 10 ms: a fifth of the tasks and fewer statements per job in bench/throughput.py;
# docs/benchmarks.md). A quiet market waits for nothing: a run's first pass starts at once.
GATHER_S = 0.05

# Ends a pass: deletes a CLEAN (or expired) mark and answers 0, or sets a DIRTY one back to
# CLEAN for the next pass and answers 1. One script, so no event falls between the two.
_PASS_END = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
    return 1
end
redis.call('DEL', KEYS[1])
return 0
"""

_pass_end_scripts: dict[int, object] = {}


def wake(task_name: str, *args: str) -> None:
    """An event for the task: queue a run unless one is queued or running (call after
    commit, so the run sees what the event wrote)."""
    client = _marks()
    if client is None or client.set(_key(task_name, args), DIRTY, ex=MARK_S, get=True) is None:
        task_named(task_name).delay(*args)


def drain(task_name: str, args: tuple[str, ...], one_pass: Callable[[], object]) -> int:
    """The task's body: passes of `one_pass` until a pass sees no event come during it (one
    pass where tasks run eagerly). Returns the passes run."""
    client = _marks()
    if client is None:
        one_pass()
        return 1
    key = _key(task_name, args)
    began = time.monotonic()
    passes = 0
    client.set(key, CLEAN, ex=MARK_S)
    while True:
        try:
            one_pass()
        except BaseException:
            client.delete(key)  # the next event queues a fresh run (or Celery retries this one)
            raise
        passes += 1
        if not _pass_end(client, key):
            return passes
        if time.monotonic() - began > RUN_FOR_S:
            client.set(key, DIRTY, ex=MARK_S)  # so events until the fresh run starts queue nothing more
            task_named(task_name).delay(*args)
            return passes
        time.sleep(GATHER_S)


def _marks() -> Any:
    """The Redis client that keeps the marks; None where tasks run eagerly."""
    if current_app.conf.task_always_eager:
        return None
    return redis_client()


def _pass_end(client: Any, key: str) -> bool:
    """Whether an event came during the pass (the mark is then CLEAN for the next one)."""
    script = _pass_end_scripts.get(id(client))
    if script is None:  # sent by its digest from then on (EVALSHA)
        script = _pass_end_scripts[id(client)] = client.register_script(_PASS_END)
    return bool(script(keys=[key], args=[DIRTY, CLEAN, MARK_S]))


def _key(task_name: str, args: tuple[str, ...]) -> str:
    return cache.make_key("coalesced:" + ":".join((task_name, *args)))


def task_named(task_name: str):  # noqa: ANN201 - a Celery task
    """A registry task, looked up by name the way `send_task` addresses it: the services
    that queue or wake tasks never import the tasks module that calls them."""
    return current_app.tasks[f"registry.tasks.{task_name}"]
