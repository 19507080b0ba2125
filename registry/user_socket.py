"""The user websocket (/ws/user/): signalling for peer-to-peer jobs (docs/p2p.md §2). A user
watches its jobs, learns their nodes and the ICE servers, and exchanges offers, answers and
candidates with each node through the registry. Parses, authorizes (registry.p2p), forwards.

A bad message is answered {"type": "error", "code", "detail"} and the socket stays open; a
frame over the size limit, a flood or a message before authentication closes it with the
node socket's codes (bim_core.protocol)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from bim_core import protocol

from . import p2p
from .node_io import db, layer

log = logging.getLogger("bim.registry.ws")

# Jobs one socket may watch at once: a client brings the input of the jobs it submitted,
# not of thousands (each watch is a group membership in the channel layer).
MAX_WATCHED = 256


class UserSocketConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=protocol.CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        self.watched: set[str] = set()
        self.budget = protocol.TokenBucket(
            rate=settings.USER_SOCKET_RATE_PER_S, burst=settings.USER_SOCKET_RATE_BURST, now=time.monotonic()
        )
        self.rate_limited = False

    async def disconnect(self, code: int) -> None:
        for job_id in getattr(self, "watched", ()):
            await layer(self.channel_layer.group_discard(p2p.job_group(job_id), self.channel_name))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        frame = text_data.encode("utf-8") if text_data is not None else (bytes_data or b"")
        if len(frame) > settings.USER_SOCKET_MAX_MESSAGE_BYTES:
            await self.close(code=protocol.CLOSE_MESSAGE_TOO_BIG_APP)
            return
        if not self.budget.take(time.monotonic()):
            if self.budget.exhausted:
                await self.close(code=protocol.CLOSE_RATE_LIMITED)
            elif not self.rate_limited:
                self.rate_limited = True
                await self.send_error("rate_limited", "too many messages; slow down")
            return
        self.rate_limited = False
        try:
            content = json.loads(text_data or "")
        except ValueError:
            content = None
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            await self.send_error("bad_message", "a message is a JSON object with a string type")
            return
        handler = {"watch": self.on_watch, "rtc_offer": self.on_signal, "rtc_ice": self.on_signal}.get(content["type"])
        if handler is None:
            await self.send_error("bad_message", f"unknown message type {content['type']!r}")
            return
        try:
            await handler(content)
        except protocol.ProtocolError as exc:
            await self.send_error(exc.code, exc.detail, content)

    async def send_error(self, code: str, detail: str, about: dict[str, Any] | None = None) -> None:
        """An error, naming the job and assignment it is about (as sent, cut short) so a
        client with many peers knows which offer was refused."""
        message = {"type": "error", "code": code, "detail": detail}
        for name in ("job_id", "assignment_id"):
            if isinstance((about or {}).get(name), str):
                message[name] = about[name][:64]
        await self.send_json(message)

    async def on_watch(self, content: dict[str, Any]) -> None:
        peers = await db(p2p.signal_watch)(user=self.user, job_id=content.get("job_id"))
        if peers["job_id"] not in self.watched:
            if len(self.watched) >= MAX_WATCHED:
                raise protocol.ProtocolError("rate_limited", f"a socket watches at most {MAX_WATCHED} jobs")
            self.watched.add(peers["job_id"])
            await layer(self.channel_layer.group_add(p2p.job_group(peers["job_id"]), self.channel_name))
            # Assignments made between the read and joining the group would be missed: read again.
            peers = await db(p2p.signal_watch)(user=self.user, job_id=peers["job_id"])
        await self.send_json(peers)

    async def on_signal(self, content: dict[str, Any]) -> None:
        node_id, message = await db(p2p.signal_to_node)(user=self.user, message=content)
        await layer(self.channel_layer.group_send(f"node.{node_id}", {"type": "job.offer", "message": message}))

    # Events from the channel layer.
    async def user_forward(self, event: dict[str, Any]) -> None:
        await self.send_json(event["message"])
