"""Record what the TURN server relayed for each peer-to-peer job (registry.turn_usage): listens
to coturn's statistics on Redis (`turnserver --redis-statsdb`)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from registry import turn_usage


class Command(BaseCommand):
    help = "Record each TURN allocation's relayed bytes, as coturn publishes them on Redis."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--redis", default=settings.P2P_TURN_STATS_REDIS_URL, help="the Redis coturn publishes to")
        parser.add_argument("--realm", default=settings.P2P_TURN_REALM, help="coturn's realm (* for any)")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["redis"]:
            raise SystemExit("turn_usage: no Redis to listen to (BIM_TURN_STATS_REDIS_URL or REDIS_URL)")
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        turn_usage.listen(options["redis"], options["realm"], stop=stop)
