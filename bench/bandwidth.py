"""Bytes through the registry per job, relay against peer to peer (hypothesis H3 of the design
paper: CDN-first weights and P2P data keep bandwidth costs sub-linear in jobs).

Every client of the registry (the simulated nodes' HTTP and websockets, the user's HTTP and
user socket) goes through a counting TCP proxy on loopback (`bench/counting_proxy.py`) in
front of daphne, one listening port per party, so each phase's bytes (one job, or a batch of
jobs) are read off the counters between phases: TCP payload both ways, HTTP and websocket
framing included.

- **Relay** (today's path, the baseline): the input in the `POST /api/v1/jobs/` body, the
  job offered to both nodes with it, their results back over their sockets, the result in
  the job detail (`GET`, read once the job settled; the bench reads the job's state from the
  database meanwhile instead of polling, so no poll is counted on either path).
- **P2P** (docs/p2p.md; the SDK's exchange, `bim_sdk.p2p`, plays the user): submit by input hash and
  summary, the user socket's signalling (watch, the offer and answer per node), the nodes'
  signed commits, the user's delivery confirmations, the job state pushed to the user and the
  job detail read once; input and results go over WebRTC data channels on loopback UDP,
  never through the proxy.

Payloads scale on an image bench subnet (`bench-image-2x`, created in the bench's own
database: the image family with max_side 256 and room for its base64) served by two
simulated nodes (`bench/sim_node.py --upscale`: the real node client, a nearest-neighbour
2x upscale as the model). A job's input is a noise PNG of s x s pixels (base64, about 4 s^2
bytes) and its result 2s x 2s x 3 raw bytes (12 s^2): payload = input + output, 0.3 KiB at
s = 4 (the PNG's own bytes weigh there), 1.1 KiB at s = 8, 1 MiB at s = 256. The nodes
download the subnet's model (the real waifu2x file, 3 chunks) through the proxy as a real
node does: that, registration and the node's first benchmark are the per-node setup column,
paid once per node, not per job. An embedding job (4 texts, two more simulated nodes with
precomputed vectors) is measured the same way.

Measured: registry bytes per job against payload size (the median of --jobs-per-size jobs,
one at a time, per size and path); total registry bytes against the number of jobs at one
size (--counts, --concurrency at a time); the bytes of an idle window (heartbeats and
keepalives: per node and second, not per job). Target: on the P2P path registry bytes per
job stay within 10 % while payloads grow 1,000x or more (`p2p_constant_within_10pct`, over
all sizes: 2,900x by default). Every job must settle and the ledger balance. stdout gets one
JSON object, stderr the progress; the plot of bytes per job against payload (log-log, both
paths) goes to --plot (docs/bandwidth.png) when matplotlib is installed (`--plot-from REPORT`
draws it later from a saved report). The database (`bim_bench_bandwidth`) is dropped and
recreated and the Redis db (--redis-db) flushed on each invocation; logs are in
var/bench/bandwidth/run/logs/.

    bash scripts/with_services.sh .venv/bin/python bench/bandwidth.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ is on sys.path and bench/websockets.py would shadow the websockets
# library that the SDK and the node client use: off the path, bench as a package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench import counting_proxy, market, sim_node  # noqa: E402
from bim_core import families, protocol  # noqa: E402
from bim_core.png import png_encode  # noqa: E402
from bim_site.processes import ProcessGroup, free_port  # noqa: E402

SUBNET = "bench-image-2x"
MAX_SIDE = 256
SIDES = (4, 8, 16, 32, 64, 128, 256)  # payload about 16 s^2 bytes: 0.3 KiB ... 1 MiB, x4 a step
STATE = ROOT / "var" / "bench" / "bandwidth"
RUN_DIR = STATE / "run"
ARTIFACT_ROOT = STATE / "artifacts"  # the registry's chunk store (content-addressed, kept)
CHANNEL_PREFIX = "bimbw"
# A 256 x 256 job's relay result is 1 MiB of base64: over daphne's default 1 MiB - 1 KiB
# websocket message. The bench subnet allows it, so the registry here takes 4 MiB.
MAX_MESSAGE_BYTES = 4 * 2**20
PARTIES = ("node", "user_http", "user_ws")
EMBEDDING_TEXTS_PER_JOB = 4
JOB_TIMEOUT_S = 90.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", default=",".join(map(str, SIDES)), help="image sides in px (4,8,...,256)")
    parser.add_argument("--jobs-per-size", type=int, default=5, help="jobs per size and path, one at a time (5)")
    parser.add_argument("--counts", default="1,10,100", help="job counts of the totals phase (1,10,100)")
    parser.add_argument("--count-side", type=int, default=64, help="image side of the totals phase (64: 64 KiB)")
    parser.add_argument("--concurrency", type=int, default=4, help="jobs at once in the totals phase (4)")
    parser.add_argument("--idle-s", type=float, default=20.0, help="idle window measured for the background (20)")
    parser.add_argument("--embedding-jobs", type=int, default=5, help="embedding jobs per path, 0: none (5)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "bandwidth.png", help="(docs/bandwidth.png)")
    parser.add_argument(
        "--plot-from", type=Path, metavar="REPORT", help="only draw --plot from a report this script printed before"
    )
    parser.add_argument("--database", default="bim_bench_bandwidth", help="dropped and recreated")
    parser.add_argument("--redis-db", type=int, default=14, help="Redis db owned and flushed by the bench (14)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: sides 8 and 128, 2 jobs each, counts 1 and 3, no plot"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sides, args.jobs_per_size, args.counts, args.idle_s, args.embedding_jobs = "8,128", 2, "1,3", 0.0, 1
        args.plot = None
    args.sides = [int(s) for s in args.sides.split(",")]
    args.counts = [int(c) for c in args.counts.split(",")]
    if not all(families.IMAGE_MIN_SIDE <= s <= MAX_SIDE for s in [*args.sides, args.count_side]):
        parser.error(f"image sides are {families.IMAGE_MIN_SIDE} to {MAX_SIDE} px")
    if min(args.jobs_per_size, args.concurrency, *args.counts) < 1:
        parser.error("--jobs-per-size, --concurrency and --counts must be >= 1")
    return args


# ---------------------------------------------------------------- setup


def noise_inputs(side: int, seed: int) -> dict[str, str]:
    """An s x s noise PNG, as an image job's user sends it: incompressible, so its size is
    its pixels' (3 s^2 bytes, 4 s^2 of base64)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return {"image": protocol.b64encode(png_encode(pixels))}


