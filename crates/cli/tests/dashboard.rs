//! The shipped Prometheus alert rules and Grafana dashboard (deploy/): `promtool check rules`
//! and `promtool test rules` on the rules; every query of the dashboard run against a real
//! Prometheus scraping a running `ward up` (with the rules loaded), each must return series.
//! The same run checks `ward certs` against its admin API, and that blocked egress lands in
//! the proxy's audit trail.
//!
//! Needs `prometheus`, `promtool` and `curl`; without them it prints `SKIPPED` (CI installs them
//! and fails instead). Addresses: 127.1.149.x.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{docs, mesh_pa, srv_policy, Mesh};
use serde_json::Value;
use ward_test_support::{echo_ok, have, skip_or_fail, Ward};

const BIN: &str = env!("CARGO_BIN_EXE_ward");
const PROMETHEUS: &str = "127.1.149.101:39090";
const FORWARD_PROXY: &str = "127.1.149.3:15080";

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool").args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn shipped_alert_rules_check_and_pass_their_unit_tests() {
    if !have("promtool") {
        return skip_or_fail(
            "shipped_alert_rules",
            "promtool is needed (apt-get install prometheus)",
        );
    }
    let rules = deploy("prometheus/ward-alerts.yaml");
    let (ok, said) = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(ok, "promtool check rules: {said}");
    for alert in [
        "WardMtlsCoverageBelow100",
        "WardAuthorizationDenialSpike",
        "WardRootCertificateExpiring",
        "WardWorkloadCertificateExpiring",
        "WardProxyConfigRejected",
        "WardAuditWriteFailures",
        "WardJwksFetchFailing",
    ] {
        let tests = std::fs::read_to_string(deploy("prometheus/ward-alerts.test.yaml")).unwrap();
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no unit test"
        );
    }
    let tests = deploy("prometheus/ward-alerts.test.yaml");
    let (ok, said) = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(ok, "promtool test rules: {said}");
}

/// A Prometheus scraping `admin` every second with the shipped rules loaded; killed on drop.
struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(admin: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: ['{}']\n\
                 scrape_configs:\n\
                 - job_name: ward\n  static_configs: [{{targets: ['{admin}']}}]\n",
                deploy("prometheus/ward-alerts.yaml").display()
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
        Prometheus { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the result vector (empty while Prometheus is not up yet).
    fn query(&self, promql: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-G"])
            .arg(format!("http://{PROMETHEUS}/api/v1/query"))
            .arg("--data-urlencode")
            .arg(format!("query={promql}"))
            .output()
            .unwrap();
        let Ok(body) = serde_json::from_slice::<Value>(&out.stdout) else {
            return Vec::new();
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

/// Every PromQL query of the dashboard, with Grafana's variables as "All" and a 1m rate
/// window: (panel title, query).
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("grafana/ward-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$workload", ".*");
            out.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    out
}

/// srv (TCP echo) allows cli and no one else; gw's forward proxy refuses every host (nothing is
/// registered).
fn gateway() -> String {
    "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: gw, namespace: edge}\nspec: {address: 127.1.149.3, serviceAccount: gw, labels: {app: gw}}\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: gw, namespace: edge}\nspec:\n  workloadSelector: {labels: {app: gw}}\n  egress:\n  - port: {number: 15080, protocol: HTTP_PROXY, name: http-proxy}\n    bind: 127.1.149.3\n    hosts: [\"./*\"]\n".to_owned()
}

fn traffic(mesh: &Mesh) {
    assert!(echo_ok(mesh.via_cli(), "allowed"));
    assert!(!echo_ok(mesh.via_oth(), "denied"));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "--noproxy",
            "",
            "-x",
            FORWARD_PROXY,
        ])
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .arg("http://unregistered.example/records")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "502");
}

