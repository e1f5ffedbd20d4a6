#!/usr/bin/env python3
"""First numbers for Ward's data path (issue 2): connection setup time and memory per sidecar.

Usage: python3 bench/first_numbers.py [path/to/ward]   (default: target/release/ward)

- Setup: time from connect() to the echoed first byte on a *new* connection, through
  app -> sidecar -> HBONE/mTLS -> sidecar -> app, versus straight to the echo app. The first
  connection of a sidecar pair also dials the pooled HBONE connection (TCP + TLS 1.3 + HTTP/2);
  later ones reuse it, so both "cold" (fresh pool each time, by restarting) and "warm" are shown.
- Memory: RSS of one `ward up` process with 1 and with 51 workloads; the difference / 50 is the
  cost of one sidecar (certificate, listeners, tasks), idle.
All traffic stays on loopback; counts and time are bounded.
"""
import json, os, socket, statistics, subprocess, sys, tempfile, time, urllib.request

WARD = sys.argv[1] if len(sys.argv) > 1 else "target/release/ward"

def workloads(n, app_port):
    docs = ["""apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}""",
    f"""apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: srv, namespace: b, annotations: {{ward.dev/demo-app: echo}}}}
spec: {{address: 127.2.0.10, serviceAccount: srv, labels: {{app: srv}}}}""",
    """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: srv, namespace: b}
spec:
  hosts: [srv.b.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  workloadSelector: {labels: {app: srv}}""",
    f"""apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: srv, namespace: b}}
spec:
  workloadSelector: {{labels: {{app: srv}}}}
  ingress: [{{port: {{number: 9000, name: tcp, protocol: TCP}}, defaultEndpoint: "127.0.0.1:{app_port}"}}]"""]
    for i in range(n):
        ip = f"127.2.{1 + i // 200}.{1 + i % 200}"
        docs.append(f"""apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: c{i}, namespace: a}}
spec: {{address: {ip}, serviceAccount: c{i}, labels: {{app: c{i}}}}}""")
        docs.append(f"""apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: c{i}, namespace: a}}
spec:
  workloadSelector: {{labels: {{app: c{i}}}}}
  egress: [{{port: {{number: 9000, name: tcp, protocol: TCP}}, bind: {ip}, hosts: ["b/srv.b.svc.cluster.local"]}}]""")
    return "\n---\n".join(docs)

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def start(n):
    d = tempfile.mkdtemp(prefix="ward-bench-")
    app_port, admin = free_port(), free_port()
    open(os.path.join(d, "mesh.yaml"), "w").write(workloads(n, app_port))
    p = subprocess.Popen([WARD, "up", "-f", d, "--state-dir", d + "/state", "--admin", f"127.0.0.1:{admin}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    for _ in range(300):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1).status == 200:
                return p, app_port
        except Exception:
            pass
        time.sleep(0.05)
    p.kill(); raise SystemExit("ward did not become ready")

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def first_byte(addr):
    t = time.perf_counter()
    s = socket.create_connection(addr, timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"x")
    assert s.recv(1) == b"x"
    dt = time.perf_counter() - t
    s.close()
    return dt * 1e6

def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(len(xs) * p / 100))]

def main():
    out = {}
    p, app_port = start(1)
    time.sleep(0.5)
    rss1 = rss_kib(p.pid)
    mesh = ("127.2.1.1", 9000)
    first_byte(mesh)  # dial the pooled HBONE connection
    for name, addr in [("direct", ("127.0.0.1", app_port)), ("mesh_warm", mesh)]:
        xs = [first_byte(addr) for _ in range(1000)]
        out[name] = {"p50_us": round(pct(xs, 50)), "p90_us": round(pct(xs, 90)), "p99_us": round(pct(xs, 99))}
    p.kill(); p.wait()
    cold = []
    for _ in range(5):
        p, _ = start(1)
        cold.append(first_byte(mesh))
        p.kill(); p.wait()
    out["mesh_cold_first_conn_us"] = {"median": round(statistics.median(cold)), "max": round(max(cold))}
    p, _ = start(51)
    time.sleep(1.0)
    rss51 = rss_kib(p.pid)
    p.kill(); p.wait()
    out["rss_kib"] = {"ward_up_2_workloads": rss1, "ward_up_52_workloads": rss51,
                      "per_sidecar_kib": round((rss51 - rss1) / 50)}
    print(json.dumps(out, indent=2))

if __name__ == "__main__":
    main()
