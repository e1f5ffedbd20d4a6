//! Kubernetes manifests kept next to Istio objects: Ward accepts and skips them (one WARD0115
//! info finding each) and loads the Istio objects exactly as it would alone. Istio kinds and
//! apiVersions that are misspelt stay errors. An `istioctl install -f` IstioOperator (no
//! name) carries the mesh settings. A Namespace's labels are read by `ward analyze` only.

#![allow(clippy::unwrap_used)] // tests

use ward_config::{
    analyze, code, load_paths, load_str, translate, ConfigSet, Diagnostic, Severity,
};

/// The Istio objects of the mixed file, alone.
const ISTIO: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: shop, namespace: shop}
spec: {address: 127.0.0.20, serviceAccount: shop, labels: {app: shop}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-front, namespace: shop}
spec:
  selector: {matchLabels: {app: shop}}
  rules:
  - from:
    - source: {principals: [cluster.local/ns/front/sa/front]}
";

/// Manifests an application's repository holds next to its policies, written for this test.
const KUBERNETES: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio-injection: enabled, team: payments}
---
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: shop}
spec:
  selector: {app: shop}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec: {containers: [{name: shop, image: example/shop:1}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-front, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: shop, port: 80}]}]
---
";

fn loaded(yaml: &str) -> ConfigSet {
    load_str("mixed.yaml", yaml).unwrap_or_else(|e| panic!("{e}"))
}

/// What the Istio objects are, without where they are.
fn istio_content(set: &ConfigSet) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    out.extend(
        set.peer_authentications
            .iter()
            .map(|r| format!("{} {:?}", r.object(), r.spec)),
    );
    out.extend(
        set.workload_entries
            .iter()
            .map(|r| format!("{} {:?}", r.object(), r.spec)),
    );
    out.extend(
        set.authorization_policies
            .iter()
            .map(|r| format!("{} {:?}", r.object(), r.spec)),
    );
    out
}

/// Findings as (severity, code, object, message), without file and line.
fn unplaced(diags: &[Diagnostic]) -> Vec<(Severity, &'static str, Option<String>, String)> {
    diags
        .iter()
        .map(|d| (d.severity, d.code, d.object.clone(), d.message.clone()))
        .collect()
}

#[test]
fn kubernetes_objects_are_info_findings_and_istio_objects_load_unchanged() {
    let alone = loaded(ISTIO);
    let mixed = loaded(&format!("{KUBERNETES}{ISTIO}"));

    let skipped: Vec<(Option<usize>, Severity, &str, Option<&str>)> = mixed
        .warnings
        .iter()
        .filter(|d| d.code == code::KUBERNETES_NOT_READ)
        .map(|d| (d.line, d.severity, d.file.as_str(), d.object.as_deref()))
        .collect();
    let info = Severity::Info;
    assert_eq!(
        skipped,
        vec![
            (Some(1), info, "mixed.yaml", Some("Namespace shop")),
            (Some(7), info, "mixed.yaml", Some("Service shop/shop")),
            (Some(14), info, "mixed.yaml", Some("Deployment shop/shop")),
            (
                Some(24),
                info,
                "mixed.yaml",
                Some("NetworkPolicy shop/from-front")
            ),
            (Some(29), info, "mixed.yaml", Some("HTTPRoute shop/shop")),
        ]
    );
    let deployment = &mixed.warnings[2];
    assert!(
        deployment
            .message
            .contains("Deployment (apps/v1) is not part of the Istio API"),
        "{deployment}"
    );

    assert_eq!(istio_content(&mixed), istio_content(&alone));
    assert_eq!(istio_content(&alone).len(), 3);
    let other: Vec<Diagnostic> = mixed
        .warnings
        .iter()
        .filter(|d| d.code != code::KUBERNETES_NOT_READ)
        .cloned()
        .collect();
    assert_eq!(unplaced(&other), unplaced(&alone.warnings));
    assert_eq!(unplaced(&analyze(&mixed)), unplaced(&analyze(&alone)));
    assert_eq!(
        translate(&mixed).unwrap().proxies,
        translate(&alone).unwrap().proxies
    );
}

