"""The honeypot peer: the registry's own user client for peer-to-peer honeypots.

A honeypot must look to a node exactly like a user's job, its transport included. A node
given a P2P honeypot gets what it gets for any user's P2P job: a contract without inputs, an
offer relayed by the user socket, the inputs over a data channel. This process is that user.
It connects to the registry's public address with the honeypot account's token and brings
each P2P honeypot's inputs through the SDK's own exchange (bim_sdk.p2p), the code every user
runs, so nothing in its signalling or framing differs. The registry judges the results as it
judges an audited job's: once both nodes have committed, node A uploads its payload
(registry.p2p_uploads.uploads_needed), and a node that committed another hash uploads its own.

`manage.py honeypot_peer --registry URL` runs it (Procfile `honeypot-peer`). It says it runs
through a database heartbeat, and the beat issues honeypots peer to peer only while that is
fresh (registry.honeypots.honeypots_issue_due): without it, honeypots use the relay.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import close_old_connections

from bim_sdk import BimError, Client

from . import honeypots

log = logging.getLogger("bim.registry.honeypot_peer")

POLL_S = 1.0
# The exchange ends when the job does; this bounds one that the registry never ends.
AFTER_DEADLINE_S = 60.0


def serve(base_url: str, *, stop: threading.Event, concurrency: int = 8, connect_timeout: float = 10.0) -> None:
    """Bring every waiting P2P honeypot's inputs to its nodes until `stop` is set."""
    client = Client(base_url, honeypots.peer_token(), timeout=30)
    serving: set[str] = set()
    beaten = 0.0
    with ThreadPoolExecutor(concurrency, thread_name_prefix="honeypot-peer") as pool:
        while not stop.is_set():
            close_old_connections()
            if time.monotonic() - beaten >= honeypots.PEER_HEARTBEAT_S:
                honeypots.peer_heartbeat()
                beaten = time.monotonic()
            waiting = honeypots.peer_jobs_waiting()
            # An exchange runs until its job ends; one that ended early (the registry
            # refused it) is not started again while the job still waits.
            serving &= {job_id for job_id, _, _ in waiting}
            for job_id, inputs, seconds_left in waiting:
                if job_id not in serving:
                    serving.add(job_id)
                    pool.submit(bring_inputs, client, job_id, inputs, max(seconds_left, 0) + AFTER_DEADLINE_S, connect_timeout)
            stop.wait(POLL_S)


def bring_inputs(client: Client, job_id: str, inputs: dict[str, Any], timeout: float, connect_timeout: float) -> None:
    """One honeypot's exchange, as a user's client runs it; its results are judged by the
    registry, so the outcome is only logged."""
    try:
        job = client.job(job_id)
        for event in client.p2p_events(job, inputs, timeout=timeout, connect_timeout=connect_timeout):
            outcome = getattr(event, "job", None)
            if outcome is not None:
                log.info("honeypot job %s: %s (%s)", job_id, outcome.get("state"), event.fallback_reason or "peer to peer")
    except (BimError, TimeoutError, OSError) as exc:
        log.warning("honeypot job %s: the exchange ended early: %s", job_id, exc)
    except Exception:
        log.exception("honeypot job %s: the exchange failed", job_id)
