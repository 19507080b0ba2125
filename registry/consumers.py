"""The node websocket (protocol: docs/protocol.md). Parses, authorizes, calls a service,
replies. A bad message gets {"type": "error"} and the socket stays open; a failed
handshake, an oversized frame or a flood closes it with a code from `bim_core.protocol`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import ChannelFull, StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import DataError, OperationalError
from django.utils import timezone

from bim_core import protocol
from bim_core.net import client_ip

from . import benchmarks, cool_off, give_up, hello, metrics, p2p, presence, reputation, results, tasks
from .node_io import Coalesced, db, group_change, layer

log = logging.getLogger("bim.registry.ws")

DB_ATTEMPTS = 3

# Sockets that say hello, get ready or close at the same moment (a registry restart
# brings every node back, a network blip drops many) are served in a few bulk
# transactions, not one each; a lone socket costs what it did.
_hellos = Coalesced(hello.nodes_hello, hello.node_hello)
_readies = Coalesced(presence.nodes_ready, lambda ready: presence.nodes_ready([ready])[0])
_heartbeats = Coalesced(presence.nodes_heartbeat, lambda session: presence.nodes_heartbeat([session])[0])
_sessions_end = Coalesced(
    presence.nodes_disconnect,
    lambda session: presence.node_disconnect(node_id=session[0], channel_name=session[1], work_left=session[2]),
)

# Processes (channel-name prefixes) whose channel was found full, until when: a registry
# process that reads its channel does not let it fill up, so a full one is gone (a
# restart), and thousands of reconnecting nodes would each have their `node.replaced`
# refused. A socket of such a process that is still open learns it was replaced at its
# next heartbeat (node_heartbeat answers "replaced").
_unread: dict[str, float] = {}

CLEAN_CLOSE_CODES = frozenset({1000, 1001})


class NodeConsumer(AsyncJsonWebsocketConsumer):
    node_id: str | None = None
    rate_limited = False
    closed_by_registry = False
    cut_off_for = ""

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes "old" database connections before every message, on its one
        # thread for sync code: every socket's every frame queued there (a restart's
        # 5,000 hellos, 500 heartbeats a second). This consumer touches the database only
        # through node_io.db, whose threads do that around each call.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        # As channels' own, less the trip to its sync thread (see dispatch); this
        # consumer joins no groups through `groups`: disconnect() leaves its own.
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def connect(self) -> None:
        self.budget = protocol.TokenBucket(
            rate=settings.NODE_RATE_PER_S, burst=settings.NODE_RATE_BURST, now=time.monotonic()
        )
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=protocol.CLOSE_UNAUTHENTICATED)
            return
        self.nonce = protocol.b64encode(os.urandom(32))
        await self.send_json({"type": "challenge", "nonce": self.nonce, "protocol": protocol.PROTOCOL_VERSION})
        self.hello_timer = asyncio.get_running_loop().call_later(
            settings.NODE_HELLO_TIMEOUT_S, lambda: asyncio.ensure_future(self._hello_timeout())
        )

    async def _hello_timeout(self) -> None:
        if self.node_id is None:
            await self.close(code=protocol.CLOSE_HELLO_TIMEOUT)

    async def disconnect(self, code: int) -> None:
        timer = getattr(self, "hello_timer", None)
        if timer is not None:
            timer.cancel()
        if self.node_id is not None:
            await group_change(("discard", f"node.{self.node_id}", self.channel_name))
            if code == protocol.CLOSE_MESSAGE_TOO_BIG and not self.cut_off_for:
                # The transport refused a frame over its own limit before this consumer saw
                # it (bim_site.serve makes that a 1009 close): as our own size check would.
                self.cut_off_for = "node cut off: sent a frame over the size limit"
                await db(cool_off.node_cool_off)(self.node_id)
                await db(reputation.node_strike)(node_id=self.node_id, reason="sent a frame over the size limit")
            # A clean close the node began itself (1000, 1001) leaves the work it holds, as
            # does being cut off for what it sent; an abnormal close (1006: the network, or
            # a registry going down) keeps the work for the reconnect grace.
            work_left = self.cut_off_for
            if not work_left and code in CLEAN_CLOSE_CODES and not self.closed_by_registry:
                work_left = "node closed its socket holding the work"
            await _sessions_end((self.node_id, self.channel_name, work_left))

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        self.closed_by_registry = True
        await super().close(code=code, reason=reason)

    async def close_for_violation(self, code: int, reason: str) -> None:
        """Close on a limit the node broke, and strike it: a node cut off for what it sent
        would otherwise reconnect blameless (a disconnect alone is no fault) and keep
        drawing offers that each cost a user an assignment deadline."""
        self.cut_off_for = f"node cut off: {reason}"
        try:
            if self.node_id is not None:
                await db(cool_off.node_cool_off)(self.node_id)
                await db(reputation.node_strike)(node_id=self.node_id, reason=reason)
        finally:
            await self.close(code=code)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.cut_off_for:
            return  # frames already in flight when the registry cut the node off: one strike is enough
        frame = text_data.encode("utf-8") if text_data is not None else (bytes_data or b"")
        if len(frame) > settings.NODE_MAX_MESSAGE_BYTES:
            await self.close_for_violation(protocol.CLOSE_MESSAGE_TOO_BIG_APP, "sent a frame over the size limit")
            return
        if not self.budget.take(time.monotonic()):
            await self._over_budget()  # refused before it is even parsed
            return
        try:
            content = json.loads(text_data or "")
        except ValueError:
            content = None
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            await self.close(code=protocol.CLOSE_PROTOCOL_ERROR)
            return
        # A heartbeat costs the registry a cache write, a pong and the embedded beat; an
        # honest node sends one every heartbeat_s, so it is priced at NODE_HEARTBEAT_COST
        # tokens: a heartbeat flood is cut off within seconds, not served at the full rate.
        extra = settings.NODE_HEARTBEAT_COST - 1 if content["type"] == "heartbeat" else 0
        if extra > 0 and not self.budget.take(time.monotonic(), extra):
            await self._over_budget()
            return
        self.rate_limited = False
        await self.receive_json(content)

    async def _over_budget(self) -> None:
        # Refused messages still cost: a node that keeps flooding runs into debt and is cut off.
        if self.budget.exhausted:
            await self.close_for_violation(protocol.CLOSE_RATE_LIMITED, "flooded the registry with messages")
        elif not self.rate_limited:  # the first refusal of a run says why, once
            self.rate_limited = True
            await self.send_error("rate_limited", "too many messages; slow down")

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        kind = content["type"]
        if self.node_id is None:
            if kind != "hello":
                await self.close(code=protocol.CLOSE_PROTOCOL_ERROR)
                return
            await self.on_hello(content)
            return
        handler = {
            "ready": self.on_ready,
            "heartbeat": self.on_heartbeat,
            "result": self.on_result,
            "job_failed": self.on_job_failed,
            "benchmark_result": self.on_benchmark_result,
            "partial": self.on_partial,
            "result_commit": self.on_result_commit,
            "rtc_answer": self.on_signal,
            "rtc_ice": self.on_signal,
        }.get(kind)
        if handler is None:
            await self.send_error("bad_message", f"unknown message type {kind!r}")
            return
        for attempt in range(DB_ATTEMPTS):
            try:
                await handler(content)
            except protocol.ProtocolError as exc:
                metrics.results_refused.labels(code=exc.code).inc()
                await self.send_error(exc.code, exc.detail, content.get("assignment_id"))
            except DataError:
                # A value the checks let through but the database will not store: the step
                # rolled back, and the node learns which message, not a closed socket.
                log.warning("node %s: %s carried a value the database refused", self.node_id, kind)
                await self.send_error("out_of_range", "a value is out of range", content.get("assignment_id"))
            except OperationalError:
                # A deadlock or serialization failure rolled the whole step back: try again,
                # and never let one failed write end a socket that carries other work.
                if attempt + 1 < DB_ATTEMPTS:
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                log.exception("node %s: %s failed %d times", self.node_id, kind, DB_ATTEMPTS)
                await self.send_error("busy", "the registry could not record this now; send it again", content.get("assignment_id"))
            return

    async def send_error(self, code: str, detail: str, assignment_id: Any = None) -> None:
        message = {"type": "error", "code": code, "detail": detail}
        if assignment_id is not None:
            message["assignment_id"] = str(assignment_id)
        await self.send_json(message)

    async def on_hello(self, content: dict[str, Any]) -> None:
        # The hello came in time; how long the registry takes to check it is not the node's
        # delay (in a reconnect storm the check may wait seconds for its batch).
        self.hello_timer.cancel()
        opened = await _hellos(
            hello.HelloRequest(
                user=self.scope["user"],
                node_id=str(content.get("node_id", "")),
                nonce=self.nonce,
                session_key_pub=str(content.get("session_key_pub", "")),
                signature=str(content.get("signature", "")),
                channel_name=self.channel_name,
                ip=client_ip(self.scope),
            )
        )
        if opened.close_code is not None:
            await self.close(code=opened.close_code, reason=opened.close_reason)
            return
        self.node_id = opened.node_id
        group = f"node.{self.node_id}"
        await group_change(("add", group, self.channel_name))
        if opened.replaced:
            await self._replace(group, opened.replaced)
        await self.send_json(
            {
                "type": "welcome",
                "node_id": self.node_id,
                "heartbeat_s": settings.NODE_HEARTBEAT_S,
                "subnets": opened.subnets,
                "assignments": opened.assignments,
            }
        )
        for message in opened.uploads:
            await self.send_json(message)
        log.info("node %s connected from %s", self.node_id, client_ip(self.scope))

    async def _replace(self, group: str, replaced: str) -> None:
        """The node's older session is over: its channel leaves the node's group (offers go
        to this socket only), and its socket, if it is still open, is told to close. After a
        registry restart that socket is gone with its process, whose channel then fills up
        with these (ChannelFull): the message is only for a socket still there to read it,
        and a process whose channel is full reads none (see `_unread`)."""
        await group_change(("discard", group, replaced))
        process = replaced.partition("!")[0]
        if _unread.get(process, 0.0) > time.monotonic():
            return
        try:
            await layer(self.channel_layer.send(replaced, {"type": "node.replaced"}))
        except ChannelFull:
            # Messages live `expiry` seconds there: until then every send would be refused.
            _unread[process] = time.monotonic() + getattr(self.channel_layer, "expiry", 60)

    async def on_ready(self, content: dict[str, Any]) -> None:
        subnet = str(content.get("subnet", ""))
        max_concurrent = protocol.parse_int(
            content.get("max_concurrent", 1), "max_concurrent", low=1, high=protocol.MAX_CONCURRENT
        )
        refused = await _readies(
            presence.Ready(self.node_id, subnet, str(content.get("model_checksum", "")), max_concurrent)
        )
        if refused is not None:
            raise refused
        await self.send_json({"type": "ready_ok", "subnet": subnet})

    async def on_heartbeat(self, content: dict[str, Any]) -> None:
        state = await _heartbeats((self.node_id, self.channel_name))
        if state != "alive":
            await self.close(code=protocol.CLOSE_REPLACED if state == "replaced" else protocol.CLOSE_SESSION_ENDED)
            return
        await self.send_json({"type": "pong", "time": timezone.now().isoformat()})
        if settings.CELERY_TASK_ALWAYS_EAGER:  # embedded mode's beat (a no-op beside a worker: no trip to a thread)
            await db(tasks.embedded_beat)()

    async def on_result(self, content: dict[str, Any]) -> None:
        content = {**content, "elapsed_ms": protocol.parse_elapsed_ms(content.get("elapsed_ms"))}
        try:
            assignment = await db(results.result_record)(node_id=self.node_id, message=content)
        except protocol.ProtocolError as exc:
            # The refusal rolled its transaction back; its cost to the node is recorded apart.
            await db(results.result_refused)(node_id=self.node_id, message=content, code=exc.code)
            raise
        await self.send_json({"type": "result_ok", "assignment_id": str(assignment.id)})

    async def on_result_commit(self, content: dict[str, Any]) -> None:
        content = {**content, "elapsed_ms": protocol.parse_elapsed_ms(content.get("elapsed_ms"))}
        try:
            assignment = await db(results.commit_record)(node_id=self.node_id, message=content)
        except protocol.ProtocolError as exc:
            await db(results.result_refused)(node_id=self.node_id, message=content, code=exc.code)
            raise
        await self.send_json({"type": "result_ok", "assignment_id": str(assignment.id)})

    async def on_signal(self, content: dict[str, Any]) -> None:
        # An answer or a candidate for the user of one of this node's peer-to-peer jobs.
        job_id, message = await db(p2p.signal_to_user)(node_id=self.node_id, message=content)
        await layer(self.channel_layer.group_send(p2p.job_group(job_id), {"type": "user.forward", "message": message}))

    async def on_partial(self, content: dict[str, Any]) -> None:
        # Unacknowledged: a lost partial is overtaken by the next one, which holds all the text.
        await db(results.partial_record)(node_id=self.node_id, message=content)

    async def on_benchmark_result(self, content: dict[str, Any]) -> None:
        benchmark = await db(benchmarks.benchmark_record)(node_id=self.node_id, message=content)
        await self.send_json(
            {
                "type": "benchmark_ok",
                "benchmark_id": str(benchmark.id),
                "items_per_s": benchmark.items_per_s,
                "latency_p50_ms": benchmark.latency_p50_ms,
            }
        )

    async def on_job_failed(self, content: dict[str, Any]) -> None:
        await db(give_up.assignment_give_up)(
            node_id=self.node_id,
            assignment_id=str(content.get("assignment_id", "")),
            reason=str(content.get("reason", ""))[:150],
            inputs=content.get("inputs"),
        )

    # Events from the channel layer, one handler per type.
    async def job_offer(self, event: dict[str, Any]) -> None:
        await self.send_json(event["message"])

    async def job_cancel(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "cancel", "assignment_id": event["assignment_id"]})

    async def subnet_state(self, event: dict[str, Any]) -> None:
        await self.send_json(event["message"])

    async def node_banned(self, event: dict[str, Any]) -> None:
        self.cut_off_for = "node banned"
        await self.close(code=protocol.CLOSE_BANNED, reason=f"banned until {event['until']}")

    async def node_replaced(self, event: dict[str, Any]) -> None:
        # disconnect() still leaves the group; node_disconnect ignores this stale channel.
        await self.close(code=protocol.CLOSE_REPLACED)

