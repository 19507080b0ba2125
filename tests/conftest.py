from __future__ import annotations

import pytest

from bim_site.celery import app as celery_app


@pytest.fixture(autouse=True)
def _ledger_invariants(request: pytest.FixtureRequest):
    """After every test that touched the database, the ledger's invariants must hold."""
    marker = request.node.get_closest_marker("django_db")
    uses_db = {"db", "transactional_db", "live_server"} & set(request.fixturenames)
    if marker is not None:
        uses_db.add("transactional_db" if marker.kwargs.get("transaction") else "db")
    if uses_db:
        # Requested here so the check runs before the test's transaction is rolled back.
        request.getfixturevalue("transactional_db" if "transactional_db" in uses_db else "db")
    yield
    if uses_db:
        from ledger.checks import ledger_violations

        assert ledger_violations() == []


@pytest.fixture(autouse=True)
def _eager_celery():
    """Unit tests run tasks in-process; the end-to-end tests run a real worker instead."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture(autouse=True)
def _node_db_calls_done():
    """Node sockets' database calls run on threads of their own (registry.node_io): one a
    test's event loop left behind must finish before the next test's database is set."""
    yield
    from registry import node_io

    node_io.db_threads_join()


@pytest.fixture(autouse=True)
def _fresh_routing_index():
    """Each test's database starts over, so no routing index or cached account may outlive it."""
    from ledger.accounts import account_cache_clear
    from registry import routing_index

    routing_index.index_forget()
    account_cache_clear()
    yield
    routing_index.index_forget()
    account_cache_clear()


@pytest.fixture(autouse=True)
def _artifact_root(settings, tmp_path_factory):
    settings.ARTIFACT_ROOT = tmp_path_factory.getbasetemp() / "artifacts"
    settings.REGISTRY_KEY_PATH = tmp_path_factory.getbasetemp() / "registry.key"


@pytest.fixture(autouse=True)
def _no_bim_login(monkeypatch, tmp_path_factory):
    """`bim` reads its stored login from $XDG_CONFIG_HOME/bim/: never the developer's own."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))


@pytest.fixture(scope="session")
def turn_server(tmp_path_factory: pytest.TempPathFactory):
    """coturn on 127.0.0.1 with TURN REST credentials (tests/turn.py), for the peer-to-peer
    tests; failing, never skipping, where turnserver is missing (the test tooling installs it)."""
    from django.conf import settings

    from tests import turn

    try:
        # With the tests' Redis, coturn publishes its allocations' bytes (registry.turn_usage).
        server = turn.start(tmp_path_factory.mktemp("turn"), redis_url=settings.REDIS_URL or None)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    turn.stop(server)
