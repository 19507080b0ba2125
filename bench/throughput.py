"""Jobs settled per second through the registry, on PostgreSQL + Redis.

End to end: daphne (the registry) and one Celery worker (threads pool, with beat), started
as `bim_site.processes.ProcessGroup` starts them, plus S simulated nodes
(`bench/sim_node.py`: real registration, license, benchmark, websocket protocol and
signatures; vectors precomputed once by the subnet's real model, so the registry's own
cost is what is measured). C submitter threads, each with its own `bim_sdk.Client`, submit
M jobs; the clock runs from the first submit until one COUNT query sees all M finished
(settled, failed or expired); jobs/s counts the settled ones.

Baseline, measured in the same run and on the same database: the same pipeline called
in-process, one job at a time, through the services (job_submit -> job_dispatch ->
result_record x2, the second verifying and settling; results signed as tests/factories does) with no HTTP,
websocket or Celery: the floor cost of the ORM, the ledger and verification.
ratio = end_to_end / in_process jobs per second.

Each of R runs measures both (baseline first). Besides throughput and latency, every run
reports the CPU each part used (from /proc: daphne, worker, nodes, the PostgreSQL server,
redis-server, this process, and the rest of the machine as "other"), PostgreSQL sessions
and transactions per job, and the incidents the children logged (deadlocks, 5xx answers,
dropped node sockets, failed tasks, lost or unanswered assignments). stdout gets one JSON
object with every run and the medians; progress goes to stderr. The database
(`bim_bench`) is dropped and recreated and the Redis db (`--redis-db`) flushed on each
invocation; state and logs are in var/bench/throughput/. Run it as

    bash scripts/with_services.sh .venv/bin/python bench/throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import queue
import re
import signal
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.market import (  # noqa: E402
    EMBEDDING_SUBNET,
    bench_vectors,
    extra_users,
    job_texts,
    jobs_and_ledger,
    log,
    redis_flush,
    report_print,
    services_reset,
    sim_node_start,
    vacuum_when_autovacuum_is_off,
    wait_for_nodes,
)
from bim_site.processes import ProcessGroup, free_port  # noqa: E402

SUBNET = EMBEDDING_SUBNET
BASELINE_SUBNET = "bench-inprocess"  # a copy of SUBNET that only the in-process nodes serve
STATE = ROOT / "var" / "bench" / "throughput"
RUN_DIR = STATE / "run"  # BIM_VAR_DIR of this invocation: logs, keys, celerybeat schedule
SQL_STATS_DIR = RUN_DIR / "sqlstats"  # statements counted by daphne and the worker (bim_site/sqlstats.py)
ARTIFACT_ROOT = STATE / "artifacts"  # model chunks (content-addressed, so kept too)
CHANNEL_PREFIX = "bimbench"
POLL_S = 0.02
HEARTBEAT_S = 10  # BIM_NODE_HEARTBEAT_S of the simulated nodes; the in-process ones refresh as often


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported (3)")
    parser.add_argument("--jobs", type=int, default=200, help="jobs per run and per path (200)")
    parser.add_argument("--texts-per-job", type=int, default=4)
    parser.add_argument("--submitters", type=int, default=4, help="concurrent submitter threads (4)")
    parser.add_argument(
        "--users", type=int, default=1, help="paying users, one per submitter in turn (1: all jobs share one account)"
    )
    parser.add_argument("--nodes", type=int, default=4, help="simulated nodes, one owner each (4)")
    parser.add_argument("--worker-concurrency", type=int, default=2, help="Celery threads (ProcessGroup's 2)")
    parser.add_argument("--no-beat", action="store_true", help="run the worker without beat (the sweeper)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured jobs per path before run 1 (10)")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds for one run's jobs to finish (90)")
    parser.add_argument("--database", default="bim_bench", help="dropped and recreated (bim_bench)")
    parser.add_argument("--redis-db", type=int, default=12, help="Redis db owned and flushed by the bench (12)")
    parser.add_argument(
        "--submit-jobs",
        type=int,
        default=400,
        help="jobs per run sent one per request, and twice as many in batches (400)",
    )
    parser.add_argument("--submit-concurrency", type=int, default=16, help="threads sending them (16)")
    parser.add_argument(
        "--submit-rate",
        type=float,
        default=200.0,
        help="also send --submit-jobs single submissions offered at this many per second, latency from each "
        "one's due time (bench/submission_rates.py; issue 13's target, 200; 0: not run)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="end to end: offer jobs at this many per second, paced (0: as fast as the submitters go); "
        "the settle latency at a rate the registry sustains is its own delay, not a backlog's wait",
    )
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="measure only the dispatcher's cost per job against the backlog (bench/dispatch_backlog.py)",
    )
    parser.add_argument("--backlog-sizes", default="10,10000", help="backlogs to compare, smallest first (10,10000)")
    parser.add_argument("--backlog-repeats", type=int, default=20, help="placements measured per backlog (20)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 run, 30 jobs, 2 nodes, 2 submitters")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.jobs, args.nodes, args.submitters, args.warmup = 1, 30, 2, 2, 3
        args.submit_jobs, args.submit_concurrency, args.submit_rate = 20, 4, 20.0
        args.backlog_sizes, args.backlog_repeats = "10,300", 5
    if args.nodes < 2:
        parser.error("--nodes must be at least 2: a job needs two nodes of different owners")
    if args.rate < 0:
        parser.error("--rate must be >= 0")
    if min(args.runs, args.jobs, args.texts_per_job, args.submitters, args.users, args.worker_concurrency) < 1:
        parser.error("--runs, --jobs, --texts-per-job, --submitters, --users and --worker-concurrency must be >= 1")
    return args


# ---------------------------------------------------------------- services and setup


def seed(contributors: list[str], credits: int) -> dict[str, Any]:
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)
    out = io.StringIO()
    call_command(
        "bim_seed", "--demo", "--json", f"--contributors={','.join(contributors)}", f"--credits={credits}", stdout=out
    )
    # The receipt key is made on first use with O_EXCL; making it here, before any
    # child starts, keeps two processes (or two worker threads) from racing for it.
    from registry.keys import registry_private_key

    registry_private_key()
    _lift_rate_limit()
    return json.loads(out.getvalue())


def _lift_rate_limit() -> None:
    """The bench measures the registry, not one user's allowance: its users submit far more
    than the demo policy's jobs per minute, so the operator raises the limit as for a
    high-volume customer (a new policy version; every other rule unchanged)."""
    from subnets.content_policies import subnet_policy_set
    from subnets.models import Subnet

    subnet = Subnet.objects.get(slug=SUBNET)
    policy = dict(subnet.content_policy)
    policy["version"] = int(policy["version"]) + 1
    policy["rate_limit"] = {"jobs_per_minute": 1_000_000}
    subnet_policy_set(subnet=subnet, policy=policy)


def load_vectors(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return dict(zip(data["texts"].tolist(), data["vectors"].astype(np.float32)))


# ---------------------------------------------------------------- CPU accounting

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds of the process plus its reaped children)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        # After "pid (comm)": state ppid ... utime(11) stime(12) cutime(13) cstime(14).
        table[int(entry)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / CLOCK_TICKS)
    return table


def _tree_cpu(root: int, table: dict[int, tuple[int, float]]) -> float:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += table.get(pid, (0, 0.0))[1]
        stack.extend(children.get(pid, []))
    return total


def _system_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


@dataclass
class CpuMeter:
    """CPU seconds of each part of the system, sampled before and after a measurement.
    Postgres is its postmaster's tree, every database included: backends that exited
    (Django closes its connection after every request and task) are counted in the
    postmaster's reaped-children time."""

    roots: dict[str, list[int]] = field(default_factory=dict)

    def sample(self) -> dict[str, float]:
        table = _proc_table()
        out = {label: sum(_tree_cpu(pid, table) for pid in pids) for label, pids in self.roots.items()}
        times = os.times()
        out["bench"] = times.user + times.system  # this process: submitters, poller, baseline
        out["machine"] = _system_busy()
        return out

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
        """Cores used on average by each part; "other" is what the rest of the machine
        used meanwhile (a noisy neighbour shows up there, not in the parts)."""
        used = {label: (after[label] - before[label]) / seconds for label in after}
        used["other"] = used["machine"] - sum(v for k, v in used.items() if k != "machine")
        return {label: round(value, 2) for label, value in used.items()}


