"""Hostile nodes, embedded defences (issue 11, item 6): without Celery beat (the embedded
default runs tasks eagerly), node heartbeats drive the periodic defences in-process:
honeypots, sentinel re-runs, re-benchmarks, session-key pruning and the ledger's invariant
check run when due, once per interval."""

from __future__ import annotations

import pytest

from ledger import checks
from registry import benchmarks, honeypots, presence, sentinels, tasks
from tests.factories import SubnetFactory, online_node
from tests.registry.test_node_socket import run
from tests.registry.test_protocol_hygiene import still_open, welcomed

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

DEFENCES = {
    "honeypots": (honeypots, "honeypots_issue_due"),
    "sentinels": (sentinels, "sentinels_run"),
    "benchmarks": (benchmarks, "benchmarks_due"),
    "session_keys": (presence, "session_keys_prune"),
    "ledger_check": (checks, "ledger_check_record"),
}


@pytest.fixture
def calls(monkeypatch):
    """Record each periodic defence instead of running it; the beat clock starts over."""
    made: list[str] = []
    for name, (module, function) in DEFENCES.items():
        monkeypatch.setattr(module, function, lambda *a, _name=name, **k: made.append(_name) or [])
    tasks.embedded_beat_reset()
    yield made
    tasks.embedded_beat_reset()


def test_in_embedded_mode_heartbeats_run_honeypots_sentinels_and_re_benchmarks_when_due(settings, calls):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    subnet = SubnetFactory()
    keys = online_node(subnet, ready=False)

    async def scenario():
        socket = await welcomed(keys, subnet)
        for _ in range(3):
            await still_open(socket)
        await socket.disconnect()

    run(scenario)
    # Due at the first heartbeat, then not again within their intervals.
    assert sorted(calls) == ["benchmarks", "honeypots", "ledger_check", "sentinels", "session_keys"]


def test_each_defence_runs_again_once_its_interval_has_passed(settings, calls, monkeypatch):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    clock = [1000.0]
    monkeypatch.setattr(tasks.time, "monotonic", lambda: clock[0])
    tasks.embedded_beat()
    assert sorted(calls) == ["benchmarks", "honeypots", "ledger_check", "sentinels", "session_keys"]
    clock[0] += settings.CELERY_BEAT_SCHEDULE["registry-honeypots"]["schedule"] + 1  # 61 s: not the sentinels (300 s)
    tasks.embedded_beat()
    assert sorted(calls[5:]) == ["benchmarks", "honeypots"]
    clock[0] += settings.CELERY_BEAT_SCHEDULE["registry-sentinels"]["schedule"]
    tasks.embedded_beat()
    assert sorted(calls[7:]) == ["benchmarks", "honeypots", "sentinels"]
    clock[0] += settings.CELERY_BEAT_SCHEDULE["ledger-check"]["schedule"]
    tasks.embedded_beat()
    assert "ledger_check" in calls[10:]


def test_with_a_real_worker_beat_does_it_and_heartbeats_do_not(settings, calls):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    tasks.embedded_beat()
    assert calls == []
