//! The "mTLS on or off" scenarios of `examples/mtls-on-or-off/`, each answered three ways: by
//! `ward analyze` (the findings), by `ward check` from the config alone (the decision and the
//! PeerAuthentication mode for a mesh workload and for a plaintext client), and live: `ward up`
//! runs the example (moved to 127.1.161-164.x), real traffic goes through a caller's sidecar and
//! straight at the port with no sidecar, then `ward verify mtls` reports what the handshake
//! proved and `ward verify coverage` lists the plaintext flows with the PeerAuthentication that
//! let them in. See examples/mtls-on-or-off/README.md for what each scenario answers.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use ward_test_support::{free_port, yaml_files, UpOptions, Ward};

const RATINGS: &str = "ratings.bookinfo.svc.cluster.local:9080";
const DETAILS: &str = "details.bookinfo.svc.cluster.local:9080";
const REVIEWS: &str = "reviews.bookinfo.svc.cluster.local:9080";

fn example(dir: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/mtls-on-or-off"
    ))
    .join(dir)
}

fn ward(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One scenario: its directory beside the shared `bookinfo/`, and the 127.1.<block>.x
/// addresses its live run uses instead of the example's 127.0.40.x.
struct Scenario {
    dir: &'static str,
    block: u8,
}

impl Scenario {
    fn paths(&self) -> [String; 2] {
        [
            example("bookinfo").display().to_string(),
            example(self.dir).display().to_string(),
        ]
    }

    /// `ward analyze --json`: the finding codes, sorted.
    fn analyze(&self) -> Vec<String> {
        let [mesh, scenario] = self.paths();
        let (code, out, err) = ward(&[
            "analyze",
            "-f",
            mesh.as_str(),
            "-f",
            scenario.as_str(),
            "--json",
        ]);
        assert_eq!(
            code, 0,
            "{} must load without errors: {out}\n{err}",
            self.dir
        );
        let findings: Value = serde_json::from_str(&out).unwrap();
        let mut codes: Vec<String> = findings
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap().to_owned())
            .collect();
        codes.sort();
        codes
    }

    /// `ward check --json --from FROM --to TO` on the example: the exit code and the one target.
    fn check(&self, from: &str, to: &str) -> (i32, Value) {
        let [mesh, scenario] = self.paths();
        let (code, out, err) = ward(&[
            "check",
            "-f",
            mesh.as_str(),
            "-f",
            scenario.as_str(),
            "--from",
            from,
            "--to",
            to,
            "--json",
        ]);
        let report: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
        let targets = report["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 1, "{report:#}");
        (code, targets[0].clone())
    }

    fn ip(&self, host: u8) -> String {
        format!("127.1.{}.{}", self.block, host)
    }

    fn addr(&self, host: u8, port: u16) -> SocketAddr {
        format!("{}:{port}", self.ip(host)).parse().unwrap()
    }

    /// `ward up` on the example, moved to this scenario's addresses and free app ports.
    fn up(&self) -> Ward {
        let mut files = yaml_files(example("bookinfo"));
        files.extend(yaml_files(example(self.dir)));
        let prefix = format!("127.1.{}.", self.block);
        let files: Vec<(String, String)> = files
            .into_iter()
            .map(|(name, body)| {
                let mut body = body.replace("127.0.40.", &prefix);
                for app in 1..=4 {
                    body = body.replace(
                        &format!("127.0.0.1:1908{app}"),
                        &format!("127.0.0.1:{}", free_port()),
                    );
                }
                (name, body)
            })
            .collect();
        Ward::up(UpOptions {
            bin: env!("CARGO_BIN_EXE_ward"),
            admin: self.addr(200, free_port()),
            files: files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect(),
            extra_args: Vec::new(),
            env: Vec::new(),
        })
        .unwrap()
    }

    /// Echo `msg` through a caller's egress listener (its sidecar) at `.host:9080`.
    fn via_sidecar(&self, host: u8, msg: &str) -> bool {
        ward_test_support::echo_ok(self.addr(host, 9080), msg)
    }

    /// Echo `msg` straight at a workload's port 9080 from 127.1.<block>.99, a client with no
    /// sidecar: true when it came back, false when the connection was refused or reset.
    fn plaintext(&self, host: u8, msg: &str) -> bool {
        use std::io::{Read, Write};
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&self.addr(99, 0).into()).unwrap();
        if sock
            .connect_timeout(
                &self.addr(host, 9080).into(),
                std::time::Duration::from_secs(3),
            )
            .is_err()
        {
            return false;
        }
        let mut s: std::net::TcpStream = sock.into();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        if s.write_all(msg.as_bytes()).is_err() || s.shutdown(std::net::Shutdown::Write).is_err() {
            return false;
        }
        let mut out = Vec::new();
        s.read_to_end(&mut out).is_ok() && out == msg.as_bytes()
    }
}

/// `ward verify mtls --json`: the exit code and the report.
fn verify_mtls(w: &Ward, from: &str, to: &str) -> (i32, Value) {
    let admin = w.admin.to_string();
    let (code, out, err) = ward(&[
        "verify",
        "mtls",
        "--admin",
        admin.as_str(),
        "--from",
        from,
        "--to",
        to,
        "--json",
    ]);
    let report =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}\n{}", w.logs()));
    (code, report)
}

