"""Submissions per second through the API, for bench/throughput.py: real jobs, each with
its hold on the ledger, sent by C threads over kept-alive connections with bodies encoded
beforehand (the harness must not be what limits the rate). Single: one job per POST
/api/v1/jobs/. Batch: JOBS_PER_BATCH_MAX jobs per POST /api/v1/jobs/batch/. Reported: jobs
and requests per second, request latency p50/p99, and every status seen (a 5xx is a
failure of the run).

`rate`: requests are offered at that many per second (request i due i / rate seconds after
the start, whichever sender is free) instead of as fast as the senders go, and each
latency runs from the request's due time, so a registry that falls behind is charged the
wait too (no coordinated omission). This is how a latency target at a rate is measured: a
closed loop of C clients only shows p99 under 100 ms at well over C * 10 requests a
second."""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from bim_core.protocol import JOBS_PER_BATCH_MAX


def request_bodies(
    subnet: str, batches: list[list[str]], prefix: str, per_request: int
) -> list[tuple[str, bytes, int]]:
    """(path, encoded body, jobs in it) for every request of the phase."""
    jobs = [
        {"subnet": subnet, "inputs": {"texts": texts}, "idempotency_key": f"{prefix}{i}"}
        for i, texts in enumerate(batches)
    ]
    if per_request == 1:
        return [("/api/v1/jobs/", json.dumps(job).encode(), 1) for job in jobs]
    return [
        (
            "/api/v1/jobs/batch/",
            json.dumps({"jobs": jobs[i : i + per_request]}).encode(),
            len(jobs[i : i + per_request]),
        )
        for i in range(0, len(jobs), per_request)
    ]


def measure(
    url: str,
    token: str,
    *,
    subnet: str,
    batches: list[list[str]],
    prefix: str,
    concurrency: int,
    batched: bool,
    rate: float | None = None,
) -> dict[str, Any]:
    bodies = request_bodies(subnet, batches, prefix, JOBS_PER_BATCH_MAX if batched else 1)
    work: queue.SimpleQueue[tuple[int, tuple[str, bytes, int]]] = queue.SimpleQueue()
    for index, body in enumerate(bodies):
        work.put((index, body))
    parts = urlsplit(url)
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    started = [0.0]  # set when every sender is ready
    start = threading.Barrier(concurrency + 1, action=lambda: started.__setitem__(0, time.perf_counter()))

    def sender() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        start.wait()
        while True:
            try:
                index, (path, body, _) = work.get_nowait()
            except queue.Empty:
                break
            if rate is None:
                began = time.perf_counter()
            else:
                began = started[0] + index / rate
                time.sleep(max(0.0, began - time.perf_counter()))
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                status = str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                status = f"error: {type(exc).__name__}"
                connection.close()
            took = time.perf_counter() - began
            with lock:
                latencies.append(took)
                statuses[status] += 1
        connection.close()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    accepted_jobs = sum(n for path, _, n in bodies) if statuses == Counter({"201": len(bodies)}) else None
    return {
        "mode": "batch" if batched else "single",
        "offered_per_s": rate,
        "jobs": len(batches),
        "requests": len(bodies),
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(len(batches) / seconds, 1),
        "requests_per_s": round(len(bodies) / seconds, 1),
        "request_ms_p50": round(float(np.percentile(latencies, 50)) * 1000, 1),
        "request_ms_p99": round(float(np.percentile(latencies, 99)) * 1000, 1),
        "statuses": dict(statuses),
        "all_accepted": accepted_jobs == len(batches),
        "http_5xx": sum(n for status, n in statuses.items() if status.startswith("5")),
    }