def bench_subnet_create() -> None:
    """The image family with room for a 256 x 256 job, the real waifu2x file as its model
    (what nodes download), and a benchmark reference computed with the simulated nodes'
    upscale. No honeypots (their answers would be the real model's); no rate limit that a
    bench's few hundred jobs a minute would meet."""
    from registry.lifecycle import subnet_state_set
    from subnets import defaults, services
    from subnets.models import License, Subnet

    license_, _ = License.objects.get_or_create(
        slug=defaults.WAIFU2X_LICENSE["slug"], version=defaults.WAIFU2X_LICENSE["version"], defaults=defaults.WAIFU2X_LICENSE
    )
    settings = defaults.image_subnet_settings()
    settings.update(
        name="bench: 2x nearest-neighbour upscale (bench/bandwidth.py)",
        preprocessing={**settings["preprocessing"], "max_side": MAX_SIDE},
        # base64 of a noise PNG of MAX_SIDE a side, and its header bytes.
        max_chars_per_item=4 * MAX_SIDE * MAX_SIDE + 4096,
        honeypot_rate_bp=0,
        content_policy={**defaults.IMAGE_POLICY, "id": "bench-image", "rate_limit": {"jobs_per_minute": 100_000}},
        license=license_,
    )
    subnet = services.subnet_package(slug=SUBNET, model=defaults.IMAGE_MODEL, tokenizer=None, defaults=settings)
    with mock.patch.object(services, "trusted_run", lambda _subnet, inputs: sim_node.upscale_2x(inputs)):
        services.benchmark_reference_compute(
            subnet=subnet, inputs=noise_inputs(64, seed=1), pool=[noise_inputs(64, seed=2 + i) for i in range(3)]
        )
    subnet_state_set(subnet_id=subnet.pk, to=Subnet.State.ACTIVE, operator=None, reason="bench/bandwidth.py")


