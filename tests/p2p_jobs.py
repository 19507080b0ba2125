"""Peer-to-peer jobs in registry tests (docs/p2p.md): submitting one by its input hash and
summary, and the `result_commit` an honest node sends in place of a result's bytes."""

from __future__ import annotations

from typing import Any

from bim_core import families, protocol
from registry import submit
from registry.models import Assignment, Job
from tests.factories import NodeKeys, result_message


def p2p_submit(user: Any, subnet: Any, inputs: dict[str, Any], key: str = "p2p-1") -> Job:
    family = families.family_for(subnet.task_type)
    job, _ = submit.job_submit(
        user=user,
        subnet_slug=subnet.slug,
        inputs=None,
        idempotency_key=key,
        transport="p2p",
        input_hash=protocol.input_hash(inputs),
        input_summary=family.input_summary(inputs),
    )
    return job


def commit_message(keys: NodeKeys, job: Job, assignment: Assignment, result: Any, **overrides: Any) -> dict[str, Any]:
    """The honest commit of `result`: the signed result message without `data`, with the
    payload's size and the node's transport figures."""
    full = result_message(keys, job, assignment, result, **overrides)
    size = len(protocol.b64decode(full.pop("data")))
    return {
        **full,
        "type": "result_commit",
        "size": overrides.get("size", size),
        "transport": overrides.get("transport", {"relayed": False, "bytes_sent": size, "bytes_received": 100}),
    }


def upload_message(keys: NodeKeys, job: Job, assignment: Assignment, result: Any, inputs: Any = None, **overrides: Any):
    """The `result` a node sends when the registry asks for a committed payload."""
    message = result_message(keys, job, assignment, result, **overrides)
    if inputs is not None:
        message["inputs"] = inputs
    return message



def upload_requests(sent: list[tuple[str, dict]]) -> list[dict[str, Any]]:
    """The `upload_request` messages among what was sent."""
    return [e["message"] for _, e in sent if e.get("message", {}).get("type") == "upload_request"]


def p2p_job_dispatched(inputs: dict[str, Any], capture: Any, *, credits: int = 5) -> tuple[Job, dict[Any, Any], Any]:
    """A P2P job of a fresh subnet dispatched to two online nodes of different owners:
    (job, {role: (assignment, NodeKeys)}, its user). `capture` is pytest-django's
    django_capture_on_commit_callbacks, so the offers go out."""
    from registry import dispatch
    from tests.factories import SubnetFactory, online_node, user_with_credits

    subnet = SubnetFactory()
    nodes = {n.node.pk: n for n in (online_node(subnet) for _ in range(2))}
    user = user_with_credits(credits)
    job = p2p_submit(user, subnet, inputs)
    with capture(execute=True):
        dispatch.job_dispatch(job_id=job.id)
    job = Job.objects.get(pk=job.pk)
    return job, {a.role: (a, nodes[a.node_id]) for a in job.assignments.all()}, user
