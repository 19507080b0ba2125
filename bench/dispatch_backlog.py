"""The dispatcher's cost per job against the backlog (bench/throughput.py --backlog).

For each backlog size K (10 and 10,000 by default): a copy of the embeddings subnet, free
of charge (no ledger postings to write or undo), two in-process nodes whose offer queues
hold two offers each (a new node's probation), and queued jobs written through the submit
service. The queues are filled once; then, R times, one job more is queued (so K wait
behind the one to be placed), one slot frees on each node (an offer answered) and the
coalesced dispatcher run (`jobs_dispatch_waiting`, what a result queues) places exactly
one job and stops at the next ones it cannot place. Each
placement's wall time and SQL statements are measured in this process; the figure is the
median, and `ratio` the big backlog's median time over the small one's (target <= 1.5).
"""

from __future__ import annotations

import statistics
import time
from typing import Any
from unittest import mock

SOURCE_SUBNET = "minilm-embed"
CHUNK = 100


def backlog_subnet(size: int) -> Any:
    from subnets.models import Subnet

    subnet = Subnet.objects.get(slug=SOURCE_SUBNET)
    subnet.pk = None
    subnet.slug = f"bench-backlog-{size}"
    subnet.price_per_call_micro = 0
    subnet.price_per_item_micro = 0
    subnet.adaptive_replication = False
    subnet.latency_ms = 3_600_000  # nothing expires while it is measured
    subnet.save()
    return subnet


def queue_jobs(user: Any, subnet: Any, first: int, count: int) -> None:
    """Jobs `first`..`first + count - 1` of the backlog, written as submit writes them, with
    no dispatcher run queued."""
    from registry import effects, submit

    with mock.patch.object(effects, "queue_task_coalesced"):
        for start in range(first, first + count, CHUNK):
            jobs = [
                submit._job_build(user, subnet, {"texts": [f"backlog {i}"]}, f"backlog-{subnet.pk}-{i}", None)
                for i in range(start, min(first + count, start + CHUNK))
            ]
            submit.jobs_create(user=user, jobs=jobs)


def free_one_slot_each(subnet: Any) -> None:
    """Each node answers its oldest open offer (stands in for a result)."""
    from registry.models import Assignment, AssignmentState

    open_offers = Assignment.objects.filter(job__subnet=subnet, state=AssignmentState.DISPATCHED).order_by("dispatched_at", "pk")
    firsts = {}
    for assignment_id, node_id in open_offers.values_list("pk", "node_id"):
        firsts.setdefault(node_id, assignment_id)
    Assignment.objects.filter(pk__in=list(firsts.values())).update(state=AssignmentState.SUBMITTED)


def measure(size: int, repeats: int, user: Any) -> dict[str, Any]:
    from bim_site import sqlstats
    from registry import dispatch, routing_index
    from registry.models import Job, JobState
    from tests.factories import UserFactory, online_node

    subnet = backlog_subnet(size)
    for index in range(2):
        online_node(subnet, UserFactory(username=f"backlog-{size}-{index}"))
    routing_index.index_forget()
    began = time.perf_counter()
    queue_jobs(user, subnet, 0, size + 2)
    queued_s = time.perf_counter() - began
    dispatch.jobs_dispatch_waiting(subnet_id=subnet.pk)  # fill both queues: two jobs placed
    times, statements = [], []
    for repeat in range(repeats):
        queue_jobs(user, subnet, size + 2 + repeat, 1)  # `size` wait behind the one placed now
        free_one_slot_each(subnet)
        before_q, before_t = sqlstats.statements_run(), time.perf_counter()
        placed = dispatch.jobs_dispatch_waiting(subnet_id=subnet.pk)
        times.append(time.perf_counter() - before_t)
        statements.append(sqlstats.statements_run() - before_q)
        if placed != 2:  # one job, two assignments
            raise RuntimeError(f"backlog {size}: a freed pair of slots placed {placed} assignments, not 2")
    waiting = Job.objects.filter(subnet=subnet, state=JobState.QUEUED).count()
    return {
        "backlog": size,
        "still_queued": waiting,
        "write_backlog_s": round(queued_s, 2),
        "dispatch_one_ms_p50": round(statistics.median(times) * 1000, 2),
        "dispatch_one_ms_max": round(max(times) * 1000, 2),
        "statements_per_dispatch_p50": statistics.median(statements),
    }


def run(sizes: list[int], repeats: int, user: Any) -> dict[str, Any]:
    from django.test import override_settings

    # Sweeper-free and index-stable: the presence of the in-process nodes is not refreshed
    # while measuring, so routing must not find them stale.
    with override_settings(NODE_STALE_S=86_400):
        rows = [measure(size, repeats, user) for size in sizes]
    small, big = rows[0], rows[-1]
    return {
        "sizes": rows,
        "ratio": round(big["dispatch_one_ms_p50"] / small["dispatch_one_ms_p50"], 3),
        "statements_ratio": round(big["statements_per_dispatch_p50"] / max(1, small["statements_per_dispatch_p50"]), 3),
        "ok": all(r["still_queued"] == r["backlog"] for r in rows),
    }
