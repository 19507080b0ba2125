"""bim_site.channel_layer: a socket that closes while its consumer is the one popping the
process's messages off Redis no longer takes a message for another socket down with it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from unittest import mock

from django.conf import settings
from redis.asyncio import Redis

from bim_site.channel_layer import RedisChannelLayer

REPLY_IN_FLIGHT_S = 0.2


def test_a_receiver_cancelled_mid_pop_hands_the_message_to_its_channel() -> None:
    assert settings.REDIS_URL, "the channel layer under test is the Redis one"
    real_bzpopmin = Redis.bzpopmin
    popped = asyncio.Event()

    async def bzpopmin_with_a_slow_reply(self: Redis, *args: Any, **kwargs: Any) -> Any:
        # Redis has popped the message; its reply is still on its way when the socket closes.
        result = await real_bzpopmin(self, *args, **kwargs)
        if result is not None:
            popped.set()
            await asyncio.sleep(REPLY_IN_FLIGHT_S)
        return result

    async def scenario() -> None:
        layer = RedisChannelLayer(hosts=[{"address": settings.REDIS_URL}], prefix=f"test-layer-{uuid.uuid4().hex}")
        closing, other = await layer.new_channel(), await layer.new_channel()
        with mock.patch.object(Redis, "bzpopmin", bzpopmin_with_a_slow_reply):
            closing_receives = asyncio.ensure_future(layer.receive(closing))
            await asyncio.sleep(0.05)  # it takes the turn to pop
            other_receives = asyncio.ensure_future(layer.receive(other))
            await asyncio.sleep(0.05)
            await layer.send(other, {"type": "job.offer", "n": 1})
            await asyncio.wait_for(popped.wait(), 2)
            closing_receives.cancel()  # its socket closed
            assert await asyncio.wait_for(other_receives, 3) == {"type": "job.offer", "n": 1}
            await asyncio.gather(closing_receives, return_exceptions=True)
            assert closing_receives.cancelled()
            # The layer goes on: the next message is received as ever.
            await layer.send(other, {"type": "job.offer", "n": 2})
            assert await asyncio.wait_for(layer.receive(other), 3) == {"type": "job.offer", "n": 2}
        await layer.flush()

    asyncio.run(scenario())
