//! Every manifest `ward install` prints (and `ward uninstall` prints for `kubectl delete`), as
//! pure functions of [`InstallOptions`]: the namespace, the control plane's ServiceAccount and
//! least-privilege RBAC, its Deployment and Service, the webhook configurations and the mesh
//! ConfigMap `istio`; the CRDs are [`crate::crds`]'s. docs/kubernetes.md, "Install", explains
//! each privilege.

use serde_json::{json, Value};

use crate::source::ISTIO_GROUPS;
use crate::webhook;

/// The control plane's name: its ServiceAccount (and so its SPIFFE id), Deployment and Service.
pub const NAME: &str = "ward-control-plane";
/// The validating webhook configuration's name.
pub const VALIDATOR: &str = "ward-validator";
/// The mutating (sidecar injection) webhook configuration's name.
pub const INJECTOR: &str = "ward-sidecar-injector";
/// The label on everything Ward installs or writes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ward");
/// The webhook port of the control plane's container (Istio's istiod uses 15017).
pub const WEBHOOK_PORT: u16 = 15017;

/// What the manifests depend on.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// The mesh's root namespace (the control plane's, and the mesh ConfigMap's).
    pub namespace: String,
    /// The `ward` image (control plane and sidecars).
    pub image: String,
    /// The capture init container's image (`ward` with `iptables`).
    pub capture_image: String,
    /// The webhooks' `failurePolicy`: `Fail` (default) or `Ignore`.
    pub failure_policy: String,
    /// Call the webhooks at this base URL (`https://host:port`) instead of through the Service:
    /// for a control plane outside the cluster (and the tests).
    pub webhook_url: Option<String>,
    /// The mesh's trust domain, written into the mesh ConfigMap.
    pub trust_domain: String,
}

fn labels() -> Value {
    json!({(MANAGED_BY.0): MANAGED_BY.1, "app": NAME})
}

fn meta(name: &str, namespace: Option<&str>) -> Value {
    let mut m = json!({"name": name, "labels": labels()});
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    m
}

/// The rules of the control plane's ClusterRole: read what it watches, review tokens, write
/// Events and the root ConfigMap, and keep its own two webhook configurations' `caBundle`.
fn cluster_rules() -> Value {
    let istio: Vec<&str> = ISTIO_GROUPS.to_vec();
    json!([
        {"apiGroups": istio, "resources": ["*"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces", "pods", "services"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        // The mesh root in every namespace (Istio's `istio-ca-root-cert`), and the mesh
        // ConfigMap `istio`: get/list/watch, create and patch (server-side apply).
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["admissionregistration.k8s.io"],
         "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
         "resourceNames": [VALIDATOR, INJECTOR], "verbs": ["get", "update", "patch"]},
    ])
}

/// Where the API server calls a webhook at `path`.
fn client_config(opts: &InstallOptions, path: &str) -> Value {
    match &opts.webhook_url {
        Some(url) => json!({"url": format!("{}{path}", url.trim_end_matches('/'))}),
        None => {
            json!({"service": {"name": NAME, "namespace": opts.namespace, "path": path, "port": 443}})
        }
    }
}

/// The validating webhook configuration: every kind of Istio's groups that Ward reads, in
/// every version, on create and update.
pub fn validator(opts: &InstallOptions) -> Value {
    let rules: Vec<Value> = ISTIO_GROUPS
        .iter()
        .filter_map(|group| {
            let kinds = ward_config::served_kinds(group);
            let versions: std::collections::BTreeSet<&str> =
                kinds.iter().flat_map(|(_, v)| v.iter().copied()).collect();
            let resources: Vec<String> = kinds.iter().map(|(k, _)| crate::crds::plural(k)).collect();
            (!resources.is_empty()).then(|| {
                json!({"apiGroups": [group], "apiVersions": versions, "operations": ["CREATE", "UPDATE"],
                       "resources": resources, "scope": "Namespaced"})
            })
        })
        .collect();
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": meta(VALIDATOR, None),
        "webhooks": [{
            "name": "validation.ward.istio.io",
            "clientConfig": client_config(opts, "/validate"),
            "rules": rules,
            "failurePolicy": opts.failure_policy,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }],
    })
}

