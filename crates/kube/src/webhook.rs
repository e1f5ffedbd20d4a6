//! The admission webhooks' decisions, as pure functions: an `AdmissionReview` in, the response
//! out. The control plane's HTTPS server (crates/cli/src/webhook.rs) only carries them.
//!
//! - [`validate`]: an Istio object Ward reads is loaded alone with the config crate's own
//!   diagnostics (`ward_config::load_files`, as a document named like the control plane names
//!   it); any error refuses it, with the object, the field path and the reason.
//! - [`inject`]: a Pod gets Ward's sidecar (docs/kubernetes.md, "Sidecar injection"): the
//!   capture init container `istio-init`, the native sidecar `istio-proxy` (an init container
//!   with `restartPolicy: Always`, Kubernetes 1.29+), the projected ServiceAccount token
//!   (audience `istio-ca`) and the mesh root (ConfigMap `istio-ca-root-cert`), Istio's names, so
//!   `kubectl logs -c istio-proxy` works as users know it. Which pods: Istio's rules
//!   (<https://istio.io/latest/docs/setup/additional-setup/sidecar-injection/#controlling-the-injection-policy>),
//!   see [`injection`].

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use ward_config::ConfigFiles;

use crate::translate::document_name;

/// The namespace label that turns injection on (`enabled`) or off (`disabled`).
pub const NAMESPACE_LABEL: &str = "istio-injection";
/// The pod label (and, deprecated, annotation) that asks for or refuses injection.
pub const POD_INJECT: &str = "sidecar.istio.io/inject";
/// The annotation an injected pod carries (Istio's), which also makes injection idempotent.
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// The sidecar container's name (Istio's).
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// The capture init container's name (Istio's).
pub const INIT_CONTAINER: &str = "istio-init";
/// Where the projected token is mounted (Istio's path).
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// Where the mesh root is mounted (Istio's path).
pub const ROOT_DIR: &str = "/var/run/secrets/istio";
/// The ConfigMap, in every namespace, holding the mesh root (Istio's name and key).
pub const ROOT_CONFIG_MAP: &str = "istio-ca-root-cert";
/// The key of the root in [`ROOT_CONFIG_MAP`].
pub const ROOT_KEY: &str = "root-cert.pem";
/// Namespaces never injected (Istio's ignored namespaces).
const IGNORED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// What the sidecar needs to know, from the control plane's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectSettings {
    /// The `ward` image of the sidecar.
    pub image: String,
    /// The image of the capture init container: `ward` with `iptables` (the Dockerfile's
    /// `capture` target).
    pub capture_image: String,
    /// The control plane's gRPC address as pods dial it (`ward.istio-system.svc:15012`).
    pub control_plane: String,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// The mesh's root namespace.
    pub root_namespace: String,
}

/// Whether a pod is injected, and why (for logs and the response's warnings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Injection {
    /// Inject the sidecar.
    Inject,
    /// Leave the pod as it is.
    Skip(String),
}

/// Istio's injection policy: a namespace labelled `istio-injection=disabled` is never
/// injected; one labelled `enabled` is, unless the pod says `sidecar.istio.io/inject: "false"`;
/// without the label, only a pod labelled `"true"` is (the annotation alone does not ask, as
/// Istio's webhook selects on the label). The pod's label wins over its (deprecated)
/// annotation of the same name. Host-network pods, the Kubernetes system namespaces and pods
/// already injected are never injected.
pub fn injection(
    pod: &Value,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
) -> Injection {
    let meta = &pod["metadata"];
    let label = meta["labels"][POD_INJECT]
        .as_str()
        .map(str::to_ascii_lowercase);
    let pod_says = label.clone().or_else(|| {
        meta["annotations"][POD_INJECT]
            .as_str()
            .map(str::to_ascii_lowercase)
    });
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Injection::Skip(format!("namespace {namespace} is never injected"));
    }
    if pod["spec"]["hostNetwork"].as_bool() == Some(true) {
        return Injection::Skip("the pod uses the host network".into());
    }
    if is_injected(pod) {
        return Injection::Skip("the pod is already injected".into());
    }
    match namespace_labels.get(NAMESPACE_LABEL).map(String::as_str) {
        Some("disabled") => Injection::Skip(format!(
            "namespace {namespace} is labelled {NAMESPACE_LABEL}=disabled"
        )),
        Some("enabled") => match pod_says.as_deref() {
            Some("false") => Injection::Skip(format!("the pod says {POD_INJECT}: false")),
            _ => Injection::Inject,
        },
        // Istio's webhook selects these pods by the label: the annotation alone does not ask.
        _ => match label.as_deref() {
            Some("true") => Injection::Inject,
            _ => Injection::Skip(format!(
                "namespace {namespace} is not labelled {NAMESPACE_LABEL}=enabled and the pod does not say {POD_INJECT}: true"
            )),
        },
    }
}