def seed(contributors: list[str], *, embedding: bool) -> dict[str, Any]:
    """The bench subnet (and minilm-embed, from bim_seed, for the embedding jobs), one paying
    user and the contributors' tokens (their nodes accept the license themselves)."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    from registry.keys import registry_private_key
    from subnets.models import Subnet

    call_command("migrate", "--noinput", verbosity=0)
    if embedding:
        call_command("bim_seed", stdout=open(os.devnull, "w"))  # noqa: SIM115 - closed with the process
        Subnet.objects.filter(slug=market.EMBEDDING_SUBNET).update(honeypot_rate_bp=0)
    bench_subnet_create()
    registry_private_key()  # made before any child starts (bench/throughput.py's seed says why)
    user_token = market.extra_users(1, credits=100_000)[0]
    tokens = {name: Token.objects.create(user=get_user_model().objects.create(username=name)).key for name in contributors}
    return {"user": user_token, "contributors": tokens}


def model_bytes() -> int:
    from subnets.models import Artifact

    return sum(Artifact.objects.filter(subnet__slug=SUBNET).values_list("size", flat=True))


# ---------------------------------------------------------------- one job


@dataclass
class JobRun:
    job_id: str
    state: str
    seconds: float


def job_state_wait(job_id: str, timeout_s: float) -> str:
    """The bench's view of the job (the database), standing in for a poll: the relay path is
    charged one GET of the finished job, as the P2P path is."""
    from django.db import close_old_connections

    from registry.models import TERMINAL_STATES, Job

    deadline = time.monotonic() + timeout_s
    try:
        while True:
            state = Job.objects.filter(pk=job_id).values_list("state", flat=True).first()
            if state in TERMINAL_STATES or time.monotonic() > deadline:
                return str(state)
            time.sleep(0.01)
    finally:
        close_old_connections()


class BenchUser:
    """The user's side of the bench: HTTP clients through the proxy's user port, the user
    socket's URL through its own."""

    def __init__(self, *, http_url: str, ws_url: str, token: str, clients: int) -> None:
        from bim_core.http import HttpClient
        from bim_sdk import Client

        self.ws_url = ws_url
        # One per concurrent job (Phases.measure runs at most `clients` at once): a
        # requests.Session is not for several threads at once.
        self.clients = [HttpClient(http_url, token, timeout=30.0, retries=0) for _ in range(clients)]
        self.sdk_clients = [Client(http_url, token, timeout=30.0, retries=0) for _ in range(clients)]
        self.keys = 0

    def key(self, label: str) -> str:
        self.keys += 1
        return f"bw-{label}-{self.keys}"

    async def relay(self, subnet: str, inputs: dict[str, Any], label: str) -> JobRun:
        started = time.monotonic()
        http = self.clients.pop()
        try:
            body = {"subnet": subnet, "inputs": inputs, "idempotency_key": self.key(label)}
            job = (await asyncio.to_thread(http.request, "POST", "/api/v1/jobs/", json=body)).json()
            await asyncio.to_thread(job_state_wait, job["id"], JOB_TIMEOUT_S)
            detail = (await asyncio.to_thread(http.request, "GET", f"/api/v1/jobs/{job['id']}/")).json()
        finally:
            self.clients.append(http)
        if detail["state"] == "settled" and not detail.get("result"):
            raise RuntimeError(f"relay job {job['id']} settled without a result in its detail")
        return JobRun(job["id"], detail["state"], time.monotonic() - started)

    async def p2p(self, subnet: str, task_type: str, inputs: dict[str, Any], label: str) -> JobRun:
        """The SDK's own exchange (bim_sdk.p2p), its user socket through the proxy's port of
        its own, without the relay fallback: a channel that does not open fails the run (a
        benchmark of the peer path must not measure the relay unseen)."""
        from bim_sdk import p2p

        client = self.sdk_clients.pop()
        try:
            job = await asyncio.to_thread(client.submit, subnet, inputs, idempotency_key=self.key(label), transport="p2p")
            outcome = await asyncio.to_thread(
                p2p.exchange, client._request, ws_url=self.ws_url, job=job, inputs=inputs, timeout=JOB_TIMEOUT_S,
                relay_fallback=False,
            )
        finally:
            self.sdk_clients.append(client)
        if outcome.job["state"] == "settled" and not all(r.checked for r in outcome.received):
            raise RuntimeError(f"p2p job {job['id']}: a result over a channel did not check out")
        return JobRun(outcome.job["id"], outcome.job["state"], outcome.seconds)

    async def run(self, path: str, subnet: str, task_type: str, inputs: dict[str, Any], label: str) -> JobRun:
        if path == "relay":
            return await self.relay(subnet, inputs, label)
        return await self.p2p(subnet, task_type, inputs, label)


