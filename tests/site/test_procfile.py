"""The Procfile and deploy/env.example: every process's command starts (its entry point
exists and takes its arguments: each is run with --help), the ASGI application it names
exists, there is exactly one beat and it is a process of its own, the worker consumes every
queue the project routes tasks to, and the example environment is a production
configuration `manage.py check --deploy` passes."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from bim_site.celery import app as celery_app
from bim_site.processes import ROOT
from tests.site.test_production import run_django

PROCFILE = ROOT / "Procfile"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")  # honcho's and foreman's
DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def processes(env: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Each process's argv, ${VAR:-default} expanded as the shell would in `env` (default:
    this process's environment)."""
    env = os.environ if env is None else env
    found: dict[str, list[str]] = {}
    for line in PROCFILE.read_text().splitlines():
        if line.startswith("#") or not (match := LINE.match(line)):
            continue
        name, command = match.groups()
        assert name not in found, f"{name} twice"
        found[name] = shlex.split(DEFAULTED.sub(lambda m: env.get(m[1]) or m[2], command))
    return found


def example_env() -> dict[str, str]:
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def argv_here(command: list[str]) -> list[str]:
    """The command with this checkout's interpreter: `python` and `celery` are the venv's."""
    program, *args = command
    if program == "python":
        return [sys.executable, *args]
    if program == "celery":
        return [sys.executable, "-m", "celery", *args]
    raise AssertionError(f"{program}: run through the project's python or celery")


def is_beat(command: list[str]) -> bool:
    return "beat" in command or "-B" in command or "--beat" in command


def test_it_runs_daphne_the_workers_one_beat_and_the_p2p_helpers():
    found = processes()
    assert set(found) == {"web", "worker", "beat", "honeypot-peer", "turn-usage"}
    assert found["honeypot-peer"][:3] == ["python", "manage.py", "honeypot_peer"]
    assert [name for name, command in found.items() if is_beat(command)] == ["beat"]
    # beat is not a flag of a process that may be scaled: its own process, running beat only.
    assert found["beat"][:4] == ["celery", "-A", "bim_site", "beat"]
    assert found["web"][:3] == ["python", "-m", "bim_site.serve"]


def test_the_web_process_serves_the_projects_asgi_application():
    module, _, attribute = processes()["web"][-1].partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_the_worker_consumes_every_queue_tasks_are_routed_to():
    command = processes()["worker"]
    queues = {celery_app.conf.task_default_queue}
    for flag in ("-Q", "--queues"):
        if flag in command:
            queues = set(command[command.index(flag) + 1].split(","))
    routes = celery_app.conf.task_routes or {}
    routed = {celery_app.conf.task_default_queue} | {
        route["queue"] for route in (routes.values() if isinstance(routes, dict) else []) if "queue" in route
    }
    assert routed <= queues


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", ["web", "worker", "beat", "honeypot-peer", "turn-usage"])
def test_each_command_starts(tmp_path, name):
    """`--help` after the command's own arguments: the program exists, loads the project
    (celery -A bim_site) and accepts every option the line gives it."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bim_site.settings",
        "BIM_VAR_DIR": str(tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [*argv_here(processes()[name]), "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=150
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "usage" in result.stdout.lower()


def test_the_example_environment_names_the_proxy_and_the_metrics_folder():
    env = example_env()
    assert env["BIM_TRUSTED_PROXIES"] == "127.0.0.1"  # nginx on the same machine, as deploy/nginx.conf
    assert env["BIM_SERVE_STATIC"] == "0"  # deploy/nginx.conf serves /static/
    assert Path(env["PROMETHEUS_MULTIPROC_DIR"]).is_absolute()


@pytest.mark.timeout(120)
def test_the_example_environment_passes_check_deploy(tmp_path):
    env = {
        **example_env(),
        "SECRET_KEY": "x7" * 20 + "production-only-secret-key-of-enough-entropy",
        "BIM_VAR_DIR": str(tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        # The settings only parse these; no connection is opened by `check`.
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    }
    result = run_django(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