/// `ward verify coverage --json`: the exit code and the report.
fn coverage(w: &Ward) -> (i32, Value) {
    let admin = w.admin.to_string();
    let (code, out, err) = ward(&[
        "verify",
        "coverage",
        "--admin",
        admin.as_str(),
        "--since",
        "10m",
        "--json",
    ]);
    let report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, report)
}

/// A plaintext flow of a coverage report: source address, destination, PeerAuthentication,
/// mode, connections.
type Flow = (String, String, String, String, u64);

/// The plaintext flows of a coverage report, sorted.
fn plaintext_flows(r: &Value) -> Vec<Flow> {
    let mut flows: Vec<_> = r["plaintext"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["port"], 9080, "{f:#}");
            (
                f["sourceAddress"].as_str().unwrap().to_owned(),
                f["destination"].as_str().unwrap().to_owned(),
                f["peerAuthentication"].as_str().unwrap().to_owned(),
                f["mode"].as_str().unwrap().to_owned(),
                f["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    flows.sort();
    flows
}

fn flow(src: &str, dst: &str, pa: &str, mode: &str, n: u64) -> Flow {
    (src.into(), dst.into(), pa.into(), mode.into(), n)
}

/// Assert a `ward check` target: allowed or not, the transport, and the PA mode and resource.
fn assert_target(t: &Value, allowed: bool, transport: &str, mode: &str, pa: &str) {
    assert_eq!(t["allowed"], allowed, "{t:#}");
    assert_eq!(t["transport"], transport, "{t:#}");
    assert_eq!(t["peerAuthentication"]["mode"], mode, "{t:#}");
    let p = &t["peerAuthentication"]["policy"];
    assert_eq!(
        format!(
            "{}/{}",
            p["namespace"].as_str().unwrap(),
            p["name"].as_str().unwrap()
        ),
        pa,
        "{t:#}"
    );
}

/// A mutual TLS 1.3 probe with the expected peer.
fn assert_mutual_tls(code: i32, r: &Value, peer: &str) {
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["mutualTls13"], true, "{r:#}");
    assert_eq!(r["transport"], "HBONE", "{r:#}");
    assert_eq!(r["tlsVersion"], "TLSv1.3", "{r:#}");
    assert_eq!(r["decision"], "ALLOW", "{r:#}");
    let id = format!("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-{peer}");
    assert_eq!(r["expectedIdentity"], id, "{r:#}");
    assert_eq!(r["serverCert"]["identity"], id, "{r:#}");
}

/// A plaintext probe: exit 1, no certificates.
fn assert_plaintext_probe(code: i32, r: &Value) {
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["transport"], "PLAINTEXT", "{r:#}");
    assert_eq!(r["mutualTls13"], false, "{r:#}");
    assert!(r["serverCert"].is_null(), "{r:#}");
}

