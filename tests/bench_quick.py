"""Running a benchmark's `--quick` mode from `make test` (a smoke test, so no change breaks a
benchmark unseen): in a subprocess, on a database of its own next to the test's and on the
test's Redis db (which the tests flush anyway)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


def bench_quick(script: str, *extra_args: str, database_suffix: str, timeout: float) -> dict[str, Any]:
    """Run `bench/<script> --quick [extra_args]`; its exit status must be 0, and its stdout's
    JSON report is returned."""
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    # Fails rather than skips elsewhere: the benchmarks are about PostgreSQL + Redis, which
    # scripts/test.sh (make test) always provides.
    assert database_url and redis_url and database_url.startswith("postgres"), "run it through scripts/test.sh"
    database = urlsplit(database_url).path.lstrip("/") + database_suffix
    redis_db = urlsplit(redis_url).path.lstrip("/") or "0"
    done = subprocess.run(
        [sys.executable, f"bench/{script}", "--quick", *extra_args, "--database", database, "--redis-db", redis_db],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}\n{done.stdout[-4000:]}"
    return json.loads(done.stdout)