#[test]
fn other_config_maps_and_secrets_are_info_findings() {
    let yaml = "apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: shop}\nstringData: {password: x}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-settings, namespace: shop}\ndata: {a: b}\n";
    let set = loaded(yaml);
    let got: Vec<(Option<usize>, &str, Option<&str>)> = set
        .warnings
        .iter()
        .map(|d| (d.line, d.code, d.object.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(1), code::KUBERNETES_NOT_READ, Some("Secret shop/db")),
            (
                Some(6),
                code::KUBERNETES_NOT_READ,
                Some("ConfigMap shop/app-settings")
            ),
        ]
    );
}

/// The error for `yaml`, which must be the only diagnostic.
fn only_error(yaml: &str) -> Diagnostic {
    let err = load_str("typo.yaml", yaml).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    err.0[0].clone()
}

#[test]
fn misspelt_istio_kinds_and_api_versions_stay_errors() {
    let cases = [
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolic\nmetadata: {name: p}\n",
            2,
            "did you mean `AuthorizationPolicy`?",
        ),
        (
            "apiVersion: security.istio.oi/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n",
            2,
            "use security.istio.io/v1 or security.istio.io/v1beta1",
        ),
        (
            "apiVersion: securty.istio.io/v1\nkind: PeerAuthenticaton\nmetadata: {name: p}\n",
            2,
            "did you mean `security.istio.io`?",
        ),
        (
            "apiVersion: v1\nkind: Sidecar\nmetadata: {name: s}\n",
            2,
            "use networking.istio.io/v1",
        ),
        (
            "apiVersion: v1beta1\nkind: Servic\nmetadata: {name: s}\n",
            2,
            "for apiVersion `v1beta1`",
        ),
    ];
    for (yaml, line, hint) in cases {
        let d = only_error(yaml);
        assert_eq!(
            (d.severity, d.code, d.line),
            (Severity::Error, code::UNKNOWN_KIND, Some(line)),
            "{d}"
        );
        assert!(d.message.contains(hint), "{d}\nwant: {hint}");
    }
    // Unknown fields in an Istio kind next to Kubernetes objects stay errors.
    let err = load_str(
        "typo.yaml",
        &format!("{KUBERNETES}apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p}}\nspec: {{mtsl: {{}}}}\n"),
    )
    .unwrap_err();
    let errors: Vec<&Diagnostic> = err.errors().collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(
        (errors[0].code, errors[0].line),
        (code::UNKNOWN_FIELD, Some(39)),
        "{err}"
    );
    assert!(errors[0].message.contains("unknown field `mtsl`"), "{err}");
}

#[test]
fn a_document_without_api_version_or_kind_stays_an_error() {
    for yaml in [
        "kind: Service\nmetadata: {name: s}\n",
        "apiVersion: v1\nmetadata: {name: s}\n",
    ] {
        let d = only_error(yaml);
        assert_eq!((d.code, d.line), (code::INVALID, Some(1)), "{d}");
    }
}

/// An `istioctl install -f` input: no metadata at all, as in Istio's
/// samples/bookinfo/demo-profile-no-gateways.yaml, with the trust-domain settings of the
/// istio.io "Trust domain migration" install example.
const UNNAMED_OPERATOR: &str = "apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    trustDomain: td.example
    trustDomainAliases: [old-td.example]
    accessLogFile: /dev/stdout
";

