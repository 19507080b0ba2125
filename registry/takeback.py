"""Taking work back from nodes: assignments past their deadline, of nodes gone past the
reconnect grace, or of a node that closed its own socket holding them. Each role goes to
another node at once (the job's dispatch runs on commit); who is blamed differs:

- silence past the deadline is a strike, when the node was connected and knew it held the
  work: in the session that got the offer, or in a later one begun NODE_RECONNECT_ANSWER_S
  before the deadline (`welcome` lists a node's open assignments, so a node that came back
  and neither answered nor gave the work up chose to be silent);
- a node that closed its socket itself (a clean close, 1000 or 1001) while holding work
  left it: a failure on its record (routing weight), no strike, as an honest node
  stopping mid-job would; so did a node the registry cut off for what it sent (a frame
  over the limit, a flood), which was struck for that;
- a node offline past the grace is blameless: the disconnect may have been ours.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from .jobs import assignments_lose, job_locked, job_step_isolated
from .models import TERMINAL_STATES, Assignment, AssignmentState, Node
from .reputation import node_strike

# (online, offered in the current session, the current session's start, the deadline) -> blame
Blame = Callable[[bool, bool, datetime | None, datetime | None], str | None]


def _blame_silence(online: bool, same_session: bool, connected_at: datetime | None, deadline: datetime | None) -> str | None:
    if not online:
        return None
    if same_session:
        return "strike"
    answer_by = timedelta(seconds=settings.NODE_RECONNECT_ANSWER_S)
    if connected_at is not None and deadline is not None and connected_at + answer_by <= deadline:
        return "strike"
    return None


def assignments_lose_overdue() -> int:
    """Open assignments past their own deadline: a silent node costs seconds, not the job."""
    overdue = Assignment.objects.filter(state=AssignmentState.DISPATCHED, deadline__lte=timezone.now())
    return _assignments_take_back(overdue, "no result by the assignment deadline", _blame_silence)


def assignments_lose_disconnected() -> int:
    """Open assignments of nodes offline for longer than NODE_RECONNECT_GRACE_S since their
    last heartbeat, without blame: a node back within the grace keeps its work (a
    registry restart is nobody's fault)."""
    gone_before = timezone.now() - timedelta(seconds=settings.NODE_RECONNECT_GRACE_S)
    gone = Assignment.objects.filter(state=AssignmentState.DISPATCHED, node__is_online=False).filter(
        Q(node__last_seen__lt=gone_before) | Q(node__last_seen__isnull=True)
    )
    return _assignments_take_back(gone, "node offline past the reconnect grace", lambda *_: None)


def assignments_lose_left(*, node_id: object, session_key_pub: str, reason: str) -> int:
    """The session ended by the node's doing (it closed its socket, or was cut off for
    what it sent) while it held work: the work moves now, a failure on the node's record."""
    held = Assignment.objects.filter(
        state=AssignmentState.DISPATCHED, node_id=node_id, session_key_pub=session_key_pub
    )
    return _assignments_take_back(held, reason, lambda *_: "fail")


def _assignments_take_back(candidates: QuerySet[Assignment], reason: str, blame: Blame) -> int:
    taken = 0
    for job_id in candidates.values_list("job_id", flat=True).distinct()[:500]:
        taken += (
            job_step_isolated(
                job_id,
                "taking back assignments",
                lambda job_id=job_id: _job_assignments_take_back(job_id, candidates, reason, blame),
            )
            or 0
        )
    return taken


def _job_assignments_take_back(job_id: object, candidates: QuerySet[Assignment], reason: str, blame: Blame) -> int:
    job = job_locked(job_id)
    if job is None or job.state in TERMINAL_STATES:
        return 0
    # Re-read under the job's lock: a result may have come in since the query above.
    rows = list(
        candidates.filter(job_id=job_id)
        .select_for_update(of=("self",))
        .values_list(
            "pk", "node_id", "node__is_online", "session_key_pub", "node__session_key_pub",
            "node__connected_at", "deadline",
        )
    )
    lost = assignments_lose([(pk, job_id) for pk, *_ in rows], reason)
    for _, node_id, online, offered_to, session, connected_at, deadline in rows:
        verdict = blame(online, offered_to == session, connected_at, deadline)
        if verdict is not None:
            Node.objects.filter(pk=node_id).update(jobs_failed=F("jobs_failed") + 1)
        if verdict == "strike":
            node_strike(node_id=node_id, reason=reason, job_id=job_id, subnet=job.subnet)
    return lost
