"""Talking to the registry: its HTTP API (`RegistryApi`) and the node websocket (`NodeClient`).

`NodeClient` knows nothing about models: it is given a `compute(inputs) -> result`
callable and the subnet's task type, whose family (`bim_core.families`) encodes the
result exactly as the registry decodes it. So the real runners, a benchmark's simulated
node with precomputed vectors and the tests' trivial functions all run through the same
protocol code. docs/protocol.md is the normative description of the messages.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from bim_core import families, protocol

log = logging.getLogger(__name__)

ComputeFn = Callable[[dict[str, Any]], Any]

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
# Streamed text (`partial`) at most this often per job: a few tokens per message.
PARTIAL_INTERVAL_S = 0.1


class RegistryError(Exception):
    """The registry answered an HTTP request with an error status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class NodeFatalError(Exception):
    """Reconnecting will not help; the node stops and says why."""


class _SessionError(Exception):
    """This connection went wrong in a way a fresh one may not."""


# ---------------------------------------------------------------------------
# HTTP


class RegistryApi:
    """The registry's REST API, with timeouts and retries on connection errors and 5xx."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: tuple[float, float] = (5.0, 60.0),
        retries: int = 4,
        backoff_s: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.session = session or requests.Session()

    def url(self, path: str) -> str:
        # Absolute URLs (a CDN) are used as they are; anything else hangs off the registry.
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url + "/" + path.lstrip("/")

    def request(self, method: str, path: str, *, body: Any = None) -> requests.Response:
        url = self.url(path)
        headers = {"Accept": "application/json"}
        if _same_origin(url, self.base_url):
            # The token is for the registry only, never for a CDN serving chunks.
            headers["Authorization"] = f"Token {self.token}"
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(
                    method, url, json=body, headers=headers, timeout=self.timeout
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == self.retries:
                    raise RegistryError(0, f"{method} {url}: {exc}") from exc
                failure = type(exc).__name__
            else:
                retryable = response.status_code >= 500 or response.status_code == 429
                if response.status_code >= 400 and (not retryable or attempt == self.retries):
                    raise RegistryError(response.status_code, _error_detail(response))
                if not retryable:
                    return response
                failure = f"HTTP {response.status_code}"
            delay = self.backoff_s * 2**attempt
            log.warning("%s %s failed (%s); retrying in %.1f s", method, url, failure, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> Any:
        return self.request("GET", path).json()

    def get_bytes(self, path: str) -> bytes:
        return self.request("GET", path).content

    def subnets(self) -> list[dict[str, Any]]:
        return list(self.get_json("/api/v1/subnets/"))

    def accept_license(self, slug: str, license_version: str) -> None:
        self.request(
            "POST",
            f"/api/v1/subnets/{quote(slug, safe='')}/accept-license/",
            body={"license_version": license_version},
        )

    def register_node(
        self, *, public_key: str, name: str, subnets: list[str], env: dict[str, Any]
    ) -> dict[str, Any]:
        body = {"public_key": public_key, "name": name, "subnets": subnets, "env": env}
        return dict(self.request("POST", "/api/v1/nodes/", body=body).json())


def _same_origin(url: str, base_url: str) -> bool:
    a, b = urlsplit(url), urlsplit(base_url)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def _error_detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return json.dumps(body)[:300]


def websocket_url(registry_url: str, token: str) -> str:
    """`http(s)://host[/prefix]` -> `ws(s)://host[/prefix]/ws/node/?token=...`."""
    parts = urlsplit(registry_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"registry URL must be http or https: {registry_url}")
    path = parts.path.rstrip("/") + "/ws/node/"
    return urlunsplit((scheme, parts.netloc, path, "token=" + quote(token, safe=""), ""))


# ---------------------------------------------------------------------------
# Websocket


@dataclass(frozen=True)
class Job:
    assignment_id: str
    job_id: str
    role: str
    contract: dict[str, Any]
    contract_hash: str
    inputs: dict[str, Any]
    deadline: datetime | None


@dataclass(frozen=True)
class BenchmarkTask:
    """The registry's benchmark: fixed inputs, run `runs` times, timed one by one."""

    benchmark_id: str
    inputs: dict[str, Any]
    runs: int


class _JobRefusedError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class _Connection:
    """State that lives and dies with one websocket (and its session key)."""

    ws: ClientConnection
    session_key: Ed25519PrivateKey
    heartbeat_s: float
    queue: asyncio.Queue[Job | BenchmarkTask]
    cancelled: set[str]
    # Results sent and not yet acknowledged, by assignment (or benchmark) id: resent once
    # when the registry answers `busy`.
    unacknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)