def payload_bytes(task_type: str, inputs: dict[str, Any]) -> tuple[int, int]:
    """(input, output) bytes of a job: the input as it goes over a data channel (canonical
    JSON), the result as the nodes sign it (the family's encoding)."""
    sent = len(protocol.canonical_json(inputs))
    if task_type == "image":
        summary = families.family_for("image").input_summary(inputs)
        return sent, 12 * summary["height"] * summary["width"]
    return sent, len(inputs["texts"]) * 384 * 4


# ---------------------------------------------------------------- phases


class Phases:
    """Runs jobs and reads what they cost off the proxy's counters."""

    def __init__(self, proxy: counting_proxy.CountingProxy, user: BenchUser, group: ProcessGroup) -> None:
        self.proxy = proxy
        self.user = user
        self.group = group
        self.job_ids: list[str] = []
        self.unsettled: list[str] = []

    def measure(self, jobs: list[Callable[[], Any]], concurrency: int) -> tuple[dict[str, Any], list[JobRun]]:
        """Run `jobs` (coroutine factories), `concurrency` at a time; what passed the proxy
        from the first one's start until the traffic they caused stopped."""
        self.group.check_alive()
        before = self.proxy.snapshot()
        started = time.monotonic()

        async def all_jobs() -> list[JobRun]:
            gate = asyncio.Semaphore(concurrency)

            async def one(job: Callable[[], Any]) -> JobRun:
                async with gate:
                    return await job()

            return await asyncio.gather(*(one(job) for job in jobs))

        runs = asyncio.run(all_jobs())
        seconds = time.monotonic() - started
        if not self.proxy.settle():
            market.log("traffic did not stop within 5 s of a phase's end; counting what passed until then")
        spent = self.proxy.since(before)
        for run in runs:
            self.job_ids.append(run.job_id)
            if run.state != "settled":
                self.unsettled.append(f"{run.job_id}: {run.state}")
        by_party = {party: spent.get(party, {"up": 0, "down": 0}) for party in PARTIES}
        return {
            "bytes": counting_proxy.total(spent, PARTIES),
            "by_party": {p: row["up"] + row["down"] for p, row in by_party.items()},
            "up": sum(row["up"] for row in by_party.values()),
            "down": sum(row["down"] for row in by_party.values()),
            "seconds": round(seconds, 3),
        }, runs


def uploads_of(job_ids: list[str]) -> int:
    """Payloads of P2P jobs that nodes uploaded to the registry (docs/p2p.md §4: an audit,
    or a result the user did not confirm): a P2P assignment holds its result only then."""
    from registry.models import Assignment, JobTransport

    return Assignment.objects.filter(job_id__in=job_ids, job__transport=JobTransport.P2P, result__isnull=False).count()


def relay_bytes_recorded(job_ids: list[str]) -> int:
    """What the registry itself counts as relayed for these jobs (`Job.relay_bytes`)."""
    from django.db.models import Sum

    from registry.models import Job

    return int(Job.objects.filter(pk__in=job_ids).aggregate(s=Sum("relay_bytes"))["s"] or 0)