/// Scenario 1: `mtls: false` in an OSSM 2 ServiceMeshControlPlane is the PERMISSIVE
/// PeerAuthentication OSSM creates: sidecars still talk mTLS, and a client with no sidecar gets in
/// in plaintext.
#[test]
fn smcp_mtls_false_is_permissive_not_off() {
    let s = Scenario {
        dir: "1-smcp-mtls-false",
        block: 161,
    };
    assert_eq!(s.analyze(), ["WARD0102", "WARD0203", "WARD0229"]);
    let (code, t) = s.check("bookinfo/reviews", RATINGS);
    assert_eq!(code, 0);
    assert_target(&t, true, "mTLS", "PERMISSIVE", "istio-system/default");
    let (code, t) = s.check("plaintext:10.0.0.9", RATINGS);
    assert_eq!(code, 0);
    assert_target(&t, true, "plaintext", "PERMISSIVE", "istio-system/default");

    let w = s.up();
    assert!(s.via_sidecar(34, "reviews to ratings"), "{}", w.logs());
    assert!(s.plaintext(4, "no sidecar to ratings"), "{}", w.logs());
    let (code, r) = coverage(&w);
    assert_eq!(code, 1, "a plaintext flow was served\n{r:#}");
    assert_eq!(
        plaintext_flows(&r),
        [flow(
            &s.ip(99),
            "bookinfo/ratings",
            "istio-system/default",
            "PERMISSIVE",
            1
        )],
        "{r:#}"
    );
    let pair = r["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["source"] == "bookinfo/reviews")
        .unwrap();
    assert_eq!(pair["mtlsConnectionShare"], 1.0, "{r:#}");
    let (code, r) = verify_mtls(&w, "bookinfo/reviews", RATINGS);
    assert_mutual_tls(code, &r, "ratings");
}

/// Scenario 2: PeerAuthentication DISABLE mesh-wide (and the DestinationRules Istio users add):
/// every connection is plaintext, from sidecars too; Ward needs no DestinationRule for it.
#[test]
fn disabled_for_all_is_plaintext_everywhere() {
    let s = Scenario {
        dir: "2-disabled-for-all",
        block: 162,
    };
    assert_eq!(s.analyze(), ["WARD0213"]);
    let (code, t) = s.check("bookinfo/reviews", RATINGS);
    assert_eq!(code, 0);
    assert_target(&t, true, "plaintext", "DISABLE", "istio-system/default");
    let (code, t) = s.check("plaintext:10.0.0.9", DETAILS);
    assert_eq!(code, 0);
    assert_target(&t, true, "plaintext", "DISABLE", "istio-system/default");

    let w = s.up();
    assert!(s.via_sidecar(34, "reviews to ratings"), "{}", w.logs());
    assert!(s.via_sidecar(12, "productpage to details"), "{}", w.logs());
    assert!(s.plaintext(2, "no sidecar to details"), "{}", w.logs());
    let (code, r) = coverage(&w);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["mtlsConnections"], 0, "{r:#}");
    let pa = "istio-system/default";
    assert_eq!(
        plaintext_flows(&r),
        [
            flow(&s.ip(1), "bookinfo/details", pa, "DISABLE", 1),
            flow(&s.ip(3), "bookinfo/ratings", pa, "DISABLE", 1),
            flow(&s.ip(99), "bookinfo/details", pa, "DISABLE", 1),
        ],
        "{r:#}"
    );
    let (code, r) = verify_mtls(&w, "bookinfo/reviews", RATINGS);
    assert_plaintext_probe(code, &r);
    let (code, r) = verify_mtls(&w, "bookinfo/productpage", DETAILS);
    assert_plaintext_probe(code, &r);
}

