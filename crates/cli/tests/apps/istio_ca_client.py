"""An independent client of Istio's CA API for Ward's end-to-end tests: grpcio (gRPC's C core
and BoringSSL), with stubs that grpc_tools.protoc generates from Ward's .proto at run time.

usage: istio_ca_client.py PROTO_DIR BOOTSTRAP_JSON CSR_PEM OUT_DIR [--token TOKEN | --no-token]

Trusts only the bootstrap file's root, sends the CSR with `authorization: Bearer <token>` (the
file's token unless told otherwise), and writes each certificate of the answer to
OUT_DIR/cert-<i>.pem. On a refusal prints `REFUSED <code name> <details>` and exits 3.
"""

import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc


def stubs(proto_dir):
    """Generates and imports the ca.proto messages and service stubs."""
    out = tempfile.mkdtemp(prefix="ward-ca-stubs-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.join(proto_dir, "istio/v1/auth/ca.proto"),
        ]
    )
    if rc != 0:
        sys.exit(f"protoc failed: {rc}")
    sys.path.insert(0, out)
    for part in ("istio", "istio/v1", "istio/v1/auth"):
        open(os.path.join(out, part, "__init__.py"), "a").close()
    return (
        importlib.import_module("istio.v1.auth.ca_pb2"),
        importlib.import_module("istio.v1.auth.ca_pb2_grpc"),
    )


def main():
    proto_dir, bootstrap_path, csr_path, out_dir = sys.argv[1:5]
    extra = sys.argv[5:]
    with open(bootstrap_path) as f:
        bootstrap = json.load(f)
    with open(csr_path) as f:
        csr = f.read()
    token = bootstrap["token"]
    if extra[:1] == ["--no-token"]:
        token = None
    elif extra[:1] == ["--token"]:
        token = extra[1]

    ca_pb2, ca_pb2_grpc = stubs(proto_dir)
    credentials = grpc.ssl_channel_credentials(root_certificates=bootstrap["rootCert"].encode())
    # The control plane's certificate names it by SPIFFE id and by this DNS name; gRPC checks
    # the DNS name.
    root_ns = bootstrap["controlPlaneIdentity"].split("/ns/")[1].split("/")[0]
    options = [("grpc.ssl_target_name_override", f"ward-control-plane.{root_ns}.svc")]
    with grpc.secure_channel(bootstrap["controlPlane"], credentials, options) as channel:
        client = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        request = ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=3600)
        try:
            response = client.CreateCertificate(request, metadata=metadata, timeout=30)
        except grpc.RpcError as e:
            print(f"REFUSED {e.code().name} {e.details()}")
            sys.exit(3)
    for i, pem in enumerate(response.cert_chain):
        with open(os.path.join(out_dir, f"cert-{i}.pem"), "w") as f:
            f.write(pem)
    print(f"OK {len(response.cert_chain)}")


if __name__ == "__main__":
    main()
