"""Hostile strangers against the real market: what each strategy costs honest users and
earns its node (issue 11, "Must show 2").

Real processes on PostgreSQL + Redis, started as `bim_site.processes.ProcessGroup` starts
them: daphne (the registry), one Celery worker with beat, H honest simulated nodes
(`bench/sim_node.py`) and, per strategy, one hostile node (`bench/hostile_node.py`; two
of different owners for `collude`). Every node answers with vectors of the subnet's real
model that the registry itself stored at seed time (benchmark suites and honeypots), so no
model runs and honest answers agree bit for bit; every node takes the same
`--compute-delay-s` per call, so all have the same real speed. A user submits a stream of
jobs through `bim_sdk.Client` (one every `--interval` s), first with honest nodes only
(the baseline), then once per strategy with the hostile node(s) in the market.

Per strategy the JSON reports: the honest user's settle latency against the baseline's
(jobs delayed, seconds of delay, the largest), the credits the hostile node(s) earned
(`ledger.selectors.balance_totals`) and how many of its paid results were wrong, its
strikes and ban, and the offers it received against an honest node's. Targets:

  * delay: no job delayed past one assignment deadline (the longest window the registry
    gave the hostile node, enforced by the sweeper, which runs every SWEEP_S) and no job
    lost (failed or expired);
  * credits: nothing paid for a result outside the subnet's tolerance of the true vectors
    (credits from within-tolerance agreement, i.e. honest work, are allowed);
  * offers: at most 1.2x an honest node's; only where an honest node got fewer than
    SMALL_SAMPLE_OFFERS (the quick run) may the excess be within two standard deviations
    of sampling noise instead.

The database (`bim_adversary`) is dropped and recreated and the Redis db (`--redis-db`)
flushed on each invocation; logs are in var/bench/adversary/run/logs. Exits 1 when a
target is missed, 2 on a crash. Run it as

    bash scripts/with_services.sh .venv/bin/python bench/adversary.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# bench/ is on sys.path when this runs as a script, and bench/websockets.py would then be
# imported for the websockets library (the node client uses it): off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.hostile_node import STRATEGIES  # noqa: E402
from bench.market import database_recreate, django_setup, redis_flush, with_path  # noqa: E402
from bench.throughput import seed  # noqa: E402
from bim_site.processes import ProcessGroup, child_env, free_port  # noqa: E402

SUBNET = "minilm-embed"
STATE = ROOT / "var" / "bench" / "adversary"
RUN_DIR = STATE / "run"  # BIM_VAR_DIR of this invocation: logs, keys, vectors, celerybeat schedule
ARTIFACT_ROOT = STATE / "artifacts"
HEARTBEAT_S = 2  # so the flood starts (after one interval) within seconds
SWEEP_S = 5.0  # CELERY_BEAT_SCHEDULE["registry-sweep"]: when a passed deadline is acted on
DELAY_SLACK_S = 1.0  # latency over the baseline's p95 by more than this counts as delayed
OFFER_RATIO_MAX = 1.2
SMALL_SAMPLE_OFFERS = 5  # below this many honest offers a ratio is mostly noise
QUICK_STRATEGIES = ("refused", "silence", "wrong_shape")
HOSTILE_NODES = {"collude": 2}  # strategies that need more than one hostile node


def log(message: str) -> None:
    print(f"adversary: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_STRATEGIES)} with 4 jobs each")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated (all)")
    parser.add_argument("--jobs", type=int, default=24, help="jobs per phase (24)")
    parser.add_argument("--warmup", type=int, default=6, help="unmeasured jobs before the baseline (6)")
    parser.add_argument("--texts-per-job", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between submissions (0.5)")
    parser.add_argument("--honest", type=int, default=3, help="honest nodes (3: a tie-breaker needs a third)")
    parser.add_argument("--compute-delay-s", type=float, default=0.05, help="every node's time per call (0.05)")
    parser.add_argument("--assignment-min-s", type=int, default=10, help="BIM_NODE_ASSIGNMENT_MIN_S (10, the default)")
    parser.add_argument("--database", default="bim_adversary")
    parser.add_argument("--redis-db", type=int, default=7)
    parser.add_argument("--phase-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.strategies, args.jobs, args.warmup = ",".join(QUICK_STRATEGIES), 4, 3
    args.strategies = [s for s in args.strategies.split(",") if s]
    unknown = set(args.strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; choose from {', '.join(STRATEGIES)}")
    return args


def load() -> dict[str, Any]:
    one, five, fifteen = os.getloadavg()
    return {
        "loadavg_1m": round(one, 2),
        "loadavg_5m": round(five, 2),
        "loadavg_15m": round(fifteen, 2),
        "cpu_count": os.cpu_count(),
    }


def stored_vectors(path: Path) -> dict[str, np.ndarray]:
    """The subnet model's own vectors the registry stored at seed time (benchmark suites
    and honeypots), written as sim_node's `--vectors` file: the nodes can answer every
    benchmark and honeypot, and the user's jobs are drawn from the same texts."""
    from bim_core import families
    from registry.models import Honeypot
    from subnets.models import BenchmarkReference, Subnet

    subnet = Subnet.objects.get(slug=SUBNET)
    family = families.family_for(subnet.task_type)
    reference = BenchmarkReference.objects.get(subnet=subnet)
    table: dict[str, np.ndarray] = {}
    for suite in [reference, *reference.pool.all(), *Honeypot.objects.filter(subnet=subnet)]:
        vectors = family.decode_result(bytes(suite.result), tuple(suite.shape), suite.inputs)
        table.update(zip(suite.inputs["texts"], np.asarray(vectors, dtype=np.float32)))
    np.savez(path, texts=np.array(list(table)), vectors=np.stack(list(table.values())))
    return table


