//! The ward-l4 and ward-l7 paths: two `ward up` processes on the same YAML, as on two nodes:
//! one runs the client sidecar (egress listeners; `--workloads bench/client`) on the client
//! side, the other the server sidecar (ingress to the bench server; `--workloads bench/srv`) on
//! the server side. They share one CA (one `--state-dir`) and talk HBONE/mTLS, with STRICT
//! PeerAuthentication and an ALLOW AuthorizationPolicy naming the client's identity.
//! At L7 the HTTP port is `protocol: HTTP`, the policy has 10 rules and a RequestAuthentication
//! checks the bearer token the load generator sends (keys from [`crate::jwt::Idp`]).
//! The gateway path runs an ingress gateway (`istio: ingressgateway`) in the client's place: a
//! Gateway with an HTTP server and two TCP servers on the service ports, routed by a
//! VirtualService over HBONE to the server sidecar, whose HTTP port allows the gateway.
//! The cost variants of L7 change one thing each: `ward-l7-traced` adds a Telemetry tracing
//! every request of the server workload to the bench's OTLP sink ([`crate::otlp_sink`]),
//! `ward-l7-audit-off` starts both sides with `--no-audit`. `ward-l7-twin` changes nothing: it
//! is ward-l7 again in its own processes, so a run can tell a variant's cost from the
//! difference between two sets of processes (the A/A control). `ward-l4-twin` is the same for
//! ward-l4; with `--twin-ward` the twins run another ward binary (an A/B of two builds).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::http1::Requests;
use crate::jwt::{Idp, IdpError};
use crate::net::{Net, Side};
use crate::otlp_sink::{OtlpSink, SinkError};
use crate::paths::{Endpoints, SERVICE_PORTS};
use crate::process::{free_port, Proc, SpawnError};

/// Which ward path: both run at once (each in its own `ward up`), so each has its own addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layer {
    /// Every port TCP.
    L4,
    /// L4 again, as a second pair of processes (the A/A control, or with `--twin-ward` another
    /// build of ward: an A/B comparison within each round).
    L4Twin,
    /// The HTTP port is `protocol: HTTP`, with L7 authorization and JWT authentication.
    L7,
    /// An ingress gateway in front of the server sidecar (HTTP port `protocol: HTTP`).
    Gateway,
    /// L7, with the server's requests traced at 100% to an OTLP sink.
    L7Traced,
    /// L7, with both sides' audit trail off.
    L7AuditOff,
    /// L7 again, as a second pair of processes (the A/A control).
    L7Twin,
}

impl Layer {
    /// The path's address block in [`crate::net`]: the client workload (whose egress listeners
    /// are the path's entry points) at `.1`, the server workload (HBONE on :15008) at `.10`.
    fn block(self) -> u8 {
        match self {
            Layer::L4 => 0,
            Layer::L4Twin => 6,
            Layer::L7Traced => 3,
            Layer::L7AuditOff => 4,
            Layer::L7Twin => 5,
            Layer::L7 => 7,
            Layer::Gateway => 8,
        }
    }

    /// The L7 path or one of its cost variants: same mesh, policy and token.
    fn is_l7(self) -> bool {
        matches!(
            self,
            Layer::L7 | Layer::L7Traced | Layer::L7AuditOff | Layer::L7Twin
        )
    }
}

/// The server side's admin port in the server namespace (nothing else listens there on it).
const SERVER_ADMIN_PORT: u16 = 15000;

/// The header the L7 policy's `when` condition requires, and its value.
const BENCH_HEADER: (&str, &str) = ("x-bench", "l7");

/// How long the L7 path may take to fetch the JWKS and answer 200.
const JWKS_WAIT: Duration = Duration::from_secs(20);