def cpu_ms_per_job(cores: dict[str, float], seconds: float, jobs: int) -> dict[str, float]:
    """What one job cost each part, in CPU milliseconds (the machine-wide and noise
    figures are left out: they are not the job's)."""
    return {
        label: round(value * seconds * 1000 / max(jobs, 1), 1)
        for label, value in cores.items()
        if label not in ("machine", "other")
    }


def service_pids(redis_url: str) -> dict[str, list[int]]:
    """PostgreSQL's postmaster and redis-server, when they run on this machine."""
    import redis
    from django.db import connection

    pids: dict[str, list[int]] = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    table = _proc_table()
    if backend in table:
        pids["postgres"] = [table[backend][0]]
    redis_pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
    if redis_pid in table:
        pids["redis"] = [redis_pid]
    return pids


def pg_counters() -> dict[str, int]:
    """The bench database's session and transaction counters. This process's own
    connection is closed first, so that its pending statistics are flushed and counted."""
    from django.db import connection

    connection.close()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sessions, xact_commit + xact_rollback, active_time"
            " FROM pg_stat_database WHERE datname = current_database()"
        )
        sessions, transactions, active_ms = cursor.fetchone()
    # Less the reconnect above.
    return {"sessions": sessions - 1, "transactions": transactions, "active_ms": active_ms}


