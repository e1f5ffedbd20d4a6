//! OpenEMR's OpenShift Service Mesh 3 configuration (examples/openemr-ossm3/: the upstream
//! manifests 01-05 plus Ward's local wiring) run end to end: `ward analyze` on it, `ward up` on
//! it, and the PeerAuthentication that analyze offers for the router's port applied as offered;
//! then MariaDB's port made PERMISSIVE, to show its policies deny plaintext anyway (why analyze
//! offers nothing for it).
//! Addresses: 127.1.110.x (the example's).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ward_test_support::{echo_ok, echo_roundtrip, free_port, yaml_files, UpOptions, Ward};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/openemr-ossm3");

/// openemr's egress listeners: what the OpenEMR app dials for MariaDB and Redis.
const OPENEMR_TO_MARIADB: &str = "127.1.110.1:3306";
const OPENEMR_TO_REDIS: &str = "127.1.110.1:6379";
/// `other`'s egress listener for MariaDB.
const OTHER_TO_MARIADB: &str = "127.1.110.4:3306";
/// The workloads' own ports, where a client outside the mesh (the OpenShift router) connects.
const OPENEMR_PORT: &str = "127.1.110.1:8080";
const MARIADB_PORT: &str = "127.1.110.2:3306";

/// MariaDB's port under Istio's default mode.
const MARIADB_PERMISSIVE: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mariadb-3306-permissive, namespace: openemr}
spec:
  selector: {matchLabels: {app: mariadb}}
  portLevelMtls: {3306: {mode: PERMISSIVE}}
";

fn addr(a: &str) -> SocketAddr {
    a.parse().unwrap()
}