/// Why the ward pair did not come up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WardPairError {
    /// The temporary config or state directory could not be written.
    #[error("writing ward's config: {0}")]
    Config(#[from] std::io::Error),
    /// The binary could not start.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The JWKS endpoint or the token could not be set up (L7).
    #[error("identity provider: {0}")]
    Idp(#[from] IdpError),
    /// The OTLP sink did not start (L7 traced).
    #[error(transparent)]
    Sink(#[from] SinkError),
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
    /// The client side's `ward up` (its control plane and the client sidecar).
    client: Proc,
    /// The server side's `ward up` (its control plane and the server sidecar).
    server: Proc,
    /// Where the client dials.
    pub(crate) entry: Endpoints,
    /// What the load generator sends (L7: with the bearer token and the policy's header).
    pub(crate) requests: Requests,
    /// Both sides' admin APIs (their `/metrics`).
    admins: [SocketAddr; 2],
    /// L7 traced: the collector the server sidecar exports to.
    pub(crate) sink: Option<OtlpSink>,
    /// L7: the JWKS endpoint, served as long as the pair runs.
    _idp: Option<Idp>,
    _dir: tempfile::TempDir,
}

impl WardPair {
    /// Writes the mesh, starts the client side's then the server side's `ward up` pinned to
    /// `cpu`, and waits for each one's `/ready`; at L7 also until a request with the token is
    /// allowed (the sidecar fetched the JWKS: before that, every token is refused with 401).
    pub(crate) fn start(
        ward: &Path,
        server: &Endpoints,
        cpu: Option<usize>,
        layer: Layer,
        net: Net,
    ) -> Result<WardPair, WardPairError> {
        if !ward.is_file() {
            return Err(WardPairError::Config(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no ward binary at {}", ward.display()),
            )));
        }
        let idp = if layer.is_l7() {
            Some(Idp::start(&std::env::current_exe()?, net, cpu)?) // serve-jwks
        } else {
            None
        };
        // The collector runs with the load generator (as `cpu` is the proxies' CPU, the
        // sink's is not counted as theirs): the caller pins this process there.
        let sink = match layer {
            Layer::L7Traced => Some(OtlpSink::start(
                &std::env::current_exe()?,
                net,
                net.ip(Side::Server, layer.block()).into(),
                None,
            )?),
            _ => None,
        };
        let requests = match &idp {
            None => Requests::plain(),
            Some(idp) => Requests::with_headers(&format!(
                "Authorization: Bearer {}\r\n{}: {}\r\n",
                idp.token, BENCH_HEADER.0, BENCH_HEADER.1
            )),
        };
        let dir = tempfile::Builder::new().prefix("ward-bench-").tempdir()?;
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config)?;
        let mut mesh = mesh_yaml(server, layer, net);
        if let Some(idp) = &idp {
            mesh.push_str(&l7_security_yaml(idp.addr));
        }
        if let Some(sink) = &sink {
            mesh.push_str(&traced_yaml(sink.addr));
        }
        std::fs::write(config.join("mesh.yaml"), mesh)?;
        let state = dir.path().join("state");
        // The client side first: it creates the CA root under `state`, which the server side
        // then loads (shared, as a copied `--state-dir` or `--cacerts` would be across nodes).
        let client_admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let server_admin = match net {
            Net::Loopback => SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            Net::Namespaces => {
                SocketAddr::from((net.ip(Side::Server, layer.block()), SERVER_ADMIN_PORT))
            }
        };
        let start_side = |side: Side, workload: &str, admin: SocketAddr| {
            let log_path = dir.path().join(format!("ward-{workload}.log"));
            let log = std::fs::File::create(&log_path)?;
            let mut command = net.command(side, cpu, ward);
            command.arg("up");
            if layer == Layer::L7AuditOff {
                // docs/audit.md: how an operator runs without a trail.
                command.arg("--no-audit");
            }
            let mut proc = Proc::spawn(
                "ward",
                command
                    .arg("-f")
                    .arg(&config)
                    .arg("--state-dir")
                    .arg(&state)
                    .arg("--admin")
                    .arg(admin.to_string())
                    .arg("--workloads")
                    .arg(format!("bench/{workload}"))
                    // Istio's default mesh has access logging off; per-connection INFO lines
                    // would measure the log writer, not the data path.
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(log),
            )?;
            wait_ready(&mut proc, admin, &log_path)?;
            Ok::<_, WardPairError>((proc, log_path))
        };
        let (client, client_log) = start_side(Side::Client, "client", client_admin)?;
        let (mut server_proc, server_log) = start_side(Side::Server, "srv", server_admin)?;
        let logs = || {
            format!(
                "{}\n--- server side ---\n{}",
                tail(&client_log),
                tail(&server_log)
            )
        };
        let [http, echo, iperf] =
            SERVICE_PORTS.map(|p| SocketAddr::from((net.ip(Side::Client, layer.block()), p)));
        if let Some(idp) = &idp {
            let deadline = Instant::now() + JWKS_WAIT;
            loop {
                let last = match request_status(http, &requests.keepalive) {
                    Ok(200) => break,
                    Ok(code) => format!("a request with the token answered {code}"),
                    Err(e) => format!("a request with the token: {e}"),
                };
                if server_proc.has_exited() || Instant::now() > deadline {
                    return Err(WardPairError::NotReady {
                        reason: format!("{last} (JWKS not fetched?)"),
                        log: logs(),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // The same request without the policy's header must be denied, or the path would
            // not measure enforcement.
            let unmatched = Requests::with_headers(&format!(
                "Authorization: Bearer {}\r\n{}: other\r\n",
                idp.token, BENCH_HEADER.0
            ));
            match request_status(http, &unmatched.keepalive) {
                Ok(403) => {}
                other => {
                    return Err(WardPairError::NotReady {
                        reason: format!(
                            "a request matching no rule was not denied with 403: {other:?}"
                        ),
                        log: logs(),
                    })
                }
            }
        }
        Ok(WardPair {
            client,
            server: server_proc,
            entry: Endpoints { http, echo, iperf },
            requests,
            admins: [client_admin, server_admin],
            sink,
            _idp: idp,
            _dir: dir,
        })
    }
}

/// The mesh: two workloads, a service with the three bench ports, Sidecars wiring the client's
/// egress and the server's ingress, STRICT mTLS and one ALLOW policy (at L4; at L7 the policy
/// is [`l7_security_yaml`]'s). On the gateway path the client workload is the ingress gateway,
/// with no Sidecar, and [`gateway_yaml`] adds its Gateway, routes and policy.
fn mesh_yaml(server: &Endpoints, layer: Layer, net: Net) -> String {
    let [http_port, echo_port, iperf_port] = SERVICE_PORTS;
    let client_ip = net.ip(Side::Client, layer.block());
    let server_ip = net.ip(Side::Server, layer.block());
    // Istio protocol selection: the `protocol` field decides; the names follow it.
    let (web, web_protocol) = match layer {
        Layer::L4 | Layer::L4Twin => ("tcp-http", "TCP"),
        Layer::L7 | Layer::L7Traced | Layer::L7AuditOff | Layer::L7Twin | Layer::Gateway => {
            ("http-web", "HTTP")
        }
    };
    let ports = format!(
        "  - {{number: {http_port}, name: {web}, protocol: {web_protocol}}}\n  \
         - {{number: {echo_port}, name: tcp-echo, protocol: TCP}}\n  \
         - {{number: {iperf_port}, name: tcp-iperf, protocol: TCP}}\n"
    );
    let wired = [
        (web, web_protocol, http_port, server.http),
        ("tcp-echo", "TCP", echo_port, server.echo),
        ("tcp-iperf", "TCP", iperf_port, server.iperf),
    ];
    let ingress: String = wired
        .iter()
        .map(|(name, protocol, port, to)| {
            format!(
                "  - port: {{number: {port}, name: {name}, protocol: {protocol}}}\n    \
                 defaultEndpoint: {to}\n"
            )
        })
        .collect();
    let egress: String = wired
        .iter()
        .map(|(name, protocol, port, _)| {
            format!(
                "  - port: {{number: {port}, name: {name}, protocol: {protocol}}}\n    \
                 bind: {client_ip}\n    hosts: [\"bench/srv.bench.svc.cluster.local\"]\n"
            )
        })
        .collect();
    let policy = match layer {
        Layer::L4 | Layer::L4Twin => format!(
            r#"---
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
        ),
        Layer::L7 | Layer::L7Traced | Layer::L7AuditOff | Layer::L7Twin => String::new(),
        Layer::Gateway => gateway_yaml(),
    };
    // The client workload: a sidecar with egress listeners, or the ingress gateway in its place.
    let (client_sa, client_labels, client_sidecar) = match layer {
        Layer::Gateway => ("ingressgateway", "istio: ingressgateway", String::new()),
        Layer::L4
        | Layer::L4Twin
        | Layer::L7
        | Layer::L7Traced
        | Layer::L7AuditOff
        | Layer::L7Twin => (
            "client",
            "app: client",
            format!(
                r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client, namespace: bench}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress:
{egress}---
"#
            ),
        ),
    };
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: srv, namespace: bench}}
spec: {{address: {server_ip}, serviceAccount: srv, labels: {{app: srv}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: bench}}
spec: {{address: {client_ip}, serviceAccount: {client_sa}, labels: {{{client_labels}}}}}
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
{client_sidecar}apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
{policy}"#
    )
}

/// The gateway path's own documents (after [`mesh_yaml`]'s server workload, service and
/// STRICT mTLS): a Gateway serving the three service ports (HTTP, and TCP for echo and iperf3),
/// a VirtualService routing each to the server, and an ALLOW policy naming the gateway.
fn gateway_yaml() -> String {
    let [http_port, echo_port, iperf_port] = SERVICE_PORTS;
    let host = "srv.bench.svc.cluster.local";
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: bench}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {http_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: {echo_port}, name: tcp-echo, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: {iperf_port}, name: tcp-iperf, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: srv, namespace: bench}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: {host}, port: {{number: {http_port}}}}}}}]
  tcp:
  - match: [{{port: {echo_port}}}]
    route: [{{destination: {{host: {host}, port: {{number: {echo_port}}}}}}}]
  - match: [{{port: {iperf_port}}}]
    route: [{{destination: {{host: {host}, port: {{number: {iperf_port}}}}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: srv-allow-gateway, namespace: bench}}
spec:
  selector: {{matchLabels: {{app: srv}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/bench/sa/ingressgateway"]}}}}]
"#
    )
}

/// The L7 path's security: a RequestAuthentication trusting the bench's JWKS at `jwks`, and one
/// ALLOW policy of 10 rules in which the bench request (GET /1k from the client workload, with
/// the token and [`BENCH_HEADER`]) matches rule 9 only; rule 8 lets the TCP echo and iperf3
/// ports through.
///
/// istio/api security/v1beta1/authorization_policy.proto: "If there are any ALLOW policies
/// applied to the workload, allow the request if it matches any of the ALLOW policies" — and a
/// policy matches when any of its rules does, so the sidecar evaluates rules 1-8 before the hit.
fn l7_security_yaml(jwks: SocketAddr) -> String {
    let [http_port, echo_port, iperf_port] = SERVICE_PORTS;
    let iss = crate::jwt::ISSUER;
    let sub = crate::jwt::SUBJECT;
    let aud = crate::jwt::AUDIENCE;
    let (header, value) = BENCH_HEADER;
    let client = "cluster.local/ns/bench/sa/client";
    format!(
        r#"---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: srv-jwt, namespace: bench}}
spec:
  selector: {{matchLabels: {{app: srv}}}}
  jwtRules:
  - issuer: {iss}
    jwksUri: http://{jwks}/jwks
    audiences: [{aud}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: srv-l7, namespace: bench}}
spec:
  selector: {{matchLabels: {{app: srv}}}}
  action: ALLOW
  rules:
  # 1. Admin writes, from the client workload only.
  - from: [{{source: {{principals: ["{client}"]}}}}]
    to: [{{operation: {{methods: [POST, PUT], paths: ["/admin/*"]}}}}]
  # 2. Deletes by the operator.
  - from: [{{source: {{requestPrincipals: ["{iss}/operator"]}}}}]
    to: [{{operation: {{methods: [DELETE], paths: ["/1k", "/data/*"]}}}}]
  # 3. Metrics scraping from the monitoring namespace.
  - from: [{{source: {{namespaces: [monitoring]}}}}]
    to: [{{operation: {{methods: [GET], paths: ["/metrics", "/stats/*"]}}}}]
  # 4. Health checks carrying a probe header.
  - to: [{{operation: {{methods: [GET, HEAD], paths: ["/healthz", "/ready"]}}}}]
    when: [{{key: "request.headers[x-probe]", values: ["kubelet"]}}]
  # 5. Writes to the data API by any authenticated user.
  - from: [{{source: {{requestPrincipals: ["{iss}/*"]}}}}]
    to: [{{operation: {{methods: [POST, PATCH], paths: ["/data/*"]}}}}]
  # 6. Another service account reading.
  - from: [{{source: {{principals: ["cluster.local/ns/bench/sa/reporter"]}}}}]
    to: [{{operation: {{methods: [GET], paths: ["/1k", "/data/*"]}}}}]
  # 7. Another user reading, from the client workload.
  - from: [{{source: {{principals: ["{client}"], requestPrincipals: ["{iss}/auditor"]}}}}]
    to: [{{operation: {{methods: [GET], paths: ["/1k"]}}}}]
  # 8. The TCP ports (echo, iperf3) from the client workload.
  - from: [{{source: {{principals: ["{client}"]}}}}]
    to: [{{operation: {{ports: ["{echo_port}", "{iperf_port}"]}}}}]
  # 9. The bench request: this user, from the client workload, GET /1k, with the header.
  - from: [{{source: {{principals: ["{client}"], requestPrincipals: ["{iss}/{sub}"]}}}}]
    to: [{{operation: {{methods: [GET], paths: ["/1k"], ports: ["{http_port}"]}}}}]
    when: [{{key: "request.headers[{header}]", values: ["{value}"]}}]
  # 10. Status pages for any authenticated user.
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
    to: [{{operation: {{methods: [GET], paths: ["/status/*"]}}}}]
"#
    )
}

/// The traced path's tracing, as an Istio user turns it on mesh-wide: the sink as an
/// `extensionProviders[].opentelemetry` provider over OTLP/HTTP (istio/api
/// mesh/v1alpha1/config.proto, `OpenTelemetryTracingProvider`), the mesh's default tracing
/// provider, and a mesh-wide Telemetry sampling every request. Both sidecars report: the
/// client's egress listener then serves request by request to make CLIENT spans
/// (docs/tracing.md), the server's makes SERVER spans.
fn traced_yaml(sink: SocketAddr) -> String {
    let (host, port) = (sink.ip(), sink.port());
    format!(
        r#"---
apiVersion: sailoperator.io/v1
kind: Istio
metadata: {{name: default}}
spec:
  namespace: istio-system
  values:
    meshConfig:
      extensionProviders:
      - name: bench-otlp
        opentelemetry:
          service: "{host}"
          port: {port}
          http: {{path: /v1/traces, timeout: 5s}}
      defaultProviders:
        tracing: [bench-otlp]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - randomSamplingPercentage: 100
"#
    )
}

impl WardPair {
    /// Both `ward up` processes.
    pub(crate) fn pids(&self) -> Vec<u32> {
        vec![self.client.pid(), self.server.pid()]
    }

    /// Both sides' `ward_spans_total` by outcome (docs/tracing.md), from their `/metrics`.
    pub(crate) fn span_outcomes(&self) -> std::io::Result<Vec<(String, f64)>> {
        let mut all = String::new();
        for admin in self.admins {
            all.push_str(&http_body(admin, "/metrics")?);
            all.push('\n');
        }
        Ok(span_outcomes(&all))
    }
}

/// Sums `ward_spans_total{..., outcome="X", ...} N` by outcome, in first-seen order.
fn span_outcomes(metrics: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("ward_spans_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(outcome) = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("outcome=\""))
            .and_then(|v| v.strip_suffix('"'))
        else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        match out.iter_mut().find(|(o, _)| o == outcome) {
            Some((_, v)) => *v += value,
            None => out.push((outcome.to_owned(), value)),
        }
    }
    out
}

