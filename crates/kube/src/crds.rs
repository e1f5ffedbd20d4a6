//! The CustomResourceDefinitions of the Istio kinds Ward reads, rendered from Ward's own kind
//! table (`ward_config::served_kinds`): Istio's group, kind, plural and short names, and every
//! version Ward accepts, all served, the newest stored (Istio keeps one schema across
//! versions, so no conversion is needed). `ward install crds` prints them.
//!
//! Schema: `spec` and `status` are objects with `x-kubernetes-preserve-unknown-fields`, so the
//! API server stores any spec and Ward's own decoder judges it (with file, object and field) when
//! the control plane loads it. A full OpenAPI schema, which would make `kubectl apply` itself
//! reject a misspelt field, is not generated yet.

use serde_json::{json, Value};

use crate::source::ISTIO_GROUPS;

/// Istio's short names (`kubectl get pa`).
fn short_names(kind: &str) -> &'static [&'static str] {
    match kind {
        "PeerAuthentication" => &["pa"],
        "RequestAuthentication" => &["ra"],
        "AuthorizationPolicy" => &["ap"],
        "ServiceEntry" => &["se"],
        "DestinationRule" => &["dr"],
        "Gateway" => &["gw"],
        "VirtualService" => &["vs"],
        "WorkloadEntry" => &["we"],
        "WorkloadGroup" => &["wg"],
        _ => &[],
    }
}

/// The resource's plural: lowercase kind, `-y` after a consonant → `-ies`, else `-s`
/// (`authorizationpolicies`, `gateways`, `telemetries`).
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    match lower.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) => format!("{stem}ies"),
        _ => format!("{lower}s"),
    }
}

/// One CRD.
fn crd(group: &str, kind: &str, versions: &[&str]) -> Value {
    let plural = plural(kind);
    let category = group.replace('.', "-");
    let object = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let versions: Vec<Value> = versions
        .iter()
        .enumerate()
        .map(|(i, version)| {
            json!({
                "name": version,
                "served": true,
                // The first is the newest: Ward lists versions newest first.
                "storage": i == 0,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": object, "status": object},
                }},
            })
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{group}"),
            "labels": {"app.kubernetes.io/managed-by": "ward"},
        },
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_ascii_lowercase(),
                "shortNames": short_names(kind),
                "categories": ["istio-io", category],
            },
            "scope": "Namespaced",
            "versions": versions,
        },
    })
}

/// Every CRD, in a `v1` List (`kubectl apply -f` takes it as YAML or JSON).
pub fn crds() -> Value {
    let items: Vec<Value> = ISTIO_GROUPS
        .iter()
        .flat_map(|group| {
            ward_config::served_kinds(group)
                .into_iter()
                .map(move |(kind, versions)| crd(group, kind, &versions))
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_are_istios() {
        for (kind, want) in [
            ("AuthorizationPolicy", "authorizationpolicies"),
            ("Gateway", "gateways"),
            ("Telemetry", "telemetries"),
            ("ServiceEntry", "serviceentries"),
            ("Sidecar", "sidecars"),
            ("ProxyConfig", "proxyconfigs"),
        ] {
            assert_eq!(plural(kind), want);
        }
    }

    #[test]
    fn every_kind_ward_reads_has_a_crd_with_every_version_served_and_one_stored() {
        let all = crds();
        let items = all["items"].as_array().unwrap();
        let names: Vec<&str> = items
            .iter()
            .map(|c| c["metadata"]["name"].as_str().unwrap())
            .collect();
        for want in [
            "authorizationpolicies.security.istio.io",
            "peerauthentications.security.istio.io",
            "requestauthentications.security.istio.io",
            "serviceentries.networking.istio.io",
            "workloadentries.networking.istio.io",
            "sidecars.networking.istio.io",
            "telemetries.telemetry.istio.io",
            "envoyfilters.networking.istio.io",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let ap = items
            .iter()
            .find(|c| c["spec"]["names"]["kind"] == "AuthorizationPolicy")
            .unwrap();
        let versions = ap["spec"]["versions"].as_array().unwrap();
        let served: Vec<&str> = versions
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(served, ["v1", "v1beta1"]);
        let stored: Vec<bool> = versions.iter().map(|v| v["storage"] == true).collect();
        assert_eq!(stored, [true, false]);
        for c in items {
            let versions = c["spec"]["versions"].as_array().unwrap();
            assert_eq!(
                versions.iter().filter(|v| v["storage"] == true).count(),
                1,
                "{}",
                c["metadata"]["name"]
            );
        }
    }
}
