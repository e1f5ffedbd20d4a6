//! `ward check` on the shipped examples: the decision and the deciding policy and rule of
//! what-if queries, and the errors for flags that name nothing.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use ward_config::check::{check, Query, Report};
use ward_config::{load_paths, translate};
use ward_policy::RuleOutcome;

fn run(example: &str, query: Query) -> Report {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(example);
    let set = load_paths(&[dir]).unwrap_or_else(|e| panic!("{e}"));
    let snapshot = translate(&set).unwrap_or_else(|e| panic!("{e}"));
    check(&set, &snapshot, &query).unwrap_or_else(|e| panic!("{e}"))
}

fn query(from: &str, to: &str) -> Query {
    Query {
        from: from.into(),
        to: to.into(),
        ..Query::default()
    }
}

/// (allowed, refused by, deciding rule as the proxy logs it) of the one target.
fn verdict(report: &Report) -> (bool, Option<&'static str>, Option<String>) {
    assert_eq!(report.targets.len(), 1, "{report:#?}");
    let t = &report.targets[0];
    let rule = t
        .authorization
        .as_ref()
        .and_then(|a| a.decision.deciding_rule().map(ToString::to_string));
    (t.allowed, t.refused_by, rule)
}

#[test]
fn openemr_table() {
    let mariadb = "mariadb.openemr.svc.cluster.local:3306";
    type Case<'a> = (&'a str, &'a str, bool, Option<&'a str>, Option<&'a str>);
    let cases: &[Case<'_>] = &[
        (
            "openemr/openemr",
            mariadb,
            true,
            None,
            Some("ns[openemr]-policy[allow-openemr-to-mariadb]-rule[0]"),
        ),
        (
            "spiffe://cluster.local/ns/openemr/sa/default",
            mariadb,
            true,
            None,
            Some("ns[openemr]-policy[allow-openemr-to-mariadb]-rule[0]"),
        ),
        (
            "openemr/other",
            mariadb,
            false,
            Some("authorizationPolicy"),
            None,
        ),
        (
            "plaintext:10.0.0.9",
            "openemr/openemr:8080",
            false,
            Some("peerAuthentication"),
            None,
        ),
        (
            "openemr/other",
            "openemr/openemr:8080",
            true,
            None,
            Some("ns[openemr]-policy[allow-ingress-to-openemr]-rule[0]"),
        ),
        (
            "openemr/openemr",
            "openemr/mariadb:9999",
            false,
            Some("port"),
            None,
        ),
    ];
    for (from, to, allowed, refused_by, rule) in cases {
        let report = run("openemr-ossm3", query(from, to));
        let got = verdict(&report);
        assert_eq!(
            (got.0, got.1, got.2.as_deref()),
            (*allowed, *refused_by, *rule),
            "{from} -> {to}: {report:#?}"
        );
        assert_eq!(report.allowed(), *allowed);
    }
}

#[test]
fn openemr_traces_say_why() {
    let report = run(
        "openemr-ossm3",
        query("openemr/other", "mariadb.openemr.svc.cluster.local:3306"),
    );
    let t = &report.targets[0];
    assert_eq!(t.transport, "mTLS");
    assert_eq!(
        t.outcome,
        "HTTP 401 on the HBONE CONNECT (the client's connection is closed)"
    );
    let authz = t.authorization.as_ref().unwrap();
    let db = authz
        .policies
        .iter()
        .find(|p| p.policy.name == "allow-openemr-to-mariadb")
        .unwrap();
    assert_eq!(
        db.rules[0].outcome,
        RuleOutcome::Failed {
            reason: "from[0].source.principals (peer: cluster.local/ns/openemr/sa/other)".into()
        }
    );
    // No PeerAuthentication in the example: Ward's default.
    let plain = run(
        "openemr-ossm3",
        query("plaintext:10.0.0.9", "openemr/openemr:8080"),
    );
    let pa = plain.targets[0].peer_authentication.as_ref().unwrap();
    assert_eq!((pa.level.as_str(), pa.policy.is_none()), ("default", true));
    assert_eq!(
        plain.targets[0].outcome,
        "connection reset: STRICT refuses plaintext"
    );
}

