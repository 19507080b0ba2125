"""The real market for end-to-end tests: the test database seeded with the demo subnets and
accounts, then daphne, a Celery worker with beat and contributor node processes on loopback,
all on the test's PostgreSQL and Redis; or several daphne processes and workers side by side
on those same two (`registries=`, `workers=`), each node connected to the one it names.
Tests that use it are transactional: the child processes must see committed rows."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from bim_site.processes import ProcessGroup, child_env, free_port, wait_http


@dataclass(frozen=True)
class MarketNode:
    """A node process of the market: its subnet, the contributor who owns it (by default the
    user named as the node) and which registry process it connects to (0: the first)."""

    subnet: str
    owner: str | None = None
    registry: int = 0
    extra: tuple[str, ...] = ()  # more `bim_node` arguments (e.g. --no-webrtc)


@contextmanager
def running_market(
    tmp_path: Path,
    *,
    contributors: str,
    nodes: Mapping[str, str | MarketNode],
    redis_url: str | None = None,
    registries: int = 1,
    workers: int = 1,
    **env_overrides: str,
) -> Iterator[tuple[str, dict[str, str], ProcessGroup]]:
    """Yield (registry url, API tokens by username, the process group) with one node process
    per `nodes` entry (node name -> its subnet, or a MarketNode); everything is stopped on
    exit. The registry uses the test's Redis unless given another (a fault test's own, to
    kill). With `registries` > 1 there are that many daphne processes (named "registry",
    "registry-2", ...; `group.registries` has their urls by name, the first one's is the
    url yielded) and with `workers` > 1 that many Celery workers ("worker" runs beat,
    "worker-2", ... do not), all on the one PostgreSQL and the one Redis."""
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
    specs = {name: spec if isinstance(spec, MarketNode) else MarketNode(spec) for name, spec in nodes.items()}
    group = ProcessGroup(log_dir=tmp_path / "logs", env=env)
    try:
        # Started side by side, then waited for: each takes seconds to import.
        names = ["registry", *(f"registry-{i + 1}" for i in range(1, registries))]
        urls = [group.start_registry(free_port(), name=name, wait=False) for name in names]
        for i in range(workers):
            group.start_worker(beat=i == 0, name="worker" if i == 0 else f"worker-{i + 1}")
        for url in urls:
            wait_http(f"{url}/api/v1/registry/", timeout=60, group=group)
        for name, spec in specs.items():
            group.start_node(
                name,
                registry=urls[spec.registry],
                token=tokens[spec.owner or name],
                subnet=spec.subnet,
                state_dir=tmp_path / "nodes",
                extra=spec.extra,
            )
        # The registry refuses jobs for a subnet no node serves (503), so the test starts
        # once every node has its model, has benchmarked and said ready.
        nodes_routable(len(nodes), group)
        yield urls[0], tokens, group
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
