"""Side effects of registry writes, always deferred to commit: a task or a node never
sees state that may still roll back."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

import redis.exceptions
from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

from . import coalesced

log = logging.getLogger("bim.registry.effects")


def send_to_node(node_id: object, event: dict[str, Any]) -> None:
    """After commit, deliver a channel-layer event to the node's websocket group."""
    transaction.on_commit(lambda: group_send(f"node.{node_id}", event))


def send_to_group(group: str, event: dict[str, Any]) -> None:
    """After commit, deliver a channel-layer event to a group (a job's watching users)."""
    transaction.on_commit(lambda: group_send(group, event))


def group_send(group: str, event: dict[str, Any]) -> None:
    """Send from sync code. The in-memory layer (embedded mode) lives in the one process's
    event loop, reached through async_to_sync. With Redis, async_to_sync outside a running
    loop (a Celery worker) makes a new loop per call, and channels-redis a new connection
    pool per loop: 4.5 ms and a Redis connection per message. Those sends go to one
    long-lived loop per process instead (0.4 ms, its pool reused), without waiting."""
    layer = get_channel_layer()
    if isinstance(layer, InMemoryChannelLayer):
        async_to_sync(layer.group_send)(group, event)
        return
    future = asyncio.run_coroutine_threadsafe(_send_retrying(layer, group, event), _send_loop())
    future.add_done_callback(_log_failed_send)


# A send that finds Redis gone is tried again over about 7 s: the loop's pooled connections
# are stale after a Redis restart (the first use of each fails), and an offer that never
# reaches its node would cost the node a missed deadline it had no part in.
SEND_BACKOFF_S = (0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0)


async def _send_retrying(layer: Any, group: str, event: dict[str, Any]) -> None:
    for pause in (*SEND_BACKOFF_S, None):
        try:
            await layer.group_send(group, event)
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            if pause is None:
                raise
            await asyncio.sleep(pause)


def _log_failed_send(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        # What is still lost is recovered like a lost message: the assignment's deadline
        # passes and its role goes to another node.
        log.error("channel-layer send failed: %r", future.exception())


_loop: asyncio.AbstractEventLoop | None = None
_loop_pid = 0
_loop_lock = threading.Lock()


def _send_loop() -> asyncio.AbstractEventLoop:
    """This process's sending loop, started on first use (and again in a forked child)."""
    global _loop, _loop_pid
    with _loop_lock:
        if _loop is None or _loop_pid != os.getpid():
            _loop = asyncio.new_event_loop()
            _loop_pid = os.getpid()
            threading.Thread(target=_loop.run_forever, name="bim-channel-sends", daemon=True).start()
        return _loop


def queue_task(task_name: str, *args: str) -> None:
    """After commit, queue a registry task (run inline in eager mode)."""
    task = coalesced.task_named(task_name)
    transaction.on_commit(lambda: task.delay(*args))


def queue_task_coalesced(task_name: str, *args: str) -> None:
    """After commit, wake the task's coalesced run (`registry.coalesced`): a burst of events
    (every result freeing an offer slot, every submission) is handled by one run, which
    drains them while they keep coming."""
    transaction.on_commit(lambda: coalesced.wake(task_name, *args))
