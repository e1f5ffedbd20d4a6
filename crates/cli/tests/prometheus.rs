//! Ward's `/metrics` read by a real Prometheus (Debian's `prometheus` package), through the
//! queries users' tools run: Kiali's graph and security queries and Istio's Grafana dashboards
//! (mesh, service, workload). The traffic is real: curl and TCP clients through the sidecars,
//! over mTLS and one plaintext PERMISSIVE flow. `promtool check metrics` checks the exposition.
//!
//! Needs `prometheus` and `curl`; without them it prints `SKIPPED` (CI installs them and fails
//! instead). Addresses: 127.1.126.x (workloads, admin, Prometheus) and 127.1.127.x (apps).
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use ward_test_support::{curl, echo_ok, have, http_get, skip_or_fail, UpOptions, Ward};

/// How long the test waits for Prometheus to have scraped what it looks for.
const WAIT: Duration = Duration::from_secs(90);

const MESH: &str = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
# api also takes plaintext on 8080 (the flow whose connection_security_policy is `none`).
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: api-permissive, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  mtls: {mode: STRICT}
  portLevelMtls: {8080: {mode: PERMISSIVE}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web-v1, namespace: shop}
spec:
  address: 127.1.126.1
  serviceAccount: web
  labels: {app: web, version: v1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: api-v1
  namespace: shop
  annotations: {ward.dev/demo-app: fhir}
spec:
  address: 127.1.126.2
  serviceAccount: api
  labels: {app: api, version: v1}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: catalog-v2
  namespace: shop
  annotations: {ward.dev/demo-app: fhir}
spec:
  address: 127.1.126.3
  serviceAccount: catalog
  labels: {app.kubernetes.io/name: catalog, app.kubernetes.io/version: "2.0"}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: db-v1
  namespace: shop
  annotations: {ward.dev/demo-app: echo}
spec:
  address: 127.1.126.4
  serviceAccount: db
  labels: {app: db, version: v1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: catalog, namespace: shop}
spec:
  hosts: [catalog.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app.kubernetes.io/name: catalog}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp-db, protocol: TCP}]
  workloadSelector: {labels: {app: db}}
---
# web calls api and catalog on one shared HTTP listener (routed by Host), and db over TCP.
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: web, namespace: shop}
spec:
  workloadSelector: {labels: {app: web}}
  egress:
  - port: {number: 8080, name: http, protocol: HTTP}
    bind: 127.1.126.1
    hosts: ["./api.shop.svc.cluster.local", "./catalog.shop.svc.cluster.local"]
  - port: {number: 5432, name: tcp-db, protocol: TCP}
    bind: 127.1.126.1
    hosts: ["./db.shop.svc.cluster.local"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: api, namespace: shop}
spec:
  workloadSelector: {labels: {app: api}}
  ingress:
  - port: {number: 8080, name: http, protocol: HTTP}
    defaultEndpoint: 127.1.127.2:18080
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: catalog, namespace: shop}
spec:
  workloadSelector: {labels: {app.kubernetes.io/name: catalog}}
  ingress:
  - port: {number: 8080, name: http, protocol: HTTP}
    defaultEndpoint: 127.1.127.3:18080
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: db, namespace: shop}
spec:
  workloadSelector: {labels: {app: db}}
  ingress:
  - port: {number: 5432, name: tcp-db, protocol: TCP}
    defaultEndpoint: 127.1.127.4:15432
"#;

const ADMIN: &str = "127.1.126.100:15000";
/// Not 9090: a system Prometheus (Debian starts one) listens there on every address.
const PROMETHEUS: &str = "127.1.126.101:39090";

