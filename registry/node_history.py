"""Reads for an operator's node page: its recent benchmarks, its recent verdicts (the jobs it
ran and how each ended for it) and the sanctions operators took. Each is one bounded query:
a node with years of history renders as fast as a new one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import QuerySet

from .models import Assignment, Benchmark, Job, Node, NodeSanction

RECENT = 20


def node_benchmarks_recent(*, node: Node, limit: int = RECENT) -> list[Benchmark]:
    return list(Benchmark.objects.filter(node=node).select_related("subnet").order_by("-issued_at")[:limit])


def node_sanctions(*, node: Node) -> QuerySet[NodeSanction]:
    return NodeSanction.objects.filter(node=node).select_related("operator").order_by("-created_at")


@dataclass(frozen=True)
class Verdict:
    """One job the node ran, as its page shows it."""

    assignment: Assignment
    job: Job
    similarity: float | None  # how close its result came to the one it was compared with
    compared_with: str  # which roles, e.g. "A–B"
    at: datetime


def node_verdicts_recent(*, node: Node, limit: int = RECENT) -> list[Verdict]:
    assignments = (
        Assignment.objects.filter(node=node)
        .select_related("job", "job__subnet")
        .defer("result", "job__inputs", "job__contract", "job__receipt")
        .order_by("-dispatched_at")[:limit]
    )
    verdicts = []
    for assignment in assignments:
        similarity, compared_with = assignment_similarity(assignment.role, assignment.job.verification)
        verdicts.append(
            Verdict(
                assignment=assignment,
                job=assignment.job,
                similarity=similarity,
                compared_with=compared_with,
                at=assignment.submitted_at or assignment.dispatched_at,
            )
        )
    return verdicts


def assignment_similarity(role: str, verification: dict[str, Any]) -> tuple[float | None, str]:
    """A role's similarity as the job's verification recorded it: A and B were compared with
    each other; in a tie-break each was also compared with C, which says more about it
    (C's own is its closer match). (None, "") when nothing was compared (solo, unfinished)."""
    tie_break = verification.get("tie_break") or {}
    if role == "A" and "a_c" in tie_break:
        return tie_break["a_c"].get("worst"), "A–C"
    if role == "B" and "b_c" in tie_break:
        return tie_break["b_c"].get("worst"), "B–C"
    if role == "C" and tie_break:
        pairs = [(pair.get("worst"), name) for name, pair in (("A–C", tie_break.get("a_c")), ("B–C", tie_break.get("b_c"))) if pair]
        known = [pair for pair in pairs if pair[0] is not None]
        return max(known) if known else (None, "")
    if verification.get("path") not in (None, "solo") and verification.get("worst") is not None:
        return verification["worst"], "A–B"
    return None, ""
