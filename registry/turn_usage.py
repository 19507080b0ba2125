"""What the TURN server itself says it relayed for each job (docs/p2p.md §6).

A peer-to-peer job's peers report the bytes they moved over a TURN relay with their commits
(`Job.turn_bytes`), and a subnet may charge a surcharge for them. A node could report more
than it moved; the TURN server's own figures bound it. coturn (`--redis-statsdb`) publishes,
when an allocation ends, `turn/realm/<realm>/user/<username>/allocation/<id>/total_traffic`
with `rcvp=, rcvb=, sentp=, sentb=` (packets and bytes it received from and sent to the
party). The username is the TURN REST one the registry made, `<expiry>:job-<job id>` for a
job's user and `<expiry>:asg-<assignment id>` for a node (registry.p2p.ice_servers_for), so
each allocation names its job. `manage.py turn_usage` listens (Procfile `turn-usage`) and
records each allocation once (`TurnAllocation`).

With `BIM_TURN_STATS` on, a job whose peers report relayed bytes waits at verification, up to
`BIM_TURN_REPORT_S`, for the TURN server's report of its allocations (an allocation ends
when its peer closes, about when the job's results are in); settlement then charges the
smaller of the two figures (`turn_bytes_charged`). Without a report in time, the peers'
figure stands, as it does without TURN statistics.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from datetime import timedelta

import redis
from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import Sum
from django.utils import timezone

from . import effects
from .models import Assignment, Job, JobState, TurnAllocation

log = logging.getLogger("bim.registry.turn_usage")

CHANNEL = re.compile(r"^turn/realm/[^/]+/user/(?P<username>[^/]+)/allocation/(?P<allocation>[^/]+)/total_traffic$")
FIGURE = re.compile(r"(\w+)=(\d+)")
PARTY = re.compile(r"^\d+:(?P<kind>job|asg)-(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


def subscription(realm: str) -> str:
    """The pattern of the channels that carry an ended allocation's totals."""
    return f"turn/realm/{realm}/user/*/allocation/*/total_traffic"


def usage_record(channel: str, data: str) -> TurnAllocation | None:
    """Record one allocation's totals, once; None for a channel or username that is not a
    job's (another application's allocation on a shared TURN server), or a repeat."""
    match = CHANNEL.match(channel)
    party = PARTY.match(match["username"]) if match else None
    if match is None or party is None:
        return None
    figures = {name: int(value) for name, value in FIGURE.findall(data)}
    if "rcvb" not in figures or "sentb" not in figures:
        return None
    party_id = uuid.UUID(party["id"])
    if party["kind"] == "job":
        job_id = Job.objects.filter(pk=party_id).values_list("pk", flat=True).first()
    else:
        job_id = Assignment.objects.filter(pk=party_id).values_list("job_id", flat=True).first()
    if job_id is None:
        return None
    try:
        with transaction.atomic():
            row = TurnAllocation.objects.create(
                username=match["username"],
                allocation=match["allocation"],
                job_id=job_id,
                party="user" if party["kind"] == "job" else "node",
                bytes=figures["rcvb"] + figures["sentb"],
            )
            if Job.objects.filter(pk=job_id, state=JobState.VERIFYING).exists():
                effects.queue_task("verify_job", str(job_id))  # it may wait for this report
    except IntegrityError:
        return None  # reported before (a second listener, or coturn said it twice)
    return row


def turn_bytes_reported(job: Job) -> int | None:
    """The TURN server's total for the job's allocations, or None when it reported none."""
    return job.turn_allocations.aggregate(total=Sum("bytes"))["total"]


def turn_bytes_charged(job: Job) -> int:
    """The relayed bytes settlement charges: the peers' figure, bounded by the TURN server's
    where it reported."""
    reported = turn_bytes_reported(job) if job.turn_bytes else None
    return job.turn_bytes if reported is None else min(job.turn_bytes, reported)


def report_wait(job: Job) -> bool:
    """At verification: whether to wait for the TURN server's report of a job whose peers
    say they relayed bytes (at most `TURN_REPORT_S` after the job started verifying; the
    report, or the sweeper, verifies it again)."""
    if not settings.P2P_TURN_STATS or not job.turn_bytes or job.turn_allocations.exists():
        return False
    return timezone.now() < (job.verifying_at or timezone.now()) + timedelta(seconds=settings.P2P_TURN_REPORT_S)


def listen(redis_url: str, realm: str, *, stop: threading.Event) -> None:
    """Record every ended allocation the TURN server publishes until `stop` is set. Redis
    publishes to whoever listens at that moment: run it before the TURN server relays."""
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(subscription(realm))
    try:
        while not stop.is_set():
            message = pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            close_old_connections()
            channel = message["channel"].decode("utf-8", "replace")
            row = usage_record(channel, message["data"].decode("utf-8", "replace"))
            if row is not None:
                log.info("job %s: TURN relayed %d bytes for its %s (%s)", row.job_id, row.bytes, row.party, row.username)
    finally:
        pubsub.close()
        client.close()