@dataclass
class Market:
    group: ProcessGroup
    url: str
    tokens: dict[str, str]  # contributor -> API token
    vectors_path: Path
    compute_delay_s: float
    ips_used: int = 0

    def start_node(self, name: str, *, strategy: str | None = None) -> None:
        """An honest sim_node, or a hostile_node with `strategy`; each from its own /24
        (the routing policy keeps a job's nodes in distinct blocks)."""
        self.ips_used += 1
        script, extra = ("sim_node.py", []) if strategy is None else ("hostile_node.py", ["--strategy", strategy])
        self.group.start(
            name,
            [
                sys.executable, str(ROOT / "bench" / script),
                "--registry", self.url,
                "--token", self.tokens[name],
                "--subnet", SUBNET,
                "--name", name,
                "--key-file", str(RUN_DIR / "nodes" / f"{name}.key"),
                "--vectors", str(self.vectors_path),
                "--compute-delay-s", str(self.compute_delay_s),
                "--source-ip", f"127.0.{self.ips_used}.1",
                *extra,
            ],
        )  # fmt: skip


def node_ids(names: list[str]) -> list[Any]:
    from registry.models import Node

    return list(Node.objects.filter(name__in=names).values_list("id", flat=True))


def wait_routable(names: list[str], group: ProcessGroup, timeout: float) -> bool:
    """Until every named node is ready and scored by a passed benchmark (False on timeout)."""
    from registry.models import NodeSubnet

    deadline = time.monotonic() + timeout
    while True:
        routable = NodeSubnet.objects.filter(
            node__name__in=names, subnet__slug=SUBNET, ready_at__isnull=False, score__gt=0, node__is_online=True
        )
        if routable.count() >= len(names):
            return True
        group.check_alive()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def restore_honest(honest: list[str], group: ProcessGroup) -> None:
    """Lift what a phase did to the honest nodes (strikes, a ban: reported in that phase's
    `honest_strikes`), as an operator would, so each strategy meets the same market."""
    from django.contrib.auth import get_user_model

    from bim_core.errors import ServiceError
    from registry.sanctions import node_strikes_clear, node_unban

    operator = get_user_model().objects.filter(is_superuser=True).first()
    reason = "benchmark: restore the honest nodes between phases"
    for node_id in node_ids(honest):
        try:
            node_unban(node_id=node_id, operator=operator, reason=reason)  # lifts its strikes too
        except ServiceError:  # not banned: only its strikes, if any
            try:
                node_strikes_clear(node_id=node_id, operator=operator, reason=reason)
            except ServiceError:
                pass  # nothing to lift
    if not wait_routable(honest, group, timeout=60):
        raise RuntimeError("the honest nodes are not routable again after a phase")


