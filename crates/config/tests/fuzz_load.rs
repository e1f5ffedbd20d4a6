//! Property tests: loading untrusted YAML never panics, whatever the input, and neither do
//! translation and analysis of whatever loads.

#![allow(clippy::unwrap_used)] // tests

use proptest::prelude::*;
use ward_config::{analyze, load_str, translate};

/// Runs the whole pipeline; only panics would fail the property.
fn pipeline(yaml: &str) {
    if let Ok(set) = load_str("fuzz.yaml", yaml) {
        let _ = translate(&set);
        let _ = analyze(&set);
    }
}

/// Scalars that exercise typing: numbers, booleans, nulls, addresses, hosts, odd strings.
fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("~".to_owned()),
        Just("true".to_owned()),
        Just("\"\"".to_owned()),
        Just("STRICT".to_owned()),
        Just("MESH_INTERNAL".to_owned()),
        Just("\"*/*\"".to_owned()),
        Just("./a.b".to_owned()),
        Just("127.0.0.1:8080".to_owned()),
        Just("10.0.0.1".to_owned()),
        Just("\"10.0.0.0/33\"".to_owned()),
        Just("unix:///x".to_owned()),
        (0u64..70_000).prop_map(|n| n.to_string()),
        "[a-z./*:-]{0,12}".prop_map(|s| format!("\"{s}\"")),
    ]
}

/// Field names Ward knows, plus some it does not.
fn key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "address",
        "ports",
        "labels",
        "serviceAccount",
        "hosts",
        "location",
        "resolution",
        "endpoints",
        "workloadSelector",
        "exportTo",
        "ingress",
        "egress",
        "port",
        "number",
        "name",
        "protocol",
        "defaultEndpoint",
        "bind",
        "captureMode",
        "selector",
        "matchLabels",
        "mtls",
        "mode",
        "portLevelMtls",
        "rules",
        "from",
        "to",
        "when",
        "source",
        "operation",
        "principals",
        "namespaces",
        "ipBlocks",
        "action",
        "key",
        "values",
        "app",
        "8080",
        "bogus",
        "meshConfig",
        "trustDomain",
        "targetPort",
        "outboundTrafficPolicy",
        "jwtRules",
        "issuer",
        "jwksUri",
        "jwks",
        "fromHeaders",
        "outputClaimToHeaders",
        "header",
        "claim",
        "timeout",
        "targetRefs",
        "targetRef",
        "kind",
        "url",
        "sha256",
        "tracing",
        "randomSamplingPercentage",
        "customTags",
        "literal",
        "reportingInterval",
        "tagOverrides",
        "vmConfig",
        "env",
        "valueFrom",
        "concurrency",
        "namespace",
        "security",
        "dataPlane",
        "memberSelectors",
        "matchExpressions",
        "operator",
        "http",
        "route",
        "destination",
        "match",
        "regex",
        "servers",
        "trafficPolicy",
        "configPatches",
        "template",
    ])
}

/// A random YAML value of bounded depth, in flow style.
fn value() -> impl Strategy<Value = String> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key(), inner), 0..5).prop_map(|entries| {
                let body: Vec<String> = entries.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", body.join(", "))
            }),
        ]
    })
}

fn document() -> impl Strategy<Value = String> {
    let kinds = prop::sample::select(vec![
        ("networking.istio.io/v1", "WorkloadEntry"),
        ("networking.istio.io/v1beta1", "ServiceEntry"),
        ("networking.istio.io/v1alpha3", "Sidecar"),
        ("security.istio.io/v1", "PeerAuthentication"),
        ("security.istio.io/v1beta1", "AuthorizationPolicy"),
        ("security.istio.io/v1", "RequestAuthentication"),
        ("install.istio.io/v1alpha1", "IstioOperator"),
        ("v1", "ConfigMap"),
        ("networking.istio.io/v1", "Gateway"),
        ("telemetry.istio.io/v1", "Telemetry"),
        ("extensions.istio.io/v1alpha1", "WasmPlugin"),
        ("networking.istio.io/v1beta1", "ProxyConfig"),
        ("sailoperator.io/v1", "IstioRevision"),
        ("sailoperator.io/v1", "ZTunnel"),
        ("maistra.io/v2", "ServiceMeshControlPlane"),
        ("maistra.io/v1", "ServiceMeshMemberRoll"),
        ("networking.istio.io/v1", "VirtualService"),
        ("networking.istio.io/v1beta1", "DestinationRule"),
        ("networking.istio.io/v1alpha3", "EnvoyFilter"),
        ("networking.istio.io/v1", "WorkloadGroup"),
    ]);
    let names = prop::sample::select(vec!["a", "b", "istio", "default"]);
    let namespaces = prop::sample::select(vec!["a", "b", "istio-system"]);
    (kinds, names, namespaces, value()).prop_map(|((api, kind), name, ns, spec)| {
        format!("apiVersion: {api}\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        pipeline(&text);
    }

    #[test]
    fn yaml_shaped_text_never_panics(text in "([a-zA-Z:{}\\[\\],\\-#&*!|>'\" \n]|---\n|  ){0,200}") {
        pipeline(&text);
    }

    #[test]
    fn istio_shaped_documents_never_panic(docs in prop::collection::vec(document(), 1..6)) {
        pipeline(&docs.join("---\n"));
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let deep = format!(
        "apiVersion: v1\nkind: List\nitems: {}{}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(load_str("deep.yaml", &deep).is_err());
    let deep_block: String = (0..2_000)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    assert!(load_str("deep.yaml", &deep_block).is_err());
}

#[test]
fn deep_but_allowed_helm_values_load_on_a_small_stack() {
    // The Sail `Istio` resource accepts any helm values; 60 levels is within the budget. Run
    // on a 1 MiB thread (smaller than tokio's 2 MiB workers) in a debug build.
    let values: String = (0..60)
        .map(|i| format!("{}l{i}:\n", " ".repeat(2 * i + 4)))
        .collect();
    let yaml = format!(
        "apiVersion: sailoperator.io/v1\nkind: Istio\nmetadata: {{name: default}}\nspec:\n  values:\n{values}"
    );
    let loaded = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || load_str("deep.yaml", &yaml).map(|set| set.mesh.source.map(|s| s.line)))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(loaded.unwrap(), Some(1));
}
