"""The node's websocket session with the registry (`NodeClient`): connecting (the handshake
is `handshake.py`'s), heartbeats, the job queue and its workers, and reconnecting with
backoff until stopped.

What is done with each job (checks, compute, signed result) is `jobs.ServedModel`'s;
docs/protocol.md is the normative description of the messages.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from bim_core import families, protocol

from .handshake import NodeFatalError, SessionError, handshake, parse, send
from .jobs import BenchmarkTask, ComputeFn, Job, JobRefusedError, ServedModel
from .p2p import PeerJobs, ResultStore

log = logging.getLogger(__name__)

# Close codes after which reconnecting cannot help: the key or node id is wrong,
# or another process runs this same node (two of them would evict each other forever).
FATAL_CLOSE_CODES = {
    protocol.CLOSE_UNAUTHENTICATED: "the registry refused the token",
    protocol.CLOSE_AUTH_FAILED: "the registry rejected the hello signature (wrong key file?)",
    protocol.CLOSE_UNKNOWN_NODE: "the registry does not know this node id for this token",
    protocol.CLOSE_REPLACED: "another process connected as this node",
}
# Errors answered to `ready` that need the operator, not a retry.
FATAL_ERROR_CODES = {"license_not_accepted", "unknown_subnet", "model_mismatch"}
MAX_FRAME_BYTES = 16 * 2**20


@dataclass
class _Connection:
    """State that lives and dies with one websocket (and its session key)."""

    ws: ClientConnection
    session_key: Ed25519PrivateKey
    heartbeat_s: float
    queue: asyncio.Queue[Job | BenchmarkTask]
    cancelled: set[str]
    # Peer-to-peer jobs (docs/p2p.md): waiting for their input, or holding its channel.
    peer_jobs: PeerJobs
    # Results sent and not yet acknowledged, by assignment (or benchmark) id: resent once
    # when the registry answers `busy`.
    unacknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)


class NodeClient:
    """One node's websocket session with the registry, reconnecting until stopped."""

    # Give back, on welcome, the work of earlier connections (their queue died with them).
    release_listed_work = True

    def __init__(
        self,
        *,
        ws_url: str,
        node_id: str,
        key: Ed25519PrivateKey,
        subnet: str,
        model_checksum: str,
        env: dict[str, Any],
        compute: ComputeFn,
        task_type: str = "embedding",
        tokenizer_checksum: str | None = None,
        max_concurrent: int = 1,
        handshake_timeout_s: float = 10.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        source_ip: str | None = None,
        webrtc: bool = True,
        p2p_connect_timeout_s: float = 10.0,
        p2p_input_timeout_s: float = 120.0,
    ) -> None:
        self.ws_url = ws_url
        self.node_id = node_id
        self.key = key
        self.subnet = subnet
        self.env = env
        self.model = ServedModel(
            compute=compute,
            family=families.family_for(task_type),
            checksum=model_checksum,
            tokenizer_checksum=tokenizer_checksum,
        )
        self.max_concurrent = max_concurrent
        self.handshake_timeout_s = handshake_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.source_ip = source_ip
        # Off: a peer-to-peer job's offers are ignored, so its user falls back to the relay.
        self.webrtc = webrtc
        self.p2p_connect_timeout_s = p2p_connect_timeout_s
        self.p2p_input_timeout_s = p2p_input_timeout_s
        # Committed peer-to-peer results, for the registry's uploads; kept across reconnects.
        self.result_store = ResultStore()
        self.ready = asyncio.Event()  # set on ready_ok, cleared when the socket drops
        self.jobs_done = 0
        self.jobs_failed = 0
        # The subnet's state as the registry last said (welcome, `subnet_state`): while it is
        # not "active" new offers are declined; work already accepted still finishes.
        self.subnet_state = "active"
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve jobs until `stop` is set; raises NodeFatalError when retrying is pointless."""
        stop = stop or asyncio.Event()
        failures = 0
        # One worker per concurrent job; a dedicated pool keeps the model session
        # off the default executor and heartbeats on the event loop.
        self._executor = ThreadPoolExecutor(self.max_concurrent, thread_name_prefix="bim-compute")
        try:
            while not stop.is_set():
                welcomed = await self._run_once(stop)
                if stop.is_set():
                    break
                failures = 0 if welcomed else failures + 1
                delay = min(self.backoff_max_s, self.backoff_initial_s * 2**failures)
                delay *= random.uniform(0.5, 1.0)  # jitter: a registry restart is no stampede
                log.info("reconnecting in %.1f s", delay)
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run_once(self, stop: asyncio.Event) -> bool:
        """One connection, start to end; True when it got as far as `welcome`."""
        welcomed = asyncio.Event()
        session = asyncio.create_task(self._session(welcomed))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({session, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not session.done():
                session.cancel()
                with suppress(asyncio.CancelledError):
                    await session
            self.ready.clear()
        if session.cancelled():
            return welcomed.is_set()
        try:
            session.result()
            log.warning("the registry closed the connection")
        except NodeFatalError:
            raise
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            if code in FATAL_CLOSE_CODES:
                raise NodeFatalError(f"closed with {code}: {FATAL_CLOSE_CODES[code]}") from exc
            log.warning("connection closed (code %s %s)", code, exc.rcvd.reason if exc.rcvd else "")
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):
                raise NodeFatalError("the registry refused the token for the websocket") from exc
            log.warning("websocket handshake failed: HTTP %s", exc.response.status_code)
        except InvalidURI as exc:
            raise NodeFatalError(str(exc)) from exc
        except (OSError, InvalidHandshake, SessionError) as exc:
            log.warning("connection failed: %s", str(exc) or type(exc).__name__)
        except Exception:
            # A registry message this node cannot handle must not end a node that
            # is otherwise fine: log it loudly and reconnect with backoff.
            log.exception("unexpected error; reconnecting")
        return welcomed.is_set()

    async def _session(self, welcomed: asyncio.Event) -> None:
        async with connect(
            self.ws_url,
            open_timeout=self.handshake_timeout_s,
            max_size=MAX_FRAME_BYTES,
            close_timeout=5,
            # The registry keys diversity rules on the socket's address (IP block, ASN).
            **({"local_addr": (self.source_ip, 0)} if self.source_ip else {}),
        ) as ws:
            try:
                await self._serve_connection(ws, welcomed)
            except asyncio.CancelledError:
                # Cancelled means stopped: say goodbye with 1000, not the 1011 that
                # leaving `async with` on an exception would send.
                await ws.close(1000, "node stopping")
                raise

    async def _serve_connection(self, ws: ClientConnection, welcomed: asyncio.Event) -> None:
        opened = await handshake(
            ws,
            node_id=self.node_id,
            key=self.key,
            env=self.env,
            subnet=self.subnet,
            model_checksum=self.model.checksum,
            max_concurrent=self.max_concurrent,
            timeout_s=self.handshake_timeout_s,
            release_listed_work=self.release_listed_work,
        )
        queue: asyncio.Queue[Job | BenchmarkTask] = asyncio.Queue()
        peer_jobs = PeerJobs(
            model=self.model,
            send=lambda message: send(ws, message),
            enqueue=queue.put,
            store=self.result_store,
            webrtc=self.webrtc,
            connect_timeout_s=self.p2p_connect_timeout_s,
            input_timeout_s=self.p2p_input_timeout_s,
        )
        conn = _Connection(ws, opened.session_key, opened.heartbeat_s, queue=queue, cancelled=set(), peer_jobs=peer_jobs)
        self.subnet_state = opened.subnet_state
        welcomed.set()
        log.info("connected as node %s; heartbeat every %s s", self.node_id, conn.heartbeat_s)
        tasks = [
            asyncio.create_task(self._receive(conn)),
            asyncio.create_task(self._heartbeat(conn)),
            *(asyncio.create_task(self._work(conn)) for _ in range(self.max_concurrent)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise why the connection ended, if it failed
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await conn.peer_jobs.close()

    async def _receive(self, conn: _Connection) -> None:
        peer_jobs = conn.peer_jobs
        async for raw in conn.ws:
            message = parse(raw)
            if message is None:
                log.warning("ignoring a frame that is not a JSON object: %.200r", raw)
                continue
            kind = message.get("type")
            if kind == "job":
                await self._accept_job(conn, message)
            elif kind == "benchmark":
                await self._accept_benchmark(conn, message)
            elif kind == "benchmark_ok":
                log.info(
                    "benchmark passed: %.1f items/s, p50 %.0f ms",
                    message.get("items_per_s") or 0,
                    message.get("latency_p50_ms") or 0,
                )
            elif kind == "cancel":
                conn.cancelled.add(str(message.get("assignment_id")))
                peer_jobs.on_cancel(str(message.get("assignment_id")))
            elif kind == "rtc_offer":
                peer_jobs.on_rtc_offer(message)
            elif kind == "rtc_ice":
                await peer_jobs.on_rtc_ice(message)
            elif kind == "job_inputs":
                peer_jobs.on_job_inputs(message)
            elif kind == "upload_request":
                if upload := await peer_jobs.on_upload_request(message):
                    conn.unacknowledged[str(upload["assignment_id"])] = upload
            elif kind == "subnet_state":
                self._on_subnet_state(message)
            elif kind == "ready_ok":
                log.info("ready on subnet %s", message.get("subnet"))
                self.ready.set()
            elif kind == "error":
                if message.get("code") == "busy" and (resend := conn.unacknowledged.pop(str(message.get("assignment_id")), None)):
                    log.warning("registry busy; sending the result for %s again", message.get("assignment_id"))
                    await asyncio.sleep(0.5)
                    await send(conn.ws, resend)
                    continue
                self._on_error(message)
            elif kind == "result_ok":
                conn.unacknowledged.pop(str(message.get("assignment_id")), None)
            elif kind != "pong":
                log.debug("ignoring message type %r", kind)

    def _on_subnet_state(self, message: dict[str, Any]) -> None:
        """The operator paused, resumed or retired a subnet (docs/protocol.md §4.2)."""
        if message.get("subnet") != self.subnet:
            return
        state = str(message.get("state"))
        if state == "retired":
            raise NodeFatalError(f"subnet {self.subnet} was retired by its operator: there is nothing left to serve")
        checksum = message.get("model_checksum")
        if state == "active" and checksum and checksum != self.model.checksum:
            raise NodeFatalError(f"subnet {self.subnet} resumed with model {checksum}: restart the node to fetch it")
        if state == "paused":
            log.warning("subnet %s paused by its operator: declining new jobs until it resumes", self.subnet)
        elif state == "active" and self.subnet_state != "active":
            log.info("subnet %s resumed: taking jobs again", self.subnet)
        self.subnet_state = state

    def _on_error(self, message: dict[str, Any]) -> None:
        code, detail = message.get("code"), message.get("detail")
        assignment_id = message.get("assignment_id")
        if assignment_id is None and code in FATAL_ERROR_CODES:
            raise NodeFatalError(f"the registry refused this node: {code}: {detail}")
        log.warning("registry error %s (assignment %s): %s", code, assignment_id, detail)

    async def _accept_job(self, conn: _Connection, message: dict[str, Any]) -> None:
        assignment_id = message.get("assignment_id")
        if not isinstance(assignment_id, str):
            log.warning("dropping a job without an assignment id")
            return
        if self.subnet_state != "active":
            log.info("declining assignment %s: subnet %s is %s", assignment_id, self.subnet, self.subnet_state)
            await self._job_failed(conn, assignment_id, protocol.SUBNET_PAUSED)
            return
        # A peer-to-peer offer has no inputs: its user brings them (docs/p2p.md).
        p2p = message.get("transport") == "p2p" and "inputs" not in message
        try:
            job = self.model.check_p2p_offer(message) if p2p else self.model.check_job(message)
        except JobRefusedError as exc:
            log.warning("refusing assignment %s: %s", assignment_id, exc)
            await self._job_failed(conn, assignment_id, exc.reason)
            return
        if p2p:
            conn.peer_jobs.offered(job, message.get("ice_servers"))
            return
        await conn.queue.put(job)

    async def _accept_benchmark(self, conn: _Connection, message: dict[str, Any]) -> None:
        inputs = message.get("inputs")
        runs = message.get("runs")
        if not (isinstance(inputs, dict) and inputs and isinstance(runs, int) and 1 <= runs <= 20):
            log.warning("ignoring a malformed benchmark: %.200r", message)
            return
        # Queued behind accepted jobs: the benchmark measures the node as it serves.
        await conn.queue.put(BenchmarkTask(str(message.get("benchmark_id")), inputs, runs))

    async def _run_benchmark(self, conn: _Connection, task: BenchmarkTask) -> None:
        loop = asyncio.get_running_loop()
        timings: list[float] = []
        result = None
        for _ in range(task.runs):
            started = time.perf_counter()
            result = await loop.run_in_executor(self._executor, self.model.compute, task.inputs)
            timings.append(round((time.perf_counter() - started) * 1000, 3))
        await send(conn.ws, self.model.benchmark_result_message(task, result, timings, conn.session_key))
        log.info("benchmark %s: %d runs, median %.0f ms", task.benchmark_id, task.runs, sorted(timings)[len(timings) // 2])

    async def _work(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()

        def send_from_thread(message: dict[str, Any]) -> None:
            # Streamed text comes from the compute thread; the socket belongs to the loop.
            asyncio.run_coroutine_threadsafe(send(conn.ws, message), loop)

        while True:
            job = await conn.queue.get()
            if isinstance(job, BenchmarkTask):
                try:
                    await self._run_benchmark(conn, job)
                except Exception:
                    log.exception("benchmark %s failed to compute", job.benchmark_id)
                continue
            try:
                await self._run_job(conn, job, send_from_thread)
            finally:
                if job.transport == "p2p":
                    conn.peer_jobs.release(job.assignment_id)  # no-op once its result went out

    async def _run_job(self, conn: _Connection, job: Job, send_from_thread: Callable[[dict[str, Any]], None]) -> None:
        loop = asyncio.get_running_loop()
        peer_jobs = conn.peer_jobs
        if job.assignment_id in conn.cancelled:
            log.info("job %s cancelled before it started", job.job_id)
            return
        if job.deadline is not None and job.deadline <= datetime.now(UTC):
            await self._job_failed(conn, job.assignment_id, "deadline_passed")
            return
        # A peer-to-peer job's streamed text goes to its user over the channel, not the registry.
        send_partial = peer_jobs.partial_sender(job, loop) if job.transport == "p2p" else send_from_thread
        started = time.monotonic()
        try:
            result = await loop.run_in_executor(self._executor, self.model.compute_call(job, send_partial))
            payload, shape = self.model.encoded(result, job.inputs)
        except Exception:
            log.exception("job %s failed to compute", job.job_id)
            await self._job_failed(conn, job.assignment_id, "compute_error")
            return
        elapsed_ms = round((time.monotonic() - started) * 1000)
        if job.assignment_id in conn.cancelled:
            return  # cancelled while running: the registry no longer wants it
        message = self.model.result_message(job, payload, shape, elapsed_ms, conn.session_key)
        if job.transport == "p2p":
            message = await peer_jobs.deliver(job, message, payload)
            conn.unacknowledged[job.assignment_id] = message
        else:
            conn.unacknowledged[job.assignment_id] = message
            await send(conn.ws, message)
        self.jobs_done += 1
        log.info("job %s role %s %s %d ms%s", job.job_id, job.role, protocol.shape_text(shape), elapsed_ms, " (p2p)" if job.transport == "p2p" else "")

    async def _job_failed(self, conn: _Connection, assignment_id: str, reason: str) -> None:
        self.jobs_failed += 1
        await send(conn.ws, {"type": "job_failed", "assignment_id": assignment_id, "reason": reason})

    async def _heartbeat(self, conn: _Connection) -> None:
        while True:
            await asyncio.sleep(conn.heartbeat_s)
            await send(conn.ws, {"type": "heartbeat"})