/// Whether the pod already has Ward's (or Istio's) sidecar.
fn is_injected(pod: &Value) -> bool {
    if pod["metadata"]["annotations"][STATUS_ANNOTATION].is_string() {
        return true;
    }
    ["initContainers", "containers"].iter().any(|list| {
        pod["spec"][*list]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == PROXY_CONTAINER))
    })
}

/// A comma-separated annotation, trimmed, empty items dropped.
fn list(annotations: &Value, key: &str) -> Vec<String> {
    annotations[key]
        .as_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The capture flags of the pod's `traffic.sidecar.istio.io/*` annotations, checked.
fn capture_flags(annotations: &Value) -> Result<Vec<String>, String> {
    let mut flags = Vec::new();
    let ports = |key: &str| -> Result<Vec<String>, String> {
        let v = list(annotations, key);
        for p in &v {
            if p.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
                return Err(format!(
                    "metadata.annotations[{key}]: {p:?} is not a port number"
                ));
            }
        }
        Ok(v)
    };
    let cidrs = |key: &str| -> Result<Vec<String>, String> {
        let v = list(annotations, key);
        for c in &v {
            if c != "*"
                && c.parse::<ipnet::IpNet>().is_err()
                && c.parse::<std::net::IpAddr>().is_err()
            {
                return Err(format!("metadata.annotations[{key}]: {c:?} is not a CIDR"));
            }
        }
        Ok(v)
    };
    let inbound = ports("traffic.sidecar.istio.io/excludeInboundPorts")?;
    if !inbound.is_empty() {
        flags.push(format!(
            "--capture-exclude-inbound-ports={}",
            inbound.join(",")
        ));
    }
    let outbound = ports("traffic.sidecar.istio.io/excludeOutboundPorts")?;
    if !outbound.is_empty() {
        flags.push(format!(
            "--capture-exclude-outbound-ports={}",
            outbound.join(",")
        ));
    }
    let exclude = cidrs("traffic.sidecar.istio.io/excludeOutboundIPRanges")?;
    if !exclude.is_empty() {
        if exclude.iter().any(|c| c == "*") {
            return Err(
                "metadata.annotations[traffic.sidecar.istio.io/excludeOutboundIPRanges]: \"*\" (no outbound capture) is not supported"
                    .into(),
            );
        }
        flags.push(format!("--capture-exclude-cidrs={}", exclude.join(",")));
    }
    let include = cidrs("traffic.sidecar.istio.io/includeOutboundIPRanges")?;
    // `*` (Istio's default) is every destination: Ward's default too.
    if !include.is_empty() && !include.iter().any(|c| c == "*") {
        flags.push(format!("--capture-include-cidrs={}", include.join(",")));
    }
    for unsupported in [
        "traffic.sidecar.istio.io/includeInboundPorts",
        "traffic.sidecar.istio.io/includeOutboundPorts",
    ] {
        let v = list(annotations, unsupported);
        if !v.is_empty() && v != ["*"] {
            return Err(format!(
                "metadata.annotations[{unsupported}]: only \"*\" is supported (Ward captures every port but the excluded ones)"
            ));
        }
    }
    Ok(flags)
}