def pg_per_job(before: dict[str, Any], after: dict[str, Any], jobs: int, own_queries: int) -> dict[str, float]:
    """Per job, in the bench database only (the server's CPU in "cpu_cores" counts every
    database): sessions (new connections: Django closes its connection after every request,
    task and consumer call), transactions less the bench's own polling queries, and the
    time backends spent running statements (lock waits included, connection set-up not)."""
    jobs = max(jobs, 1)
    return {
        "sessions_per_job": round((after["sessions"] - before["sessions"]) / jobs, 1),
        "transactions_per_job": round((after["transactions"] - before["transactions"] - own_queries) / jobs, 1),
        "active_ms_per_job": round((after["active_ms"] - before["active_ms"]) / jobs, 1),
    }


def statements_and_connections(redis_url: str) -> dict[str, int]:
    """Statements the children ran (bim_site/sqlstats.py; their files are rewritten twice
    a second, so read after a pause), connections Redis has accepted in all, and Celery
    tasks published (kombu's Redis transport publishes with LPUSH; nothing else here does)."""
    import redis

    from bim_site import sqlstats

    time.sleep(sqlstats.WRITE_EVERY_S * 2)
    client = redis.Redis.from_url(redis_url)
    received = client.info("stats")["total_connections_received"]
    published = client.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0)
    return {
        "statements": sqlstats.statements_in(SQL_STATS_DIR),
        "redis_connections": int(received),
        "celery_tasks": int(published),
    }


def per_job_counts(before: dict[str, int], after: dict[str, int], jobs: int) -> dict[str, float]:
    jobs = max(jobs, 1)
    return {
        "statements_per_job": round((after["statements"] - before["statements"]) / jobs, 1),
        # Less the one this bench opens to read the counter.
        "redis_connections_per_job": round((after["redis_connections"] - before["redis_connections"] - 1) / jobs, 2),
        "celery_tasks_per_job": round((after["celery_tasks"] - before["celery_tasks"]) / jobs, 2),
    }


class BackendSampler:
    """What the bench database's other backends are doing, sampled during a run: running
    a statement, waiting for a lock, or holding a transaction open while the client (the
    Python side) works. Means over the samples, and which statements waited for a lock
    (counted once per sample in which they waited)."""

    TABLE: ClassVar[re.Pattern[str]] = re.compile(r'(?:FROM|UPDATE|INTO)\s+"?(\w+)|^SELECT\s+"(\w+)"\.')

    def __init__(self) -> None:
        self.samples = 0
        self.totals = {"running": 0, "waiting_for_lock": 0, "idle_in_transaction": 0}
        self.waiting: collections.Counter[str] = collections.Counter()

    def sample(self) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT state, wait_event_type, CASE WHEN wait_event_type = 'Lock' THEN query END"
                " FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            rows = cursor.fetchall()
        self.samples += 1
        for state, wait, query in rows:
            if state == "active" and wait == "Lock":
                self.totals["waiting_for_lock"] += 1
                self.waiting[self._statement(query)] += 1
            elif state == "active":
                self.totals["running"] += 1
            elif state and state.startswith("idle in transaction"):
                self.totals["idle_in_transaction"] += 1

    @classmethod
    def _statement(cls, query: str) -> str:
        """`UPDATE registry_node`, `SELECT ledger_account FOR UPDATE`, `COMMIT` (where
        deferred foreign-key checks take their locks), ... PostgreSQL keeps the first 1 kB
        of a statement: a long SELECT shows its first table and no FOR UPDATE."""
        kind = query.split(None, 1)[0].upper() if query.strip() else "?"
        match = cls.TABLE.search(query)
        table = f" {match.group(1) or match.group(2)}" if match else ""
        return kind + table + (" FOR UPDATE" if "FOR UPDATE" in query else "")

    def means(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: round(total / max(self.samples, 1), 2) for name, total in self.totals.items()}
        out["waiting_statements"] = dict(self.waiting.most_common(4))
        return out


# ---------------------------------------------------------------- the two measurements


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def settled_latencies(prefix: str) -> list[float]:
    from registry.models import Job, JobState

    rows = Job.objects.filter(idempotency_key__startswith=prefix, state=JobState.SETTLED).values_list(
        "created_at", "finished_at"
    )
    return [(finished - created).total_seconds() for created, finished in rows]


def job_states(prefix: str) -> dict[str, int]:
    from django.db.models import Count

    from registry.models import Job

    rows = Job.objects.filter(idempotency_key__startswith=prefix).values("state").annotate(n=Count("pk"))
    return {row["state"]: row["n"] for row in rows}