/// A Prometheus server scraping Ward's admin port every second; killed on drop.
struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start() -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n\
                 - job_name: ward\n  metrics_path: /metrics\n  static_configs: [{{targets: ['{ADMIN}']}}]\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Prometheus { child, _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query through the HTTP API: the result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-G"])
            .arg(format!("http://{PROMETHEUS}/api/v1/query"))
            .arg("--data-urlencode")
            .arg(format!("query={promql}"))
            .output()
            .unwrap();
        let body: Value = match serde_json::from_slice(&out.stdout) {
            Ok(v) => v,
            Err(_) => return Vec::new(),
        };
        assert_ne!(
            body["status"], "error",
            "Prometheus rejected {promql}: {body}"
        );
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One round of traffic: mTLS HTTP from web to api and catalog (through web's shared egress
/// listener), plaintext HTTP straight to api's PERMISSIVE port, and a TCP echo from web to db.
fn drive_traffic() {
    for host in [
        "api.shop.svc.cluster.local",
        "catalog.shop.svc.cluster.local",
    ] {
        let (code, body) = curl(&[
            "-H",
            &format!("Host: {host}"),
            "http://127.1.126.1:8080/fhir/Patient",
        ]);
        assert_eq!(code, 200, "web -> {host}: {body}");
    }
    // A Host no service has: 404 NR from web's sidecar, and no new label value.
    let (code, body) = curl(&[
        "-H",
        "Host: made-up.example",
        "http://127.1.126.1:8080/fhir/Patient",
    ]);
    assert_eq!(code, 404, "unknown Host: {body}");
    let (code, body) = curl(&["http://127.1.126.2:8080/fhir/Observation"]);
    assert_eq!(code, 200, "plaintext -> api: {body}");
    assert!(echo_ok("127.1.126.1:5432".parse().unwrap(), "ping"));
}

/// A label of a result series.
fn label<'a>(series: &'a Value, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or("")
}

/// The value of a result series.
fn value(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Run `promql` until a result series has every label of `want` (with traffic between tries);
/// that series, or a failure naming the query.
fn wait_for_series(prom: &Prometheus, ward: &Ward, promql: &str, want: &[(&str, &str)]) -> Value {
    let deadline = Instant::now() + WAIT;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = prom.query(promql);
        if let Some(s) = last
            .iter()
            .find(|s| want.iter().all(|(k, v)| label(s, k) == *v) && value(s).is_finite())
        {
            return s.clone();
        }
        drive_traffic();
        std::thread::sleep(Duration::from_millis(700));
    }
    panic!(
        "no series {want:?} for\n  {promql}\nlast result: {last:#?}\nward log:\n{}\nprometheus log:\n{}",
        ward.logs(),
        prom.log()
    );
}

/// Kiali's graph grouping (kiali/kiali `graph/telemetry/istio/istio.go`): a series missing any
/// of these labels is skipped by Kiali.
const KIALI_HTTP_GROUP: &str = "source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,request_protocol,response_code,grpc_response_status,response_flags";
const KIALI_TCP_GROUP: &str = "source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,response_flags";

#[test]
fn prometheus_reads_istio_metrics_for_kiali_and_grafana() {
    if !have("prometheus") || !have("curl") {
        return skip_or_fail(
            "prometheus_reads_istio_metrics_for_kiali_and_grafana",
            "prometheus and curl are needed (apt-get install prometheus curl)",
        );
    }
    let admin: SocketAddr = ADMIN.parse().unwrap();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: vec![("mesh.yaml", MESH.to_owned())],
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    drive_traffic();

    // The exposition itself: Istio's names, and valid for Prometheus's own checker.
    let (status, text) = http_get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    for name in [
        "istio_requests_total{",
        "istio_request_duration_milliseconds_bucket{",
        "istio_request_bytes_bucket{",
        "istio_response_bytes_bucket{",
        "istio_tcp_connections_opened_total{",
        "istio_tcp_connections_closed_total{",
        "istio_tcp_sent_bytes_total{",
        "istio_tcp_received_bytes_total{",
        "ward_cert_expiry_timestamp_seconds{",
        "ward_authz_decisions_total{",
        "ward_config_generation ",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    if have("promtool") {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // promtool parses the whole exposition (a parse error fails it) and then lints names.
        // The one lint it may raise is about Istio's own metric name: Prometheus's convention
        // wants base units (seconds), Istio's name is in milliseconds, and users' tools expect
        // Istio's name.
        let problems: Vec<&str> = said
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| {
                !l.starts_with("istio_request_duration_milliseconds use base unit \"seconds\"")
            })
            .collect();
        assert!(
            problems.is_empty(),
            "promtool check metrics ({}): {said}",
            out.status
        );
    }

    let prom = Prometheus::start();
    let shop = [
        ("source_workload", "web-v1"),
        ("source_workload_namespace", "shop"),
        ("source_canonical_service", "web"),
        ("source_canonical_revision", "v1"),
        ("source_cluster", "Kubernetes"),
    ];

    // Kiali's graph, server side: the mTLS edge web -> api, and the plaintext edge from outside
    // the mesh (source_workload="unknown", read from reporter="destination").
    let kiali_dest = format!(
        "sum(rate(istio_requests_total{{reporter=\"destination\"}}[1m])) by ({KIALI_HTTP_GROUP}) > 0"
    );
    let mut edge = shop.to_vec();
    edge.extend([
        ("destination_service", "api.shop.svc.cluster.local"),
        ("destination_service_name", "api"),
        ("destination_service_namespace", "shop"),
        ("destination_workload", "api-v1"),
        ("destination_canonical_service", "api"),
        ("destination_canonical_revision", "v1"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ]);
    wait_for_series(&prom, &ward, &kiali_dest, &edge);
    let from_outside = wait_for_series(
        &prom,
        &ward,
        &kiali_dest,
        &[
            ("source_workload", "unknown"),
            ("destination_workload", "api-v1"),
            ("response_code", "200"),
        ],
    );
    // Plain HTTP has no gRPC status: the label is empty, so Prometheus has none (as with Istio).
    assert_eq!(label(&from_outside, "grpc_response_status"), "");

    // Kiali's graph, client side: web's requests to catalog through the shared listener, with
    // catalog's labels from app.kubernetes.io/*.
    let kiali_source = format!(
        "sum(rate(istio_requests_total{{reporter=\"source\",source_workload_namespace=\"shop\"}}[1m])) by ({KIALI_HTTP_GROUP}) > 0"
    );
    let mut to_catalog = shop.to_vec();
    to_catalog.extend([
        ("destination_service", "catalog.shop.svc.cluster.local"),
        ("destination_workload", "catalog-v2"),
        ("destination_canonical_service", "catalog"),
        ("destination_canonical_revision", "2.0"),
        ("response_code", "200"),
    ]);
    wait_for_series(&prom, &ward, &kiali_source, &to_catalog);

    // The unknown Host is counted, as `unknown`: label values come from the config only.
    let unknown_host = wait_for_series(
        &prom,
        &ward,
        "sum(rate(istio_requests_total{reporter=\"source\",response_code=\"404\"}[1m])) by (destination_service, destination_service_name, destination_workload, response_flags) > 0",
        &[("destination_service", "unknown"), ("response_flags", "NR")],
    );
    assert_eq!(label(&unknown_host, "destination_workload"), "unknown");
    let hosts = prom.query("count(istio_requests_total{destination_service=~\".*made-up.*\"})");
    assert!(
        hosts.is_empty(),
        "a client's Host became a label: {hosts:?}"
    );

    // Kiali's TCP edges.
    let kiali_tcp = format!(
        "sum(rate(istio_tcp_sent_bytes_total{{reporter=\"destination\"}}[1m])) by ({KIALI_TCP_GROUP}) > 0"
    );
    let mut to_db = shop.to_vec();
    to_db.extend([
        ("destination_service", "db.shop.svc.cluster.local"),
        ("destination_workload", "db-v1"),
    ]);
    wait_for_series(&prom, &ward, &kiali_tcp, &to_db);

    // Kiali's mTLS lock (appender/security_policy.go): by principals and
    // connection_security_policy, server side.
    let kiali_security = "sum(rate(istio_requests_total{reporter=\"destination\"}[1m])) by (source_principal,destination_principal,connection_security_policy) > 0";
    wait_for_series(
        &prom,
        &ward,
        kiali_security,
        &[
            ("source_principal", "spiffe://cluster.local/ns/shop/sa/web"),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/shop/sa/api",
            ),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    wait_for_series(
        &prom,
        &ward,
        kiali_security,
        &[
            ("source_principal", "unknown"),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/shop/sa/api",
            ),
            ("connection_security_policy", "none"),
        ],
    );

    // Istio's mesh dashboard (manifests/addons/dashboards/lib/queries.libsonnet): HTTP workloads
    // and the global success rate.
    wait_for_series(
        &prom,
        &ward,
        "label_join(sum(rate(istio_requests_total{reporter=~\"source|waypoint\"}[1m])) by (destination_workload, destination_workload_namespace, destination_service), \"destination_workload_var\", \".\", \"destination_workload\", \"destination_workload_namespace\")",
        &[
            ("destination_workload_var", "api-v1.shop"),
            ("destination_service", "api.shop.svc.cluster.local"),
        ],
    );
    let success = wait_for_series(
        &prom,
        &ward,
        "sum(rate(istio_requests_total{reporter=~\"source|waypoint\", response_code!~\"5..\"}[1m])) / sum(rate(istio_requests_total{reporter=~\"source|waypoint\"}[1m]))",
        &[],
    );
    assert_eq!(value(&success), 1.0, "every request succeeded");

    // Istio's service dashboard: incoming requests by source over mTLS.
    wait_for_series(
        &prom,
        &ward,
        "round(sum(irate(istio_requests_total{connection_security_policy=\"mutual_tls\",destination_service=~\"api.shop.svc.cluster.local\",reporter=~\"destination\",source_workload=~\".*\",source_workload_namespace=~\".*\"}[5m])) by (source_workload, source_workload_namespace, response_code), 0.001) > 0",
        &[("source_workload", "web-v1"), ("response_code", "200")],
    );
    // ...and the non-mTLS one.
    wait_for_series(
        &prom,
        &ward,
        "round(sum(irate(istio_requests_total{connection_security_policy!=\"mutual_tls\",destination_service=~\".*\",reporter=~\"destination\",source_workload=~\".*\",source_workload_namespace=~\".*\"}[5m])) by (source_workload, source_workload_namespace, response_code), 0.001) > 0",
        &[("source_workload", "unknown"), ("response_code", "200")],
    );

    // Istio's workload dashboard: request duration (Istio's buckets) and TCP server traffic.
    let p50 = wait_for_series(
        &prom,
        &ward,
        "(histogram_quantile(0.50, sum(irate(istio_request_duration_milliseconds_bucket{reporter=\"destination\",destination_workload=~\"api-v1\", destination_workload_namespace=~\"shop\"}[1m])) by (le)) / 1000) or histogram_quantile(0.50, sum(irate(istio_request_duration_seconds_bucket{reporter=\"destination\",destination_workload=~\"api-v1\", destination_workload_namespace=~\"shop\"}[1m])) by (le))",
        &[],
    );
    assert!(value(&p50) >= 0.0, "{p50}");
    wait_for_series(
        &prom,
        &ward,
        "(sum(irate(istio_tcp_sent_bytes_total{reporter=\"destination\", destination_workload_namespace=~\"shop\", destination_workload=~\"db-v1\"}[1m])) + sum(irate(istio_tcp_received_bytes_total{reporter=\"destination\", destination_workload_namespace=~\"shop\", destination_workload=~\"db-v1\"}[1m]))) > 0",
        &[],
    );

    // Ward's own: certificates expire in the future, the config is at its first generation.
    wait_for_series(
        &prom,
        &ward,
        "ward_cert_expiry_timestamp_seconds{kind=\"leaf\"} > time()",
        &[("workload", "shop/web-v1")],
    );
    wait_for_series(
        &prom,
        &ward,
        "ward_cert_expiry_timestamp_seconds{kind=\"root\"} > time()",
        &[("workload", "shop/api-v1")],
    );
    let generation = wait_for_series(&prom, &ward, "ward_config_generation", &[]);
    assert_eq!(value(&generation), 1.0);
    wait_for_series(
        &prom,
        &ward,
        "sum(ward_authz_decisions_total) by (workload, decision, action) > 0",
        &[
            ("workload", "shop/db-v1"),
            ("decision", "allow"),
            ("action", "none"),
        ],
    );
}
