"""The real market for end-to-end tests: the test database seeded with the demo subnets and
accounts, then daphne, a Celery worker with beat and contributor node processes on loopback,
all on the test's PostgreSQL and Redis. Tests that use it are transactional: the child
processes must see committed rows."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import redis
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from bim_site.processes import ProcessGroup, child_env, free_port


@contextmanager
def running_market(
    tmp_path: Path, *, contributors: str, nodes: Mapping[str, str], redis_url: str | None = None, **env_overrides: str
) -> Iterator[tuple[str, dict[str, str], ProcessGroup]]:
    """Yield (registry url, API tokens by username, the process group) with one node process
    per `nodes` entry (owner name -> subnet slug); everything is stopped on exit. The
    registry uses the test's Redis unless given another (a fault test's own, to kill)."""
    assert connection.vendor == "postgresql", "this test is about PostgreSQL + Redis"
    redis_url = redis_url or settings.REDIS_URL
    redis.Redis.from_url(redis_url).flushdb()
    with open(os.devnull, "w") as quiet:
        call_command("bim_seed", "--demo", "--contributors", contributors, "--json", stdout=quiet)
    from rest_framework.authtoken.models import Token

    tokens = dict(Token.objects.values_list("user__username", "key"))
    db = connection.settings_dict
    run_id = uuid.uuid4().hex[:8]
    env = child_env(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        REDIS_URL=redis_url,
        BIM_CHANNEL_PREFIX=f"e2e{run_id}",
        BIM_INDEX_KEY_PREFIX=f"e2e{run_id}:index",
        BIM_ARTIFACT_ROOT=str(settings.ARTIFACT_ROOT),
        BIM_REGISTRY_KEY_PATH=str(settings.REGISTRY_KEY_PATH),
        BIM_NODE_HEARTBEAT_S="2",
        **env_overrides,
    )
    group = ProcessGroup(log_dir=tmp_path / "logs", env=env)
    try:
        url = group.start_registry(free_port())
        group.start_worker(beat=True)
        for name, subnet in nodes.items():
            group.start_node(name, registry=url, token=tokens[name], subnet=subnet, state_dir=tmp_path / "nodes")
        # The registry refuses jobs for a subnet no node serves (503), so the test starts
        # once every node has its model, has benchmarked and said ready.
        nodes_routable(len(nodes), group)
        yield url, tokens, group
    finally:
        group.stop()


def nodes_routable(count: int, group: ProcessGroup, timeout: float = 180.0) -> None:
    from registry.models import NodeSubnet

    deadline = time.monotonic() + timeout
    while (ready := NodeSubnet.objects.filter(ready_at__isnull=False, score__gt=0, node__is_online=True).count()) < count:
        group.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {ready} of {count} nodes routable after {timeout} s")
        time.sleep(0.2)
