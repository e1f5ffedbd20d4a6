"""An OTLP trace receiver for the end-to-end tests (crates/cli/tests/tracing.rs), built on the
official protobuf definitions (PyPI `opentelemetry-proto`) and gRPC's C core (`grpcio`).

Usage: otlp_receiver.py HOST GRPC_PORT HTTP_PORT OUT

Serves OTLP/gRPC (opentelemetry.proto.collector.trace.v1.TraceService/Export) on
HOST:GRPC_PORT and OTLP/HTTP with protobuf bodies (POST /v1/traces,
application/x-protobuf) on HOST:HTTP_PORT. Every span received is appended to OUT as one JSON
line: transport, service.name, trace and span ids (lower-case hex), parent span id, kind, name,
attributes and status code. Prints "ready" when both servers listen.
"""

import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.trace.v1 import trace_pb2

HOST, GRPC_PORT, HTTP_PORT, OUT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
LOCK = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def record(request, transport):
    lines = []
    for rs in request.resource_spans:
        resource = {a.key: value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                lines.append(
                    json.dumps(
                        {
                            "transport": transport,
                            "service": resource.get("service.name"),
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "kind": trace_pb2.Span.SpanKind.Name(s.kind),
                            "name": s.name,
                            "attributes": {a.key: value(a.value) for a in s.attributes},
                            "status": s.status.code,
                        }
                    )
                )
    with LOCK, open(OUT, "a", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        record(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


class HttpReceiver(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        if self.path != "/v1/traces" or "protobuf" not in self.headers.get("content-type", ""):
            self.send_response(404)
            self.end_headers()
            return
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        record(request, "http")
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    server.add_insecure_port(f"{HOST}:{GRPC_PORT}")
    server.start()
    http = ThreadingHTTPServer((HOST, HTTP_PORT), HttpReceiver)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
