//! Every manifest `ward install` prints (and `ward uninstall` prints for `kubectl delete`), as
//! pure functions of [`InstallOptions`]: the namespace, the control plane's ServiceAccount and
//! least-privilege RBAC (a ClusterRole, and a Role for its leader-election Lease), its Deployment and Service, the webhook configurations and the mesh
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
/// The image `ward install` and the injector use unless told otherwise.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/ward-mesh/ward:", env!("CARGO_PKG_VERSION"));
/// The capture init container's image unless told otherwise (the Dockerfile's `capture`
/// target: the same binary with `iptables`).
pub const DEFAULT_CAPTURE_IMAGE: &str =
    concat!("ghcr.io/ward-mesh/ward-capture:", env!("CARGO_PKG_VERSION"));

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
    /// Control-plane replicas. More than one requires the `cacerts` Secret: every replica must
    /// sign with the same CA (without it each would make its own root, and proxies of one
    /// replica would refuse those of another), so the Secret volume is then not optional and a
    /// replica does not start until the Secret exists.
    pub replicas: u32,
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
/// Events, the Istio objects' status and the root ConfigMap, and keep its own two webhook configurations' `caBundle`.
fn cluster_rules() -> Value {
    let istio: Vec<&str> = ISTIO_GROUPS.to_vec();
    json!([
        {"apiGroups": istio, "resources": ["*"], "verbs": ["get", "list", "watch"]},
        // `status.validationMessages` of the objects with findings (crate::status).
        {"apiGroups": istio, "resources": ["*/status"], "verbs": ["patch"]},
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
        // Leader election (crate::leader): its one Lease, in its own namespace only. `create`
        // cannot be limited by name (the name is not known before the object exists).
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": meta(NAME, Some(ns)), "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "resourceNames": [crate::leader::LEASE_NAME], "verbs": ["get", "update"]},
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": meta(NAME, Some(ns)),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
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
            "replicas": opts.replicas,
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
                        {"name": "cacerts", "secret": {"secretName": "cacerts", "optional": opts.replicas <= 1}},
                    ],
                },
            },
        },
    })
}

/// Where the Helm chart lives in the repository.
pub const CHART_DIR: &str = "deploy/helm/ward";

/// Placeholders rendered into the manifests, and what the chart's templates say instead: a
/// whole string value becomes the value's JSON (`toJson`), a part of a string the bare value.
const PLACEHOLDERS: [(&str, &str); 7] = [
    ("__WARD_NAMESPACE__", ".Release.Namespace"),
    ("__WARD_IMAGE__", ".Values.image"),
    ("__WARD_CAPTURE_IMAGE__", ".Values.captureImage"),
    ("__WARD_FAILURE_POLICY__", ".Values.failurePolicy"),
    ("__WARD_TRUST_DOMAIN__", ".Values.trustDomain"),
    ("__WARD_REPLICAS__", "(int .Values.replicas)"),
    ("__WARD_CACERTS_OPTIONAL__", "(le (int .Values.replicas) 1)"),
];

