"""The penalty for a result the registry proved wrong against its own answer (a failed
honeypot, a sentinel re-run outside tolerance): a zero reputation outcome, a strike
(enough of them ban the node) and part of its escrow slashed, which also refunds the
job's user. The job and assignment are the evidence; one slash per assignment."""

from __future__ import annotations

import logging

from ledger import services as ledger

from . import reputation
from .models import Assignment, Job

log = logging.getLogger("bim.registry.penalties")


def wrong_result_punish(*, job: Job, assignment: Assignment, strike_reason: str, evidence: str) -> None:
    reputation.reputation_record(node_ids=[assignment.node_id], outcome=0.0, subnet=job.subnet)
    reputation.node_strike(node_id=assignment.node_id, reason=strike_reason, job_id=job.id, subnet=job.subnet)
    ledger.escrow_slash(
        node_id=assignment.node_id,
        job_id=job.id,
        assignment_id=assignment.pk,
        job_user=job.user,
        job_price=job.price_micro,
        reason=evidence,
        fraction_bp=job.subnet.honeypot_slash_bp,
    )
    log.warning("node %s: %s on job %s: %s", assignment.node_id, strike_reason, job.id, evidence)