/// Scenario 3: STRICT mesh-wide: plaintext is refused, sidecars talk mutual TLS 1.3; the
/// DestinationRule DISABLE left over (Istio's 503) is reported by analyze and does not turn Ward's
/// mTLS off.
#[test]
fn enforced_for_all_refuses_plaintext() {
    let s = Scenario {
        dir: "3-enforced-for-all",
        block: 163,
    };
    assert_eq!(s.analyze(), ["WARD0225"]);
    let (code, t) = s.check("bookinfo/productpage", REVIEWS);
    assert_eq!(code, 0);
    assert_target(&t, true, "mTLS", "STRICT", "istio-system/default");
    let (code, t) = s.check("plaintext:10.0.0.9", REVIEWS);
    assert_eq!(code, 1);
    assert_target(&t, false, "plaintext", "STRICT", "istio-system/default");
    assert_eq!(t["refusedBy"], "peerAuthentication", "{t:#}");

    let w = s.up();
    assert!(s.via_sidecar(13, "productpage to reviews"), "{}", w.logs());
    assert!(s.via_sidecar(34, "reviews to ratings"), "{}", w.logs());
    assert!(
        !s.plaintext(3, "no sidecar to reviews"),
        "STRICT must refuse plaintext"
    );
    let (code, r) = coverage(&w);
    assert_eq!(code, 0, "nothing was served in plaintext\n{r:#}");
    assert!(r["plaintext"].as_array().unwrap().is_empty(), "{r:#}");
    assert_eq!(r["mtlsConnectionShare"], 1.0, "{r:#}");
    let (code, r) = verify_mtls(&w, "bookinfo/productpage", REVIEWS);
    assert_mutual_tls(code, &r, "reviews");
    let (code, r) = verify_mtls(&w, "bookinfo/reviews", RATINGS);
    assert_mutual_tls(code, &r, "ratings");
}

/// Scenario 4: STRICT mesh-wide, DISABLE for ratings by a workload-selector PeerAuthentication:
/// ratings is plaintext from everyone, the rest stays mutual TLS and refuses plaintext.
#[test]
fn disabled_for_one_workload_only() {
    let s = Scenario {
        dir: "4-disabled-for-ratings",
        block: 164,
    };
    assert_eq!(s.analyze(), ["WARD0213"]);
    let off = "bookinfo/ratings-mtls-off";
    let (code, t) = s.check("bookinfo/reviews", RATINGS);
    assert_eq!(code, 0);
    assert_target(&t, true, "plaintext", "DISABLE", off);
    assert_eq!(t["peerAuthentication"]["level"], "workload", "{t:#}");
    let (code, t) = s.check("plaintext:10.0.0.9", RATINGS);
    assert_eq!(code, 0);
    assert_target(&t, true, "plaintext", "DISABLE", off);
    let (code, t) = s.check("plaintext:10.0.0.9", DETAILS);
    assert_eq!(code, 1);
    assert_target(&t, false, "plaintext", "STRICT", "istio-system/default");
    let (code, t) = s.check("bookinfo/productpage", DETAILS);
    assert_eq!(code, 0);
    assert_target(&t, true, "mTLS", "STRICT", "istio-system/default");

    let w = s.up();
    assert!(s.via_sidecar(34, "reviews to ratings"), "{}", w.logs());
    assert!(s.via_sidecar(12, "productpage to details"), "{}", w.logs());
    assert!(s.plaintext(4, "no sidecar to ratings"), "{}", w.logs());
    assert!(
        !s.plaintext(2, "no sidecar to details"),
        "details is STRICT"
    );
    let (code, r) = coverage(&w);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(
        plaintext_flows(&r),
        [
            flow(&s.ip(3), "bookinfo/ratings", off, "DISABLE", 1),
            flow(&s.ip(99), "bookinfo/ratings", off, "DISABLE", 1),
        ],
        "{r:#}"
    );
    let (code, r) = verify_mtls(&w, "bookinfo/reviews", RATINGS);
    assert_plaintext_probe(code, &r);
    let (code, r) = verify_mtls(&w, "bookinfo/productpage", DETAILS);
    assert_mutual_tls(code, &r, "details");
}
