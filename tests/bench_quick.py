"""Running a benchmark's `--quick` mode from `make test` (a smoke test, so no change breaks a
benchmark unseen): in a subprocess and, for a benchmark of the services, on a database of its
own next to the test's and on the test's Redis db (which the tests flush anyway)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


def _service_url(name: str) -> str:
    url = os.environ.get(name)
    # Fails rather than skips elsewhere: the benchmarks are about PostgreSQL + Redis, which
    # scripts/test.sh (make test) always provides.
    assert url and (name != "DATABASE_URL" or url.startswith("postgres")), "run it through scripts/test.sh"
    return url


def database_server() -> str:
    """The PostgreSQL server of the test's DATABASE_URL without its database
    (postgresql://user@host:port), for a benchmark that takes the server apart (`--server`)."""
    parts = urlsplit(_service_url("DATABASE_URL"))
    return f"{parts.scheme}://{parts.netloc}"


def bench_quick(
    script: str,
    *extra_args: str,
    database_suffix: str | None,
    redis: bool = True,
    timeout: float,
    report_last_line: bool = False,
) -> dict[str, Any]:
    """Run `bench/<script> --quick [extra_args]`; its exit status must be 0, and its stdout's
    JSON report is returned (only its last line, where tables come before it).

    With a database_suffix it also gets `--database <the test's database + suffix>` and,
    unless redis is False, `--redis-db <the test's>`; a benchmark that needs no services
    (database_suffix=None) gets neither."""
    service_args: list[str] = []
    if database_suffix is not None:
        database = urlsplit(_service_url("DATABASE_URL")).path.lstrip("/") + database_suffix
        service_args += ["--database", database]
        if redis:
            service_args += ["--redis-db", urlsplit(_service_url("REDIS_URL")).path.lstrip("/") or "0"]
    done = subprocess.run(
        [sys.executable, f"bench/{script}", "--quick", *extra_args, *service_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}\n{done.stdout[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1] if report_last_line else done.stdout)
