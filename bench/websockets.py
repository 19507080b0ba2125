"""Node websockets the registry holds, and how fast it recovers from a restart and a mass close.

N nodes (5,000 by default) are seeded straight through the ORM as a node becomes routable:
one owner each with an API token and the subnet's license accepted (its opt-in), a
registered node with an Ed25519 key, and a passed, fresh benchmark (score > 0), so a
`ready` makes it routable without running a benchmark. Then daphne (the registry) and one
Celery worker with beat are started as `bim_site.processes.ProcessGroup` starts them, and
C client processes (this script with `--client`, no Django in them) hold N/C websockets
each, every one doing what `bim_node` does: connect with the owner's token from a loopback
address of its own (one /24 per node), the real challenge / signed hello / welcome / ready
(`bim_node.handshake`), heartbeats at the `heartbeat_s` the registry asks for, and on a
refused or failed connection the real node's backoff (1 s doubling, jittered).

Each of R runs measures, on the registry side (the database and the routing index, never
the clients' word):
- connect: all N open at once against a running registry, until all are routable;
- held: after a hold of H seconds, the connections still open and daphne's RSS per
  connection (RSS with N held, less RSS with none, over N);
- reconnect storm: daphne restarted (SIGTERM, as a deploy does) while all N are held;
  once the new one answers HTTP, all N reconnect at once; the clock runs until every
  node is online and routable in the database *and* in a routing index built afresh
  (`registry.routing_index.routable_index`), as the next dispatch would see it;
- disconnect burst: all N clients close their sockets at once (code 1000), until no node
  is `is_online` in the database;
- failures: handler exceptions in daphne's and the worker's logs (tracebacks by
  exception type, e.g. Redis `MaxConnectionsError`), handshakes the registry refused
  (close codes) or that failed (timeouts, resets), sockets dropped while held.
Every phase reports the CPU each part used (daphne, worker, clients, PostgreSQL, Redis,
this process; "other" is the rest of the machine) and the load average.

Targets (issue 13, for N = 5,000): all back and routable within 15 s of a restart, all
offline within 5 s of a mass close, no handler failing; `targets` says whether the
medians met them. The exit status is 1 when a check fails: a phase that did not complete
(not every node connected, routable or offline within --timeout), a handler exception or
a refused handshake, or a socket dropped while held; missing a target is reported, not an
exit status. stdout gets one JSON object with every run and the medians; progress goes
to stderr. The database (`--database`, bim_ws_bench) is dropped and recreated and the
Redis db (`--redis-db`, 13) flushed on each invocation; state and logs are in
var/bench/websockets/. Run it as

    bash scripts/with_services.sh .venv/bin/python bench/websockets.py [--quick] [--nodes 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
# This file is bench/websockets.py: with bench/ on sys.path, `import websockets` would
# import it instead of the websockets library.
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != BENCH_DIR]
sys.path.insert(0, str(ROOT))

STATE = ROOT / "var" / "bench" / "websockets"
RUN_DIR = STATE / "run"  # BIM_VAR_DIR of this invocation: logs, client specs, beat schedule
SUBNET = "ws-bench"
NODE_NAME = "ws-node-"  # the measured nodes' names; the warm-up nodes are ws-warm-*
CHANNEL_PREFIX = "bimws"
POLL_S = 0.2
TARGET_NODES = 5000
TARGET_RECONNECT_S = 15.0
TARGET_DISCONNECT_S = 5.0


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=TARGET_NODES, help="node sockets (5000)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported (3)")
    parser.add_argument("--clients", type=int, default=2, help="client processes holding the sockets (2)")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds the sockets are held before measuring (20)")
    parser.add_argument("--heartbeat-s", type=int, default=10, help="BIM_NODE_HEARTBEAT_S of the registry (10)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one phase may take (300)")
    parser.add_argument("--database", default="bim_ws_bench", help="dropped and recreated (bim_ws_bench)")
    parser.add_argument("--redis-db", type=int, default=13, help="Redis db owned and flushed by the bench (13)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 run of 100 nodes, one client, 3 s hold")
    parser.add_argument("--client", type=Path, help=argparse.SUPPRESS)  # a client process: its spec file
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.runs, args.clients, args.hold, args.timeout = 100, 1, 1, 3.0, 120.0
    if min(args.nodes, args.runs, args.clients, args.heartbeat_s) < 1:
        parser.error("--nodes, --runs, --clients and --heartbeat-s must be >= 1")
    args.clients = min(args.clients, args.nodes)
    return args


def source_ip(index: int) -> str:
    """A loopback address per node, each in a /24 of its own (127.A.B.1), as nodes in the
    wild sit in different networks (the routing policy's diversity rules key on it)."""
    return f"127.{1 + index // 256}.{index % 256}.1"


# ---------------------------------------------------------------- the client processes
#
# Run as `bench/websockets.py --client SPEC`: no Django, only what a node runs. Commands
# arrive on stdin, one JSON line each; every answer is one JSON line on stdout.


class NodeSocket:
    """One simulated node: the real handshake, heartbeats, and the real node's backoff."""

    def __init__(self, spec: dict[str, Any], client: Client) -> None:
        from bim_core import protocol

        self.spec = spec
        self.client = client
        self.key = protocol.private_key_from_b64(spec["key"])
        self.ws: Any = None
        self.ready_at: float | None = None
        self.closing = False

    async def run(self) -> None:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        from bim_node.handshake import NodeFatalError, SessionError

        failures = 0
        while True:
            await self.client.want_connected.wait()
            phase = self.client.phase
            code = None
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
                if self.ready_at is None:
                    self.client.count("refused" if code >= 4000 else "failed", f"close {code}")
            except (OSError, TimeoutError, InvalidHandshake, SessionError) as exc:
                self.client.count("failed", type(exc).__name__)
            except NodeFatalError as exc:
                self.client.count("refused", str(exc)[:60])
            welcomed = self.ready_at is not None
            if welcomed and not self.closing and self.client.phase == phase and self.client.want_connected.is_set():
                self.client.count("dropped", f"close {code or 'by the registry'}")
            self.ws = None
            self.ready_at = None
            self.client.changed()
            failures = 0 if welcomed else failures + 1
            if self.client.want_connected.is_set():
                # bim_node.session's backoff (1 s doubling, jittered): no hammering.
                await asyncio.sleep(min(60.0, 2.0**failures) * random.uniform(0.5, 1.0))
            else:
                await self.client.reconnect.wait()  # until the bench says "connect"

    async def _session(self) -> None:
        from websockets.asyncio.client import connect

        from bim_node.handshake import expect, handshake, send

        spec = self.spec
        async with connect(
            f"{self.client.ws_url}?token={spec['token']}",
            open_timeout=self.client.timeout,
            close_timeout=5,
            local_addr=(spec["ip"], 0),
        ) as ws:
            self.ws = ws
            self.closing = False
            opened = await handshake(
                ws,
                node_id=spec["node_id"],
                key=self.key,
                env={"os": "linux", "runtime": "bench-ws", "backend": "cpu", "gpu_family": "none"},
                subnet=self.client.subnet,
                model_checksum=self.client.checksum,
                max_concurrent=1,
                timeout_s=self.client.timeout,
            )
            await expect(ws, "ready_ok", self.client.timeout)
            self.ready_at = time.monotonic()
            self.client.changed()
            # Idle, as a node waiting for work: heartbeats only.
            beat = asyncio.create_task(self._heartbeat(ws, opened.heartbeat_s, send))
            try:
                async for raw in ws:
                    self.client.received[(json.loads(raw) if isinstance(raw, str) else {}).get("type", "?")] += 1
            finally:
                beat.cancel()

    @staticmethod
    async def _heartbeat(ws: Any, interval: float, send: Any) -> None:
        while True:  # as bim_node.session: the first one interval after the welcome
            await asyncio.sleep(interval)
            await send(ws, {"type": "heartbeat"})

    async def close(self) -> None:
        ws = self.ws
        if ws is not None:
            self.closing = True
            with contextlib.suppress(Exception):
                await ws.close(1000, "node stopping")


class Client:
    """A client process: its share of the nodes, and the commands the bench sends."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.ws_url = spec["ws_url"]
        self.subnet = spec["subnet"]
        self.checksum = spec["model_checksum"]
        self.timeout = spec["timeout"]
        self.phase_timeout = spec["phase_timeout"]
        self.want_connected = asyncio.Event()
        self.reconnect = asyncio.Event()  # pulsed by "connect": sockets waiting for it go
        self.phase = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.reasons: collections.Counter[str] = collections.Counter()
        self.received: collections.Counter[str] = collections.Counter()
        self.nodes = [NodeSocket(node, self) for node in spec["nodes"]]
        self._changed = asyncio.Event()

    def count(self, kind: str, reason: str) -> None:
        self.counts[kind] += 1
        self.reasons[f"{kind}: {reason}"] += 1

    def changed(self) -> None:
        self._changed.set()

    def ready(self) -> int:
        return sum(node.ready_at is not None for node in self.nodes)

    async def until(self, predicate: Any) -> None:
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    def report(self, **extra: Any) -> dict[str, Any]:
        """What happened since the last report (each command's answer is one)."""
        out = {
            "ready": self.ready(),
            "counts": dict(self.counts),
            "reasons": dict(self.reasons.most_common(8)),
            "received": dict(self.received),
            "rss_kb": rss_kb(os.getpid()),
            **extra,
        }
        self.counts.clear()
        self.reasons.clear()
        self.received.clear()
        return out

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        tasks = [asyncio.create_task(node.run()) for node in self.nodes]
        answer({"started": len(self.nodes)})
        while line := await reader.readline():
            command = json.loads(line)["command"]
            if command == "connect":
                # Every socket at once; answered when all are ready (the bench times the
                # registry side itself; this is the clients' view).
                self.phase += 1
                began = time.monotonic()
                self.want_connected.set()
                self.reconnect.set()
                self.reconnect.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.until(lambda: self.ready() == len(self.nodes)), self.phase_timeout)
                answer(self.report(seconds=round(time.monotonic() - began, 3)))
            elif command == "hold_off":
                # The registry is about to go away: dropped sockets wait for "connect".
                self.phase += 1
                self.want_connected.clear()
                answer(self.report())
            elif command == "close":
                self.phase += 1
                self.want_connected.clear()
                began = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*(node.close() for node in self.nodes)), self.phase_timeout)
                    await asyncio.wait_for(self.until(lambda: self.ready() == 0), 10)
                answer(self.report(seconds=round(time.monotonic() - began, 3)))
            elif command == "report":
                answer(self.report())
            elif command == "exit":
                break
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def client_main(spec_path: Path) -> int:
    raise_fd_limit()
    spec = json.loads(spec_path.read_text())
    asyncio.run(Client(spec).serve())
    return 0


