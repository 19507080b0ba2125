"""A throwaway coturn TURN/STUN server on 127.0.0.1 for the peer-to-peer tests.

It runs without a configuration file (`-n`: the package's /etc/turnserver.conf is not read),
checks TURN REST credentials against a random static secret, keeps its (empty) SQLite user
database, pid file and log in a temporary directory, and relays only between loopback
addresses. STUN stays on, so the same port is the tests' STUN server.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REALM = "bim.test"
# Relay ports per server: each allocation takes one, and a test makes a handful.
RELAY_PORTS = 40
STARTUP_S = 10.0


@dataclass(frozen=True)
class TurnServer:
    host: str
    port: int
    secret: str
    log_path: Path
    process: subprocess.Popen

    @property
    def stun_urls(self) -> list[str]:
        return [f"stun:{self.host}:{self.port}"]

    @property
    def turn_urls(self) -> list[str]:
        return [f"turn:{self.host}:{self.port}?transport=udp"]

    @property
    def urls(self) -> list[str]:
        return self.stun_urls + self.turn_urls

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def command_line(
    *, port: int, secret: str, min_port: int, max_port: int, workdir: Path, redis_url: str | None = None
) -> list[str]:
    return [
        "turnserver",
        "-n",
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        f"--min-port={min_port}",
        f"--max-port={max_port}",
        "--use-auth-secret",
        f"--static-auth-secret={secret}",
        f"--realm={REALM}",
        # The peers are on 127.0.0.1: coturn refuses to relay to loopback without this.
        "--allow-loopback-peers",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        f"--userdb={workdir / 'turndb'}",
        f"--pidfile={workdir / 'turnserver.pid'}",
        f"--log-file={workdir / 'turnserver.log'}",
        "--simple-log",
        "--no-stdout-log",
        # Per-session lines, with each session's relayed bytes when it ends ("usage: ... rb=,
        # sb="): what the tests compare the peers' own reports against.
        "--verbose",
        # Each ended allocation's bytes published on Redis (registry.turn_usage listens).
        *([f"--redis-statsdb={statsdb(redis_url)}"] if redis_url else []),
    ]


def statsdb(redis_url: str) -> str:
    """coturn's connection string for a redis:// URL (its own key=value form)."""
    parts = urlsplit(redis_url)
    db = (parts.path or "/0").lstrip("/") or "0"
    return f"ip={parts.hostname or '127.0.0.1'} port={parts.port or 6379} dbname={db} connect_timeout=30"


def start(workdir: Path, *, redis_url: str | None = None) -> TurnServer:
    if shutil.which("turnserver") is None:
        raise RuntimeError(
            "turnserver is not installed (Debian package coturn): scripts/test.sh installs it "
            "with the other test tools (bim_test_tools_ensure in scripts/services.sh)"
        )
    port = free_udp_and_tcp_port()
    # A random block of relay ports, so two test sessions on one machine rarely share one;
    # coturn moves on to another port of the block when one is taken.
    min_port = 40000 + secrets.randbelow(400) * 50
    secret = secrets.token_urlsafe(24)
    args = command_line(
        port=port, secret=secret, min_port=min_port, max_port=min_port + RELAY_PORTS - 1, workdir=workdir, redis_url=redis_url
    )
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = TurnServer("127.0.0.1", port, secret, workdir / "turnserver.log", process)
    deadline = time.monotonic() + STARTUP_S
    while not stun_answers(server.host, port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(server)
            raise RuntimeError(f"turnserver did not answer STUN on 127.0.0.1:{port}:\n{server.log()[-4000:]}")
        time.sleep(0.05)
    return server


def stop(server: TurnServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(5)


def free_udp_and_tcp_port() -> int:
    """A port free for both UDP and TCP right now (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no port free for both UDP and TCP")


def stun_answers(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """Whether a STUN Binding request to host:port gets a Binding success response."""
    transaction = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(timeout_s)
        udp.sendto(request, (host, port))
        try:
            response = udp.recv(2048)
        except OSError:  # timeout, or ICMP port unreachable before it listens
            return False
    return response[:2] == b"\x01\x01" and response[8:20] == transaction
