"""Smoke test of bench/throughput.py (it once crashed on main unseen): `--quick` runs the
real pipeline (daphne, a Celery worker with beat, simulated nodes answering benchmarks,
honeypots and jobs) on its own database, next to the test's, and the test's Redis db
(which the tests flush anyway); every job it submitted must settle and the ledger balance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parent.parent


def test_throughput_quick_runs_clean():
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    # Fails rather than skips elsewhere: the benchmark is about PostgreSQL + Redis, which
    # scripts/test.sh (make test) always provides.
    assert database_url and redis_url and database_url.startswith("postgres"), "run it through scripts/test.sh"
    database = urlsplit(database_url).path.lstrip("/") + "_throughput"
    redis_db = urlsplit(redis_url).path.lstrip("/") or "0"
    done = subprocess.run(
        [sys.executable, "bench/throughput.py", "--quick", "--database", database, "--redis-db", redis_db],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}\n{done.stdout[-4000:]}"
    report = json.loads(done.stdout)
    assert report["checks"]["ok"], report["checks"]
    assert report["checks"]["jobs_settled"] == report["checks"]["jobs_total"] > 0
    assert report["median"]["end_to_end_jobs_per_s"] > 0 and report["median"]["in_process_jobs_per_s"] > 0
