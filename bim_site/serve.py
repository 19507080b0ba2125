"""daphne, with two changes for the node websocket (docs/protocol.md §4.5, §6.1):

* a message over the size limit is answered with a close frame, code 1009 (RFC 6455
  §7.4.1), instead of a dropped TCP connection, so a node learns why. Autobahn, under
  daphne, fails a connection by dropping it unless told otherwise (`failByDrop`), and
  daphne has no option for it; nor may an application close with 1009 itself (autobahn
  allows it 1000 and 3000-4999), so the transport must be the one to say it;
* the transport's limit is the registry's, BIM_NODE_MAX_MESSAGE_BYTES (1 MiB - 1 KiB),
  unless `--websocket-max-message-size` says otherwise: the frame never reaches Python.

Takes daphne's arguments: python -m bim_site.serve -b 127.0.0.1 -p 8000 bim_site.asgi:application
"""

from __future__ import annotations

import os
import sys
from typing import Any

from daphne import server
from daphne.cli import CommandLineInterface
from daphne.ws_protocol import WebSocketFactory


class ClosingWebSocketFactory(WebSocketFactory):
    """Fails connections with a closing handshake (a close code the peer sees), not a drop."""

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:  # noqa: N802 (autobahn's name)
        options.setdefault("failByDrop", False)
        super().setProtocolOptions(*args, **options)


DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024 - 1024  # bim_site.settings.NODE_MAX_MESSAGE_BYTES's default


def main() -> None:
    server.WebSocketFactory = ClosingWebSocketFactory  # daphne.server builds its factory from this name
    if not any(arg.startswith("--websocket-max-message-size") for arg in sys.argv):
        limit = os.environ.get("BIM_NODE_MAX_MESSAGE_BYTES", str(DEFAULT_MAX_MESSAGE_BYTES))
        sys.argv[1:1] = ["--websocket-max-message-size", limit, "--websocket-max-frame-size", limit]
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