/// The JSON Patch (RFC 6902) that injects `pod`; `Err` names the annotation that cannot be
/// honoured (the pod is then refused, never started without the capture it asked for).
pub fn injection_patch(pod: &Value, settings: &InjectSettings) -> Result<Vec<Value>, String> {
    let annotations = &pod["metadata"]["annotations"];
    let capture = capture_flags(annotations)?;
    let mut init_args = vec![
        "proxy".to_owned(),
        "--capture".into(),
        "--capture-init".into(),
        // The sidecar runs as this user, without CAP_NET_ADMIN: its traffic is let out by
        // owner, not by socket mark.
        format!("--capture-proxy-uid={PROXY_UID}"),
    ];
    init_args.extend(capture.iter().cloned());
    let mut containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rewrite = annotations[REWRITE_PROBES]
        .as_str()
        .is_none_or(|v| !v.eq_ignore_ascii_case("false"));
    let probers = if rewrite {
        rewrite_probes(&mut containers)
    } else {
        Map::new()
    };
    // The kubelet reaches the sidecar's prober directly; everything else stays captured.
    init_args.push(format!("--capture-exclude-inbound-ports={PROBE_PORT}"));
    let init = json!({
        "name": INIT_CONTAINER,
        "image": settings.capture_image,
        "args": init_args,
        // iptables in the pod's network namespace; nothing else.
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
    });
    let mut proxy_args = vec![
        "proxy".to_owned(),
        "--token-file".into(),
        format!("{TOKEN_DIR}/istio-token"),
        "--root-cert".into(),
        format!("{ROOT_DIR}/{ROOT_KEY}"),
        "--control-plane".into(),
        settings.control_plane.clone(),
        "--trust-domain".into(),
        settings.trust_domain.clone(),
        "--root-namespace".into(),
        settings.root_namespace.clone(),
        "--capture".into(),
        "--capture-installed".into(),
    ];
    proxy_args.extend(capture);
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": field("metadata.name")}),
        json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}),
    ];
    let ports = vec![
        json!({"name": "hbone", "containerPort": HBONE_PORT, "protocol": "TCP"}),
        json!({"name": "http-probes", "containerPort": PROBE_PORT, "protocol": "TCP"}),
    ];
    proxy_args.push(format!("--app-probe-listen=0.0.0.0:{PROBE_PORT}"));
    if !probers.is_empty() {
        env.push(json!({"name": PROBERS_ENV, "value": Value::Object(probers).to_string()}));
    }
    let ready = json!({"path": "/healthz/ready", "port": PROBE_PORT, "scheme": "HTTP"});
    let proxy = json!({
        "name": PROXY_CONTAINER,
        "image": settings.image,
        "args": proxy_args,
        // A native sidecar: started before the app, kept running, stopped after it.
        "restartPolicy": "Always",
        "env": env,
        "ports": ports,
        // The app containers start once this passes (native sidecars), as Istio's
        // `holdApplicationUntilProxyStarts`: the proxy has its certificate, config and listeners.
        "startupProbe": {"httpGet": ready, "periodSeconds": 1, "failureThreshold": 600, "timeoutSeconds": 3},
        "readinessProbe": {"httpGet": ready, "periodSeconds": 15, "failureThreshold": 4, "timeoutSeconds": 3},
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "istio-token", "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": "istiod-ca-cert", "mountPath": ROOT_DIR, "readOnly": true},
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "40Mi"}},
    });
    let mut inits = vec![init, proxy];
    inits.extend(
        pod["spec"]["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    );
    let mut volumes = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    volumes.push(json!({
        "name": "istio-token",
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": crate::tokens::AUDIENCE,
            "expirationSeconds": 43200,
            "path": "istio-token",
        }}]},
    }));
    volumes.push(json!({
        "name": "istiod-ca-cert",
        "configMap": {"name": ROOT_CONFIG_MAP},
    }));
    let mut new_annotations = annotations.as_object().cloned().unwrap_or_default();
    new_annotations.insert(
        STATUS_ANNOTATION.into(),
        Value::from(
            json!({
                "initContainers": [INIT_CONTAINER, PROXY_CONTAINER],
                "volumes": ["istio-token", "istiod-ca-cert"],
                "injectedBy": "ward",
            })
            .to_string(),
        ),
    );
    let mut labels = pod["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert("security.istio.io/tlsMode".into(), json!("istio"));
    // "add" replaces a member that exists (RFC 6902 §4.1), so one op per list works whether
    // the pod had it or not.
    Ok(vec![
        json!({"op": "add", "path": "/spec/initContainers", "value": inits}),
        json!({"op": "add", "path": "/spec/containers", "value": containers}),
        json!({"op": "add", "path": "/spec/volumes", "value": volumes}),
        json!({"op": "add", "path": "/metadata/annotations", "value": Value::Object(new_annotations)}),
        json!({"op": "add", "path": "/metadata/labels", "value": Value::Object(labels)}),
    ])
}