#[test]
fn the_dashboard_queries_return_series_from_a_running_ward() {
    if !have("prometheus") || !have("curl") {
        return skip_or_fail(
            "dashboard_queries",
            "prometheus and curl are needed (apt-get install prometheus curl)",
        );
    }
    let mesh = Mesh::new(149);
    let policy = docs(&[
        mesh_pa("STRICT"),
        srv_policy(
            "from-cli",
            "  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/app/sa/cli\"]\n",
        ),
        gateway(),
    ]);
    let mut ward: Ward = mesh.up(&policy, &[]);
    traffic(&mesh);
    let prom = Prometheus::start(ward.admin);

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing: Vec<(String, String)> = dashboard_queries();
    assert!(missing.len() >= 10, "{missing:?}");
    while !missing.is_empty() && Instant::now() < deadline {
        missing.retain(|(_, q)| prom.query(q).is_empty());
        traffic(&mesh);
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(
        missing.is_empty(),
        "dashboard queries without series: {missing:#?}\nprometheus log:\n{}",
        prom.log()
    );
    // The shipped recording rule, evaluated by Prometheus: all of this traffic is mTLS. An
    // evaluation before the counters moved between two scrapes is 0/0 (NaN): wait, with traffic,
    // for one that saw traffic.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut coverage = prom.query("ward:mtls_coverage:ratio_rate5m");
    while coverage.first().is_none_or(|c| c["value"][1] == "NaN") && Instant::now() < deadline {
        traffic(&mesh);
        std::thread::sleep(Duration::from_millis(700));
        coverage = prom.query("ward:mtls_coverage:ratio_rate5m");
    }
    assert_eq!(coverage[0]["value"][1], "1", "{coverage:?}");

    // `ward certs` against the same admin API: every workload's leaf and root, nothing
    // flagged with 24 h certificates renewed on time; a horizon past the root's expiry flags
    // it (and the exit status says so).
    let certs = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["certs", "--admin", &ward.admin.to_string()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, table) = certs(&[]);
    assert_eq!(code, 0, "{table}");
    for workload in ["app/srv", "app/cli", "other/oth", "edge/gw"] {
        let rows: Vec<&str> = table.lines().filter(|l| l.contains(workload)).collect();
        assert!(
            rows.iter()
                .any(|l| l.contains(" leaf ") && l.contains("spiffe://cluster.local/")),
            "{workload}: {table}"
        );
        assert!(
            rows.iter().any(|l| l.contains(" root ")),
            "{workload}: {table}"
        );
    }
    assert!(!table.lines().any(|l| l.starts_with('!')), "{table}");
    let (code, json) = certs(&["--json"]);
    assert_eq!(code, 0);
    let json: Value = serde_json::from_str(&json).unwrap();
    let srv = json["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["workload"] == "app/srv")
        .unwrap();
    assert_eq!(srv["chain"][0]["serial"], srv["serial"], "{srv:#}");
    assert!(
        srv["roots"][0]["secondsLeft"].as_i64().unwrap() > 86_400,
        "{srv:#}"
    );
    assert!(table.contains(srv["serial"].as_str().unwrap()), "{table}");
    let (code, table) = certs(&["--warn", "100000d"]);
    assert_eq!(code, 1, "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with('!') && l.contains(" root ")),
        "{table}"
    );
    assert!(table.contains("certificate(s) expire within"), "{table}");

    // The blocked egress is in gw's audit trail, which verifies.
    assert!(ward.stop(Duration::from_secs(15)).is_some());
    let trail = ward.state_dir().join("audit/edge/gw");
    let out = Command::new(BIN)
        .args(["audit", "verify", "--json", "--root"])
        .arg(ward.state_dir().join("ca/root-cert.pem"))
        .arg(&trail)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = std::fs::read_to_string(trail.join("audit-000000.jsonl")).unwrap();
    let blocked: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == "REGISTRY_ONLY")
        .collect();
    assert!(!blocked.is_empty(), "{text}");
    assert_eq!(blocked[0]["direction"], "outbound");
    assert_eq!(blocked[0]["decision"], "deny");
    assert_eq!(blocked[0]["dst_host"], "unregistered.example");
    assert_eq!(
        blocked[0]["src_identity"],
        "spiffe://cluster.local/ns/edge/sa/gw"
    );
    assert!(
        !text.contains("/records"),
        "no path of a refused request: {text}"
    );
}