def job_batches(texts: list[str], count: int, per_job: int, offset: int) -> list[list[str]]:
    return [[texts[(offset + i * per_job + j) % len(texts)] for j in range(per_job)] for i in range(count)]


def run_jobs(client: Any, batches: list[list[str]], *, label: str, interval: float, timeout: float) -> list[Any]:
    """Submit the stream (one job every `interval`) and wait until every job has ended."""
    from registry.models import TERMINAL_STATES, Job

    ids = []
    for index, texts in enumerate(batches):
        ids.append(client.submit_embeddings(SUBNET, texts, idempotency_key=f"{label}-{index}")["id"])
        time.sleep(interval)
    deadline = time.monotonic() + timeout
    while Job.objects.filter(pk__in=ids).exclude(state__in=TERMINAL_STATES).exists():
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return ids


def latencies(ids: list[Any]) -> tuple[list[float], dict[str, int]]:
    """Settle latency (created -> finished) of settled jobs, and every job's state."""
    from registry.models import Job, JobState

    rows = list(Job.objects.filter(pk__in=ids).values_list("state", "created_at", "finished_at"))
    states: dict[str, int] = {}
    for state, *_ in rows:
        states[state] = states.get(state, 0) + 1
    settled = [(f - c).total_seconds() for s, c, f in rows if s == JobState.SETTLED and f is not None]
    return settled, states


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def result_is_true(assignment: Any, truth: dict[str, np.ndarray], tolerances: dict[str, Any]) -> bool:
    """Whether an assignment's result is within the subnet's tolerance of the true vectors."""
    from bim_core import families
    from bim_core.verification import verify_pair

    texts = assignment.job.inputs["texts"]
    family = families.family_for("embedding")
    try:
        sent = family.decode_result(bytes(assignment.result), tuple(assignment.result_shape), assignment.job.inputs)
    except Exception:
        return False
    expected = np.stack([truth[text] for text in texts])
    return sent.shape == expected.shape and verify_pair("embedding", sent, expected, tolerances).passed