# ---------------------------------------------------------------- the bench process


def raise_fd_limit() -> int:
    """Every socket is a file descriptor: the soft limit up to the hard one (children too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def django_setup(database_url: str, redis_url: str) -> None:
    """This process reads the registry's state as a dispatcher would: the bench database,
    and the Redis db that holds presence and the routing index's version."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="bim_site.settings",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        BIM_CHANNEL_PREFIX=CHANNEL_PREFIX,
        BIM_VAR_DIR=str(RUN_DIR),
    )
    import django

    django.setup()


def seed(count: int, *, warmup: int) -> tuple[Any, list[dict[str, Any]]]:
    """The subnet and `count + warmup` routable-once-ready nodes, in bulk: per node an owner
    with a token and the subnet's license accepted, the node's key, and a fresh passed
    benchmark (as registry.benchmarks records one), so `ready` makes it routable."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from bim_core import protocol
    from registry.asn import ip_block
    from registry.models import Node, NodeSubnet
    from subnets import defaults
    from subnets.models import EulaAcceptance, License, Subnet

    call_command("migrate", "--noinput", verbosity=0)
    license_, _ = License.objects.get_or_create(
        slug=defaults.APACHE_2["slug"], version=defaults.APACHE_2["version"], defaults=defaults.APACHE_2
    )
    subnet = Subnet.objects.create(
        slug=SUBNET,
        name="websocket bench",
        task_type=Subnet.TaskType.EMBEDDING,
        model_id="bench/none",
        model_checksum=os.urandom(32).hex(),
        runtime_id="bench",
        license=license_,
        # Serving from the start: no node here computes, so no benchmark reference is made.
        state=Subnet.State.ACTIVE,
    )
    User = get_user_model()  # noqa: N806
    total = count + warmup
    users = User.objects.bulk_create([User(username=f"ws-node-{i}") for i in range(total)], batch_size=2000)
    tokens = Token.objects.bulk_create([Token(key=Token.generate_key(), user=u) for u in users], batch_size=2000)
    EulaAcceptance.objects.bulk_create(
        [EulaAcceptance(user=u, subnet=subnet, license=license_, license_version=license_.version) for u in users],
        batch_size=2000,
    )
    keys = [protocol.new_private_key() for _ in range(total)]
    nodes = Node.objects.bulk_create(
        [
            Node(
                owner=user,
                name=f"{NODE_NAME}{i}" if i < count else f"ws-warm-{i}",
                public_key=protocol.public_key_b64(key),
                ip=source_ip(i),
                ip_block=ip_block(source_ip(i)),
            )
            for i, (user, key) in enumerate(zip(users, keys))
        ],
        batch_size=2000,
    )
    now = timezone.now()
    NodeSubnet.objects.bulk_create(
        [
            NodeSubnet(
                node=node,
                subnet=subnet,
                score=1.0,
                items_per_s=30.0,
                latency_p50_ms=250.0,
                latency_p95_ms=300.0,
                benchmarked_at=now,
            )
            for node in nodes
        ],
        batch_size=2000,
    )
    # The receipt key is made on first use with O_EXCL: made here, before any child starts.
    from registry.keys import registry_private_key

    registry_private_key()
    specs = [
        {"node_id": str(node.pk), "key": protocol.private_key_to_b64(key), "token": token.key, "ip": source_ip(i)}
        for i, (node, key, token) in enumerate(zip(nodes, keys, tokens))
    ]
    return subnet, specs


class Registry:
    """What the bench reads of the registry's state: the database and the routing index."""

    def __init__(self, subnet: Any, node_ids: list[str]) -> None:
        from registry.models import Node, NodeSubnet

        self.subnet = subnet
        # The measured nodes, not the warm-up ones (the bench seeds nothing else).
        self.online = Node.objects.filter(name__startswith=NODE_NAME, is_online=True)
        self.routable = NodeSubnet.objects.filter(
            subnet=subnet, node__name__startswith=NODE_NAME, ready_at__isnull=False, score__gt=0, node__is_online=True
        )
        self.node_ids = set(node_ids)

    def indexed(self) -> int:
        """Nodes of the bench in the routing index a dispatcher would use now (rebuilt when
        presence bumped its version, as it does on every ready and disconnect)."""
        from registry import routing_index

        index = routing_index.routable_index(self.subnet.pk)
        return sum(c.node_id in self.node_ids for c in index.candidates)

    def wait(self, predicate: Any, *, timeout: float, group: Any, label: str) -> tuple[float | None, list[Any]]:
        """Poll until `predicate()` is true; (seconds, progress samples) or (None, ...)."""
        began = time.perf_counter()
        samples = []
        last_log = began
        while True:
            done, sample = predicate()
            elapsed = time.perf_counter() - began
            samples.append([round(elapsed, 2), sample])
            if done:
                return elapsed, samples
            if elapsed > timeout:
                return None, samples
            if time.perf_counter() - last_log > 10:
                log(f"{label}: {sample} after {elapsed:.0f} s")
                last_log = time.perf_counter()
            group.check_alive()
            time.sleep(POLL_S)

    def all_routable(self, count: int, since: Any) -> tuple[bool, Any]:
        """All `count` nodes connected since `since` (rows a registry that died left online
        do not count), ready since then, and in the routing index."""
        online = self.online.filter(connected_at__gte=since).count()
        routable = self.routable.filter(node__connected_at__gte=since, ready_at__gte=since).count()
        if online < count or routable < count:
            return False, {"online": online, "routable": routable}
        indexed = self.indexed()
        return indexed >= count, {"online": online, "routable": routable, "indexed": indexed}

    def all_offline(self) -> tuple[bool, Any]:
        online = self.online.count()
        return online == 0, {"online": online}


