"""How the node websocket's handlers reach the database and the channel layer, so that
thousands of sockets at once (a registry restart brings every node back within seconds)
neither queue behind each other nor exhaust a connection pool.

Database: channels' `database_sync_to_async` is thread-sensitive, so every socket's
database work in a process ran on one thread, one call at a time: at 5,000 nodes coming
back after a restart, each hello waited for every other (bench/websockets.py measured
≈ 135 s, and daphne dropped upgrades whose token lookup waited past its 5 s connect
timeout). `db` runs the work on a pool of NODE_DB_THREADS threads instead, each
taking a connection from the process's database pool for the call only. One socket still
awaits its own calls in order, so the order of a node's messages is kept; between
nodes, the services lock the rows they change, as they must anyway with several registry
processes. SQLite (embedded mode) keeps one thread: it has one writer anyway.

Channel layer: channels-redis keeps one connection pool per event loop, and redis-py
refuses (MaxConnectionsError) a command past its max_connections (100) instead of
waiting: 5,000 sockets closing at once each leaving their group failed 125 disconnect
handlers. Group changes go through `group_change`, a pipeline for many sockets at once;
other layer calls of node sockets take one of NODE_LAYER_SLOTS first.

`Coalesced` turns many sockets' calls of one service into bulk calls: a reconnect storm
or a disconnect burst becomes a few transactions of hundreds of nodes each instead of
one per node.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, ParamSpec, TypeVar

from asgiref.sync import SyncToAsync
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from django.db import close_old_connections, connection

log = logging.getLogger("bim.registry.ws")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _db_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            threads = 1 if connection.vendor == "sqlite" else max(1, settings.NODE_DB_THREADS)
            _executor = ThreadPoolExecutor(threads, thread_name_prefix="bim-node-db")
        return _executor


class _DbCall(SyncToAsync):
    """channels' DatabaseSyncToAsync on these threads: the thread's connection goes back to
    the pool before and after each call. Django's own close_old_connections, not the name
    channels imports: channels' test communicator turns that one off (its one thread holds
    the test's connection), which would leave these threads holding theirs."""

    def thread_handler(self, loop: Any, *args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return super().thread_handler(loop, *args, **kwargs)
        finally:
            close_old_connections()


def db(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`func` as an awaitable run on the node sockets' database threads (the connection is
    handed back to the pool after the call, as channels does)."""

    @functools.wraps(func)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return await _DbCall(func, thread_sensitive=False, executor=_db_executor())(*args, **kwargs)

    return call


def db_threads_join() -> None:
    """Wait for the calls in flight, and start the threads afresh on next use: a test's
    sockets must not write into the next test's database after its event loop is gone."""
    global _executor
    with _executor_lock:
        executor, _executor = _executor, None
    if executor is not None:
        executor.shutdown(wait=True)


_layer_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


async def layer(call: Awaitable[T]) -> T:
    """Await a channel-layer call once one of NODE_LAYER_SLOTS of this event loop is free."""
    loop = asyncio.get_running_loop()
    slots = _layer_slots.get(loop)
    if slots is None:
        slots = _layer_slots[loop] = asyncio.Semaphore(settings.NODE_LAYER_SLOTS)
    async with slots:
        return await call


class Coalesced(Generic[T, R]):
    """Calls of `bulk(items) -> results` (one result per item, in order) made by many
    sockets at once, gathered: the first call starts a run `window_s` later; calls made
    meanwhile, or while a run is under way, join it or the next one (up to `limit` each).
    A lone call costs what it did plus the window; a burst, a few bulk calls instead of
    one each. `bulk` runs on the database threads, or on the event loop when it is a
    coroutine function (channel-layer work). When a bulk call fails (a deadlock, say),
    its items are run one by one through `single`, so one that cannot be done fails alone."""

    def __init__(
        self,
        bulk: Callable[[Sequence[T]], Any],
        single: Callable[[T], Any],
        *,
        limit: int = 500,
        window_s: float = 0.005,
    ) -> None:
        self.bulk = bulk if asyncio.iscoroutinefunction(bulk) else db(bulk)
        self.single = single if asyncio.iscoroutinefunction(single) else db(single)
        self.limit = limit
        # A run starts this long after the call that began it: under a storm calls trickle
        # in as fast as the event loop reads them, and a run started at once would take one
        # or two (a trip to a thread, a pooled connection and a query each).
        self.window_s = window_s
        # The event loop's calls waiting, and its run; futures belong to the loop that made
        # them, so another loop (tests run one per call) starts afresh.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._running: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._pending, self._running = loop, [], None
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if self._running is None or self._running.done():
            self._running = loop.create_task(self._drain(self._pending))
        return await future

    async def _drain(self, pending: list[tuple[T, asyncio.Future[R]]]) -> None:
        while pending:
            if len(pending) < self.limit:
                await asyncio.sleep(self.window_s)
            batch = pending[: self.limit]
            del pending[: self.limit]
            items = [item for item, _ in batch]
            try:
                results = await self.bulk(items)
            except Exception:
                log.warning("a bulk call of %d failed; running them one by one", len(items), exc_info=True)
                results = [await self._one(item, future) for item, future in batch]
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    async def _one(self, item: T, future: asyncio.Future[R]) -> Any:
        try:
            return await self.single(item)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return None


GroupChange = tuple[str, str, str]  # ("add" or "discard", group, channel)


async def _group_changes(changes: Sequence[GroupChange]) -> list[None]:
    """Many sockets' group changes: with channels-redis one pipeline per shard (its own
    group_add and group_discard cost a round trip or two each, a tenth of a storm's CPU);
    any other layer (embedded mode's in-memory one) is called as usual."""
    layer = get_channel_layer()
    if not isinstance(layer, RedisChannelLayer):
        for change in changes:
            await _group_change(change)
        return [None] * len(changes)
    # channels-redis's own key and shard for a group, and its expiry (core.group_add).
    pipelines: dict[int, Any] = {}
    now = time.time()
    for op, group, channel in changes:
        index = layer.consistent_hash(group)
        if index not in pipelines:
            pipelines[index] = layer.connection(index).pipeline(transaction=False)
        key = layer._group_key(group)
        if op == "add":
            pipelines[index].zadd(key, {channel: now})
            pipelines[index].expire(key, layer.group_expiry)
        else:
            pipelines[index].zrem(key, channel)
    for pipeline in pipelines.values():
        await pipeline.execute()
    return [None] * len(changes)


async def _group_change(change: GroupChange) -> None:
    op, group, channel = change
    layer = get_channel_layer()
    await (layer.group_add if op == "add" else layer.group_discard)(group, channel)


group_change = Coalesced(_group_changes, _group_change)