#[test]
fn fhir_table() {
    let fhir = "fhir-server.datamesh.svc.cluster.local:8080";
    let iss = "http://127.0.0.1:8180/realms/ward-dev";
    let medic = format!(
        r#"{{"iss":"{iss}","sub":"bob","aud":"fhir","realm_access":{{"roles":["Medic"]}}}}"#
    );
    let patient = format!(
        r#"{{"iss":"{iss}","sub":"ann","aud":["fhir"],"realm_access":{{"roles":["Patient"]}}}}"#
    );
    let stranger = r#"{"iss":"https://elsewhere.example","sub":"eve","aud":"fhir"}"#.to_owned();
    let wrong_aud = format!(r#"{{"iss":"{iss}","sub":"bob","aud":"other"}}"#);
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        bool,
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            Some("/fhir/Patient"),
            Some(&medic),
            true,
            None,
            Some("ns[datamesh]-policy[medic-post]-rule[0]"),
            "allowed",
        ),
        (
            "GET",
            Some("/fhir/Patient"),
            Some(&patient),
            true,
            None,
            Some("ns[datamesh]-policy[patient-get]-rule[0]"),
            "allowed",
        ),
        (
            "POST",
            Some("/fhir/Patient"),
            Some(&patient),
            false,
            Some("authorizationPolicy"),
            None,
            "HTTP 403 RBAC: access denied",
        ),
        (
            "GET",
            Some("/fhir/Patient"),
            None,
            false,
            Some("authorizationPolicy"),
            None,
            "HTTP 403 RBAC: access denied",
        ),
        (
            "GET",
            Some("/fhir/Patient"),
            Some(&stranger),
            false,
            Some("requestAuthentication"),
            None,
            "HTTP 401 Jwt issuer is not configured",
        ),
        (
            "GET",
            Some("/fhir/Patient"),
            Some(&wrong_aud),
            false,
            Some("requestAuthentication"),
            None,
            "HTTP 403 Audiences in Jwt are not allowed",
        ),
        // Normalized before matching: `/fhir/../fhir/x` is `/fhir/x`.
        (
            "POST",
            Some("/x/../fhir/Patient"),
            Some(&medic),
            true,
            None,
            Some("ns[datamesh]-policy[medic-post]-rule[0]"),
            "allowed",
        ),
        (
            "GET",
            Some("/fhir%2FPatient"),
            Some(&patient),
            false,
            Some("admission"),
            None,
            "",
        ),
    ];
    for (method, path, claims, allowed, refused_by, rule, outcome) in cases {
        let q = Query {
            method: Some(method.into()),
            path: path.map(Into::into),
            claims: claims.map(Into::into),
            ..query("default/client", fhir)
        };
        let report = run("fhir", q);
        let got = verdict(&report);
        assert_eq!(
            (got.0, got.1, got.2.as_deref()),
            (allowed, refused_by, rule),
            "{method} {path:?} {claims:?}: {report:#?}"
        );
        if !outcome.is_empty() {
            assert_eq!(report.targets[0].outcome, outcome);
        }
    }
}

#[test]
fn fhir_trace_shows_mesh_strict_and_the_normalized_path() {
    let q = Query {
        method: Some("GET".into()),
        path: Some("/a/../fhir/./Patient".into()),
        ..query(
            "default/client",
            "fhir-server.datamesh.svc.cluster.local:8080",
        )
    };
    let report = run("fhir", q);
    let t = &report.targets[0];
    let pa = t.peer_authentication.as_ref().unwrap();
    assert_eq!(pa.level, "mesh");
    assert_eq!(
        pa.policy.as_ref().unwrap().to_string(),
        "istio-system/default"
    );
    let request = t.request.as_ref().unwrap();
    assert_eq!(request.normalized_path.as_deref(), Some("/fhir/Patient"));
    assert_eq!(request.request_principal, None);
    let get = t
        .authorization
        .as_ref()
        .unwrap()
        .policies
        .iter()
        .find(|p| p.policy.name == "patient-get")
        .unwrap();
    assert_eq!(
        get.rules[0].outcome,
        RuleOutcome::Failed {
            reason: "from[0].source.requestPrincipals (no valid token)".into()
        }
    );
}