class LogWindow:
    """What the children logged during one run: the incidents that explain a slow or
    failed run (deadlocks, 5xx answers, dropped node sockets, failed tasks)."""

    PATTERNS: ClassVar[dict[str, tuple[str, ...]]] = {
        "http_5xx": ('" 500 ', '" 502 ', '" 503 '),
        "node_socket_errors": ("Exception inside application",),
        "redis_read_timeouts": ("redis.exceptions.TimeoutError",),
        "node_reconnects": ('"WSCONNECT /ws/node/"',),
        "failed_tasks": ("raised unexpected",),
    }

    def __init__(self, log_dir: Path) -> None:
        self.files = [log_dir / "registry.log", log_dir / "worker.log"]
        self.offsets = {path: path.stat().st_size if path.exists() else 0 for path in self.files}

    # A deadlock's report is logged more than once (by two handlers, and by Celery both
    # as a message and as a traceback): count each distinct one.
    DEADLOCK: ClassVar[re.Pattern[str]] = re.compile(r"DETAIL:  (Process \d+ waits for [^;]+);")

    def incidents(self) -> dict[str, int]:
        counts = dict.fromkeys(self.PATTERNS, 0)
        deadlocks: set[str] = set()
        for path in self.files:
            if not path.exists():
                continue
            with path.open("rb") as handle:
                handle.seek(self.offsets[path])
                text = handle.read().decode(errors="replace")
            deadlocks.update(self.DEADLOCK.findall(text))
            for line in text.splitlines():
                for name, needles in self.PATTERNS.items():
                    if any(needle in line for needle in needles):
                        counts[name] += 1
        return {"deadlocks": len(deadlocks), **counts}


def run_end_to_end(
    *,
    url: str,
    tokens: list[str],
    batches: list[list[str]],
    prefix: str,
    submitters: int,
    timeout: float,
    group: ProcessGroup,
    meter: CpuMeter,
    nodes: int,
    redis_url: str,
    rate: float = 0.0,
) -> dict[str, Any]:
    """Submit every batch from `submitters` threads and wait until every job is settled,
    failed or expired; a run that cannot finish says why in "error" instead of raising.
    With `rate`, job i is sent no earlier than i / rate seconds after the start (an open
    loop: a late submitter sends at once)."""
    from django.db.models import Count, Q

    from bim_sdk import Client
    from registry.models import TERMINAL_STATES, Assignment, AssignmentState, Job, JobState

    # Idle node sockets may have dropped and reconnected: start with every node ready.
    waited = time.perf_counter()
    wait_for_nodes(nodes, group)
    nodes_wait_s = time.perf_counter() - waited
    logs = LogWindow(group.log_dir)
    counts_before = statements_and_connections(redis_url)
    pg_before = pg_counters()
    work: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(batches)):
        work.put(index)
    submit_s: list[float] = []
    errors: list[str] = []
    started: list[float] = []
    start = threading.Barrier(submitters + 1, action=lambda: started.append(time.perf_counter()))

    def submitter(token: str) -> None:
        client = Client(url, token, timeout=60)
        start.wait()
        while True:
            try:
                index = work.get_nowait()
            except queue.Empty:
                return
            if rate:
                time.sleep(max(0.0, started[0] + index / rate - time.perf_counter()))
            began = time.perf_counter()
            try:
                client.submit_embeddings(SUBNET, batches[index], idempotency_key=f"{prefix}{index}")
            except Exception as exc:  # noqa: BLE001 - reported in the run's "error"
                errors.append(f"submit {index}: {exc}")
                return
            submit_s.append(time.perf_counter() - began)

    threads = [
        threading.Thread(target=submitter, args=(tokens[i % len(tokens)],), daemon=True) for i in range(submitters)
    ]
    for thread in threads:
        thread.start()
    jobs = Job.objects.filter(idempotency_key__startswith=prefix)
    count = {
        "settled": Count("pk", filter=Q(state=JobState.SETTLED)),
        "done": Count("pk", filter=Q(state__in=TERMINAL_STATES)),
    }
    activity = BackendSampler()
    cpu_before = meter.sample()
    start.wait()
    began = time.perf_counter()
    polls = 0
    while True:
        counts = jobs.aggregate(**count)
        polls += 1
        if polls % 10 == 0:
            activity.sample()
        elapsed = time.perf_counter() - began
        if counts["done"] >= len(batches):
            break
        if elapsed > timeout:
            errors.append(f"only {counts['done']} of {len(batches)} jobs finished within {timeout:.0f} s")
            break
        if errors and all(not t.is_alive() for t in threads) and counts["done"] >= len(submit_s):
            break  # submits failed and every submitted job is finished
        group.check_alive()
        time.sleep(POLL_S)
    cpu = meter.cores(cpu_before, meter.sample(), elapsed)
    for thread in threads:
        thread.join(timeout=5)
    postgres = pg_per_job(pg_before, pg_counters(), len(batches), own_queries=polls + activity.samples)
    postgres.update(per_job_counts(counts_before, statements_and_connections(redis_url), len(batches)))
    postgres["backends"] = activity.means()
    latencies = settled_latencies(prefix)
    assignments = Assignment.objects.filter(job__idempotency_key__startswith=prefix)
    # Lost: the node's socket dropped or it gave up. Cancelled: never answered before the
    # job expired (an offer that never reached the node looks like this).
    lost = assignments.filter(state=AssignmentState.LOST).count()
    unanswered = assignments.filter(state=AssignmentState.CANCELLED).count()
    result = {
        "jobs": len(batches),
        "settled": counts["settled"],
        "states": job_states(prefix),
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(counts["settled"] / elapsed, 2),
        "offered_jobs_per_s": rate or None,
        "latency_ms_p50": percentile_ms(latencies, 50),
        "latency_ms_p95": percentile_ms(latencies, 95),
        "submit_http_ms_p50": percentile_ms(submit_s, 50),
        "submit_http_ms_p95": percentile_ms(submit_s, 95),
        "cpu_cores": cpu,
        "cpu_ms_per_job": cpu_ms_per_job(cpu, elapsed, counts["settled"]),
        "postgres": postgres,
        "incidents": {**logs.incidents(), "assignments_lost": lost, "assignments_unanswered": unanswered},
        "nodes_ready_wait_s": round(nodes_wait_s, 2),
    }
    if errors:
        result["error"] = "; ".join(errors[:3])
    return result


