"""A bare ASGI websocket app for tests/site/test_serve.py: accepts, then writes the
disconnect event it receives to the file named by BIM_TEST_DISCONNECT_FILE."""

import json
import os


async def application(scope, receive, send):
    if scope["type"] != "websocket":
        return
    while True:
        event = await receive()
        if event["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif event["type"] == "websocket.disconnect":
            with open(os.environ["BIM_TEST_DISCONNECT_FILE"], "w") as out:
                json.dump(event, out)
            return
