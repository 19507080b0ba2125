"""SQL statements counted per process, for the benchmarks: with BIM_SQL_STATS_DIR set, each
process (daphne, a Celery worker) counts the statements its database connections run and
writes the running total to `<dir>/<pid>.json` about twice a second, so bench/throughput.py
can read statements per job across processes without pg_stat_statements (which needs a
server restart to load). Without the variable nothing is installed and nothing is paid.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

WRITE_EVERY_S = 0.5

_statements = itertools.count()  # next() is atomic under the GIL: no lock on the hot path


def _count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    next(_statements)
    return execute(sql, params, many, context)


def _count_on(sender: Any, connection: Any, **kwargs: Any) -> None:
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


def statements_run() -> int:
    """Statements counted in this process so far (reads the counter without counting)."""
    # itertools.count has no getter; its repr is "count(N)".
    return int(repr(_statements)[6:-1])


def _writer(directory: Path) -> None:
    path = directory / f"{os.getpid()}.json"
    scratch = directory / f".{os.getpid()}.tmp"
    while True:
        scratch.write_text(json.dumps({"pid": os.getpid(), "statements": statements_run(), "at": time.time()}))
        os.replace(scratch, path)  # readers see the old total or the new one, never half
        time.sleep(WRITE_EVERY_S)


def install() -> None:
    """Count the statements of every database connection of this process from now on."""
    from django.db import connections
    from django.db.backends.signals import connection_created

    connection_created.connect(_count_on, weak=False)
    for connection in connections.all(initialized_only=True):
        _count_on(None, connection)


def install_from_env() -> None:
    """Count this process's statements when BIM_SQL_STATS_DIR names a directory, and keep
    the total written there."""
    directory = os.environ.get("BIM_SQL_STATS_DIR")
    if not directory:
        return
    install()
    Path(directory).mkdir(parents=True, exist_ok=True)
    threading.Thread(target=_writer, args=(Path(directory),), name="bim-sql-stats", daemon=True).start()


def statements_in(directory: Path) -> int:
    """The statements counted so far by every process writing to `directory`."""
    total = 0
    for path in directory.glob("*.json"):
        try:
            total += json.loads(path.read_text())["statements"]
        except (OSError, ValueError, KeyError):
            continue  # replaced between the listing and the read: gone is an old name
    return total
