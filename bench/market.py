"""The market a benchmark of the services measures, set up and checked the same way by
bench/throughput.py and bench/bandwidth.py: a PostgreSQL database and a Redis db of its own,
dropped and flushed on each invocation; the registry (daphne), a Celery worker and
simulated nodes (bench/sim_node.py) as child processes; paying users; the embeddings the
simulated nodes of the seeded embedding subnet answer with; and the checks and JSON report
every run ends with (every job settled, the ledger balanced)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from bim_core.money import MICRO
from bim_site.processes import ProcessGroup, child_env

ROOT = Path(__file__).resolve().parent.parent
EMBEDDING_SUBNET = "minilm-embed"  # seeded by bim_seed
TEXTS_FILE = ROOT / "scripts" / "demo_texts.txt"
# Precomputed vectors, kept between invocations (where bench/throughput.py has always kept them).
VECTORS_CACHE_DIR = ROOT / "var" / "bench" / "throughput" / "cache"


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- services and setup


def with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def database_recreate(bench_url: str) -> None:
    import psycopg
    from psycopg import sql

    name = urlsplit(bench_url).path.lstrip("/")
    conninfo = with_path(bench_url, "/postgres").replace("postgres://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def redis_flush(redis_url: str) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()


def django_setup(database_url: str, *, run_dir: Path, artifact_root: Path) -> None:
    """This process talks to the bench database only. Without REDIS_URL its settings use
    eager Celery and the in-memory channel layer, and the baseline patches both out."""
    os.environ.pop("REDIS_URL", None)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="bim_site.settings",
        DATABASE_URL=database_url,
        BIM_VAR_DIR=str(run_dir),
        BIM_ARTIFACT_ROOT=str(artifact_root),
    )
    import django

    django.setup()
    from bim_site import sqlstats

    sqlstats.install()  # this process's statements: the in-process baseline's and --backlog's


@dataclass(frozen=True)
class BenchServices:
    """A bench's own database and Redis db, and where its children keep their state."""

    database_url: str
    redis_url: str
    run_dir: Path  # BIM_VAR_DIR: logs, keys, the celerybeat schedule
    artifact_root: Path  # the registry's chunk store

    def process_group(self, *, channel_prefix: str, **settings: str) -> ProcessGroup:
        """The group the registry, the worker and the nodes are started in: on these
        services, with these BIM_* `settings` besides; logs in run_dir/logs."""
        env = child_env(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            BIM_CHANNEL_PREFIX=channel_prefix,
            BIM_VAR_DIR=str(self.run_dir),
            BIM_ARTIFACT_ROOT=str(self.artifact_root),
            DJANGO_SETTINGS_MODULE="bim_site.settings",
            **settings,
        )
        return ProcessGroup(log_dir=self.run_dir / "logs", env=env)


