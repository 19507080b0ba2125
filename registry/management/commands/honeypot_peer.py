"""Run the honeypot peer (registry.honeypot_peer): the registry's own user client that brings
peer-to-peer honeypots' inputs to their nodes over data channels."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from registry import honeypot_peer


class Command(BaseCommand):
    help = "Bring peer-to-peer honeypots' inputs to their nodes, as a user's client does."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--registry", default=os.environ.get("BIM_REGISTRY_URL", "http://127.0.0.1:8000"),
            help="the registry's address as users reach it (default $BIM_REGISTRY_URL or http://127.0.0.1:8000)",
        )
        parser.add_argument("--concurrency", type=int, default=8, help="honeypots served at once")
        parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds for a data channel to open")

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        honeypot_peer.serve(
            options["registry"].rstrip("/"), stop=stop, concurrency=options["concurrency"],
            connect_timeout=options["connect_timeout"],
        )