/// `ward analyze [--json] -f dir`: (exit code, stdout).
fn analyze(dir: &Path, json: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
    cmd.arg("analyze");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.arg("-f").arg(dir).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Each finding as (file name, severity, code, object, field).
fn findings(json: &str) -> Vec<(String, String, String, String, String)> {
    let items: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    items
        .iter()
        .map(|f| {
            let file = Path::new(f["file"].as_str().unwrap_or_default())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (
                file,
                text(&f["severity"]),
                text(&f["code"]),
                text(&f["object"]),
                text(&f["field"]),
            )
        })
        .collect()
}

fn finding(
    file: &str,
    severity: &str,
    code: &str,
    object: &str,
    field: &str,
) -> (String, String, String, String, String) {
    (
        file.into(),
        severity.into(),
        code.into(),
        object.into(),
        field.into(),
    )
}

/// The PeerAuthentication a WARD0208 line offers: the YAML after its last "add ".
fn offered_peer_authentication(analyze_text: &str, object_and_field: &str) -> String {
    let line = analyze_text
        .lines()
        .find(|l| l.contains("warning[WARD0208]") && l.contains(object_and_field))
        .unwrap_or_else(|| panic!("no WARD0208 warning for {object_and_field}:\n{analyze_text}"));
    let (_, fix) = line
        .rsplit_once("add ")
        .unwrap_or_else(|| panic!("the warning offers nothing: {line}"));
    fix.to_owned()
}

/// Replace or add a config file and wait until the control plane applied it.
fn apply(ward: &Ward, name: &str, body: &str) {
    let reloads = || {
        ward.admin_json("/config_dump").unwrap()["status"]["reloads"]
            .as_u64()
            .unwrap()
    };
    let before = reloads();
    ward.write_config(name, body).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if reloads() > before {
            // The proxies get the new snapshot through their watch channel right after.
            std::thread::sleep(Duration::from_millis(200));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{name} not applied; log:\n{}", ward.logs());
}

/// Whether a connection to `to` gets nothing back: refused, reset, or closed unanswered.
fn refused(to: &str, msg: &[u8]) -> bool {
    match echo_roundtrip(addr(to), msg) {
        Err(_) => true,
        Ok(reply) => reply.is_empty(),
    }
}

#[test]
fn openemr_ossm3_analyzes_runs_and_takes_the_offered_peer_authentication() {
    let example = Path::new(EXAMPLE);

    // a. What analyze says about the configuration as written. The namespace is ambient, so
    // each Ward Sidecar gets the WARD0223 portability note (Istio would ignore it). Only 8080
    // gets WARD0208: 3306 and 6379 admit OpenEMR's identity only, so a plaintext client is
    // denied there under Istio's PERMISSIVE default too.
    let (code, json) = analyze(example, true);
    assert_eq!(code, 0, "no errors expected:\n{json}");
    let sidecar_port = "spec.ingress[0].port.number";
    assert_eq!(
        findings(&json),
        vec![
            finding(
                "02-ztunnel.yaml",
                "warning",
                "WARD0102",
                "IstioCNI default",
                ""
            ),
            finding(
                "02-ztunnel.yaml",
                "warning",
                "WARD0102",
                "ZTunnel default",
                ""
            ),
            finding(
                "03-namespace.yaml",
                "info",
                "WARD0115",
                "Namespace openemr",
                ""
            ),
            finding(
                "04-waypoint.yaml",
                "info",
                "WARD0115",
                "Gateway openemr/waypoint",
                ""
            ),
            finding("", "info", "WARD0208", "", ""),
            finding(
                "50-ward-local.yaml",
                "info",
                "WARD0223",
                "Sidecar openemr/openemr",
                "spec.workloadSelector"
            ),
            finding(
                "50-ward-local.yaml",
                "warning",
                "WARD0208",
                "Sidecar openemr/openemr",
                sidecar_port
            ),
            finding(
                "50-ward-local.yaml",
                "info",
                "WARD0223",
                "Sidecar openemr/mariadb",
                "spec.workloadSelector"
            ),
            finding(
                "50-ward-local.yaml",
                "info",
                "WARD0223",
                "Sidecar openemr/redis",
                "spec.workloadSelector"
            ),
            finding(
                "50-ward-local.yaml",
                "info",
                "WARD0223",
                "Sidecar openemr/other",
                "spec.workloadSelector"
            ),
        ],
        "{json}"
    );
    let (code, text) = analyze(example, false);
    assert_eq!(code, 0, "{text}");
    let fix = offered_peer_authentication(&text, "Sidecar openemr/openemr: spec.ingress[0]");
    assert!(fix.contains("8080: {mode: PERMISSIVE}"), "{fix}");

    // b. The mesh as written: OpenEMR reaches its database and cache over mTLS as
    // cluster.local/ns/openemr/sa/default; `other` (same namespace, another identity) is denied;
    // the router's plaintext connection is refused (Ward's STRICT default).
    let files = yaml_files(example);
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin: addr(&format!("127.0.0.1:{}", free_port())),
        files: files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect(),
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    // The load findings are logged at their own level: a Kubernetes object is only info.
    for (finding, level) in [
        ("info[WARD0115] Namespace openemr:", "INFO"),
        ("warning[WARD0102] ZTunnel default:", "WARN"),
    ] {
        let line = ward
            .wait_for_log(&[("message", finding)], Duration::from_secs(5))
            .unwrap();
        assert_eq!(line["level"], level, "{line}");
    }
    assert!(
        echo_ok(addr(OPENEMR_TO_MARIADB), "SELECT 1;"),
        "openemr -> mariadb; log:\n{}",
        ward.logs()
    );
    assert!(
        echo_ok(addr(OPENEMR_TO_REDIS), "PING\r\n"),
        "openemr -> redis; log:\n{}",
        ward.logs()
    );
    let allowed = ward
        .wait_for_log(
            &[
                ("direction", "inbound"),
                ("authz.decision", "allow"),
                ("dst.workload", "openemr/mariadb"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(
        allowed["src.identity"],
        "spiffe://cluster.local/ns/openemr/sa/default"
    );
    assert_eq!(allowed["authz.policy"], "openemr/allow-openemr-to-mariadb");

    assert!(
        refused(OTHER_TO_MARIADB, b"SELECT 1;"),
        "other -> mariadb must be denied"
    );
    // deny-all is an ALLOW policy without rules: no rule of any ALLOW policy matched, which the
    // record says as Envoy does (`matched_policy[none]`), with no policy to name.
    let denied = ward
        .wait_for_log(
            &[
                ("direction", "inbound"),
                ("authz.decision", "deny"),
                ("src.identity", "spiffe://cluster.local/ns/openemr/sa/other"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(denied["dst.workload"], "openemr/mariadb", "{denied}");
    assert_eq!(
        denied["authz.detail"], "rbac_access_denied_matched_policy[none]",
        "{denied}"
    );
    assert_eq!(denied["response_flags"], "DENY", "{denied}");

    assert!(
        refused(OPENEMR_PORT, b"GET / HTTP/1.1\r\nHost: openemr\r\n\r\n"),
        "the router's plaintext connection must be refused under STRICT"
    );
    let strict = ward
        .wait_for_log(
            &[
                ("direction", "inbound"),
                ("dst.workload", "openemr/openemr"),
                ("authz.detail", "peer_authentication_strict"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(strict.get("src.identity").is_none(), "{strict}");

    // c. The PeerAuthentication analyze offered, written as it was printed: the router now
    // reaches OpenEMR on 8080 (allow-ingress-to-openemr), MariaDB still refuses plaintext, and
    // the mesh traffic is unchanged.
    apply(
        &ward,
        "60-openemr-8080-permissive.yaml",
        &format!("{fix}\n"),
    );
    let request = "GET / HTTP/1.1\r\nHost: openemr\r\n\r\n";
    assert!(
        echo_ok(addr(OPENEMR_PORT), request),
        "plaintext to openemr:8080 after the offered PeerAuthentication; log:\n{}",
        ward.logs()
    );
    let router = ward
        .wait_for_log(
            &[
                ("direction", "inbound"),
                ("dst.workload", "openemr/openemr"),
                ("authz.decision", "allow"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(router["authz.policy"], "openemr/allow-ingress-to-openemr");
    assert!(router.get("src.identity").is_none(), "{router}");
    assert!(
        refused(MARIADB_PORT, b"SELECT 1;"),
        "plaintext to mariadb:3306 must still be refused"
    );
    assert!(echo_ok(addr(OPENEMR_TO_MARIADB), "SELECT 2;"));
    assert!(refused(OTHER_TO_MARIADB, b"SELECT 2;"));

    // d. Why analyze gave 3306 no warning: made PERMISSIVE as Istio's default would have it,
    // MariaDB lets the plaintext client past mTLS and its AuthorizationPolicies refuse it.
    apply(&ward, "61-mariadb-3306-permissive.yaml", MARIADB_PERMISSIVE);
    assert!(
        refused(MARIADB_PORT, b"SELECT 3;"),
        "plaintext to mariadb:3306 must be denied by policy under PERMISSIVE"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let by_policy = loop {
        let found = ward
            .log_lines_matching(&[
                ("direction", "inbound"),
                ("dst.workload", "openemr/mariadb"),
                ("authz.detail", "rbac_access_denied"),
            ])
            .into_iter()
            .find(|l| l.get("src.identity").is_none());
        match found {
            Some(line) => break line,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => panic!(
                "no policy denial of plaintext to mariadb; log:\n{}",
                ward.logs()
            ),
        }
    };
    assert_eq!(
        by_policy["authz.detail"], "rbac_access_denied_matched_policy[none]",
        "{by_policy}"
    );
    assert!(echo_ok(addr(OPENEMR_TO_MARIADB), "SELECT 4;"));

    // And analyze on the directory as it now is: the choice is explicit, so no WARD0208; the
    // PERMISSIVE ports are pointed out instead.
    let (code, text) = analyze(ward.dir(), false);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("WARD0208"), "{text}");
    assert!(
        text.lines().any(|l| l.contains("warning[WARD0203]")
            && l.contains("PeerAuthentication openemr/openemr-8080-permissive")),
        "{text}"
    );
}
