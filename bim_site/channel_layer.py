"""channels-redis's RedisChannelLayer, without losing a message when a socket closes.

In one process, the consumers' `receive()` calls take turns popping the process's messages
off Redis (one BZPOPMIN at a time, for all of its channels) and hand each to the buffer of
the channel it is for. A socket that closes cancels its consumer's receive; when that
consumer is the one popping and a message arrives at that moment, the message is popped and
dropped, whoever it was for: channels-redis keeps its backup copy only once the pop has
returned (django/channels#1683, django/channels_redis#366). Sockets that come and go make
it frequent: in bench/bandwidth.py, whose user sockets live for one job each, a node's `job`
offer, a user's `rtc_offer` or a `job_state` went missing about once in fifty peer-to-peer
jobs run four at a time, and each such job waited out its deadline.

Here a cancelled receiver's pop is not cut short: the receiver waits for it (at most the
layer's `brpop_timeout`, 5 s, before it lets go of its turn) and hands a message it got to
its channel's buffer, as `receive` would have, before the cancellation goes on. Consumers
that wait for their channel watch that buffer, so the message reaches the one it is for.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels_redis import core


class RedisChannelLayer(core.RedisChannelLayer):
    async def _brpop_with_clean(self, index: int, channel: str, timeout: float) -> bytes | None:
        pop = asyncio.ensure_future(super()._brpop_with_clean(index, channel, timeout))
        try:
            return await asyncio.shield(pop)
        except asyncio.CancelledError:
            if not channel.endswith("!"):
                raise  # a plain channel's receive has no buffer to hand a message to
            member = await _finished(pop)
            if member is not None:
                self._buffer(member)
                # What receive_single does after a pop: the message is delivered, drop its backup.
                await _finished(asyncio.ensure_future(self._clean_receive_backup(index, channel)))
            raise

    def _buffer(self, member: bytes) -> None:
        message = self.deserialize(member)
        target = message.pop("__asgi_channel__")
        for name in target if isinstance(target, list) else [target]:
            self.receive_buffer[name].put_nowait(message)


async def _finished(task: asyncio.Future[Any]) -> Any:
    """The task's result, waited for through further cancellations (the caller re-raises
    the one it is handling once this returns); None when the task failed."""
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            continue
        except Exception:
            break
    return None if task.cancelled() or task.exception() is not None else task.result()
