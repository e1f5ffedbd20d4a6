//! The ward-l4 path: one `ward up` process running a client sidecar (egress listeners) and a
//! server sidecar (ingress to the bench server), HBONE/mTLS between them, STRICT
//! PeerAuthentication and an ALLOW AuthorizationPolicy naming the client's identity.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::paths::{Endpoints, SERVICE_PORTS};
use crate::process::{free_port, pinned, Proc, SpawnError};

/// The client workload's address: its egress listeners are the path's entry points.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 1);
/// The server workload's address (HBONE on :15008).
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 10);

/// Why the ward pair did not come up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WardPairError {
    /// The temporary config or state directory could not be written.
    #[error("writing ward's config: {0}")]
    Config(#[from] std::io::Error),
    /// The binary could not start.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// `/ready` did not answer 200 in time, or ward exited.
    #[error("ward did not become ready: {reason}\n--- ward log (tail) ---\n{log}")]
    NotReady {
        /// What was last seen.
        reason: String,
        /// The end of ward's log.
        log: String,
    },
}

/// A running ward pair.
pub(crate) struct WardPair {
    /// The `ward up` process: both sidecars and the control plane.
    pub(crate) proc: Proc,
    /// Where the client dials.
    pub(crate) entry: Endpoints,
    _dir: tempfile::TempDir,
}

impl WardPair {
    /// Writes the mesh, starts `ward up` pinned to `cpu`, and waits for `/ready`.
    pub(crate) fn start(
        ward: &Path,
        server: &Endpoints,
        cpu: Option<usize>,
    ) -> Result<WardPair, WardPairError> {
        let dir = tempfile::Builder::new().prefix("ward-bench-").tempdir()?;
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config)?;
        std::fs::write(config.join("mesh.yaml"), mesh_yaml(server))?;
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log_path = dir.path().join("ward.log");
        let log = std::fs::File::create(&log_path)?;
        let mut proc = Proc::spawn(
            "ward",
            pinned(cpu, ward)
                .arg("up")
                .arg("-f")
                .arg(&config)
                .arg("--state-dir")
                .arg(dir.path().join("state"))
                .arg("--admin")
                .arg(admin.to_string())
                // Istio's default mesh has access logging off; per-connection INFO lines would
                // measure the log writer, not the data path.
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log),
        )?;
        let tail = || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let start = text.len().saturating_sub(2000);
            text.get(start..).unwrap_or_default().to_owned()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if proc.has_exited() {
                return Err(WardPairError::NotReady {
                    reason: "ward exited".into(),
                    log: tail(),
                });
            }
            let last = match http_status(admin, "/ready") {
                Ok(200) => break,
                Ok(code) => format!("/ready answered {code}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(WardPairError::NotReady {
                    reason: last,
                    log: tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let [http, echo, iperf] = SERVICE_PORTS.map(|p| SocketAddr::from((CLIENT_IP, p)));
        Ok(WardPair {
            proc,
            entry: Endpoints { http, echo, iperf },
            _dir: dir,
        })
    }
}

/// The mesh: two workloads, a service with the three bench ports, Sidecars wiring the client's
/// egress and the server's ingress, STRICT mTLS and one ALLOW policy.
fn mesh_yaml(server: &Endpoints) -> String {
    let [http_port, echo_port, iperf_port] = SERVICE_PORTS;
    let ports = format!(
        "  - {{number: {http_port}, name: tcp-http, protocol: TCP}}\n  \
         - {{number: {echo_port}, name: tcp-echo, protocol: TCP}}\n  \
         - {{number: {iperf_port}, name: tcp-iperf, protocol: TCP}}\n"
    );
    let ingress: String = [
        ("tcp-http", http_port, server.http),
        ("tcp-echo", echo_port, server.echo),
        ("tcp-iperf", iperf_port, server.iperf),
    ]
    .iter()
    .map(|(name, port, to)| {
        format!(
            "  - port: {{number: {port}, name: {name}, protocol: TCP}}\n    defaultEndpoint: {to}\n"
        )
    })
    .collect();
    let egress: String = [("tcp-http", http_port), ("tcp-echo", echo_port), ("tcp-iperf", iperf_port)]
        .iter()
        .map(|(name, port)| {
            format!(
                "  - port: {{number: {port}, name: {name}, protocol: TCP}}\n    bind: {CLIENT_IP}\n    hosts: [\"bench/srv.bench.svc.cluster.local\"]\n"
            )
        })
        .collect();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: srv, namespace: bench}}
spec: {{address: {SERVER_IP}, serviceAccount: srv, labels: {{app: srv}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: bench}}
spec: {{address: {CLIENT_IP}, serviceAccount: client, labels: {{app: client}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: srv, namespace: bench}}
spec:
  hosts: [srv.bench.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
{ports}  workloadSelector: {{labels: {{app: srv}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: srv, namespace: bench}}
spec:
  workloadSelector: {{labels: {{app: srv}}}}
  ingress:
{ingress}---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client, namespace: bench}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress:
{egress}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: srv-allow-client, namespace: bench}}
spec:
  selector: {{matchLabels: {{app: srv}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/bench/sa/client"]}}}}]
    to: [{{operation: {{ports: ["{http_port}", "{echo_port}", "{iperf_port}"]}}}}]
"#
    )
}

/// The status code of a plain HTTP/1.1 GET (ward's admin API).
fn http_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP/1.1 status line"))
}
