//! Real YAML fixtures under `tests/data`: a good quickstart directory and one directory per
//! kind of mistake. Each bad case asserts the exact `file:line: severity[code] object: field:`
//! users will see, at the stage (load, translate or analyze) that reports it.

#![allow(clippy::unwrap_used)] // tests

use std::net::SocketAddr;
use std::path::PathBuf;

use ward_config::{
    analyze, code, load_paths, translate, Diagnostic, Endpoint, InboundPort, Protocol, Severity,
    Transport,
};
use ward_policy::{MtlsMode, PolicyRef};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// A diagnostic as users see it, with the fixture directory prefix removed.
fn render(d: &Diagnostic) -> String {
    d.to_string().replace(&format!("{}/", data().display()), "")
}

#[test]
fn the_quickstart_loads_translates_and_analyzes_clean() {
    let set = load_paths(&[data().join("good/quickstart")]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.warnings, vec![]);
    assert_eq!(set.mesh.root_namespace, "istio-system");
    assert_eq!(set.mesh.source.as_ref().map(|s| s.line), Some(2));
    assert_eq!(
        (
            set.workload_entries.len(),
            set.service_entries.len(),
            set.sidecars.len()
        ),
        (2, 1, 2)
    );
    assert_eq!(analyze(&set), vec![]);

    let snapshot = translate(&set).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snapshot.trust_domain, "cluster.local");
    assert_eq!(
        snapshot.proxies.keys().collect::<Vec<_>>(),
        vec!["demo/backend", "demo/frontend"]
    );

    let frontend = &snapshot.proxies["demo/frontend"];
    assert_eq!(
        frontend.workload.identity,
        "spiffe://cluster.local/ns/demo/sa/frontend"
    );
    assert_eq!(frontend.outbound_traffic_policy, "REGISTRY_ONLY");
    assert_eq!(frontend.outbound.len(), 1);
    let listener = &frontend.outbound[0];
    assert_eq!(
        listener.bind,
        "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(listener.service, "backend.demo.svc.cluster.local");
    assert_eq!(
        listener.endpoints,
        vec![Endpoint {
            address: "127.0.0.3:9000".parse().unwrap(),
            workload: Some("demo/backend".into()),
            identity: Some("spiffe://cluster.local/ns/demo/sa/backend".into()),
            transport: Transport::Hbone,
        }]
    );
    assert!(frontend.authz.policies().is_empty());

    let backend = &snapshot.proxies["demo/backend"];
    assert_eq!(backend.workload.demo_app, Some(ward_config::DemoApp::Echo));
    assert_eq!(
        backend.inbound,
        vec![InboundPort {
            port: 9000,
            protocol: Protocol::Tcp,
            target: "127.0.0.1:9001".parse().unwrap(),
            mtls: MtlsMode::Strict,
            mtls_policy: Some(PolicyRef::new("istio-system", "default")),
        }]
    );
    let policies: Vec<String> = backend
        .authz
        .policies()
        .iter()
        .map(|p| p.policy.to_string())
        .collect();
    assert_eq!(policies, vec!["demo/backend-allow-frontend"]);

    // The snapshot is plain data: it survives a JSON round trip unchanged.
    let json = serde_json::to_string(&snapshot).unwrap();
    assert_eq!(
        serde_json::from_str::<ward_config::MeshSnapshot>(&json).unwrap(),
        snapshot
    );
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Load,
    Translate,
    Analyze,
}

