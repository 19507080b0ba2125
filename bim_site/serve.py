"""daphne, with two changes for the node websocket (docs/protocol.md §4.5, §6.1):

* a message over the size limit is answered with a close frame, code 1009 (RFC 6455
  §7.4.1), instead of a dropped TCP connection, so a node learns why. Autobahn, under
  daphne, fails a connection by dropping it unless told otherwise (`failByDrop`), and
  daphne has no option for it; nor may an application close with 1009 itself (autobahn
  allows it 1000 and 3000-4999), so the transport must be the one to say it;
* the transport's limit is the registry's, BIM_NODE_MAX_MESSAGE_BYTES (1 MiB - 1 KiB),
  unless `--websocket-max-message-size` says otherwise: the frame never reaches Python.

And two for thousands of nodes reconnecting at once after a restart (bench/websockets.py):

* TCP listens with a backlog of BIM_LISTEN_BACKLOG (4096; the kernel caps it at
  net.core.somaxconn), not Twisted's 50: connections beyond the backlog had their SYNs
  dropped and came back only after the client's retransmits (1 s, 3 s, 7 s, ...);
* the application has BIM_WEBSOCKET_CONNECT_TIMEOUT_S (30) to accept a socket, not
  daphne's 5 s: in such a storm the last sockets of the queue waited longer than that,
  and each one dropped came back a second later to queue again;
* autobahn pretty-prints its whole configuration on every new websocket for a debug
  line, logged or not, a tenth of daphne's CPU in such a storm; it formats only when
  autobahn logs at debug level;
* the garbage collector: once the application is imported, everything alive (Django, the
  apps, the models, a million objects) is frozen out of collection (`gc.freeze`), and the
  first generation collects every BIM_GC_GEN0 (50,000) allocations instead of 700. A storm
  allocates a few objects per message for thousands of sockets, and each full collection
  walked the whole heap again: 7-9 s of a 5,000-node storm went to the collector.

Takes daphne's arguments: python -m bim_site.serve -b 127.0.0.1 -p 8000 bim_site.asgi:application
"""

from __future__ import annotations

import atexit
import gc
import os
import pprint
import sys
from typing import Any

import txaio
from autobahn.websocket import protocol as autobahn_protocol
from daphne import cli, server
from daphne.cli import CommandLineInterface
from daphne.endpoints import build_endpoint_description_strings
from daphne.utils import import_by_path
from daphne.ws_protocol import WebSocketFactory
from prometheus_client import multiprocess


class ClosingWebSocketFactory(WebSocketFactory):
    """Fails connections with a closing handshake (a close code the peer sees), not a drop."""

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:  # noqa: N802 (autobahn's name)
        options.setdefault("failByDrop", False)
        super().setProtocolOptions(*args, **options)


def pformat_when_debugging(value: Any) -> str:
    """autobahn's `pformat`, whose every use is a debug line (or a debug object's str)."""
    if txaio.get_global_log_level() in ("debug", "trace"):
        return pprint.pformat(value)
    return "(set autobahn's log level to debug to see this)"


def endpoints_with_backlog(*args: Any, **kwargs: Any) -> list[str]:
    backlog = int(os.environ.get("BIM_LISTEN_BACKLOG", "4096"))
    return [
        f"{endpoint}:backlog={backlog}" if endpoint.startswith("tcp:") else endpoint
        for endpoint in build_endpoint_description_strings(*args, **kwargs)
    ]


DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024 - 1024  # bim_site.settings.NODE_MAX_MESSAGE_BYTES's default


def import_then_freeze(path: str) -> Any:
    """daphne's application import, then the heap it built moved out of the collector's
    way: those objects live as long as the process (a freeze is the collector's own remedy,
    https://docs.python.org/3/library/gc.html#gc.freeze)."""
    application = import_by_path(path)
    gc.collect()
    gc.freeze()
    gc.set_threshold(int(os.environ.get("BIM_GC_GEN0", "50000")), 20, 20)
    return application


def main() -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Multiprocess metrics: this process's live gauges end with it (its counters stay).
        atexit.register(multiprocess.mark_process_dead, os.getpid())
    server.WebSocketFactory = ClosingWebSocketFactory  # daphne.server builds its factory from this name
    autobahn_protocol.pformat = pformat_when_debugging
    cli.build_endpoint_description_strings = endpoints_with_backlog  # daphne's -b/-p become these
    cli.import_by_path = import_then_freeze  # the application, then the collector tuned
    if not any(arg.startswith("--websocket_connect_timeout") for arg in sys.argv):
        sys.argv[1:1] = ["--websocket_connect_timeout", os.environ.get("BIM_WEBSOCKET_CONNECT_TIMEOUT_S", "30")]
    if not any(arg.startswith("--websocket-max-message-size") for arg in sys.argv):
        limit = os.environ.get("BIM_NODE_MAX_MESSAGE_BYTES", str(DEFAULT_MAX_MESSAGE_BYTES))
        sys.argv[1:1] = ["--websocket-max-message-size", limit, "--websocket-max-frame-size", limit]
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
