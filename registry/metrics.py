"""Prometheus metrics of the job pipeline: what happens, counted and measured in whichever
process it happens (daphne or a Celery worker). With PROMETHEUS_MULTIPROC_DIR set, every
process writes its values to files there and /metrics (bim_site/metrics.py) adds them up;
the facts of the database (nodes online, queues, ledger) are read at scrape time instead
(bim_site/gauges.py)."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone
from prometheus_client import Counter, Histogram

jobs_submitted = Counter("bim_jobs_submitted_total", "Jobs accepted by the API", ["subnet"])
jobs_settled = Counter("bim_jobs_settled_total", "Jobs settled after verification", ["subnet"])
job_transitions = Counter("bim_job_transitions_total", "Job state changes", ["to_state"])
results_received = Counter("bim_results_received_total", "Signed results accepted from nodes")
results_refused = Counter("bim_results_refused_total", "Results refused, by error code", ["code"])
verifications = Counter("bim_verifications_total", "Pair verifications", ["passed"])

# A pair of nodes on a warm model settles an embedding batch in about a second; a text job
# or a tie-breaker takes tens of seconds; past the deadline (minutes) a job expires instead.
job_settle_seconds = Histogram(
    "bim_job_settle_seconds",
    "Submit-to-settle time of settled jobs, on the registry's clock",
    ["subnet"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
# The weakest item's similarity of each compared pair (cosine for embeddings, SSIM for
# images, 1 - token edit distance for text). Honest pairs sit within 1e-4 of 1, so the
# buckets are dense there: drift shows up long before a tolerance is crossed.
verification_similarity = Histogram(
    "bim_verification_similarity",
    "Weakest item's similarity of each compared pair of results",
    ["subnet"],
    buckets=(0.5, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 0.99999, 1.0),
)


def job_settled_record(*, subnet_slug: str, created_at: datetime) -> None:
    """Count a settlement and its submit-to-settle time once it is committed: a settlement
    rolled back (a deadlock victim, retried by its task) must not count twice."""
    seconds = max(0.0, (timezone.now() - created_at).total_seconds())

    def record() -> None:
        jobs_settled.labels(subnet=subnet_slug).inc()
        job_settle_seconds.labels(subnet=subnet_slug).observe(seconds)

    transaction.on_commit(record)


def verification_record(*, subnet_slug: str, passed: bool, similarity: float | None) -> None:
    verifications.labels(passed=str(passed).lower()).inc()
    if similarity is not None:
        verification_similarity.labels(subnet=subnet_slug).observe(similarity)