class Clients:
    """The client processes, driven over their stdin/stdout."""

    def __init__(self, group: Any, specs: list[dict[str, Any]], *, processes: int, common: dict[str, Any]) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.group = group
        for index in range(processes):
            path = RUN_DIR / f"client-{index}.json"
            path.write_text(json.dumps({**common, "nodes": specs[index::processes]}))
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--client", str(path)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=(RUN_DIR / "logs" / f"client-{index}.log").open("ab"),
                text=True,
                start_new_session=True,
            )
            self.procs.append(proc)
        for proc in self.procs:
            self._read(proc, timeout=60)

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def _read(self, proc: subprocess.Popen[str], *, timeout: float) -> dict[str, Any]:
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not box or not box[0]:
            raise RuntimeError(f"client {proc.pid} did not answer within {timeout:.0f} s (exit {proc.poll()})")
        return json.loads(box[0])

    def send(self, command: str) -> None:
        for proc in self.procs:
            proc.stdin.write(json.dumps({"command": command}) + "\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]

    def collect(self, *, timeout: float) -> dict[str, Any]:
        """Every client's answer to the last command, summed."""
        deadline = time.monotonic() + timeout
        answers = [self._read(proc, timeout=max(1.0, deadline - time.monotonic())) for proc in self.procs]
        out: dict[str, Any] = {"ready": sum(a["ready"] for a in answers)}
        for key in ("counts", "reasons", "received"):
            total: collections.Counter[str] = collections.Counter()
            for a in answers:
                total.update(a[key])
            out[key] = dict(total)
        if all("seconds" in a for a in answers):
            out["seconds"] = max(a["seconds"] for a in answers)
        out["rss_kb"] = sum(a["rss_kb"] for a in answers)
        return out

    def command(self, command: str, *, timeout: float) -> dict[str, Any]:
        self.send(command)
        return self.collect(timeout=timeout)

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.write(json.dumps({"command": "exit"}) + "\n")  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class Failures:
    """What daphne and the worker logged from a mark on: tracebacks by exception type (a
    handler that raised; channels logs "Exception inside application"), and the lines
    that say a socket's application failed."""

    EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Timeout))\b")

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.offsets: dict[Path, int] = {}
        self.mark()

    def mark(self) -> None:
        self.offsets = {path: path.stat().st_size for path in self.log_dir.glob("*.log") if not path.name.startswith("client")}

    def since_mark(self) -> dict[str, Any]:
        exceptions: collections.Counter[str] = collections.Counter()
        counts = {"tracebacks": 0, "application_exceptions": 0}
        for path in sorted(self.log_dir.glob("*.log")):
            if path.name.startswith("client"):
                continue
            with path.open("rb") as handle:
                handle.seek(self.offsets.get(path, 0))
                text = handle.read().decode(errors="replace")
            in_traceback = False
            for line in text.splitlines():
                if "Traceback (most recent call last)" in line:
                    counts["tracebacks"] += 1
                    in_traceback = True
                elif "Exception inside application" in line:
                    counts["application_exceptions"] += 1
                elif in_traceback and (match := self.EXCEPTION.match(line)):
                    exceptions[f"{path.stem}: {match.group(1)}"] += 1
                    in_traceback = False
        return {**counts, "by_type": dict(exceptions.most_common(8))}