@dataclass
class Baseline:
    """In-process nodes of their own subnet, so the live simulated nodes never get these
    jobs; results are signed with the session keys exactly as tests/factories does."""

    user: Any
    keys: dict[Any, Any]  # node id -> NodeKeys

    @classmethod
    def create(cls, *, user: Any, nodes: int) -> Baseline:
        from subnets.data_terms import data_terms_acknowledge
        from subnets.models import Subnet
        from tests.factories import UserFactory, online_node

        subnet = Subnet.objects.get(slug=SUBNET)
        subnet.pk = None
        subnet.slug = BASELINE_SUBNET
        subnet.save()
        data_terms_acknowledge(user=user, subnet=subnet, version=subnet.data_terms_version, ip=None)
        keys = {}
        for index in range(nodes):
            node_keys = online_node(subnet, UserFactory(username=f"{BASELINE_SUBNET}-{index}"))
            keys[node_keys.node.pk] = node_keys
        return cls(user=user, keys=keys)

    def refresh_presence(self, *, forget_index: bool = True) -> None:
        # Routing skips, and beat's sweeper drops, nodes silent for NODE_STALE_S.
        from django.utils import timezone

        from registry import routing_index
        from registry.models import Node, NodeSubnet

        now = timezone.now()
        Node.objects.filter(pk__in=self.keys).update(is_online=True, last_seen=now)
        NodeSubnet.objects.filter(node_id__in=self.keys).update(ready_at=now)
        if forget_index:
            routing_index.index_forget()  # this process's routing index: rebuild it from the rows above

    def run(
        self, *, batches: list[list[str]], prefix: str, vectors: dict[str, np.ndarray], meter: CpuMeter
    ) -> dict[str, Any]:
        from bim_site import sqlstats
        from registry import dispatch, effects, results, submit
        from registry.models import Assignment, AssignmentState, JobState
        from tests.factories import result_message

        self.refresh_presence()
        pg_before = pg_counters()
        statements_before = sqlstats.statements_run()
        per_job: list[float] = []
        with ExitStack() as stack:
            # No Celery and no channel layer: the services are called here, in order.
            stack.enter_context(mock.patch.object(effects, "queue_task"))
            stack.enter_context(mock.patch.object(effects, "queue_task_coalesced"))
            stack.enter_context(mock.patch.object(effects, "send_to_node"))
            cpu_before = meter.sample()
            began = time.perf_counter()
            heard = began
            for index, texts in enumerate(batches):
                job_began = time.perf_counter()
                if job_began - heard > HEARTBEAT_S:  # stand-in for the nodes' heartbeats
                    self.refresh_presence(forget_index=False)
                    heard = job_began
                job, _ = submit.job_submit(
                    user=self.user,
                    subnet_slug=BASELINE_SUBNET,
                    inputs={"texts": texts},
                    idempotency_key=f"{prefix}{index}",
                )
                dispatch.job_dispatch(job_id=job.id)
                # Read back rather than trust the return value: beat's sweeper may have
                # dispatched the job first.
                batch_vectors = np.stack([vectors[text] for text in texts])
                for assignment in Assignment.objects.filter(job=job, state=AssignmentState.DISPATCHED):
                    message = result_message(self.keys[assignment.node_id], job, assignment, batch_vectors)
                    results.result_record(node_id=assignment.node_id, message=message)
                job.refresh_from_db()  # the second result verified and settled it
                if job.state != JobState.SETTLED:
                    raise RuntimeError(f"in-process job {index} ended {job and job.state}")
                per_job.append(time.perf_counter() - job_began)
            elapsed = time.perf_counter() - began
            cpu = meter.cores(cpu_before, meter.sample(), elapsed)
            statements = sqlstats.statements_run() - statements_before
        postgres = pg_per_job(pg_before, pg_counters(), len(batches), own_queries=0)
        postgres["statements_per_job"] = round(statements / max(len(per_job), 1), 1)
        return {
            "jobs": len(batches),
            "settled": len(per_job),
            "seconds": round(elapsed, 3),
            "jobs_per_s": round(len(per_job) / elapsed, 2),
            "job_ms_p50": percentile_ms(per_job, 50),
            "job_ms_p95": percentile_ms(per_job, 95),
            "cpu_cores": {k: cpu[k] for k in ("bench", "postgres", "machine", "other") if k in cpu},
            "cpu_ms_per_job": cpu_ms_per_job(
                {k: cpu[k] for k in ("bench", "postgres") if k in cpu}, elapsed, len(per_job)
            ),
            "postgres": postgres,
        }


