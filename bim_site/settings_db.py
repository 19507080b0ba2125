"""The database settings: PostgreSQL through a connection pool where DATABASE_URL is set,
else the embedded SQLite file. bim_site/settings.py calls `databases`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dj_database_url

from bim_site.env import env_int, env_str


def databases(database_url: str, var_dir: Path) -> dict[str, Any]:
    if not database_url:
        return {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": env_str("BIM_SQLITE_PATH", str(var_dir / "bim.sqlite3")),
                # Daphne serves sockets and HTTP from threads: wait for the write lock instead
                # of failing, take it at BEGIN so read-then-write transactions cannot
                # deadlock, and let readers run beside the writer.
                "OPTIONS": {
                    "timeout": 30,
                    "transaction_mode": "IMMEDIATE",
                    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                },
            }
        }
    # A connection pool per process (psycopg_pool through Django's "pool" option): a new
    # PostgreSQL connection per request or task cost a quarter of a job's CPU in
    # bench/throughput.py, and persistent per-thread connections under ASGI (a thread per
    # request) ran PostgreSQL out of clients at 16 concurrent submissions. A request that
    # finds every connection busy waits for one (BIM_DB_POOL_TIMEOUT_S) instead of failing;
    # a connection whose server went away is not lent (bim_site.postgresql: its socket is
    # polled, and only one with something to read is checked with a query), so a restarted
    # server costs no request.
    default = dj_database_url.parse(database_url, conn_max_age=0, conn_health_checks=False)
    default["ENGINE"] = "bim_site.postgresql"
    options = default.setdefault("OPTIONS", {})
    options["pool"] = {
        "min_size": 1,
        "max_size": env_int("BIM_DB_POOL_MAX", 8),
        "timeout": env_int("BIM_DB_POOL_TIMEOUT_S", 20),
    }
    # Statements bound and prepared on the server from their second run on a connection: a
    # job runs a few dozen shapes of statement, and PostgreSQL parsed and planned each anew
    # (in-process, its CPU per job fell from 11.2 to 6.7-9.5 ms; docs/benchmarks.md). A
    # pooler in transaction mode (pgbouncer) cannot keep a connection's prepared statements:
    # set BIM_DB_PREPARE_THRESHOLD=0 behind one.
    threshold = env_int("BIM_DB_PREPARE_THRESHOLD", 2)
    if threshold > 0:
        options["server_side_binding"] = True
        options["prepare_threshold"] = threshold
        # ... and each run planned for its arguments. Django binds a query's constants as
        # parameters too (`state = $1`), and after five runs PostgreSQL may keep a generic
        # plan, blind to them: "is any job of this subnet queued?", asked at every result,
        # became a sequential scan of every job (LIMIT 1, none queued), and each run of
        # bench/throughput.py was slower than the one before. Parsing is still saved; the
        # ledger's posting function keeps its own generic plans (ledger migration 0006).
        options["options"] = f"{options.get('options', '')} -c plan_cache_mode=force_custom_plan".strip()
    return {"default": default}