def phase_figures(
    *, hostile: list[str], honest: list[str], since: datetime, ids: list[Any], baseline: dict[str, Any] | None,
    truth: dict[str, np.ndarray], assignment_min_s: int,
) -> dict[str, Any]:  # fmt: skip
    from django.db.models import Count
    from django.utils import timezone

    from ledger.selectors import balance_totals
    from registry.models import Assignment, AssignmentState, Job, JobState, Node, Strike
    from subnets.models import Subnet

    settled, states = latencies(ids)
    offers = dict(
        Assignment.objects.filter(dispatched_at__gte=since, node__name__in=hostile + honest)
        .values_list("node__name")
        .annotate(n=Count("id"))
        .values_list("node__name", "n")
    )
    figures: dict[str, Any] = {
        "jobs": len(ids),
        "states": states,
        "latency_s": {"p50": percentile(settled, 50), "p95": percentile(settled, 95), "max": percentile(settled, 100)},
        "honest_offers": {name: offers.get(name, 0) for name in honest},
        "honest_strikes": Strike.objects.filter(node__name__in=honest, created_at__gte=since).count(),
        "load": load(),
    }
    if baseline is None:
        return figures
    base_p50, base_p95 = baseline["latency_s"]["p50"], baseline["latency_s"]["p95"]
    excess = [latency - base_p50 for latency in settled]
    delayed = [latency for latency in settled if latency - base_p95 > DELAY_SLACK_S]
    hostile_ids = node_ids(hostile)
    mine = Assignment.objects.filter(node_id__in=hostile_ids, dispatched_at__gte=since).select_related("job")
    windows = [(a.deadline - a.dispatched_at).total_seconds() for a in mine if a.deadline is not None]
    deadline_s = max(windows, default=float(assignment_min_s))
    tolerances = Subnet.objects.get(slug=SUBNET).tolerances
    paid = list(mine.filter(state=AssignmentState.AGREED))
    paid_wrong = sum(not result_is_true(a, truth, tolerances) for a in paid)
    wrong_delivered = sum(
        1
        for job in Job.objects.filter(pk__in=ids, state=JobState.SETTLED)
        if any(
            not result_is_true(a, truth, tolerances)
            for a in job.assignments.filter(state=AssignmentState.AGREED).select_related("job")
        )
    )
    balances = balance_totals(node_ids=hostile_ids)
    honest_mean = statistics.mean(figures["honest_offers"].values()) if honest else 0.0
    hostile_offers = {name: offers.get(name, 0) for name in hostile}
    hostile_mean = statistics.mean(hostile_offers.values())
    ratio = round(hostile_mean / honest_mean, 3) if honest_mean else None
    within_ratio = ratio is not None and ratio <= OFFER_RATIO_MAX
    noise_ok = honest_mean < SMALL_SAMPLE_OFFERS and (
        hostile_mean - OFFER_RATIO_MAX * honest_mean <= 2 * math.sqrt(max(honest_mean, 1.0))
    )
    lost = sum(n for state, n in states.items() if state != JobState.SETTLED)
    now = timezone.now()
    figures.update(
        {
            "jobs_delayed": len(delayed),
            "delay_s_total": round(sum(latency - base_p50 for latency in delayed), 2),
            "delay_s_max": round(max(excess, default=0.0), 2),
            "jobs_lost": lost,
            "assignment_deadline_s": round(deadline_s, 2),
            "credits_earned": round((balances["earnings_micro"] + balances["escrow_micro"]) / 1e6, 6),
            "paid_results": len(paid),
            "paid_wrong_results": paid_wrong,
            "wrong_answers_delivered": wrong_delivered,
            "strikes": Strike.objects.filter(node_id__in=hostile_ids).count(),
            "banned": Node.objects.filter(pk__in=hostile_ids, banned_until__gt=now).count(),
            "offers": hostile_offers,
            "honest_offers_mean": round(honest_mean, 2),
            "offer_ratio": ratio,
        }
    )
    delay_target = deadline_s + SWEEP_S
    figures["targets"] = {
        "delay_s_max": f"<= {delay_target:.1f} (deadline {deadline_s:.1f} + sweep {SWEEP_S:.0f}); no job lost",
        "paid_wrong_results": "0 (credits only from within-tolerance agreement)",
        "offer_ratio": f"<= {OFFER_RATIO_MAX} (under {SMALL_SAMPLE_OFFERS} honest offers: or within 2 sd of noise)",
    }
    figures["pass"] = {
        "delay": figures["delay_s_max"] <= delay_target and lost == 0,
        "credits": paid_wrong == 0 and wrong_delivered == 0,
        "offers": within_ratio or noise_ok,
    }
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: children stopped in `finally`
    started = time.perf_counter()
    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bim")
    database_url = with_path(base_db, f"/{args.database}")
    redis_url = with_path(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), f"/{args.redis_db}")
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    database_recreate(database_url)
    redis_flush(redis_url)
    # This process reads the bench database directly (ORM queries for the figures).
    django_setup(database_url, run_dir=RUN_DIR, artifact_root=ARTIFACT_ROOT)

    honest = [f"honest-{i + 1}" for i in range(args.honest)]
    hostile_of = {
        strategy: [f"x-{strategy}-{k + 1}" for k in range(HOSTILE_NODES.get(strategy, 1))]
        for strategy in args.strategies
    }
    seeded = seed(honest + [name for names in hostile_of.values() for name in names], credits=1000)
    truth = stored_vectors(RUN_DIR / "vectors.npz")
    texts = sorted(truth)
    log(
        f"seeded in {time.perf_counter() - started:.1f} s ({len(texts)} texts with stored vectors); starting the market"
    )

    from django.utils import timezone

    from bim_sdk import Client

    env = child_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        BIM_CHANNEL_PREFIX="bimadv",
        BIM_INDEX_KEY_PREFIX="bimadv:index",
        BIM_VAR_DIR=str(RUN_DIR),
        BIM_ARTIFACT_ROOT=str(ARTIFACT_ROOT),
        BIM_NODE_HEARTBEAT_S=str(HEARTBEAT_S),
        BIM_NODE_ASSIGNMENT_MIN_S=str(args.assignment_min_s),
        DJANGO_SETTINGS_MODULE="bim_site.settings",
    )
    group = ProcessGroup(log_dir=RUN_DIR / "logs", env=env)
    phases: dict[str, Any] = {}
    load_before = load()
    try:
        url = group.start_registry(free_port())
        group.start_worker(beat=True)
        tokens = {name: info["token"] for name, info in seeded["contributors"].items()}
        market = Market(group, url, tokens, RUN_DIR / "vectors.npz", args.compute_delay_s)
        for name in honest:
            market.start_node(name)
        if not wait_routable(honest, group, timeout=90):
            raise RuntimeError("the honest nodes did not become routable within 90 s")
        client = Client(url, seeded["user"]["token"], timeout=30)
        offset = 0

        def phase(label: str, hostile: list[str], baseline: dict[str, Any] | None) -> dict[str, Any]:
            nonlocal offset
            since = timezone.now()
            batches = job_batches(texts, args.jobs, args.texts_per_job, offset)
            offset += args.jobs * args.texts_per_job
            ids = run_jobs(client, batches, label=label, interval=args.interval, timeout=args.phase_timeout)
            return phase_figures(
                hostile=hostile, honest=honest, since=since, ids=ids, baseline=baseline, truth=truth,
                assignment_min_s=args.assignment_min_s,
            )  # fmt: skip

        # Unmeasured: the first jobs after start pay for cold caches, connections and imports.
        log(f"{len(honest)} honest nodes routable; warming up with {args.warmup} jobs")
        run_jobs(
            client,
            job_batches(texts, args.warmup, args.texts_per_job, 0),
            label="warmup",
            interval=args.interval,
            timeout=args.phase_timeout,
        )
        log(f"baseline: {args.jobs} jobs")
        baseline = phase("baseline", [], None)
        log(f"baseline latency {baseline['latency_s']}")
        for strategy in args.strategies:
            names = hostile_of[strategy]
            for name in names:
                market.start_node(name, strategy=strategy)
            routable = wait_routable(names, group, timeout=30)
            log(f"{strategy}: {names} routable={routable}; {args.jobs} jobs")
            figures = {"hostile_nodes": names, "routable": routable, **phase(strategy, names, baseline)}
            for name in names:
                group.kill(name)
            phases[strategy] = figures
            restore_honest(honest, group)
            log(f"{strategy}: pass {figures['pass']} delay max {figures['delay_s_max']} s, offers {figures['offers']}")
    finally:
        group.stop()
        redis_flush(redis_url)
    failed = sorted(s for s, f in phases.items() if not all(f["pass"].values()))
    report = {
        "benchmark": "adversary",
        "config": {
            "quick": args.quick,
            "strategies": args.strategies,
            "jobs_per_phase": args.jobs,
            "texts_per_job": args.texts_per_job,
            "interval_s": args.interval,
            "honest_nodes": args.honest,
            "compute_delay_s": args.compute_delay_s,
            "assignment_min_s": args.assignment_min_s,
            "heartbeat_s": HEARTBEAT_S,
            "vectors": "stored by the registry at seed (real MiniLM outputs); no model runs",
            "database": args.database,
            "redis_db": args.redis_db,
        },
        "load_before": load_before,
        "load_after": load(),
        "baseline": baseline,
        "strategies": phases,
        "failed_targets": failed,
        "ok": not failed and len(phases) == len(args.strategies),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException:  # a crash, not a missed target
        traceback.print_exc()
        sys.exit(2)