class NodeClient:
    """One node's websocket session with the registry, reconnecting until stopped."""

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
    ) -> None:
        self.ws_url = ws_url
        self.node_id = node_id
        self.key = key
        self.subnet = subnet
        self.model_checksum = model_checksum
        self.tokenizer_checksum = tokenizer_checksum
        self.env = env
        self.compute = compute
        self.family = families.family_for(task_type)
        self.max_concurrent = max_concurrent
        self.handshake_timeout_s = handshake_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.source_ip = source_ip
        self.ready = asyncio.Event()  # set on ready_ok, cleared when the socket drops
        self.jobs_done = 0
        self.jobs_failed = 0
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
        except (OSError, InvalidHandshake, _SessionError) as exc:
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
        conn = await self._handshake(ws)
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

    async def _handshake(self, ws: ClientConnection) -> _Connection:
        challenge = await self._expect(ws, "challenge")
        if challenge.get("protocol") != protocol.PROTOCOL_VERSION:
            raise NodeFatalError(
                f"the registry speaks {challenge.get('protocol')!r}, this node "
                f"{protocol.PROTOCOL_VERSION!r}: upgrade the node"
            )
        nonce = challenge.get("nonce")
        if not isinstance(nonce, str):
            raise _SessionError("challenge without a nonce")
        # A fresh session key per connection: a leaked one is worthless after a reconnect.
        session_key = protocol.new_private_key()
        session_pub = protocol.public_key_b64(session_key)
        signed = protocol.hello_message(
            node_id=self.node_id, nonce=nonce, session_key_pub=session_pub
        )
        await self._send(
            ws,
            {
                "type": "hello",
                "node_id": self.node_id,
                "session_key_pub": session_pub,
                "signature": protocol.sign(self.key, signed),
                "env": self.env,
            },
        )

        welcome = await self._expect(ws, "welcome")
        offered = {s.get("slug"): s for s in welcome.get("subnets") or [] if isinstance(s, dict)}
        if self.subnet not in offered:
            raise NodeFatalError(f"the registry does not serve subnet {self.subnet!r} to this node")
        current = offered[self.subnet].get("model_checksum")
        if current != self.model_checksum:
            raise NodeFatalError(
                f"subnet {self.subnet!r} now runs model {current}, not the loaded "
                f"{self.model_checksum}: restart the node to fetch it"
            )
        await self._send(
            ws,
            {
                "type": "ready",
                "subnet": self.subnet,
                "model_checksum": self.model_checksum,
                "max_concurrent": self.max_concurrent,
            },
        )
        return _Connection(
            ws=ws,
            session_key=session_key,
            heartbeat_s=_heartbeat_interval(welcome.get("heartbeat_s")),
            queue=asyncio.Queue(),
            cancelled=set(),
        )

    async def _expect(self, ws: ClientConnection, kind: str) -> dict[str, Any]:
        try:
            raw = await asyncio.wait_for(ws.recv(), self.handshake_timeout_s)
        except TimeoutError as exc:
            raise _SessionError(f"no {kind} within {self.handshake_timeout_s} s") from exc
        message = _parse(raw)
        if message is None or message.get("type") != kind:
            if message is not None and message.get("type") == "error":
                raise _SessionError(
                    f"registry error {message.get('code')}: {message.get('detail')}"
                )
            raise _SessionError(f"expected {kind}, got {str(raw)[:200]!r}")
        return message

    async def _receive(self, conn: _Connection) -> None:
        async for raw in conn.ws:
            message = _parse(raw)
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
            elif kind == "ready_ok":
                log.info("ready on subnet %s", message.get("subnet"))
                self.ready.set()
            elif kind == "error":
                if message.get("code") == "busy" and (resend := conn.unacknowledged.pop(str(message.get("assignment_id")), None)):
                    log.warning("registry busy; sending the result for %s again", message.get("assignment_id"))
                    await asyncio.sleep(0.5)
                    await self._send(conn.ws, resend)
                    continue
                self._on_error(message)
            elif kind == "result_ok":
                conn.unacknowledged.pop(str(message.get("assignment_id")), None)
            elif kind != "pong":
                log.debug("ignoring message type %r", kind)

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
        try:
            job = self._check_job(message)
        except _JobRefusedError as exc:
            log.warning("refusing assignment %s: %s", assignment_id, exc)
            await self._job_failed(conn, assignment_id, exc.reason)
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
            result = await loop.run_in_executor(self._executor, self.compute, task.inputs)
            timings.append(round((time.perf_counter() - started) * 1000, 3))
        payload, shape = self._encoded(result, task.inputs)
        result_hash = protocol.sha256_hex(payload)
        signed = protocol.benchmark_message(
            benchmark_id=task.benchmark_id, result_hash=result_hash, shape=shape, timings_ms=timings
        )
        await self._send(
            conn.ws,
            {
                "type": "benchmark_result",
                "benchmark_id": task.benchmark_id,
                "timings_ms": timings,
                "shape": list(shape),
                "encoding": self.family.encoding,
                "data": protocol.b64encode(payload),
                "result_hash": result_hash,
                "signature": protocol.sign(conn.session_key, signed),
            },
        )
        log.info("benchmark %s: %d runs, median %.0f ms", task.benchmark_id, task.runs, sorted(timings)[len(timings) // 2])

    def _check_job(self, message: dict[str, Any]) -> Job:
        """Everything a node can check before spending compute on a job."""
        contract, contract_hash = message.get("contract"), message.get("contract_hash")
        inputs, job_id = message.get("inputs"), message.get("job_id")
        if not (
            isinstance(contract, dict)
            and isinstance(contract_hash, str)
            and isinstance(job_id, str)
            and isinstance(inputs, dict)
        ):
            raise _JobRefusedError(
                "bad_message", "job lacks contract, contract_hash, job_id or inputs"
            )
        if contract.get("task_type", "embedding") != self.family.task_type:
            raise _JobRefusedError("bad_message", f"this node runs {self.family.task_type} jobs")
        limits = contract.get("limits") if isinstance(contract.get("limits"), dict) else {}
        try:
            # The registry validated the inputs against the subnet's limits; the node only
            # makes sure they have the family's shape before spending compute on them.
            self.family.validate_inputs(
                inputs,
                families.SubnetLimits(
                    max_items=int(limits.get("max_items") or 2**31),
                    max_chars=2**31,
                    preprocessing=dict(contract.get("preprocessing") or {}),
                ),
            )
        except (families.InputInvalid, TypeError, ValueError) as exc:
            raise _JobRefusedError("bad_message", str(exc)) from None
        try:
            inputs_hash = protocol.input_hash(inputs)
            actual_contract_hash = protocol.contract_hash(contract)
        except ValueError as exc:  # NaN, infinity or a lone surrogate: no canonical JSON
            raise _JobRefusedError("bad_message", str(exc)) from exc
        if inputs_hash != contract.get("input_hash"):
            raise _JobRefusedError("bad_input_hash", "inputs do not hash to contract.input_hash")
        if actual_contract_hash != contract_hash:
            raise _JobRefusedError("bad_contract_hash", "contract does not hash to contract_hash")
        if contract.get("job_id") != job_id:
            raise _JobRefusedError("bad_message", "contract.job_id differs from job_id")
        if contract.get("model_checksum") != self.model_checksum:
            raise _JobRefusedError("model_mismatch", "contract names another model")
        pinned_tokenizer = contract.get("tokenizer_checksum")
        if (
            pinned_tokenizer
            and self.tokenizer_checksum
            and pinned_tokenizer != self.tokenizer_checksum
        ):
            raise _JobRefusedError("model_mismatch", "contract names another tokenizer")
        # A runner may refuse what it cannot run deterministically (text: sampled decoding).
        contract_refusal = getattr(self.compute, "contract_refusal", None)
        if contract_refusal is not None and (why := contract_refusal(contract)):
            raise _JobRefusedError("unsupported_contract", why)
        return Job(
            assignment_id=str(message["assignment_id"]),
            job_id=job_id,
            role=str(message.get("role", "")),
            contract=contract,
            contract_hash=contract_hash,
            inputs=inputs,
            deadline=_parse_deadline(message.get("deadline")),
        )

    async def _work(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await conn.queue.get()
            if isinstance(job, BenchmarkTask):
                try:
                    await self._run_benchmark(conn, job)
                except Exception:
                    log.exception("benchmark %s failed to compute", job.benchmark_id)
                continue
            if job.assignment_id in conn.cancelled:
                log.info("job %s cancelled before it started", job.job_id)
                continue
            if job.deadline is not None and job.deadline <= datetime.now(UTC):
                await self._job_failed(conn, job.assignment_id, "deadline_passed")
                continue
            started = time.monotonic()
            try:
                result = await loop.run_in_executor(self._executor, self._compute_call(conn, job))
                payload, shape = self._encoded(result, job.inputs)
            except Exception:
                log.exception("job %s failed to compute", job.job_id)
                await self._job_failed(conn, job.assignment_id, "compute_error")
                continue
            elapsed_ms = round((time.monotonic() - started) * 1000)
            if job.assignment_id in conn.cancelled:
                continue  # cancelled while running: the registry no longer wants it
            message = self._result(conn, job, payload, shape, elapsed_ms)
            conn.unacknowledged[job.assignment_id] = message
            await self._send(conn.ws, message)
            self.jobs_done += 1
            log.info("job %s role %s %s %d ms", job.job_id, job.role, protocol.shape_text(shape), elapsed_ms)

    def _compute_call(self, conn: _Connection, job: Job) -> Callable[[], Any]:
        """The compute call for a job. A streaming runner (text) also gets a callback that
        sends the text so far as a `partial` message, at most every PARTIAL_INTERVAL_S:
        the runner calls it from the compute thread, the socket belongs to the event loop."""
        if not getattr(self.compute, "streams", False):
            return functools.partial(self.compute, job.inputs)
        loop = asyncio.get_running_loop()
        last_sent = 0.0

        def on_partial(text: str, tokens: int) -> None:
            nonlocal last_sent
            now = time.monotonic()
            if now - last_sent < PARTIAL_INTERVAL_S:
                return
            last_sent = now
            message = {"type": "partial", "assignment_id": job.assignment_id, "job_id": job.job_id, "text": text, "tokens": tokens}
            asyncio.run_coroutine_threadsafe(self._send(conn.ws, message), loop)

        return functools.partial(self.compute, job.inputs, on_partial=on_partial)

    def _encoded(self, result: Any, inputs: dict[str, Any]) -> tuple[bytes, tuple[int, ...]]:
        """The result as its family encodes it, checked the way the registry will check it,
        so a broken runner fails here instead of earning the node a refusal."""
        payload, shape = self.family.encode_result(result)
        try:
            self.family.decode_result(payload, shape, inputs)
        except protocol.ProtocolError as exc:
            raise ValueError(f"compute returned a result the registry would refuse: {exc}") from None
        return payload, shape

    def _result(
        self, conn: _Connection, job: Job, payload: bytes, shape: tuple[int, ...], elapsed_ms: int
    ) -> dict[str, Any]:
        result_hash = protocol.sha256_hex(payload)
        input_hash = str(job.contract["input_hash"])
        signed = protocol.result_message(
            job_id=job.job_id,
            assignment_id=job.assignment_id,
            contract_hash=job.contract_hash,
            input_hash=input_hash,
            result_hash=result_hash,
            shape=shape,
        )
        return {
            "type": "result",
            "assignment_id": job.assignment_id,
            "job_id": job.job_id,
            "input_hash": input_hash,
            "result_hash": result_hash,
            "shape": list(shape),
            "encoding": self.family.encoding,
            "data": protocol.b64encode(payload),
            "elapsed_ms": elapsed_ms,
            "signature": protocol.sign(conn.session_key, signed),
        }

    async def _job_failed(self, conn: _Connection, assignment_id: str, reason: str) -> None:
        self.jobs_failed += 1
        await self._send(
            conn.ws, {"type": "job_failed", "assignment_id": assignment_id, "reason": reason}
        )

    async def _heartbeat(self, conn: _Connection) -> None:
        while True:
            await asyncio.sleep(conn.heartbeat_s)
            await self._send(conn.ws, {"type": "heartbeat"})

    @staticmethod
    async def _send(ws: ClientConnection, message: dict[str, Any]) -> None:
        await ws.send(json.dumps(message, separators=(",", ":")))


def _parse(raw: str | bytes) -> dict[str, Any] | None:
    if not isinstance(raw, str):
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _heartbeat_interval(value: Any) -> float:
    try:
        interval = float(value)
    except (TypeError, ValueError):
        return 10.0
    return interval if interval > 0 else 10.0


def _parse_deadline(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        deadline = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise _JobRefusedError("bad_message", f"deadline {value!r} is not ISO 8601") from exc
    # A deadline without an offset is read as UTC, the registry's clock.
    return deadline if deadline.tzinfo else deadline.replace(tzinfo=UTC)