#[test]
fn flags_that_name_nothing_say_so_with_close_matches() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/openemr-ossm3");
    let set = load_paths(&[dir]).unwrap();
    let snapshot = translate(&set).unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("openemr/openmer", "openemr/openemr:8080", "--from \"openemr/openmer\": no WorkloadEntry `openemr/openmer`; a source is ns/name of a WorkloadEntry, spiffe://<td>/ns/<ns>/sa/<sa>, or plaintext:<IP>; did you mean openemr/openemr?"),
        ("plaintext:nope", "openemr/openemr:8080", "--from \"plaintext:nope\": expected plaintext:<IP address>, e.g. plaintext:10.0.0.9"),
        ("spiffe://cluster.local/ns/x", "openemr/openemr:8080", "--from \"spiffe://cluster.local/ns/x\": expected an identity spiffe://<trust domain>/ns/<namespace>/sa/<service account>"),
        ("openemr/openemr", "mariadb.openemr:3306", "--to \"mariadb.openemr:3306\": `mariadb.openemr` is neither a ServiceEntry host nor a WorkloadEntry (ns/name); did you mean mariadb.openemr.svc.cluster.local?"),
        ("openemr/openemr", "mariadb.openemr.svc.cluster.local:3307", "--to \"mariadb.openemr.svc.cluster.local:3307\": `mariadb.openemr.svc.cluster.local` has no port 3307; its ports: 3306"),
        ("openemr/openemr", "openemr/openemr", "--to \"openemr/openemr\": expected <host>:<port> or <namespace>/<name>:<port>"),
        ("openemr/openemr", "openemr/openemr:http", "--to \"openemr/openemr:http\": `http` is not a port number"),
    ];
    for (from, to, want) in cases {
        let err = check(&set, &snapshot, &query(from, to)).unwrap_err();
        assert_eq!(err.to_string(), *want);
    }
    let bad_header = Query {
        headers: vec!["x-no-colon".into()],
        ..query("openemr/openemr", "openemr/openemr:8080")
    };
    assert_eq!(
        check(&set, &snapshot, &bad_header).unwrap_err().to_string(),
        "--header \"x-no-colon\": expected name:value"
    );
    let bad_claims = Query {
        claims: Some("[1]".into()),
        ..query("openemr/openemr", "openemr/openemr:8080")
    };
    assert_eq!(
        check(&set, &snapshot, &bad_claims).unwrap_err().to_string(),
        "--claims \"[1]\": expected a JSON object"
    );
}

/// Two workloads; `srv` serves 9000 (TCP) and 9001 (TCP), 9001 DISABLE by a port-level setting.
const PORT_LEVEL: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: srv, namespace: app}
spec: {address: 10.0.0.2, serviceAccount: srv, labels: {app: srv}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: cli, namespace: app}
spec: {address: 10.0.0.1, serviceAccount: cli, labels: {app: cli}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: srv, namespace: app}
spec:
  workloadSelector: {labels: {app: srv}}
  ingress:
  - port: {number: 9000, protocol: TCP, name: tcp-a}
    defaultEndpoint: 127.0.0.1:7000
  - port: {number: 9001, protocol: TCP, name: tcp-b}
    defaultEndpoint: 127.0.0.1:7001
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns-permissive, namespace: app}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: srv-ports, namespace: app}
spec:
  selector: {matchLabels: {app: srv}}
  portLevelMtls: {9001: {mode: DISABLE}}
"#;

#[test]
fn peer_authentication_level_and_transport_follow_translate() {
    let set = ward_config::load_str("port-level.yaml", PORT_LEVEL).unwrap();
    let snapshot = translate(&set).unwrap();
    // (from, to, level, policy, transport, allowed)
    let cases = [
        (
            "app/cli",
            "app/srv:9000",
            "namespace",
            "app/ns-permissive",
            "mTLS",
            true,
        ),
        (
            "app/cli",
            "app/srv:9001",
            "port-level",
            "app/srv-ports",
            "plaintext",
            true,
        ),
        (
            "plaintext:10.9.9.9",
            "app/srv:9000",
            "namespace",
            "app/ns-permissive",
            "plaintext",
            true,
        ),
    ];
    for (from, to, level, policy, transport, allowed) in cases {
        let report = check(&set, &snapshot, &query(from, to)).unwrap();
        let t = &report.targets[0];
        let pa = t.peer_authentication.as_ref().unwrap();
        assert_eq!(
            (
                pa.level.as_str(),
                pa.policy.as_ref().unwrap().to_string(),
                t.transport,
                t.allowed
            ),
            (level, policy.to_owned(), transport, allowed),
            "{from} -> {to}: {report:#?}"
        );
    }
}

#[test]
fn a_service_with_no_workload_in_the_mesh_is_an_error() {
    let yaml = format!(
        "{PORT_LEVEL}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ext, namespace: app}}\nspec:\n  hosts: [api.example.com]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports: [{{number: 443, name: tls, protocol: TLS}}]\n  endpoints: [{{address: 192.0.2.1}}]\n"
    );
    let set = ward_config::load_str("ext.yaml", &yaml).unwrap();
    let snapshot = translate(&set).unwrap();
    let err = check(&set, &snapshot, &query("app/cli", "api.example.com:443")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--to \"api.example.com:443\": no workload of the mesh is behind it, so no Ward proxy \
         decides (endpoints: 192.0.2.1:443)"
    );
}
