"""Smoke test of bench/adversary.py: `--quick` runs the real market (daphne, a Celery worker
with beat, simulated honest nodes) against three hostile nodes and must neither crash nor
miss a target. It runs in a subprocess on its own database, next to the test's, and on
the test's Redis db (which the tests flush anyway)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent


def test_adversary_quick_meets_its_targets():
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    # Fails rather than skips elsewhere: the benchmark is about PostgreSQL + Redis, which
    # scripts/test.sh (make test) always provides.
    assert database_url and redis_url and database_url.startswith("postgres"), "run it through scripts/test.sh"
    database = urlsplit(database_url).path.lstrip("/") + "_adversary"
    redis_db = urlsplit(redis_url).path.lstrip("/") or "0"
    done = subprocess.run(
        [sys.executable, "bench/adversary.py", "--quick", "--database", database, "--redis-db", redis_db],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}\n{done.stdout[-4000:]}"
    report = json.loads(done.stdout)
    assert report["ok"] and not report["failed_targets"]
    assert set(report["strategies"]) == {"refused", "silence", "wrong_shape"}
    for strategy, figures in report["strategies"].items():
        assert figures["routable"], f"{strategy}: the hostile node never got into the market"
        assert figures["paid_wrong_results"] == 0, strategy