#[test]
fn each_bad_directory_reports_where_and_what() {
    use Stage::*;
    let cases: &[(&str, Stage, &[&str])] = &[
        (
            "unknown-field",
            Load,
            &["bad/unknown-field/policy.yaml:12: error[WARD0101] AuthorizationPolicy foo/deny-x: spec.rules[0].from[1]: unknown field `sorce`, expected `source`"],
        ),
        (
            "unknown-kind",
            Load,
            &["bad/unknown-kind/policy.yaml:10: error[WARD0106] AuthorizationPolic default/web: unknown kind `AuthorizationPolic` for apiVersion `security.istio.io/v1` (did you mean `AuthorizationPolicy`?)"],
        ),
        (
            "duplicate",
            Load,
            &["bad/duplicate/b.yaml:5: error[WARD0104] PeerAuthentication istio-system/default: metadata.name: duplicate object: PeerAuthentication istio-system/default is already defined at bad/duplicate/a.yaml:1"],
        ),
        (
            "bad-cidr",
            Load,
            &[
                "bad/bad-cidr/service.yaml:11: error[WARD0105] ServiceEntry apps/legacy: spec.addresses[1]: `10.20.0.0/33` is not an IP address or CIDR",
            ],
        ),
        (
            "bad-cidr-policy",
            Translate,
            &["bad/bad-cidr-policy/policy.yaml:12: error[WARD0108] AuthorizationPolicy apps/office-only: spec.rules[0].from[0].source.ipBlocks[1]: "],
        ),
        (
            "dns-address",
            Load,
            &["bad/dns-address/vm.yaml:7: error[WARD0105] WorkloadEntry legacy/vm1: spec.address: `vm1.corp.example.com` is not an IP address: Ward needs an IP address here"],
        ),
        (
            "yaml-syntax",
            Load,
            &["bad/yaml-syntax/broken.yaml:7: error[WARD0100] invalid YAML: "],
        ),
        (
            "two-mesh-settings",
            Load,
            &["bad/two-mesh-settings/mesh.yaml:10: error[WARD0107] Istio default: mesh settings are already defined at bad/two-mesh-settings/mesh.yaml:1"],
        ),
        (
            "two-mesh-wide-pa",
            Analyze,
            &[
                "bad/two-mesh-wide-pa/pa.yaml:14: error[WARD0204] PeerAuthentication istio-system/legacy-permissive: metadata.name: several mesh-level PeerAuthentications apply to the same workloads; the oldest (istio-system/default) wins",
                "bad/two-mesh-wide-pa/pa.yaml:19: warning[WARD0203] PeerAuthentication istio-system/legacy-permissive: spec.mtls.mode: PERMISSIVE accepts plaintext without identity",
            ],
        ),
        (
            "egress-unmatched",
            Analyze,
            &[
                // Its only egress host matches nothing, so the proxy has no listener at all.
                "bad/egress-unmatched/mesh.yaml:4: warning[WARD0212] WorkloadEntry shop/client: metadata.name: Sidecar shop/default configures this workload but gives it no listener (it has no ingress listener; spec.egress[0] hosts `./payments.shop.svc.cluster.local` match no ServiceEntry visible to namespace `shop`)",
                "bad/egress-unmatched/mesh.yaml:19: warning[WARD0211] Sidecar shop/default: spec.egress[0].hosts[0]: egress host `./payments.shop.svc.cluster.local` matches no ServiceEntry visible to namespace `shop`",
            ],
        ),
        (
            "jwt-without-authz",
            Analyze,
            &["bad/jwt-without-authz/api.yaml:31: warning[WARD0217] RequestAuthentication shop/api-jwt: spec.jwtRules: requests WITHOUT a token are let through to shop/api"],
        ),
        (
            "jwks-plain-http",
            Load,
            &["bad/jwks-plain-http/jwt.yaml:9: error[WARD0109] RequestAuthentication istio-system/jwt: spec.jwtRules[0].jwksUri: jwksUri `http://idp.example.com/keys` is refused: plain http is only allowed to a loopback host"],
        ),
        (
            "tcp-listener-conflict",
            Translate,
            &["bad/tcp-listener-conflict/mesh.yaml:37: error[WARD0112] Sidecar data/default: spec.egress: for workload data/api, the TCP listener 127.0.0.1:5432 would serve several services"],
        ),
    ];
    for (dir, stage, want) in cases {
        let loaded = load_paths(&[data().join("bad").join(dir)]);
        let got: Vec<Diagnostic> = match (stage, loaded) {
            (Load, Err(diags)) => diags.0,
            (Load, Ok(_)) => panic!("{dir}: loaded without error"),
            (_, Err(diags)) => panic!("{dir}: does not load: {diags}"),
            (Translate, Ok(set)) => translate(&set).expect_err(dir).0,
            (Analyze, Ok(set)) => {
                assert!(translate(&set).is_ok(), "{dir}: translation should succeed");
                analyze(&set)
                    .into_iter()
                    .filter(|d| d.severity != Severity::Info)
                    .collect()
            }
        };
        let got: Vec<String> = got.iter().map(render).collect();
        assert_eq!(got.len(), want.len(), "{dir}: {got:#?}");
        for (line, prefix) in got.iter().zip(want.iter()) {
            assert!(
                line.starts_with(prefix),
                "{dir}:\n got: {line}\nwant: {prefix}..."
            );
        }
    }
}

#[test]
fn an_unmatched_egress_host_is_an_analyze_warning_not_an_error() {
    let set = load_paths(&[data().join("bad/egress-unmatched")]).unwrap();
    let findings: Vec<_> = analyze(&set)
        .into_iter()
        .filter(|d| d.code == code::EGRESS_HOST_UNMATCHED)
        .collect();
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].severity, Severity::Warning);
    assert_eq!(findings[0].line, Some(19));
}

#[test]
fn all_bad_directories_load_together_with_every_load_error() {
    // Loading several paths reports every file's errors at once, sorted by file and line.
    let dirs: Vec<PathBuf> = ["yaml-syntax", "unknown-field", "dns-address"]
        .iter()
        .map(|d| data().join("bad").join(d))
        .collect();
    let err = load_paths(&dirs).unwrap_err();
    let files: Vec<String> = err
        .0
        .iter()
        .map(render)
        .map(|l| l.split(':').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        files,
        vec![
            "bad/dns-address/vm.yaml",
            "bad/unknown-field/policy.yaml",
            "bad/yaml-syntax/broken.yaml"
        ]
    );
}

#[test]
fn the_fhir_example_loads_translates_and_analyzes_without_errors() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/fhir");
    let set = load_paths(&[example]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        set.warnings.iter().all(|d| !d.is_error()),
        "{:?}",
        set.warnings
    );
    assert_eq!(set.request_authentications.len(), 1);
    let snapshot = translate(&set).unwrap_or_else(|e| panic!("{e}"));
    let issuers = |key: &str| -> Vec<String> {
        snapshot.proxies[key]
            .jwt_rules
            .rules()
            .iter()
            .map(|r| r.issuer.clone())
            .collect()
    };
    assert_eq!(
        issuers("datamesh/fhir-server"),
        vec!["http://127.0.0.1:8180/realms/ward-dev".to_owned()]
    );
    assert!(issuers("datamesh/postgres-db").is_empty());
    assert!(issuers("default/client").is_empty());
    let findings = analyze(&set);
    assert!(
        findings.iter().all(|d| !d.is_error()
            && d.code != code::JWT_NOT_REQUIRED
            && d.code != code::JWKS_PLAIN_HTTP),
        "{findings:#?}"
    );
}