# ---------------------------------------------------------------- main


def median_of(rows: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for row in rows:
        for key in path:
            row = row.get(key) if isinstance(row, dict) else None
        if row is not None:
            values.append(row)
    return round(statistics.median(values), 3) if values else None


def final_checks(*, expected_runs: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every job this invocation submitted settled, the ledger balances, and every run ran."""
    books = jobs_and_ledger()
    complete = len(runs) == expected_runs and not any(
        "error" in r["end_to_end"] or "error" in r["submissions"] for r in runs
    )
    return {
        **books,
        "runs_complete": complete,
        "ok": complete and not books["ledger_violations"] and books["jobs_settled"] == books["jobs_total"],
    }


def run_submissions(
    *, url: str, token: str, prefix: str, args: argparse.Namespace, group: ProcessGroup
) -> dict[str, Any]:
    """Submission rates, one job per request and then in batches (bench/submission_rates.py),
    each phase followed by a wait until its jobs are finished: they are real jobs, settled
    like the others and counted by the final checks."""
    import submission_rates

    out: dict[str, Any] = {}
    for phase, count, rate in submission_phases(args):
        phase_prefix = f"{prefix}{phase}-"
        row = submission_rates.measure(
            url,
            token,
            subnet=SUBNET,
            batches=job_texts(count, args.texts_per_job),
            prefix=phase_prefix,
            concurrency=args.submit_concurrency,
            batched=phase == "batch",
            rate=rate,
        )
        waited = time.perf_counter()
        unfinished = wait_finished(phase_prefix, count, timeout=args.timeout, group=group)
        row["drain_s"] = round(time.perf_counter() - waited, 2)
        out[phase] = row
        if not row["all_accepted"] or unfinished:
            out["error"] = f"{phase} submissions: statuses {row['statuses']}, {unfinished} jobs unfinished"
            break
    return out


def submission_phases(args: argparse.Namespace) -> list[tuple[str, int, float | None]]:
    """(phase, jobs, offered rate or None) of each run's submission measurements."""
    phases: list[tuple[str, int, float | None]] = [("single", args.submit_jobs, None)]
    if args.submit_rate:
        phases.append(("single_paced", args.submit_jobs, args.submit_rate))
    return [*phases, ("batch", 2 * args.submit_jobs, None)]


def wait_finished(prefix: str, count: int, *, timeout: float, group: ProcessGroup) -> int:
    """Wait until the `count` jobs of `prefix` (and every other job of theirs that exists
    meanwhile) are settled, failed or expired; how many are not."""
    from registry.models import TERMINAL_STATES, Job

    jobs = Job.objects.filter(idempotency_key__startswith=prefix)
    deadline = time.monotonic() + timeout
    while True:
        done = jobs.filter(state__in=TERMINAL_STATES).count()
        if done >= count and not jobs.exclude(state__in=TERMINAL_STATES).exists():
            return 0
        if time.monotonic() > deadline:
            return max(count - done, jobs.exclude(state__in=TERMINAL_STATES).count())
        group.check_alive()
        time.sleep(0.2)


def backlog_main(args: argparse.Namespace, user: Any, started: float) -> int:
    import dispatch_backlog

    from ledger.checks import ledger_violations

    sizes = [int(size) for size in args.backlog_sizes.split(",")]
    log(f"--backlog: dispatching one job against backlogs of {sizes}, {args.backlog_repeats} times each")
    result = dispatch_backlog.run(sizes, args.backlog_repeats, user)
    violations = ledger_violations()
    report = {
        "benchmark": "dispatch_backlog",
        "unit": "ms to place one job (median)",
        "config": {"sizes": sizes, "repeats": args.backlog_repeats, "load_average": os.getloadavg()},
        **result,
        "ledger_violations": violations[:20],
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))
    return 0 if result["ok"] and not violations else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the children are stopped in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    services = services_reset(
        database=args.database, redis_db=args.redis_db, run_dir=RUN_DIR, artifact_root=ARTIFACT_ROOT
    )
    redis_url = services.redis_url

    contributors = [f"sim-{chr(ord('a') + i)}" if i < 26 else f"sim-{i}" for i in range(args.nodes)]
    from subnets.defaults import embeddings_subnet_settings

    prices = embeddings_subnet_settings()
    job_price = prices["price_per_call_micro"] + prices["price_per_item_micro"] * args.texts_per_job
    jobs_needed = 2 * (args.runs * args.jobs + args.warmup) + args.runs * sum(n for _, n, _ in submission_phases(args))
    credits = 100 + jobs_needed * job_price // 1_000_000
    seeded = seed(contributors, credits=credits)
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.get(username=seeded["user"]["username"])
    if args.backlog:
        return backlog_main(args, user, started)
    baseline = Baseline.create(user=user, nodes=args.nodes)
    batches = job_texts(args.jobs, args.texts_per_job)
    vectors_path = bench_vectors([t for batch in batches for t in batch])
    vectors = load_vectors(vectors_path)
    log(f"seeded in {time.perf_counter() - started:.1f} s; starting daphne, a worker and {args.nodes} simulated nodes")

    group = services.process_group(
        channel_prefix=CHANNEL_PREFIX, BIM_NODE_HEARTBEAT_S=str(HEARTBEAT_S), BIM_SQL_STATS_DIR=str(SQL_STATS_DIR)
    )
    runs: list[dict[str, Any]] = []
    warmup: dict[str, Any] = {}
    try:
        url = group.start_registry(free_port())
        group.start_worker(beat=not args.no_beat, concurrency=args.worker_concurrency)
        for index, name in enumerate(contributors):
            token = seeded["contributors"][name]["token"]
            extra = ["--vectors", str(vectors_path)]
            sim_node_start(group, name, url=url, token=token, subnet=SUBNET, ip_block=index + 1, extra=extra)
        wait_for_nodes(args.nodes, group)
        pids = {name: child.pid for name, child in group.children}
        meter = CpuMeter(
            roots={
                "registry": [pids["registry"]],
                "worker": [pids["worker"]],
                "nodes": [pids[name] for name in contributors],
                **service_pids(redis_url),
            }
        )
        tokens = [seeded["user"]["token"], *extra_users(args.users - 1, credits)]
        if args.warmup:
            log(f"{args.nodes} nodes ready; warming up with {args.warmup} jobs per path")
            warm = job_texts(args.warmup, args.texts_per_job)
            baseline.run(batches=warm, prefix="warmup-inproc-", vectors=vectors, meter=meter)
            warmup = run_end_to_end(
                url=url,
                tokens=tokens,
                batches=warm,
                prefix="warmup-e2e-",
                submitters=args.submitters,
                timeout=args.timeout,
                group=group,
                meter=meter,
                nodes=args.nodes,
                redis_url=redis_url,
            )
            warmup = {k: warmup[k] for k in ("settled", "states", "seconds", "incidents", "error") if k in warmup}
        vacuumed = False
        for run in range(args.runs):
            vacuumed = vacuum_when_autovacuum_is_off()
            in_process = baseline.run(batches=batches, prefix=f"run{run}-inproc-", vectors=vectors, meter=meter)
            end_to_end = run_end_to_end(
                url=url,
                tokens=tokens,
                batches=batches,
                prefix=f"run{run}-e2e-",
                submitters=args.submitters,
                timeout=args.timeout,
                group=group,
                meter=meter,
                nodes=args.nodes,
                redis_url=redis_url,
                rate=args.rate,
            )
            ratio = round(end_to_end["jobs_per_s"] / in_process["jobs_per_s"], 3)
            submissions = (
                {}
                if "error" in end_to_end
                else run_submissions(url=url, token=tokens[0], prefix=f"run{run}-submit-", args=args, group=group)
            )
            runs.append(
                {
                    "run": run,
                    "in_process": in_process,
                    "end_to_end": end_to_end,
                    "ratio": ratio,
                    "submissions": submissions,
                }
            )
            log(
                f"run {run + 1}/{args.runs}: end to end {end_to_end['jobs_per_s']} jobs/s "
                f"(p50 {end_to_end['latency_ms_p50']} ms), in process {in_process['jobs_per_s']} jobs/s, "
                f"ratio {ratio}; incidents {end_to_end['incidents']}"
            )
            for phase, _, _ in submission_phases(args):
                if phase in submissions:
                    row = submissions[phase]
                    log(
                        f"run {run + 1}/{args.runs}: {phase} submissions {row['jobs_per_s']} jobs/s, "
                        f"request p50 {row['request_ms_p50']} ms p99 {row['request_ms_p99']} ms, statuses {row['statuses']}"
                    )
            if "error" in end_to_end or "error" in submissions:
                log(
                    f"run {run + 1} failed ({end_to_end.get('error') or submissions['error']}); skipping the remaining runs"
                )
                break
        # Beat's honeypots issued during the last drain are jobs too: let them finish.
        wait_finished("", 0, timeout=args.timeout, group=group)
    finally:
        group.stop()
        redis_flush(redis_url)
    checks = final_checks(expected_runs=args.runs, runs=runs)
    cpu_labels = runs[0]["end_to_end"]["cpu_cores"].keys() if runs else []
    report = {
        "benchmark": "registry_throughput",
        "unit": "jobs settled per second",
        "config": {
            "runs": args.runs,
            "jobs_per_run": args.jobs,
            "texts_per_job": args.texts_per_job,
            "submitters": args.submitters,
            "users": args.users,
            "nodes": args.nodes,
            "worker_concurrency": args.worker_concurrency,
            "beat": not args.no_beat,
            "warmup_jobs": args.warmup,
            "database": args.database,
            "redis_db": args.redis_db,
            "cpu_count": os.cpu_count(),
            "submit_jobs": args.submit_jobs,
            "submit_concurrency": args.submit_concurrency,
            "submit_rate": args.submit_rate or None,
            "rate": args.rate or None,
            "load_average": os.getloadavg(),
            "vacuumed_before_each_run": vacuumed,
        },
        "median": {
            "end_to_end_jobs_per_s": median_of(runs, "end_to_end", "jobs_per_s"),
            "in_process_jobs_per_s": median_of(runs, "in_process", "jobs_per_s"),
            "ratio": median_of(runs, "ratio"),
            "end_to_end_latency_ms_p50": median_of(runs, "end_to_end", "latency_ms_p50"),
            "end_to_end_latency_ms_p95": median_of(runs, "end_to_end", "latency_ms_p95"),
            "submit_http_ms_p50": median_of(runs, "end_to_end", "submit_http_ms_p50"),
            "submissions": {
                phase: {
                    key: median_of(runs, "submissions", phase, key)
                    for key in ("jobs_per_s", "requests_per_s", "request_ms_p50", "request_ms_p99", "http_5xx")
                }
                for phase, _, _ in submission_phases(args)
            },
            "in_process_job_ms_p50": median_of(runs, "in_process", "job_ms_p50"),
            "end_to_end_cpu_cores": {label: median_of(runs, "end_to_end", "cpu_cores", label) for label in cpu_labels},
            "end_to_end_cpu_ms_per_job": {
                label: median_of(runs, "end_to_end", "cpu_ms_per_job", label)
                for label in cpu_labels
                if label not in ("machine", "other")
            },
            "in_process_cpu_ms_per_job": {
                label: median_of(runs, "in_process", "cpu_ms_per_job", label) for label in ("bench", "postgres")
            },
            "end_to_end_postgres": {
                **{
                    key: median_of(runs, "end_to_end", "postgres", key)
                    for key in (
                        "statements_per_job",
                        "sessions_per_job",
                        "transactions_per_job",
                        "redis_connections_per_job",
                        "celery_tasks_per_job",
                        "active_ms_per_job",
                    )
                },
                "backends": {
                    key: median_of(runs, "end_to_end", "postgres", "backends", key)
                    for key in ("running", "waiting_for_lock", "idle_in_transaction")
                },
            },
            "in_process_postgres": {
                key: median_of(runs, "in_process", "postgres", key)
                for key in ("statements_per_job", "sessions_per_job", "transactions_per_job", "active_ms_per_job")
            },
        },
        "incidents_total": {
            name: sum(r["end_to_end"]["incidents"][name] for r in runs)
            for name in (runs[0]["end_to_end"]["incidents"] if runs else {})
        },
        "lock_waits_total": dict(
            sum(
                (collections.Counter(r["end_to_end"]["postgres"]["backends"]["waiting_statements"]) for r in runs),
                collections.Counter(),
            ).most_common(6)
        ),
        "warmup": warmup,
        "runs": runs,
    }
    return report_print(report, checks=checks, started=started)


if __name__ == "__main__":
    sys.exit(main())