/// The body of a plain HTTP/1.1 GET (ward's admin API), read to the end.
fn http_body(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .ok_or_else(|| std::io::Error::other("no body in the admin API's answer"))
}

/// The last 2000 bytes of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(2000);
    text.get(start..).unwrap_or_default().to_owned()
}

/// Waits up to 30 s for `/ready` on `admin`; the error carries the log's tail.
fn wait_ready(proc: &mut Proc, admin: SocketAddr, log: &Path) -> Result<(), WardPairError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if proc.has_exited() {
            return Err(WardPairError::NotReady {
                reason: format!("ward ({admin}) exited"),
                log: tail(log),
            });
        }
        let last = match http_status(admin, "/ready") {
            Ok(200) => return Ok(()),
            Ok(code) => format!("/ready on {admin} answered {code}"),
            Err(e) => format!("/ready on {admin}: {e}"),
        };
        if Instant::now() > deadline {
            return Err(WardPairError::NotReady {
                reason: last,
                log: tail(log),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status code the HTTP entry point gives `request` (a whole request head).
fn request_status(addr: SocketAddr, request: &[u8]) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(request)?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    status_code(&head)
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
    status_code(&head)
}

/// The code in the first 12 bytes of a status line (`HTTP/1.1 200`).
fn status_code(head: &[u8; 12]) -> std::io::Result<u16> {
    head.strip_prefix(b"HTTP/1.1 ")
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP/1.1 status line"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use ward_policy::spec::AuthorizationPolicySpec;
    use ward_policy::{
        AuthzPolicy, HttpAttributes, L4Attributes, MeshContext, Peer, PolicyRef, RequestAuth,
    };

    fn server() -> Endpoints {
        Endpoints {
            http: "127.0.0.1:1".parse().unwrap(),
            echo: "127.0.0.1:2".parse().unwrap(),
            iperf: "127.0.0.1:3".parse().unwrap(),
        }
    }

    fn mesh(layer: Layer) -> String {
        let mut mesh = mesh_yaml(&server(), layer, Net::Loopback);
        if layer.is_l7() {
            mesh.push_str(&l7_security_yaml("127.0.0.1:4".parse().unwrap()));
        }
        if layer == Layer::L7Traced {
            mesh.push_str(&traced_yaml("127.0.0.1:5".parse().unwrap()));
        }
        mesh
    }

    #[test]
    fn every_mesh_loads_and_translates() {
        for layer in [
            Layer::L4,
            Layer::L4Twin,
            Layer::L7,
            Layer::Gateway,
            Layer::L7Traced,
            Layer::L7AuditOff,
            Layer::L7Twin,
        ] {
            let set = ward_config::load_str("mesh.yaml", &mesh(layer))
                .unwrap_or_else(|d| panic!("{layer:?}: {d}"));
            let snapshot =
                ward_config::translate(&set).unwrap_or_else(|d| panic!("{layer:?}: {d}"));
            assert_eq!(snapshot.proxies.len(), 2, "{layer:?}");
        }
    }

    /// Each of the 10 rules as its own ALLOW policy, against the bench request and a request
    /// differing in one attribute: the bench request must match rule 9 alone.
    #[test]
    fn the_bench_request_matches_rule_nine_only() {
        let text = l7_security_yaml("127.0.0.1:4".parse().unwrap());
        let doc = text
            .split("\n---\n")
            .find(|d| d.contains("kind: AuthorizationPolicy"))
            .unwrap();
        let doc: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
        let rules = doc["spec"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 10);

        let mesh = MeshContext::default();
        let client = Peer::new("cluster.local", "bench", "client");
        let auth = RequestAuth {
            principal: format!("{}/{}", crate::jwt::ISSUER, crate::jwt::SUBJECT),
            audiences: vec![crate::jwt::AUDIENCE.into()],
            presenter: None,
            claims: serde_json::json!({}),
        };
        let l4 = L4Attributes {
            peer: Some(&client),
            source_ip: Ipv4Addr::new(127, 77, 7, 1).into(),
            remote_ip: Ipv4Addr::new(127, 77, 7, 1).into(),
            destination_ip: Ipv4Addr::new(127, 77, 7, 10).into(),
            destination_port: SERVICE_PORTS[0],
            sni: None,
        };
        let bench_headers = vec![(BENCH_HEADER.0.to_owned(), BENCH_HEADER.1.to_owned())];
        let other_headers = vec![(BENCH_HEADER.0.to_owned(), "other".to_owned())];
        let bench = HttpAttributes {
            l4,
            method: "GET",
            host: "bench",
            path: "/1k",
            headers: &bench_headers,
            auth: Some(&auth),
        };
        let cases: [(&str, HttpAttributes<'_>, &[usize]); 4] = [
            ("bench request", bench, &[9]),
            (
                "without the header",
                HttpAttributes {
                    headers: &other_headers,
                    ..bench
                },
                &[],
            ),
            (
                "without a token",
                HttpAttributes {
                    auth: None,
                    ..bench
                },
                &[],
            ),
            (
                "a POST",
                HttpAttributes {
                    method: "POST",
                    ..bench
                },
                &[],
            ),
        ];
        for (what, req, want) in cases {
            let matched: Vec<usize> = rules
                .iter()
                .enumerate()
                .filter(|(_, rule)| {
                    let spec = serde_json::json!({"action": "ALLOW", "rules": [rule]});
                    let spec: AuthorizationPolicySpec = serde_json::from_value(spec).unwrap();
                    AuthzPolicy::compile(PolicyRef::new("bench", "one"), &spec, false, &mesh)
                        .unwrap()
                        .matching_rule_http(&req)
                        .is_some()
                })
                .map(|(i, _)| i + 1)
                .collect();
            assert_eq!(matched, want, "{what}");
        }
    }

    #[test]
    fn span_outcomes_are_summed_over_workloads() {
        let metrics = "# HELP ward_spans_total Spans.\n\
            # TYPE ward_spans_total counter\n\
            ward_spans_total{workload=\"bench/srv\",outcome=\"exported\"} 1500\n\
            ward_spans_total{outcome=\"queue_full\",workload=\"bench/srv\"} 20\n\
            ward_spans_total{workload=\"bench/other\",outcome=\"exported\"} 3\n\
            ward_spans_other{outcome=\"exported\"} 9\n";
        assert_eq!(
            span_outcomes(metrics),
            vec![("exported".into(), 1503.0), ("queue_full".into(), 20.0)]
        );
    }

    #[test]
    fn status_lines() {
        let cases: [(&[u8; 12], Option<u16>); 4] = [
            (b"HTTP/1.1 200", Some(200)),
            (b"HTTP/1.1 403", Some(403)),
            (b"HTTP/1.0 200", None),
            (b"HTTP/1.1 2x0", None),
        ];
        for (head, want) in cases {
            assert_eq!(status_code(head).ok(), want, "{head:?}");
        }
    }
}
