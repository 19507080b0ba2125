"""Prometheus metrics of the job pipeline (exported at /metrics with django-prometheus's)."""

from prometheus_client import Counter

jobs_submitted = Counter("bim_jobs_submitted_total", "Jobs accepted by the API", ["subnet"])
jobs_settled = Counter("bim_jobs_settled_total", "Jobs settled after verification", ["subnet"])
job_transitions = Counter("bim_job_transitions_total", "Job state changes", ["to_state"])
results_received = Counter("bim_results_received_total", "Signed results accepted from nodes")
results_refused = Counter("bim_results_refused_total", "Results refused, by error code", ["code"])
verifications = Counter("bim_verifications_total", "Pair verifications", ["passed"])
