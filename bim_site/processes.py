"""Run the registry (daphne), a Celery worker and contributor nodes as child processes on
loopback: shared by `make demo`, the end-to-end tests and the benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ProcessGroup:
    """Children started together and stopped together (SIGTERM, then SIGKILL).

    Their metrics are one registry's: every child gets PROMETHEUS_MULTIPROC_DIR, a directory
    of the group's own emptied when the group is made, so a registry's /metrics adds up
    what its daphne processes and workers counted, and nothing of an earlier run."""

    log_dir: Path
    env: dict[str, str]
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    nodes_started: int = 0
    registries: dict[str, str] = field(default_factory=dict)  # daphne processes' urls by name
    # Children restarted when they exit on their own, as a service manager restarts a
    # production process (`Restart=always`), and when that happened.
    supervised: set[str] = field(default_factory=set)
    restarts: list[tuple[str, int | None]] = field(default_factory=list)
    _argv: dict[str, list[str]] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _stopping: bool = False
    metrics_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.metrics_dir = self.log_dir / "prometheus"
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir(parents=True)
        self.env = {**self.env, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        with self._lock:
            return self._start(name, argv)

    def _start(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        self._argv[name] = list(argv)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Appended: a child started again (after a fault test killed it) keeps the first one's log.
        log = (self.log_dir / f"{name}.log").open("ab")
        # Each child leads a process group of its own, so signals reach what it forks too
        # (`celery worker -B` forks its beat: killing the worker alone left beat running).
        child = subprocess.Popen(
            list(argv), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.children.append((name, child))
        return child

    @staticmethod
    def _signal(child: subprocess.Popen[bytes], sig: int) -> None:
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            pass  # the group is gone already

    def start_registry(self, port: int, *, name: str = "registry", wait: bool = True) -> str:
        """A daphne process; several may run side by side under distinct names (each one's
        log and `kill` go by its name). `wait=False` returns at once: `wait_http` it later."""
        self.start(name, [sys.executable, "-m", "bim_site.serve", "-b", "127.0.0.1", "-p", str(port), "bim_site.asgi:application"])
        url = self.registries[name] = f"http://127.0.0.1:{port}"
        if wait:
            wait_http(f"{url}/api/v1/registry/", timeout=60, group=self)
        return url

    def start_worker(self, *, beat: bool = True, concurrency: int = 2, name: str = "worker") -> None:
        """A Celery worker; of several side by side, only one may run beat."""
        argv = [
            sys.executable, "-m", "celery", "-A", "bim_site", "worker", "-l", "warning", "--pool=threads",
            f"--concurrency={concurrency}", "--hostname", f"{name}@%h",
        ]
        if beat:
            # Beat's schedule file is this group's own: groups running at once must not share one.
            argv += ["-B", "--schedule", str(self.log_dir / "celerybeat-schedule")]
        self.start(name, argv)

    def start_honeypot_peer(self, registry: str) -> None:
        """The registry's own user client for peer-to-peer honeypots (registry.honeypot_peer)."""
        self.start("honeypot-peer", [sys.executable, "manage.py", "honeypot_peer", "--registry", registry])

    def start_node(
        self, name: str, *, registry: str, token: str, subnet: str, state_dir: Path, extra: Sequence[str] = ()
    ) -> None:
        """A node process; each one connects from its own loopback /24 (127.N.0.1), so the
        registry's IP-block diversity rule sees distinct networks as it would in the wild."""
        self.nodes_started += 1
        self.start(
            name,
            [
                sys.executable, "-m", "bim_node",
                "--registry", registry,
                "--token", token,
                "--subnet", subnet,
                "--name", name,
                "--key-file", str(state_dir / f"{name}.key"),
                "--cache-dir", str(state_dir / "cache" / name),
                "--accept-license",
                "--source-ip", f"127.{self.nodes_started}.0.1",
                *extra,
            ],
        )

    def kill(self, name: str) -> None:
        """SIGKILL one child and what it forked, as a crash would: no shutdown handler runs.
        A supervised child killed so is not restarted: the caller starts it again."""
        with self._lock:
            entries = [c for c in self.children if c[0] == name]
            for entry in entries:
                self.children.remove(entry)
        for _, child in entries:
            self._signal(child, signal.SIGKILL)
            child.wait()

    def supervise(self, name: str) -> None:
        """Restart the child `name` whenever it exits on its own (checked twice a second)."""
        with self._lock:
            first = not self.supervised
            self.supervised.add(name)
        if first:
            threading.Thread(target=self._supervise, name="process-supervisor", daemon=True).start()

    def _supervise(self) -> None:
        while True:
            time.sleep(0.5)
            with self._lock:
                if self._stopping:
                    return
                for entry in [c for c in self.children if c[0] in self.supervised and c[1].poll() is not None]:
                    self.children.remove(entry)
                    self.restarts.append((entry[0], entry[1].returncode))
                    self._start(entry[0], self._argv[entry[0]])

    def start_redis(self, port: int) -> str:
        """A throwaway Redis on loopback that keeps nothing on disk (a restart loses all)."""
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        self.start("redis", argv)
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return url
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis on port {port} did not start") from None
                time.sleep(0.1)

    def check_alive(self) -> None:
        for name, child in list(self.children):
            if child.poll() is not None and name not in self.supervised:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {child.returncode}:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
        for _, child in self.children:
            if child.poll() is None:
                self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, child in self.children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._signal(child, signal.SIGKILL)  # the leader, or what it forked and left behind
            child.wait()
        self.children.clear()


def wait_http(url: str, *, timeout: float, group: ProcessGroup | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        if group is not None:
            group.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout} s")
        time.sleep(0.2)


def child_env(**overrides: str | None) -> dict[str, str]:
    """The current environment with overrides; None removes a variable."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env
