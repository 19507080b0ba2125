"""A counting TCP proxy on loopback: every byte between the registry's clients and daphne,
by who the client is (a label per listening port) and by direction.

    proxy = CountingProxy(("127.0.0.1", registry_port))
    node_port = proxy.listen("node")          # nodes connect here instead of to daphne
    before = proxy.snapshot()
    ...                                       # one job
    spent = proxy.since(before)               # {"node": {"up": .., "down": .., "connections": ..}}

What it counts is TCP payload, as each side wrote it: HTTP requests and answers with their
headers, websocket handshakes and frames (masking, lengths) included; TCP/IP headers, ACKs
and retransmissions are not (they are below the application, and depend on the path).
"up" is client -> registry, "down" registry -> client.

The upstream connection leaves from the client's own address (127.x.y.z is all this
machine's): the registry keys routing diversity on a node's address, and nodes on one machine
stand in distinct /24 blocks only if the proxy does not fold them into 127.0.0.1.

The proxy runs its own event loop in a daemon thread, so the caller's code (synchronous, or
an event loop of its own) needs nothing from it; counters are plain ints read under a lock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from contextlib import suppress
from typing import Any

READ_BYTES = 64 * 1024


class CountingProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: {"up": 0, "down": 0, "connections": 0})
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="counting-proxy", daemon=True)
        self._thread.start()

    def listen(self, label: str) -> int:
        """A new listening port on 127.0.0.1 whose connections count under `label`."""
        return asyncio.run_coroutine_threadsafe(self._listen(label), self._loop).result(10)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {label: dict(row) for label, row in self._counts.items()}

    def since(self, before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        """What passed since `before` (a snapshot), per label."""
        now = self.snapshot()
        empty = {"up": 0, "down": 0, "connections": 0}
        return {
            label: {key: row[key] - before.get(label, empty)[key] for key in empty} for label, row in now.items()
        }

    def settle(self, *, quiet_s: float = 0.25, timeout_s: float = 5.0) -> bool:
        """Wait until no byte passed for `quiet_s` (what was in flight when a job settled:
        acknowledgements, the state pushed to the user); False if traffic never stopped."""
        deadline = time.monotonic() + timeout_s
        last, since = self.snapshot(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.snapshot()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return True
        return False

    def close(self) -> None:
        async def stop() -> None:
            # Closing the sockets ends every pump on its own (cancelling the connection
            # handlers instead makes asyncio log each one as an error).
            for server in self._servers:
                server.close()
            for writer in list(self._writers):
                writer.close()
            if self._handlers:
                await asyncio.wait(list(self._handlers), timeout=5)

        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # In the proxy's loop ---------------------------------------------------------------

    async def _listen(self, label: str) -> int:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._handlers.add(task)
            try:
                await self._serve(label, reader, writer)
            finally:
                self._handlers.discard(task)

        server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        self._servers.append(server)
        with self._lock:
            self._counts[label]  # listed from the start, even while nothing passes
        return int(server.sockets[0].getsockname()[1])

    async def _serve(self, label: str, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        client_ip = client_w.get_extra_info("peername")[0]
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream, local_addr=(client_ip, 0))
        except OSError:
            client_w.close()
            return
        with self._lock:
            self._counts[label]["connections"] += 1
        self._writers.update((client_w, up_w))
        pumps = [
            asyncio.create_task(self._pump(label, "up", client_r, up_w, client_w)),
            asyncio.create_task(self._pump(label, "down", up_r, client_w, up_w)),
        ]
        try:
            # One side closing ends its direction (a half-close is passed on); the connection
            # is done when both are.
            await asyncio.gather(*pumps)
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (up_w, client_w):
                writer.close()
                self._writers.discard(writer)

    async def _pump(
        self,
        label: str,
        direction: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        source: asyncio.StreamWriter,
    ) -> None:
        """Copy `reader` to `writer`, counting; `source` is the reader's own connection,
        closed with the other when either end resets."""
        try:
            while data := await reader.read(READ_BYTES):
                with self._lock:
                    self._counts[label][direction] += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.close()
            source.close()


def total(counts: dict[str, Any], labels: tuple[str, ...] | None = None) -> int:
    """Bytes both ways over `labels` (all when None) of a `since()` result."""
    return sum(row["up"] + row["down"] for label, row in counts.items() if labels is None or label in labels)