/// The mutating webhook configuration: Pods on create, in Istio's two webhooks (a labelled
/// namespace, unless the pod says no; an unlabelled namespace when the pod says yes). The
/// handler decides again with the same rules ([`webhook::injection`]).
pub fn injector(opts: &InstallOptions) -> Value {
    let rules = json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                        "resources": ["pods"], "scope": "Namespaced"}]);
    let hook = |name: &str, namespace_selector: Value, object_selector: Value| {
        json!({
            "name": name,
            "clientConfig": client_config(opts, "/inject"),
            "rules": rules,
            "namespaceSelector": namespace_selector,
            "objectSelector": object_selector,
            "failurePolicy": opts.failure_policy,
            "sideEffects": "None",
            "reinvocationPolicy": "Never",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        })
    };
    let not_system = json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                            "values": ["kube-system", "kube-public", "kube-node-lease"]});
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": meta(INJECTOR, None),
        "webhooks": [
            hook(
                "namespace.sidecar-injector.ward.istio.io",
                json!({"matchExpressions": [
                    {"key": webhook::NAMESPACE_LABEL, "operator": "In", "values": ["enabled"]},
                    not_system,
                ]}),
                json!({"matchExpressions": [
                    {"key": webhook::POD_INJECT, "operator": "NotIn", "values": ["false"]},
                ]}),
            ),
            hook(
                "object.sidecar-injector.ward.istio.io",
                json!({"matchExpressions": [
                    {"key": webhook::NAMESPACE_LABEL, "operator": "DoesNotExist"},
                    not_system,
                ]}),
                json!({"matchExpressions": [
                    {"key": webhook::POD_INJECT, "operator": "In", "values": ["true"]},
                ]}),
            ),
        ],
    })
}

/// Everything but the CRDs, in apply order.
pub fn manifests(opts: &InstallOptions) -> Vec<Value> {
    let ns = opts.namespace.as_str();
    let mut out = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(ns, None)}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(NAME, Some(ns))}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": meta(NAME, None), "rules": cluster_rules()}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": meta(NAME, None),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
               "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}]}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("istio", Some(ns)),
               "data": {"mesh": format!("trustDomain: {}\nrootNamespace: {ns}\n", opts.trust_domain)}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(NAME, Some(ns)),
        "spec": {"selector": {"app": NAME}, "ports": [
            {"name": "grpc-xds", "port": 15012, "targetPort": 15012, "protocol": "TCP"},
            {"name": "https-webhook", "port": 443, "targetPort": WEBHOOK_PORT, "protocol": "TCP"},
            {"name": "http-monitoring", "port": 15014, "targetPort": 15014, "protocol": "TCP"},
        ]}}),
        deployment(opts),
    ];
    out.push(validator(opts));
    out.push(injector(opts));
    out
}

fn deployment(opts: &InstallOptions) -> Value {
    let ns = opts.namespace.as_str();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(NAME, Some(ns)),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": NAME}},
            "template": {
                "metadata": {"labels": labels(), "annotations": {(webhook::POD_INJECT): "false"}},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 1337, "runAsGroup": 1337,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "discovery",
                        "image": opts.image,
                        "args": [
                            "control-plane", "--kubernetes",
                            "--istio-namespace", ns,
                            "--state-dir", "/var/run/ward/state",
                            "--cacerts-dir", "/etc/cacerts",
                            "--listen", "0.0.0.0:15012",
                            "--admin", "0.0.0.0:15014",
                            "--webhook-listen", format!("0.0.0.0:{WEBHOOK_PORT}"),
                            "--proxy-image", opts.image,
                            "--capture-image", opts.capture_image,
                        ],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [
                            {"name": "grpc-xds", "containerPort": 15012},
                            {"name": "https-webhook", "containerPort": WEBHOOK_PORT},
                            {"name": "http-monitoring", "containerPort": 15014},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 15014}, "periodSeconds": 3},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}},
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                        "volumeMounts": [
                            {"name": "state", "mountPath": "/var/run/ward/state"},
                            {"name": "cacerts", "mountPath": "/etc/cacerts", "readOnly": true},
                        ],
                    }],
                    "volumes": [
                        {"name": "state", "emptyDir": {}},
                        {"name": "cacerts", "secret": {"secretName": "cacerts", "optional": true}},
                    ],
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InstallOptions {
        InstallOptions {
            namespace: "istio-system".into(),
            image: "ward:test".into(),
            capture_image: "ward-capture:test".into(),
            failure_policy: "Fail".into(),
            webhook_url: None,
            trust_domain: "cluster.local".into(),
        }
    }

    #[test]
    fn validator_covers_every_kind_ward_reads_in_every_version() {
        let v = validator(&opts());
        let rules = v["webhooks"][0]["rules"].as_array().unwrap();
        let security = rules
            .iter()
            .find(|r| r["apiGroups"][0] == "security.istio.io")
            .unwrap();
        let resources: Vec<&str> = security["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert!(
            resources.contains(&"authorizationpolicies"),
            "{resources:?}"
        );
        assert!(security["apiVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("v1beta1")));
        assert_eq!(v["webhooks"][0]["clientConfig"]["service"]["name"], NAME);
    }

    #[test]
    fn everything_is_labelled_and_the_url_replaces_the_service() {
        let mut o = opts();
        o.webhook_url = Some("https://127.0.0.1:15017/".into());
        for m in manifests(&o) {
            assert_eq!(m["metadata"]["labels"][MANAGED_BY.0], "ward", "{m}");
        }
        let i = injector(&o);
        assert_eq!(
            i["webhooks"][0]["clientConfig"]["url"],
            "https://127.0.0.1:15017/inject"
        );
    }
}