/// The pod annotation that turns probe rewriting off (`"false"`), Istio's.
pub const REWRITE_PROBES: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
/// The sidecar's prober port (Istio's agent serves `/app-health/…` there).
pub const PROBE_PORT: u16 = 15021;
/// The environment variable carrying the original probes to the sidecar (Istio's name).
pub const PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// Rewrites the containers' HTTP and TCP probes to the sidecar's prober, as Istio does
/// (<https://istio.io/latest/docs/ops/configuration/mesh/app-health-check/>): under STRICT mTLS
/// the kubelet's plaintext probes would be refused by the sidecar, so the kubelet asks the
/// sidecar (`GET :15021/app-health/<container>/<readyz|livez|startupz>`, a port left out of
/// capture), which probes the app over loopback. Returns the original probes by their new
/// path, for [`PROBERS_ENV`]. HTTPS, gRPC and exec probes and unresolvable named ports are
/// left as they are.
pub fn rewrite_probes(containers: &mut [Value]) -> Map<String, Value> {
    let mut probers = Map::new();
    for c in containers.iter_mut() {
        let name = c["name"].as_str().unwrap_or("").to_owned();
        let named: BTreeMap<String, Value> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["containerPort"].clone())))
            .collect();
        let port_of = |port: &Value| -> Option<Value> {
            match port {
                Value::Number(_) => Some(port.clone()),
                Value::String(s) => s
                    .parse::<u16>()
                    .ok()
                    .map(Value::from)
                    .or_else(|| named.get(s).cloned()),
                _ => None,
            }
        };
        for (field, kind) in [
            ("readinessProbe", "readyz"),
            ("livenessProbe", "livez"),
            ("startupProbe", "startupz"),
        ] {
            let probe = &c[field];
            let original = if let Some(get) = probe.get("httpGet") {
                let scheme = get["scheme"].as_str().unwrap_or("HTTP");
                let Some(port) = port_of(&get["port"]).filter(|_| scheme == "HTTP") else {
                    continue;
                };
                let mut get = get.clone();
                get["port"] = port;
                json!({"httpGet": get})
            } else if let Some(tcp) = probe.get("tcpSocket") {
                let Some(port) = port_of(&tcp["port"]) else {
                    continue;
                };
                json!({"tcpSocket": {"port": port}})
            } else {
                continue;
            };
            let mut original = original;
            if let Some(t) = probe.get("timeoutSeconds") {
                original["timeoutSeconds"] = t.clone();
            }
            let path = format!("/app-health/{name}/{kind}");
            probers.insert(path.clone(), original);
            let probe = &mut c[field];
            if let Some(map) = probe.as_object_mut() {
                map.remove("tcpSocket");
                map.insert(
                    "httpGet".into(),
                    json!({"path": path, "port": PROBE_PORT, "scheme": "HTTP"}),
                );
            }
        }
    }
    probers
}

/// The sidecar's user (Istio's).
const PROXY_UID: u32 = 1337;

/// HBONE's port, which the sidecar serves (crates/hbone's `HBONE_PORT`).
const HBONE_PORT: u16 = 15008;

/// The `AdmissionReview` response to `review` (its `request.uid` echoed), `allowed` or not.
fn response(review: &Value, body: Map<String, Value>) -> Value {
    let mut response = Map::new();
    response.insert("uid".into(), review["request"]["uid"].clone());
    response.extend(body);
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    })
}

fn allowed(review: &Value) -> Value {
    response(review, Map::from_iter([("allowed".into(), json!(true))]))
}

fn denied(review: &Value, code: u16, message: &str) -> Value {
    response(
        review,
        Map::from_iter([
            ("allowed".into(), json!(false)),
            (
                "status".into(),
                json!({"code": code, "reason": "Invalid", "message": message}),
            ),
        ]),
    )
}

