"""`python -m bim_site.serve` is daphne whose transport answers a websocket message over
its size limit with a 1009 close, not a dropped TCP connection (issue 11, protocol
hygiene), and tells the application so; the node consumer strikes a node for it."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bim_site.processes import ProcessGroup, child_env, free_port

pytestmark = pytest.mark.timeout(60)


async def _send_too_big(port: int) -> int | str | None:
    async with connect(f"ws://127.0.0.1:{port}/", max_size=None, open_timeout=20) as ws:
        try:
            # Over the registry's limit (1 MiB - 1 KiB, which bim_site.serve gives the
            # transport) and under daphne's own 1 MiB: plain daphne takes it.
            await ws.send("x" * (1024 * 1024 - 512))
            await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        except TimeoutError:
            return "open"  # the frame was taken: the test app answers nothing
    return "open"


@pytest.mark.parametrize(("server", "code"), [("daphne", "open"), ("bim_site.serve", 1009)])
def test_a_message_over_the_registrys_limit_gets_a_1009_close_from_the_transport(tmp_path, server, code):
    recorded = tmp_path / "disconnect.json"
    port = free_port()
    group = ProcessGroup(tmp_path / "logs", child_env(BIM_TEST_DISCONNECT_FILE=str(recorded)))
    group.start("server", [sys.executable, "-m", server, "-b", "127.0.0.1", "-p", str(port), "tests.site.ws_recorder_app:application"])
    try:
        received = asyncio.run(_retrying(port))
    finally:
        group.stop()
    assert received == code  # plain daphne passes the frame on to the application
    if code != "open":
        assert json.loads(recorded.read_text())["code"] == code


async def _retrying(port: int) -> int | str | None:
    for _ in range(100):
        try:
            return await _send_too_big(port)
        except OSError:
            await asyncio.sleep(0.2)  # not listening yet
    raise AssertionError("the server never listened")


def test_the_served_application_is_frozen_out_of_the_collectors_way():
    """Once daphne has imported the application, its objects leave collection (gc.freeze)
    and the first generation collects far less often: a reconnect storm spent 7-9 s in
    full collections of a heap that lives as long as the process."""
    import subprocess

    probe = (
        "import gc, json; from bim_site import serve; "
        "serve.import_then_freeze('tests.site.ws_recorder_app:application'); "
        "print(json.dumps([gc.get_freeze_count(), gc.get_threshold()[0]]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=child_env(), capture_output=True, text=True, timeout=60, check=True)
    frozen, gen0 = json.loads(out.stdout.strip().splitlines()[-1])
    assert frozen > 10_000 and gen0 == 50_000
