"""A gRPC echo server and client for the ingress gateway's end-to-end test
(crates/cli/tests/ingress_grpc.rs), on gRPC's C core (PyPI `grpcio`). Messages are raw bytes,
so no generated code is needed.

Usage:
  grpc_echo.py serve PORT
      Serves demo.Echo on 127.0.0.1:PORT (plaintext h2, as behind a sidecar):
      /demo.Echo/Say answers the request's bytes, with trailing metadata `x-echo: <request>`;
      /demo.Echo/Fail answers NOT_FOUND "no such thing"; /demo.Echo/Denied is Say.
      Prints "ready" once it listens.
  grpc_echo.py call TARGET METHOD MESSAGE [CA_FILE AUTHORITY]
      One unary call, plaintext (h2c, prior knowledge) or TLS with CA_FILE as the root and
      AUTHORITY as the name checked and sent. Prints one JSON line: code, details, reply,
      trailers.
"""

import json
import sys
from concurrent import futures

import grpc


def say(request, context):
    context.set_trailing_metadata((("x-echo", request.decode("utf-8", "replace")),))
    return request


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def serve(port):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Denied": grpc.unary_unary_rpc_method_handler(say),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(target, method, message, ca=None, authority=None):
    if ca:
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(f.read())
        options = [
            ("grpc.ssl_target_name_override", authority),
            ("grpc.default_authority", authority),
        ]
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target)
    stub = channel.unary_unary(method)
    try:
        reply, c = stub.with_call(message.encode(), timeout=10)
        out = {
            "code": c.code().name,
            "details": c.details(),
            "reply": reply.decode("utf-8", "replace"),
            "trailers": dict(c.trailing_metadata() or ()),
        }
    except grpc.RpcError as e:
        out = {
            "code": e.code().name,
            "details": e.details(),
            "reply": None,
            "trailers": dict(e.trailing_metadata() or ()),
        }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        call(*sys.argv[2:])
