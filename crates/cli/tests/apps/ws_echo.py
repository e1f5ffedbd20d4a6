"""WebSocket peer of the gateway WebSocket test (crates/cli/tests/ingress_websocket.rs), built on
PyPI `websockets`.

  ws_echo.py serve PORT SEEN   serve on 127.0.0.1:PORT, print "ready"; every HTTP request that
                               reaches the app appends its path to the file SEEN. A connection
                               gets "welcome", then "echo:<m>" for each message m.
  ws_echo.py call URL MESSAGE [CA SERVER_NAME]
                               connect (wss: trusting CA, checking SERVER_NAME), read the
                               welcome, send MESSAGE, read its echo, close; print JSON:
                               welcome, echo, close_code; or status when the handshake was
                               answered with another status than 101.
"""

import asyncio
import json
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import InvalidStatus


async def run_server(port, seen):
    def process_request(connection, request):
        with open(seen, "a", encoding="utf-8") as f:
            f.write(request.path + "\n")
        return None

    async def handler(ws):
        await ws.send("welcome")
        async for message in ws:
            await ws.send("echo:" + message)

    async with serve(handler, "127.0.0.1", port, process_request=process_request):
        print("ready", flush=True)
        await asyncio.get_running_loop().create_future()


async def call(url, message, ca=None, server_name=None):
    tls = {}
    if ca:
        tls = {"ssl": ssl.create_default_context(cafile=ca), "server_hostname": server_name}
    try:
        async with connect(url, open_timeout=10, close_timeout=5, **tls) as ws:
            welcome = await asyncio.wait_for(ws.recv(), 10)
            await ws.send(message)
            echo = await asyncio.wait_for(ws.recv(), 10)
            await ws.close()
            return {"welcome": welcome, "echo": echo, "close_code": ws.close_code}
    except InvalidStatus as e:
        return {"status": e.response.status_code}


def main():
    if sys.argv[1] == "serve":
        asyncio.run(run_server(int(sys.argv[2]), sys.argv[3]))
    else:
        print(json.dumps(asyncio.run(call(*sys.argv[2:]))), flush=True)


if __name__ == "__main__":
    main()