/// Whether `review` is an `AdmissionReview` of `admission.k8s.io/v1` with a request uid; the
/// message when not (the server answers 400).
pub fn check_review(review: &Value) -> Result<(), String> {
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return Err("expected an AdmissionReview of admission.k8s.io/v1".into());
    }
    if !review["request"]["uid"].is_string() {
        return Err("request.uid is missing".into());
    }
    Ok(())
}

/// The validating webhook: the response to an `AdmissionReview` of an Istio object.
pub fn validate(review: &Value) -> Value {
    let request = &review["request"];
    let object = &request["object"];
    if request["operation"] == "DELETE" || !object.is_object() {
        return allowed(review);
    }
    let mut object = object.clone();
    // The API server fills these in before admission; `generateName` objects may lack a name.
    let name = object["metadata"]["name"]
        .as_str()
        .or_else(|| request["name"].as_str())
        .or_else(|| object["metadata"]["generateName"].as_str())
        .unwrap_or("")
        .to_owned();
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .or_else(|| request["namespace"].as_str())
        .unwrap_or("")
        .to_owned();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("name".into(), json!(name));
        meta.insert("namespace".into(), json!(namespace));
    }
    let (Some(api_version), Some(kind)) = (object["apiVersion"].as_str(), object["kind"].as_str())
    else {
        return denied(review, 400, "the object has no apiVersion or kind");
    };
    let doc_name = document_name(api_version, kind, &namespace, &name);
    let Some(text) = crate::translate::passthrough_text(&object) else {
        return denied(review, 400, "the object cannot be read");
    };
    let files = ConfigFiles::from_contents(vec![(doc_name, text)]);
    let line = |d: &ward_config::Diagnostic| {
        let mut line = String::new();
        if let Some(object) = &d.object {
            line.push_str(object);
            line.push_str(": ");
        }
        line.push_str(&crate::events::note(d));
        line
    };
    match ward_config::load_files(&files) {
        // Warnings are shown by kubectl (`Warning: …`), the object is stored.
        Ok(set) if !set.warnings.is_empty() => response(
            review,
            Map::from_iter([
                ("allowed".into(), json!(true)),
                (
                    "warnings".into(),
                    json!(set
                        .warnings
                        .iter()
                        .map(|d| format!("ward: {}", line(d)))
                        .collect::<Vec<_>>()),
                ),
            ]),
        ),
        Ok(_) => allowed(review),
        Err(diagnostics) => {
            let errors: Vec<String> = diagnostics.errors().map(line).collect();
            if errors.is_empty() {
                return allowed(review);
            }
            denied(review, 400, &format!("ward: {}", errors.join("; ")))
        }
    }
}