def services_reset(*, database: str, redis_db: int, run_dir: Path, artifact_root: Path) -> BenchServices:
    """A fresh run: `database` on the server of $DATABASE_URL dropped and recreated, Redis db
    `redis_db` of $REDIS_URL flushed, `run_dir` emptied, and Django set up on the database."""
    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bim")
    database_url = with_path(base_db, f"/{database}")
    redis_url = with_path(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9"), f"/{redis_db}")

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    log(f"database {database} recreated, Redis db {redis_db} flushed; state in {run_dir}")
    database_recreate(database_url)
    redis_flush(redis_url)
    django_setup(database_url, run_dir=run_dir, artifact_root=artifact_root)
    return BenchServices(database_url, redis_url, run_dir, artifact_root)


def vacuum_when_autovacuum_is_off() -> bool:
    """VACUUM (ANALYZE) the bench database when its server runs without autovacuum (a CI
    configuration: this machine's PostgreSQL has `autovacuum = off`), as autovacuum would
    between runs on a deployment: without it the dead rows every job's state changes leave
    pile up (16,964 in registry_job after one set of bench/throughput.py), and later runs
    would be measured on a database no deployment keeps. Returns whether it vacuumed."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW autovacuum")
        if cursor.fetchone()[0] == "on":
            return False
        cursor.execute("VACUUM (ANALYZE)")
    return True


def sim_node_start(
    group: ProcessGroup, name: str, *, url: str, token: str, subnet: str, ip_block: int, extra: list[str]
) -> None:
    """A simulated node (bench/sim_node.py) of its own owner, from 127.0.`ip_block`.1: one /24
    each, since the routing policy keeps a job's two nodes apart by IP block and all of
    127/8 is this machine. Its key is kept in the group's state (BIM_VAR_DIR/nodes/)."""
    group.start(
        name,
        [
            sys.executable,
            str(ROOT / "bench" / "sim_node.py"),
            "--registry",
            url,
            "--token",
            token,
            "--subnet",
            subnet,
            "--name",
            name,
            "--key-file",
            str(Path(group.env["BIM_VAR_DIR"]) / "nodes" / f"{name}.key"),
            "--source-ip",
            f"127.0.{ip_block}.1",
            *extra,
        ],
    )


def extra_users(count: int, credits: int) -> list[str]:
    """API tokens of `count` more paying users, funded like the seeded one."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from ledger.services import credits_top_up
    from subnets.data_terms import data_terms_acknowledge
    from subnets.models import Subnet

    tokens = []
    for index in range(count):
        user = get_user_model().objects.create(username=f"bench-user-{index}")
        credits_top_up(user=user, amount=credits * MICRO, idempotency_key=f"bench-seed:{user.pk}")
        # Users of the market, like the seeded one: they acknowledged the subnets' data terms.
        for subnet in Subnet.objects.all():
            data_terms_acknowledge(user=user, subnet=subnet, version=subnet.data_terms_version, ip=None)
        tokens.append(Token.objects.create(user=user).key)
    return tokens


def job_texts(count: int, per_job: int) -> list[list[str]]:
    texts = [line for line in TEXTS_FILE.read_text().splitlines() if line.strip()]
    return [[texts[(i * per_job + j) % len(texts)] for j in range(per_job)] for i in range(count)]


def bench_vectors(texts: list[str]) -> Path:
    """The subnet model's embeddings of `texts` and of the benchmark suite, computed once
    and cached under var/bench/throughput/cache/. The model and tokenizer files must hash
    to what the subnet pins, so the vectors are the ones an honest node would send."""
    from registry.models import Honeypot
    from subnets import defaults
    from subnets.models import BenchmarkInput, BenchmarkReference, Subnet
    from subnets.services import packaged_file

    subnet = Subnet.objects.get(slug=EMBEDDING_SUBNET)
    # Nodes must pass the subnet's benchmark (any suite of its pool) before they get jobs,
    # and answer honeypots like any other job: their texts are precomputed too.
    known = [r.inputs for r in BenchmarkReference.objects.filter(subnet=subnet)]
    known += [i.inputs for i in BenchmarkInput.objects.filter(reference__subnet=subnet)]
    known += [h.inputs for h in Honeypot.objects.filter(subnet=subnet)]
    texts = sorted(set(texts) | {text for inputs in known for text in inputs.get("texts", [])})
    key = hashlib.sha256(
        json.dumps([subnet.model_checksum, subnet.tokenizer_checksum, subnet.preprocessing, texts]).encode()
    ).hexdigest()[:16]
    path = VECTORS_CACHE_DIR / f"vectors-{key}.npz"
    if path.exists():
        return path
    from bim_core.runtimes.embedder import Embedder

    model = packaged_file(defaults.EMBEDDINGS_MODEL.package, defaults.EMBEDDINGS_MODEL.path)
    tokenizer = packaged_file(defaults.EMBEDDINGS_TOKENIZER.package, defaults.EMBEDDINGS_TOKENIZER.path)
    for file, pinned in ((model, subnet.model_checksum), (tokenizer, subnet.tokenizer_checksum)):
        if pinned and hashlib.sha256(file.read_bytes()).hexdigest() != pinned:
            raise RuntimeError(f"{file} does not hash to the subnet's pinned {pinned}")
    log(f"precomputing {len(texts)} embeddings with the subnet's model into {path}")
    vectors = Embedder.from_preprocessing(model, tokenizer, subnet.preprocessing)(texts)
    norms = np.linalg.norm(vectors, axis=1)
    if not np.all(np.abs(norms - 1) < 1e-3):
        raise RuntimeError(f"precomputed vectors are not unit-norm (norms {norms.min()}..{norms.max()})")
    VECTORS_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, texts=np.array(texts), vectors=vectors.astype(np.float32))
    os.replace(tmp, path)
    return path


def wait_for_nodes(count: int, group: ProcessGroup, timeout: float = 120.0, *, subnet: str = EMBEDDING_SUBNET) -> None:
    """Until `count` simulated nodes are routable on `subnet`: ready (model checksum sent)
    and scored by a passed benchmark."""
    from registry.models import NodeSubnet

    routable = NodeSubnet.objects.filter(subnet__slug=subnet, ready_at__isnull=False, score__gt=0)
    deadline = time.monotonic() + timeout
    while routable.count() < count:
        group.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} simulated nodes routable after {timeout} s")
        time.sleep(0.2)


# ---------------------------------------------------------------- checks and report


def jobs_and_ledger() -> dict[str, Any]:
    """Every job of the bench database by state, and the ledger's invariant violations
    (the first 20): what a run's checks are made of."""
    from django.db.models import Count

    from ledger.checks import ledger_violations
    from registry.models import Job, JobState

    states = dict(Job.objects.values_list("state").annotate(n=Count("pk")))
    return {
        "jobs_total": sum(states.values()),
        "jobs_settled": states.get(JobState.SETTLED, 0),
        "job_states": states,
        "ledger_violations": ledger_violations()[:20],
    }


def report_print(report: dict[str, Any], *, checks: dict[str, Any], started: float) -> int:
    """The report on stdout as one JSON object, ending with the checks and the seconds since
    `started`; the exit status: 0 when the checks passed."""
    print(json.dumps({**report, "checks": checks, "seconds_total": round(time.perf_counter() - started, 1)}, indent=2))
    return 0 if checks["ok"] else 1
