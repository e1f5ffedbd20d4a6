"""An ASGI app for the end-to-end tests, served by hypercorn.

HTTP: answers every request with a JSON object saying what the app received (method, path,
raw path, query, Host, every header, HTTP version), and appends one line per request to the file
named by ASGI_ECHO_LOG, so a test can prove a request never reached the app.
WebSocket: accepts and echoes every text message.
"""

import json
import os

LOG = os.environ.get("ASGI_ECHO_LOG")


def _note(line):
    if LOG:
        with open(LOG, "a", encoding="utf-8") as f:
            f.write(line + "\n")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    host = ",".join(v for k, v in headers if k == "host")
    if scope["type"] == "websocket":
        _note(f"WS {scope['path']} host={host}")
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    # Read the whole body (small in the tests).
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    _note(f"{scope['method']} {scope['path']} host={host}")
    seen = {
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": scope.get("raw_path", b"").decode("latin-1"),
        "query": scope["query_string"].decode("latin-1"),
        "host": host,
        "headers": headers,
        "http_version": scope["http_version"],
        "body_len": len(body),
    }
    out = json.dumps(seen).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": out})