def restart_registry(group: Any, port: int) -> tuple[float, str]:
    """SIGTERM to daphne, as a deploy stops it (SIGKILL after 10 s), then a new one on the
    same port; returns the seconds the stop took and the new registry's URL."""
    began = time.perf_counter()
    for entry in [c for c in group.children if c[0] == "registry"]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(entry[1].pid, signal.SIGTERM)
        try:
            entry[1].wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry[1].pid, signal.SIGKILL)
            entry[1].wait()
        group.children.remove(entry)
    stopped = time.perf_counter() - began
    return stopped, group.start_registry(port)


def registry_pid(group: Any) -> int:
    return next(child.pid for name, child in group.children if name == "registry")


def warm_up(clients: Clients) -> None:
    """The warm-up nodes connect and close once: the code paths a first connection loads."""
    clients.command("connect", timeout=120)
    clients.command("close", timeout=60)


def run_once(
    *,
    run: int,
    args: argparse.Namespace,
    group: Any,
    port: int,
    registry: Registry,
    clients: Clients,
    warmers: Clients,
    meter: Any,
) -> dict[str, Any]:
    from django.utils import timezone

    from bench.throughput import CpuMeter

    count = args.nodes
    failures = Failures(group.log_dir)
    result: dict[str, Any] = {"run": run, "errors": []}

    def phase(name: str, command: str, predicate: Any, *, before: Any = None) -> dict[str, Any]:
        load = os.getloadavg()[0]
        cpu_before = meter.sample()
        began = time.perf_counter()
        clients.send(command)
        seconds, samples = registry.wait(predicate, timeout=args.timeout, group=group, label=name)
        elapsed = time.perf_counter() - began
        client_view = clients.collect(timeout=max(30.0, args.timeout - elapsed))
        out = {
            "seconds": round(seconds, 3) if seconds is not None else None,
            "cpu_cores": CpuMeter.cores(cpu_before, meter.sample(), time.perf_counter() - began),
            "load_1m": round(load, 2),
            "clients": client_view,
            "progress": samples[:: max(1, len(samples) // 20)] + samples[-1:],
        }
        if seconds is None:
            result["errors"].append(f"{name}: {samples[-1][1]} of {count} after {args.timeout:.0f} s")
        log(f"run {run + 1} {name}: {out['seconds']} s ({samples[-1][1]}); clients {client_view['counts']}")
        return out

    if run > 0:
        # A daphne that held no socket yet, as in run 1 (the last one's storm and burst
        # left its heap grown), warmed up alike: the memory per connection compares.
        restart_registry(group, port)
        meter.roots["registry"] = [registry_pid(group)]
        warm_up(warmers)
    rss_empty = rss_kb(meter.roots["registry"][0])
    since = timezone.now()
    result["connect"] = phase("connect", "connect", lambda: registry.all_routable(count, since))
    time.sleep(args.hold)
    held = clients.command("report", timeout=30)
    online = registry.online.count()
    rss_held = rss_kb(meter.roots["registry"][0])
    result["held"] = {
        "seconds": args.hold,
        "connections": held["ready"],
        "online": online,
        "dropped": held["counts"].get("dropped", 0),
        "daphne_rss_mb": round(rss_held / 1024, 1),
        "daphne_kb_per_connection": round((rss_held - rss_empty) / max(held["ready"], 1), 1),
        "clients_kb_per_connection": round(held["rss_kb"] / max(held["ready"], 1), 1),
        "messages_received": held["received"],
    }
    log(f"run {run + 1} held {held['ready']} sockets ({online} online): {result['held']['daphne_kb_per_connection']} KB each")

    clients.command("hold_off", timeout=30)
    shutdown = Failures(group.log_dir)
    since = timezone.now()
    stop_s, _ = restart_registry(group, port)
    meter.roots["registry"] = [registry_pid(group)]
    result["restart"] = {
        "stop_s": round(stop_s, 2),
        "online_rows_left": registry.online.count(),  # the old process marked the rest offline
        "shutdown_failures": shutdown.since_mark(),
    }
    failures.mark()  # the storm's and the burst's failures are the new process's
    rss_restarted = rss_kb(meter.roots["registry"][0])
    result["reconnect_storm"] = phase("reconnect storm", "connect", lambda: registry.all_routable(count, since))
    result["reconnect_storm"]["daphne_rss_mb"] = [round(rss_restarted / 1024, 1), round(rss_kb(meter.roots["registry"][0]) / 1024, 1)]
    time.sleep(2)
    result["disconnect_burst"] = phase("disconnect burst", "close", registry.all_offline)
    time.sleep(2)  # handlers still running after the last row went offline log their failures too
    result["failures"] = failures.since_mark()
    result["index_after_burst"] = registry.indexed()
    return result


def median_of(runs: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for row in runs:
        for key in path:
            row = row.get(key) if isinstance(row, dict) else None
        if row is not None:
            values.append(row)
    return round(statistics.median(values), 3) if values else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client is not None:
        return client_main(args.client)
    from bench.market import database_recreate, redis_flush, with_path
    from bench.throughput import CpuMeter, service_pids
    from bim_site.processes import ProcessGroup, child_env, free_port

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    fd_limit = raise_fd_limit()
    if fd_limit < args.nodes + 1000:
        log(f"warning: {fd_limit} file descriptors allowed; {args.nodes} sockets need more")
    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bim")
    database_url = with_path(base_db, f"/{args.database}")
    redis_url = with_path(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9"), f"/{args.redis_db}")
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    (RUN_DIR / "logs").mkdir(parents=True)
    log(f"database {args.database} recreated, Redis db {args.redis_db} flushed; state in {RUN_DIR}")
    database_recreate(database_url)
    redis_flush(redis_url)
    django_setup(database_url, redis_url)
    warmup_nodes = min(20, args.nodes)
    subnet, specs = seed(args.nodes, warmup=warmup_nodes)
    node_ids = [s["node_id"] for s in specs[: args.nodes]]
    registry = Registry(subnet, node_ids)
    log(f"seeded {len(specs)} nodes in {time.perf_counter() - started:.1f} s; starting daphne and a worker")

    env = child_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        BIM_CHANNEL_PREFIX=CHANNEL_PREFIX,
        BIM_VAR_DIR=str(RUN_DIR),
        BIM_NODE_HEARTBEAT_S=str(args.heartbeat_s),
        DJANGO_SETTINGS_MODULE="bim_site.settings",
    )
    group = ProcessGroup(log_dir=RUN_DIR / "logs", env=env)
    runs: list[dict[str, Any]] = []
    clients = warmers = None
    try:
        port = free_port()
        url = group.start_registry(port)
        group.start_worker(beat=True)
        common = {
            "ws_url": url.replace("http://", "ws://") + "/ws/node/",
            "subnet": SUBNET,
            "model_checksum": subnet.model_checksum,
            "timeout": 60.0,
            "phase_timeout": args.timeout,
        }
        warmers = Clients(group, specs[args.nodes :], processes=1, common=common)
        warm_up(warmers)
        clients = Clients(group, specs[: args.nodes], processes=args.clients, common=common)
        meter = CpuMeter(
            roots={
                "registry": [registry_pid(group)],
                "worker": [next(c.pid for n, c in group.children if n == "worker")],
                "clients": clients.pids,
                **service_pids(redis_url),
            }
        )
        log(f"{args.clients} client processes hold {args.nodes} nodes; load {os.getloadavg()[0]:.2f}")
        for run in range(args.runs):
            result = run_once(
                run=run,
                args=args,
                group=group,
                port=port,
                registry=registry,
                clients=clients,
                warmers=warmers,
                meter=meter,
            )
            runs.append(result)
            if result["errors"]:
                log(f"run {run + 1} failed ({'; '.join(result['errors'])}); skipping the remaining runs")
                break
    finally:
        for each in (clients, warmers):
            if each is not None:
                each.stop()
        group.stop()
        redis_flush(redis_url)

    failed_handlers = sum(r["failures"]["tracebacks"] + r["failures"]["application_exceptions"] for r in runs)
    refused = sum(
        r[p]["clients"]["counts"].get("refused", 0) + r[p]["clients"]["counts"].get("failed", 0)
        for r in runs
        for p in ("connect", "reconnect_storm")
    )
    dropped = sum(r["held"]["dropped"] for r in runs)
    medians = {
        "connect_s": median_of(runs, "connect", "seconds"),
        "connections_held": median_of(runs, "held", "connections"),
        "daphne_kb_per_connection": median_of(runs, "held", "daphne_kb_per_connection"),
        "reconnect_storm_s": median_of(runs, "reconnect_storm", "seconds"),
        "disconnect_burst_s": median_of(runs, "disconnect_burst", "seconds"),
        "restart_stop_s": median_of(runs, "restart", "stop_s"),
        "reconnect_storm_cpu_cores": {
            label: median_of(runs, "reconnect_storm", "cpu_cores", label)
            for label in (runs[0]["reconnect_storm"]["cpu_cores"] if runs else {})
        },
        "disconnect_burst_cpu_cores": {
            label: median_of(runs, "disconnect_burst", "cpu_cores", label)
            for label in (runs[0]["disconnect_burst"]["cpu_cores"] if runs else {})
        },
    }
    checks = {
        "runs_complete": len(runs) == args.runs and not any(r["errors"] for r in runs),
        "handler_failures": failed_handlers,
        "handshakes_refused_or_failed": refused,
        "sockets_dropped_while_held": dropped,
        "index_empty_after_burst": all(r["index_after_burst"] == 0 for r in runs) and bool(runs),
    }
    checks["ok"] = (
        checks["runs_complete"] and not failed_handlers and not refused and not dropped and checks["index_empty_after_burst"]
    )
    storm, burst = medians["reconnect_storm_s"], medians["disconnect_burst_s"]
    report = {
        "benchmark": "registry_websockets",
        "config": {
            "nodes": args.nodes,
            "runs": args.runs,
            "client_processes": args.clients,
            "hold_s": args.hold,
            "heartbeat_s": args.heartbeat_s,
            "database": args.database,
            "redis_db": args.redis_db,
            "db_pool_max": int(os.environ.get("BIM_DB_POOL_MAX", "8")),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load_at_start,
        },
        "median": medians,
        "targets": {
            "nodes": TARGET_NODES,
            "at_target_scale": args.nodes >= TARGET_NODES,
            "reconnect_within_s": TARGET_RECONNECT_S,
            "disconnect_within_s": TARGET_DISCONNECT_S,
            "reconnect_met": storm is not None and storm <= TARGET_RECONNECT_S,
            "disconnect_met": burst is not None and burst <= TARGET_DISCONNECT_S,
            "no_handler_failing": failed_handlers == 0,
        },
        "runs": runs,
        "checks": checks,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))
    return 0 if checks["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