/// The Helm chart (`deploy/helm/ward`), file by file: the manifests of [`manifests`] (less the
/// Namespace, which `helm install --create-namespace` makes) with the options as values, and
/// the CRDs in `crds/` (Helm installs them when absent and never touches existing ones, as
/// `ward install --crds auto`). `helm template` with the default values renders the same
/// objects as `ward install` (crates/cli/tests/kubernetes_helm.rs checks it with a real helm);
/// a unit test below keeps the files in the repository equal to this.
pub fn helm_chart() -> Vec<(&'static str, String)> {
    let opts = InstallOptions {
        namespace: PLACEHOLDERS[0].0.into(),
        image: PLACEHOLDERS[1].0.into(),
        capture_image: PLACEHOLDERS[2].0.into(),
        failure_policy: PLACEHOLDERS[3].0.into(),
        webhook_url: None,
        trust_domain: PLACEHOLDERS[4].0.into(),
        replicas: 1,
    };
    let mut docs = Vec::new();
    for mut m in manifests(&opts) {
        if m["kind"] == "Namespace" {
            continue;
        }
        // Numbers and booleans the values decide.
        if m["kind"] == "Deployment" {
            m["spec"]["replicas"] = json!(PLACEHOLDERS[5].0);
            let volumes = m["spec"]["template"]["spec"]["volumes"].as_array_mut();
            for v in volumes.into_iter().flatten() {
                if v["name"] == "cacerts" {
                    v["secret"]["optional"] = json!(PLACEHOLDERS[6].0);
                }
            }
        }
        // The webhooks' clientConfig: the Service, or `webhookUrl` when set.
        let hooks = m.get_mut("webhooks").and_then(Value::as_array_mut);
        for hook in hooks.into_iter().flatten() {
            let path = hook["clientConfig"]["service"]["path"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            hook["clientConfig"] = json!(format!("__WARD_CLIENT_CONFIG__{path}__"));
        }
        let mut text = serde_json::to_string_pretty(&m).unwrap_or_default();
        for path in ["/validate", "/inject"] {
            text = text.replace(
                &format!("\"__WARD_CLIENT_CONFIG__{path}__\""),
                &format!("{{{{ include \"ward.clientConfig\" (list . \"{path}\") }}}}"),
            );
        }
        for (placeholder, value) in PLACEHOLDERS {
            text = text.replace(
                &format!("\"{placeholder}\""),
                &format!("{{{{ {value} | toJson }}}}"),
            );
            text = text.replace(placeholder, &format!("{{{{ {value} }}}}"));
        }
        docs.push(text);
    }
    let header =
        "# Generated from crates/kube/src/install.rs (the manifests `ward install` prints); do\n\
                  # not edit: `WARD_BLESS_HELM=1 cargo test -p ward-kube helm` writes it again.\n";
    let templates = format!("{header}{}\n", docs.join("\n---\n"));
    let crds: Vec<String> = crate::crds::crds()["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| serde_json::to_string_pretty(c).unwrap_or_default())
        .collect();
    let crds = format!("{header}{}\n", crds.join("\n---\n"));
    let version = env!("CARGO_PKG_VERSION");
    let chart = format!(
        "{header}apiVersion: v2\nname: ward\ndescription: \"Ward, a zero-trust service mesh enforcing the Istio API: control plane, CA, admission webhooks and sidecar injector (the objects of `ward install`)\"\ntype: application\nversion: {version}\nappVersion: \"{version}\"\nkubeVersion: \">=1.29.0-0\"\n"
    );
    let values = format!(
        "{header}# The `ward` image (control plane and injected sidecars): `ward install --image`.\nimage: {DEFAULT_IMAGE}\n# The injected capture init container's image (`ward` with iptables): `--capture-image`.\ncaptureImage: {DEFAULT_CAPTURE_IMAGE}\n# The webhooks' failurePolicy, Fail or Ignore: `--failure-policy`.\nfailurePolicy: Fail\n# Call the webhooks at this https://HOST:PORT instead of through the control plane's Service\n# (a control plane outside the cluster): `--webhook-url`.\nwebhookUrl: \"\"\n# The mesh's trust domain (mesh ConfigMap `istio`): `--trust-domain`.\ntrustDomain: cluster.local\n# Control-plane replicas (leader election: all serve proxies, the leader writes). More than\n# one requires the `cacerts` Secret in the namespace (docs/kubernetes.md): `--replicas`.\nreplicas: 1\n"
    );
    let helpers = format!(
        "{header}{{{{/* The webhooks' clientConfig for a path: the Service, or webhookUrl when set. */}}}}\n{{{{- define \"ward.clientConfig\" -}}}}\n{{{{- $root := index . 0 -}}}}\n{{{{- $path := index . 1 -}}}}\n{{{{- if $root.Values.webhookUrl -}}}}\n{{{{- dict \"url\" (printf \"%s%s\" (trimSuffix \"/\" $root.Values.webhookUrl) $path) | toJson -}}}}\n{{{{- else -}}}}\n{{{{- dict \"service\" (dict \"name\" \"{NAME}\" \"namespace\" $root.Release.Namespace \"path\" $path \"port\" 443) | toJson -}}}}\n{{{{- end -}}}}\n{{{{- end -}}}}\n"
    );
    vec![
        ("Chart.yaml", chart),
        ("values.yaml", values),
        ("crds/crds.yaml", crds),
        ("templates/_helpers.tpl", helpers),
        ("templates/ward.yaml", templates),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart in the repository is what [`helm_chart`] makes (with `WARD_BLESS_HELM=1`,
    /// writes it).
    #[test]
    fn helm_chart_in_the_repository_is_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(CHART_DIR);
        let bless = std::env::var("WARD_BLESS_HELM").is_ok_and(|v| v == "1");
        for (file, want) in helm_chart() {
            let path = root.join(file);
            if bless {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &want).unwrap();
                continue;
            }
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                have == want,
                "{} is not what crates/kube/src/install.rs makes: run WARD_BLESS_HELM=1 cargo test -p ward-kube helm",
                path.display()
            );
        }
    }

    #[test]
    fn the_chart_templates_every_option_and_leaves_no_placeholder() {
        let chart = helm_chart();
        let templates = &chart
            .iter()
            .find(|(f, _)| *f == "templates/ward.yaml")
            .unwrap()
            .1;
        assert!(!templates.contains("__WARD_"), "{templates}");
        for (_, value) in PLACEHOLDERS {
            assert!(templates.contains(value), "{value} unused");
        }
        assert_eq!(
            templates.matches("include \"ward.clientConfig\"").count(),
            3
        );
        assert!(!templates.contains("\"kind\": \"Namespace\""));
    }

    fn opts() -> InstallOptions {
        InstallOptions {
            namespace: "istio-system".into(),
            image: "ward:test".into(),
            capture_image: "ward-capture:test".into(),
            failure_policy: "Fail".into(),
            webhook_url: None,
            trust_domain: "cluster.local".into(),
            replicas: 1,
        }
    }

    #[test]
    fn replicas_beyond_one_require_the_cacerts_secret() {
        let deployment = |replicas| {
            let o = InstallOptions { replicas, ..opts() };
            manifests(&o)
                .into_iter()
                .find(|m| m["kind"] == "Deployment")
                .unwrap()
        };
        let cacerts = |d: &Value| {
            d["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "cacerts")
                .unwrap()["secret"]["optional"]
                .clone()
        };
        let one = deployment(1);
        assert_eq!(one["spec"]["replicas"], 1);
        assert_eq!(cacerts(&one), true);
        let three = deployment(3);
        assert_eq!(three["spec"]["replicas"], 3);
        assert_eq!(cacerts(&three), false);
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