/// The mutating webhook: the response to an `AdmissionReview` of a Pod being created, with the
/// labels of its namespace (`None` when the control plane does not know the namespace: then
/// only the pod's own label or annotation can ask for injection).
pub fn inject(
    review: &Value,
    namespace_labels: Option<&BTreeMap<String, String>>,
    settings: &InjectSettings,
) -> Value {
    let request = &review["request"];
    let pod = &request["object"];
    if request["operation"] != "CREATE" || request["kind"]["kind"] != "Pod" || !pod.is_object() {
        return allowed(review);
    }
    let namespace = pod["metadata"]["namespace"]
        .as_str()
        .or_else(|| request["namespace"].as_str())
        .unwrap_or("");
    let empty = BTreeMap::new();
    match injection(pod, namespace, namespace_labels.unwrap_or(&empty)) {
        Injection::Skip(_) => allowed(review),
        Injection::Inject => match injection_patch(pod, settings) {
            Ok(patch) => {
                let patch = serde_json::to_vec(&patch).unwrap_or_default();
                response(
                    review,
                    Map::from_iter([
                        ("allowed".into(), json!(true)),
                        ("patchType".into(), json!("JSONPatch")),
                        (
                            "patch".into(),
                            json!(base64::engine::general_purpose::STANDARD.encode(&patch)),
                        ),
                    ]),
                )
            }
            Err(why) => denied(review, 400, &format!("ward: sidecar injection: {why}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> InjectSettings {
        InjectSettings {
            image: "ward:test".into(),
            capture_image: "ward-capture:test".into(),
            control_plane: "ward.istio-system.svc:15012".into(),
            trust_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn pod(label: Option<&str>, annotation: Option<&str>) -> Value {
        let mut p = json!({"metadata": {"name": "p", "namespace": "app"},
                           "spec": {"containers": [{"name": "app", "image": "x"}]}});
        if let Some(l) = label {
            p["metadata"]["labels"] = json!({POD_INJECT: l});
        }
        if let Some(a) = annotation {
            p["metadata"]["annotations"] = json!({POD_INJECT: a});
        }
        p
    }

    #[test]
    fn istios_injection_policy() {
        let on = labels(&[(NAMESPACE_LABEL, "enabled")]);
        let off = labels(&[(NAMESPACE_LABEL, "disabled")]);
        let none = labels(&[]);
        let cases = [
            ("enabled namespace", pod(None, None), &on, true),
            (
                "enabled, pod label false",
                pod(Some("false"), None),
                &on,
                false,
            ),
            (
                "enabled, pod annotation false",
                pod(None, Some("false")),
                &on,
                false,
            ),
            (
                "enabled, label true beats annotation false",
                pod(Some("true"), Some("false")),
                &on,
                true,
            ),
            (
                "disabled namespace, pod true",
                pod(Some("true"), None),
                &off,
                false,
            ),
            ("unlabelled namespace", pod(None, None), &none, false),
            (
                "unlabelled, pod label true",
                pod(Some("true"), None),
                &none,
                true,
            ),
            (
                "unlabelled, label false beats annotation true",
                pod(Some("false"), Some("true")),
                &none,
                false,
            ),
            (
                "unlabelled, annotation true alone",
                pod(None, Some("true")),
                &none,
                false,
            ),
        ];
        for (name, p, ns, want) in cases {
            assert_eq!(
                injection(&p, "app", ns) == Injection::Inject,
                want,
                "{name}"
            );
        }
        let mut host = pod(None, None);
        host["spec"]["hostNetwork"] = json!(true);
        assert_ne!(injection(&host, "app", &on), Injection::Inject);
        assert_ne!(
            injection(&pod(Some("true"), None), "kube-system", &on),
            Injection::Inject
        );
    }

    /// Applies the "add" ops of a patch (all `injection_patch` makes).
    fn apply(mut pod: Value, patch: &[Value]) -> Value {
        for op in patch {
            assert_eq!(op["op"], "add");
            let path = op["path"].as_str().unwrap();
            let ptr = path.rsplit_once('/').unwrap();
            pod.pointer_mut(ptr.0).unwrap()[ptr.1] = op["value"].clone();
        }
        pod
    }

    #[test]
    fn injection_adds_a_native_sidecar_capture_token_and_root_once() {
        let on = labels(&[(NAMESPACE_LABEL, "enabled")]);
        let mut p = pod(None, None);
        p["metadata"]["annotations"] = json!({
            "traffic.sidecar.istio.io/excludeOutboundPorts": "5432, 6379",
            "traffic.sidecar.istio.io/excludeInboundPorts": "9090",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8",
        });
        p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
        let injected = apply(p.clone(), &injection_patch(&p, &settings()).unwrap());
        let inits = injected["spec"]["initContainers"].as_array().unwrap();
        let names: Vec<&str> = inits.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]);
        assert_eq!(inits[1]["restartPolicy"], "Always");
        assert_eq!(
            inits[1]["startupProbe"]["httpGet"],
            json!({"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"}),
            "the app waits for its proxy"
        );
        let args: Vec<&str> = inits[0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        for want in [
            "--capture-init",
            "--capture-exclude-outbound-ports=5432,6379",
            "--capture-exclude-inbound-ports=9090",
            "--capture-exclude-cidrs=10.0.0.0/8",
        ] {
            assert!(args.contains(&want), "{want} not in {args:?}");
        }
        let token = injected["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "istio-token")
            .unwrap();
        assert_eq!(
            token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "istio-ca"
        );
        assert_eq!(injected["spec"]["containers"], p["spec"]["containers"]);
        // Idempotent: an injected pod is not injected again.
        assert!(matches!(
            injection(&injected, "app", &on),
            Injection::Skip(_)
        ));
    }

    #[test]
    fn http_and_tcp_probes_go_to_the_sidecar_and_the_originals_to_its_env() {
        let mut p = pod(None, None);
        p["spec"]["containers"] = json!([{
            "name": "app", "image": "x",
            "ports": [{"name": "web", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "web"}, "timeoutSeconds": 2},
            "livenessProbe": {"tcpSocket": {"port": 8080}},
            "startupProbe": {"exec": {"command": ["true"]}},
        }]);
        let injected = apply(p.clone(), &injection_patch(&p, &settings()).unwrap());
        let app = &injected["spec"]["containers"][0];
        assert_eq!(
            app["readinessProbe"]["httpGet"],
            json!({"path": "/app-health/app/readyz", "port": 15021, "scheme": "HTTP"})
        );
        assert_eq!(app["readinessProbe"]["timeoutSeconds"], 2);
        assert!(app["livenessProbe"].get("tcpSocket").is_none());
        assert_eq!(
            app["livenessProbe"]["httpGet"]["path"],
            "/app-health/app/livez"
        );
        assert_eq!(
            app["startupProbe"],
            p["spec"]["containers"][0]["startupProbe"]
        );
        let proxy = &injected["spec"]["initContainers"][1];
        let env = proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == PROBERS_ENV)
            .unwrap();
        let probers: Value = serde_json::from_str(env["value"].as_str().unwrap()).unwrap();
        assert_eq!(
            probers["/app-health/app/readyz"],
            json!({"httpGet": {"path": "/ready", "port": 8080}, "timeoutSeconds": 2})
        );
        assert_eq!(
            probers["/app-health/app/livez"],
            json!({"tcpSocket": {"port": 8080}})
        );
        let init_args = injected["spec"]["initContainers"][0]["args"].to_string();
        assert!(
            init_args.contains("--capture-exclude-inbound-ports=15021"),
            "{init_args}"
        );
        // Off by annotation.
        p["metadata"]["annotations"] = json!({REWRITE_PROBES: "false"});
        let kept = apply(p.clone(), &injection_patch(&p, &settings()).unwrap());
        assert_eq!(kept["spec"]["containers"], p["spec"]["containers"]);
    }

    #[test]
    fn bad_or_unsupported_annotations_refuse_the_pod_with_the_field() {
        for (key, value) in [
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "80,http"),
            (
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "10.0.0.0/33",
            ),
            ("traffic.sidecar.istio.io/includeInboundPorts", "8080"),
        ] {
            let mut p = pod(None, None);
            p["metadata"]["annotations"] = json!({key: value});
            let err = injection_patch(&p, &settings()).unwrap_err();
            assert!(
                err.contains(&format!("metadata.annotations[{key}]")),
                "{err}"
            );
        }
    }

    fn review(object: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
               "request": {"uid": "u-1", "operation": "CREATE", "namespace": "app",
                           "kind": {"group": "security.istio.io", "version": "v1", "kind": "AuthorizationPolicy"},
                           "object": object}})
    }

    #[test]
    fn validation_refuses_an_invalid_object_with_its_field_path() {
        let bad = json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                         "metadata": {"name": "p", "namespace": "app"},
                         "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principalz": ["x"]}}]}]}});
        let out = validate(&review(bad));
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["allowed"], false);
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains("spec.rules[0].from[0].source: WARD0101 unknown field `principalz`"),
            "{msg}"
        );
        let good = json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                          "metadata": {"name": "p"},
                          "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/app/sa/x"]}}]}]}});
        assert_eq!(validate(&review(good))["response"]["allowed"], true);
    }

    #[test]
    fn a_kind_ward_does_not_enforce_is_stored_with_a_warning() {
        let filter = json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                            "metadata": {"name": "f", "namespace": "app"},
                            "spec": {"configPatches": []}});
        let out = validate(&review(filter));
        assert_eq!(out["response"]["allowed"], true, "{out}");
        let warnings = out["response"]["warnings"].to_string();
        assert!(warnings.contains("EnvoyFilter app/f"), "{warnings}");
    }
}