def per_job_row(phases: Phases, *, path: str, subnet: str, task_type: str, inputs: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """`len(inputs)` jobs one at a time, each its own phase: the median and spread of their
    bytes, by party too."""
    measured = []
    ids: list[str] = []
    for item in inputs:
        phase, (run,) = phases.measure(
            [lambda item=item: phases.user.run(path, subnet, task_type, item, label)], concurrency=1
        )
        measured.append(phase)
        ids.append(run.job_id)
    totals = [m["bytes"] for m in measured]
    return {
        "jobs": len(measured),
        "registry_bytes_per_job": int(statistics.median(totals)),
        "min": min(totals),
        "max": max(totals),
        "by_party": {p: int(statistics.median(m["by_party"][p] for m in measured)) for p in PARTIES},
        "seconds_per_job": round(statistics.median(m["seconds"] for m in measured), 3),
        "uploads": uploads_of(ids),
        "relay_bytes_recorded": relay_bytes_recorded(ids),
    }


def sizes_phase(phases: Phases, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for side in args.sides:
        inputs = [noise_inputs(side, seed=side * 1000 + i) for i in range(2 * args.jobs_per_size)]
        sent, output = payload_bytes("image", inputs[0])
        row: dict[str, Any] = {"side": side, "input_bytes": sent, "output_bytes": output, "payload_bytes": sent + output}
        for index, path in enumerate(("relay", "p2p")):
            # Distinct inputs per path: the same input would be another job all the same.
            mine = inputs[index * args.jobs_per_size : (index + 1) * args.jobs_per_size]
            row[path] = per_job_row(phases, path=path, subnet=SUBNET, task_type="image", inputs=mine, label=f"s{side}-{path}")
            row[path]["ratio_to_payload"] = round(row[path]["registry_bytes_per_job"] / row["payload_bytes"], 4)
        row["p2p_over_relay"] = round(row["p2p"]["registry_bytes_per_job"] / row["relay"]["registry_bytes_per_job"], 4)
        market.log(
            f"side {side} (payload {row['payload_bytes']:,} B): relay {row['relay']['registry_bytes_per_job']:,} B/job, "
            f"p2p {row['p2p']['registry_bytes_per_job']:,} B/job"
        )
        rows.append(row)
    return rows


def counts_phase(phases: Phases, args: argparse.Namespace, node_setup_bytes: int) -> list[dict[str, Any]]:
    rows = []
    seed_base = 10_000_000
    for count in args.counts:
        row: dict[str, Any] = {"jobs": count, "side": args.count_side, "node_setup_bytes_once": node_setup_bytes}
        for path in ("relay", "p2p"):
            inputs = [noise_inputs(args.count_side, seed=seed_base + i) for i in range(count)]
            seed_base += count
            sent, output = payload_bytes("image", inputs[0])
            label = f"n{count}-{path}"
            phase, runs = phases.measure(
                [lambda item=item: phases.user.run(path, SUBNET, "image", item, label) for item in inputs],
                concurrency=args.concurrency,
            )
            ids = [r.job_id for r in runs]
            row[path] = {
                "registry_bytes": phase["bytes"],
                "registry_bytes_per_job": round(phase["bytes"] / count),
                "payload_bytes": count * (sent + output),
                "by_party": phase["by_party"],
                "seconds": phase["seconds"],
                "uploads": uploads_of(ids),
                "relay_bytes_recorded": relay_bytes_recorded(ids),
            }
        market.log(
            f"{count} jobs: relay {row['relay']['registry_bytes']:,} B, p2p {row['p2p']['registry_bytes']:,} B "
            f"(node setup, once: {node_setup_bytes:,} B)"
        )
        rows.append(row)
    return rows


def embedding_phase(phases: Phases, args: argparse.Namespace) -> dict[str, Any]:
    batches = market.job_texts(2 * args.embedding_jobs, EMBEDDING_TEXTS_PER_JOB)
    inputs = [{"texts": batch} for batch in batches]
    sent, output = payload_bytes("embedding", inputs[0])
    row: dict[str, Any] = {"texts_per_job": EMBEDDING_TEXTS_PER_JOB, "input_bytes": sent, "output_bytes": output, "payload_bytes": sent + output}
    for index, path in enumerate(("relay", "p2p")):
        mine = inputs[index * args.embedding_jobs : (index + 1) * args.embedding_jobs]
        row[path] = per_job_row(phases, path=path, subnet=market.EMBEDDING_SUBNET, task_type="embedding", inputs=mine, label=f"embed-{path}")
        row[path]["ratio_to_payload"] = round(row[path]["registry_bytes_per_job"] / row["payload_bytes"], 4)
    row["p2p_over_relay"] = round(row["p2p"]["registry_bytes_per_job"] / row["relay"]["registry_bytes_per_job"], 4)
    market.log(f"embedding: relay {row['relay']['registry_bytes_per_job']:,} B/job, p2p {row['p2p']['registry_bytes_per_job']:,} B/job")
    return row


def target_check(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """P2P bytes per job within 10 % (max over min) across sizes whose payload grows 1,000x."""
    p2p = [row["p2p"]["registry_bytes_per_job"] for row in sizes]
    growth = sizes[-1]["payload_bytes"] / sizes[0]["payload_bytes"]
    spread = (max(p2p) - min(p2p)) / min(p2p)
    return {
        "payload_growth": round(growth, 1),
        "p2p_bytes_per_job_min": min(p2p),
        "p2p_bytes_per_job_max": max(p2p),
        "p2p_spread": round(spread, 4),
        "p2p_constant_within_10pct": spread <= 0.10,
        "target_applies": growth >= 1000,  # --quick's two sizes grow 256x
    }


def plot(sizes: list[dict[str, Any]], embedding: dict[str, Any] | None, path: Path) -> str | None:
    """Registry bytes per job against payload, log-log, both paths; None when matplotlib
    is not installed (it is not a dependency of the project)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    payload = [row["payload_bytes"] for row in sizes]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.plot(payload, [row["relay"]["registry_bytes_per_job"] for row in sizes], "o-", label="relay (today)")
    ax.plot(payload, [row["p2p"]["registry_bytes_per_job"] for row in sizes], "s-", label="P2P (data channels)")
    ax.plot(payload, payload, ":", color="grey", label="payload (input + output)")
    if embedding is not None:
        for key, marker in (("relay", "o"), ("p2p", "s")):
            ax.plot(
                [embedding["payload_bytes"]], [embedding[key]["registry_bytes_per_job"]], marker,
                color="black", fillstyle="none", label=f"embedding job, {key}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("payload per job (bytes: input + output)")
    ax.set_ylabel("bytes through the registry per job")
    ax.set_title("Registry bytes per job (bench/bandwidth.py)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def final_checks(phases: Phases) -> dict[str, Any]:
    books = market.jobs_and_ledger()
    settled_all = books["jobs_settled"] == books["jobs_total"] > 0
    return {
        **books,
        "unsettled": phases.unsettled[:20],
        "ok": not books["ledger_violations"] and not phases.unsettled and settled_all,
    }


# ---------------------------------------------------------------- main


def start_node(group: ProcessGroup, name: str, *, url: str, token: str, subnet: str, index: int, extra: list[str]) -> None:
    # The proxy connects to daphne from the node's address (127.0.`index`.1) too.
    market.sim_node_start(
        group, name, url=url, token=token, subnet=subnet, ip_block=index,
        extra=["--log-level", "INFO", *extra],  # a line per job in var/bench/bandwidth/run/logs/
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot_from is not None:
        saved = json.loads(args.plot_from.read_text())
        plotted = plot(saved["sizes"], saved.get("embedding"), args.plot)
        print(plotted or "matplotlib is not installed in this venv: no plot", file=sys.stderr)
        return 0 if plotted else 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds, so children stop in `finally`
    started = time.perf_counter()
    load_start = os.getloadavg()
    services = market.services_reset(database=args.database, redis_db=args.redis_db, run_dir=RUN_DIR, artifact_root=ARTIFACT_ROOT)
    redis_url = services.redis_url
    from bim_core.peer import allow_loopback

    allow_loopback()  # the user's peers and the nodes' meet on 127.0.0.1
    embedding = args.embedding_jobs > 0
    image_nodes = ["img-a", "img-b"]
    embed_nodes = ["emb-a", "emb-b"] if embedding else []
    seeded = seed(image_nodes + embed_nodes, embedding=embedding)
    vectors_path = None
    if embedding:
        texts = market.job_texts(2 * args.embedding_jobs, EMBEDDING_TEXTS_PER_JOB)
        vectors_path = market.bench_vectors([t for batch in texts for t in batch])
    market.log(f"seeded in {time.perf_counter() - started:.1f} s; starting daphne, a worker (no beat) and the nodes")

    group = services.process_group(
        channel_prefix=CHANNEL_PREFIX, BIM_NODE_MAX_MESSAGE_BYTES=str(MAX_MESSAGE_BYTES), BIM_P2P_LOOPBACK="1"
    )
    port = free_port()
    proxy = counting_proxy.CountingProxy(("127.0.0.1", port))
    ports = {party: proxy.listen(party) for party in PARTIES}
    report: dict[str, Any] = {}
    phases: Phases | None = None
    try:
        group.start_registry(port)  # its health check goes to daphne itself, not through the proxy
        # No beat: sentinels would re-run settled jobs with the real waifu2x and punish the
        # nodes' nearest-neighbour answers; nothing here needs the sweeper.
        group.start_worker(beat=False)
        node_url = f"http://127.0.0.1:{ports['node']}"
        node_setup = []
        for index, name in enumerate(image_nodes, start=1):
            before = proxy.snapshot()
            extra = ["--upscale", "--fetch-model", str(RUN_DIR / "models" / name)]
            start_node(group, name, url=node_url, token=seeded["contributors"][name], subnet=SUBNET, index=index, extra=extra)
            market.wait_for_nodes(index, group, subnet=SUBNET)
            proxy.settle()
            node_setup.append(counting_proxy.total(proxy.since(before)))
        for index, name in enumerate(embed_nodes, start=len(image_nodes) + 1):
            extra = ["--vectors", str(vectors_path)]
            start_node(group, name, url=node_url, token=seeded["contributors"][name], subnet=market.EMBEDDING_SUBNET, index=index, extra=extra)
        if embed_nodes:
            market.wait_for_nodes(len(embed_nodes), group, subnet=market.EMBEDDING_SUBNET)
        proxy.settle()
        market.log(f"nodes ready; setup of each image node {node_setup} B (model {model_bytes():,} B)")

        user = BenchUser(
            http_url=f"http://127.0.0.1:{ports['user_http']}",
            ws_url=f"ws://127.0.0.1:{ports['user_ws']}/ws/user/?token={seeded['user']}",
            token=seeded["user"],
            clients=args.concurrency,
        )
        phases = Phases(proxy, user, group)
        background = None
        if args.idle_s:
            before = proxy.snapshot()
            time.sleep(args.idle_s)
            idle = counting_proxy.total(proxy.since(before))
            nodes = len(image_nodes) + len(embed_nodes)
            background = {
                "seconds": args.idle_s,
                "bytes": idle,
                "bytes_per_s": round(idle / args.idle_s, 1),
                "bytes_per_node_per_s": round(idle / args.idle_s / nodes, 1),
            }
            market.log(f"idle: {idle} B in {args.idle_s} s from {nodes} nodes (heartbeats, keepalives)")
        # Unmeasured: a first job of each path (connections, caches, the nodes' first work).
        for path in ("relay", "p2p"):
            phases.measure([lambda path=path: user.run(path, SUBNET, "image", noise_inputs(16, seed=7 + len(path)), "warmup")], 1)
        sizes = sizes_phase(phases, args)
        counts = counts_phase(phases, args, sum(node_setup))
        embed = embedding_phase(phases, args) if embedding else None
    finally:
        group.stop()
        proxy.close()
        market.redis_flush(redis_url)
    checks = final_checks(phases) if phases is not None else {"ok": False}
    plotted = plot(sizes, embed, args.plot) if args.plot is not None else None
    report = {
        "benchmark": "registry_bandwidth",
        "unit": "bytes through the registry per job: TCP payload both ways (HTTP and websocket framing included)",
        "config": {
            "sides": args.sides,
            "jobs_per_size": args.jobs_per_size,
            "counts": args.counts,
            "count_side": args.count_side,
            "concurrency": args.concurrency,
            "embedding_jobs": args.embedding_jobs,
            "image_nodes": len(image_nodes),
            "embedding_nodes": len(embed_nodes),
            "database": args.database,
            "redis_db": args.redis_db,
            "cpu_count": os.cpu_count(),
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        },
        "node_setup": {
            "bytes_per_node": node_setup,
            "model_bytes": model_bytes(),
            "what": "registration, license, manifest and model chunks, websocket handshake, the first benchmark",
        },
        "background": background,
        "sizes": sizes,
        "target": target_check(sizes),
        "job_counts": counts,
        "embedding": embed,
        "plot": plotted,
        **({} if plotted or args.plot is None else {"plot_skipped": "matplotlib is not installed in this venv"}),
    }
    return market.report_print(report, checks=checks, started=started)


if __name__ == "__main__":
    sys.exit(main())