#[test]
fn an_istio_operator_without_a_name_sets_the_trust_domain() {
    let set = load_str("install/iop.yaml", UNNAMED_OPERATOR).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.mesh.trust_domain, "td.example");
    assert_eq!(set.mesh.trust_domain_aliases, vec!["old-td.example"]);
    assert_eq!(set.mesh.source.as_ref().map(|s| s.line), Some(1));
    // Its findings name it after its file.
    let objects: Vec<(&str, Option<&str>)> = set
        .warnings
        .iter()
        .map(|d| (d.code, d.object.as_deref()))
        .collect();
    assert_eq!(
        objects,
        vec![(
            code::FIELD_NOT_ENFORCED,
            Some("IstioOperator (unnamed, iop.yaml)")
        )]
    );
    let snapshot = translate(&set).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snapshot.trust_domain, "td.example");
    assert_eq!(snapshot.trust_domain_aliases, vec!["old-td.example"]);

    // With metadata but no name, too.
    let with_meta = UNNAMED_OPERATOR.replace("spec:", "metadata: {namespace: istio-system}\nspec:");
    let set = load_str("iop.yaml", &with_meta).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.mesh.trust_domain, "td.example");
}

#[test]
fn two_unnamed_istio_operators_conflict_by_file_and_line() {
    let yaml = format!("{UNNAMED_OPERATOR}---\n{UNNAMED_OPERATOR}");
    let err = load_str("iop.yaml", &yaml).unwrap_err();
    let conflict: Vec<&Diagnostic> = err.errors().collect();
    assert_eq!(conflict.len(), 1, "{err}");
    assert_eq!(conflict[0].code, code::MESH_SETTINGS_CONFLICT);
    assert_eq!(conflict[0].line, Some(9));
    assert!(conflict[0].message.contains("iop.yaml:1"), "{err}");
}

/// A Namespace in ambient mode, kept in its own file as an application repository would.
const AMBIENT_NAMESPACE: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    team: payments
    istio.io/dataplane-mode: ambient
";

/// The Sidecar of `shop/shop` (from a sidecar-mode setup), next to its workload.
const SHOP_SIDECAR: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: shop, namespace: shop}
spec: {address: 127.0.0.20, serviceAccount: shop, labels: {app: shop}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: shop, namespace: shop}
spec:
  workloadSelector:
    labels: {app: shop}
  ingress:
  - port: {number: 8080, name: http}
    defaultEndpoint: 127.0.0.1:18080
";

#[test]
fn a_sidecar_in_an_ambient_namespace_is_reported_where_both_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let namespace = dir.path().join("namespace.yaml");
    let sidecar = dir.path().join("sidecar.yaml");
    std::fs::write(&namespace, AMBIENT_NAMESPACE).unwrap();
    std::fs::write(&sidecar, SHOP_SIDECAR).unwrap();
    let set = load_paths(&[dir.path().to_path_buf()]).unwrap_or_else(|e| panic!("{e}"));

    // The Namespace keeps its WARD0115 info, which says its labels are read.
    let info: Vec<&Diagnostic> = set
        .warnings
        .iter()
        .filter(|d| d.code == code::KUBERNETES_NOT_READ)
        .collect();
    assert_eq!(info.len(), 1, "{:?}", set.warnings);
    assert!(
        info[0].message.contains("reads only its name and labels"),
        "{}",
        info[0]
    );

    let ambient: Vec<Diagnostic> = analyze(&set)
        .into_iter()
        .filter(|d| d.code == code::SIDECAR_IN_AMBIENT)
        .collect();
    let namespace = namespace.display().to_string();
    let sidecar = sidecar.display().to_string();
    assert_eq!(ambient.len(), 1, "{ambient:?}");
    let d = &ambient[0];
    assert_eq!(
        (
            d.severity,
            d.file.as_str(),
            d.line,
            d.object.as_deref(),
            d.field.as_deref()
        ),
        (
            Severity::Info,
            sidecar.as_str(),
            Some(10),
            Some("Sidecar shop/shop"),
            Some("spec.workloadSelector")
        ),
        "{d}"
    );
    assert!(
        d.message.starts_with(&format!(
            "workload shop/shop is in ambient mode (`istio.io/dataplane-mode: ambient` on \
             Namespace shop ({namespace}:7)): under Istio it has no sidecar proxy"
        )),
        "{d}"
    );
}
