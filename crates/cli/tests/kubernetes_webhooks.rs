//! `ward install` and the admission webhooks against the real kube-apiserver and etcd of
//! `../shared/k8s` (one API server, one test): `ward install | kubectl apply --server-side`
//! on a fresh cluster; `ward control-plane --kubernetes` serving the webhooks over TLS at a
//! loopback URL (127.1.155.1), its serving certificate from the mesh CA; the control plane
//! setting both webhook configurations' `caBundle` and every namespace's `istio-ca-root-cert`;
//! `kubectl apply` of an invalid AuthorizationPolicy refused with the field path, a valid one
//! stored; Pods injected (or not) by Istio's namespace and pod rules, idempotently; and
//! `ward uninstall | kubectl delete -f -`. And, as root, the injected capture init step in a
//! fresh network namespace.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use ward_test_support::k8s::{self, ApiServer, StartOptions};
use ward_test_support::{have, skip_or_fail, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_ward");
const WAIT: Duration = Duration::from_secs(60);
const CP: &str = "127.1.155.1";

fn wait_until(what: &str, cond: impl Fn() -> bool, logs: &dyn Fn() -> String) -> Duration {
    k8s::wait_until(what, WAIT, cond, logs)
}

/// A pod; with `probe`, an HTTP readiness probe on a named port (rewritten when injected, so
/// such a pod cannot be `kubectl apply`'d again: the probe would be reverted, and a pod's spec
/// is immutable; the same as with Istio).
fn pod_yaml(name: &str, namespace: &str, inject: Option<&str>, probe: bool) -> String {
    let probe = if probe {
        "    readinessProbe: {httpGet: {path: /ready, port: web}}\n"
    } else {
        ""
    };
    let labels = match inject {
        Some(v) => format!("{{app: {name}, sidecar.istio.io/inject: \"{v}\"}}"),
        None => format!("{{app: {name}}}"),
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels: {labels}\n  annotations: {{traffic.sidecar.istio.io/excludeOutboundPorts: \"5432\"}}\nspec:\n  nodeName: node-1\n  automountServiceAccountToken: false\n  containers:\n  - name: app\n    image: example.invalid/app\n    ports: [{{name: web, containerPort: 8080}}]\n{probe}"
    )
}

/// The names of a pod's init containers and containers.
fn containers(pod: &Value) -> (Vec<String>, Vec<String>) {
    let names = |list: &str| -> Vec<String> {
        pod["spec"][list]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| c["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    (names("initContainers"), names("containers"))
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default()
}

#[test]
fn install_webhooks_validation_and_sidecar_injection_on_the_real_api_server() {
    const TEST: &str = "kubernetes_webhooks";
    if !k8s::available(TEST) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let api = ApiServer::start(&dir.join("k8s"), &StartOptions::default());
    let kubeconfig = api.kubeconfig.display().to_string();
    let url = format!("https://{CP}:15017");

    // `ward install`, server-side applied on the fresh cluster.
    let manifests = api.ward(
        BIN,
        &[
            "install",
            "--kubeconfig",
            &kubeconfig,
            "--webhook-url",
            &url,
            "--image",
            "ward:test",
        ],
    );
    let list: Value = serde_json::from_str(&manifests).unwrap();
    let kinds: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    for want in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ConfigMap",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    ] {
        assert!(kinds.contains(&want), "{want} missing from {kinds:?}");
    }
    let start = Instant::now();
    api.must(
        &[
            "apply",
            "--server-side",
            "--field-manager=ward-install",
            "-f",
            "-",
        ],
        Some(&manifests),
    );
    println!(
        "ward install | kubectl apply --server-side: {} ms",
        start.elapsed().as_millis()
    );
    api.must(
        &[
            "wait",
            "--for",
            "condition=established",
            "crd",
            "--all",
            "--timeout=60s",
        ],
        None,
    );
    // As far as the API shows without a kubelet: everything is there; a second install
    // leaves out nothing and changes nothing; with the CRDs there and Ward's, it keeps them.
    for (kind, name) in [
        ("deployment", "ward-control-plane"),
        ("service", "ward-control-plane"),
        ("serviceaccount", "ward-control-plane"),
        ("configmap", "istio"),
    ] {
        api.must(&["get", kind, name, "-n", "istio-system"], None);
    }
    let again = api.ward(
        BIN,
        &[
            "install",
            "--kubeconfig",
            &kubeconfig,
            "--webhook-url",
            &url,
            "--image",
            "ward:test",
        ],
    );
    assert_eq!(again, manifests, "install is stable");
    let dry = api.must(
        &[
            "apply",
            "--server-side",
            "--field-manager=ward-install",
            "--dry-run=server",
            "-f",
            "-",
        ],
        Some(&again),
    );
    assert!(!dry.contains("conflict"), "{dry}");

    // The cluster: an injected namespace, a plain one, a node.
    api.must(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: app, labels: {istio-injection: enabled}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: app}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: plain}\n",
        ),
    );

    // The control plane, its webhooks on the loopback URL the configurations name.
    let admin: SocketAddr = format!("{CP}:15014").parse().unwrap();
    let mut cp = Proc::spawn(
        BIN,
        &[
            "control-plane",
            "--kubernetes",
            "--kubeconfig",
            &kubeconfig,
            "--state-dir",
            &dir.join("state").display().to_string(),
            "--listen",
            &format!("{CP}:15012"),
            "--admin",
            &admin.to_string(),
            "--webhook-listen",
            &format!("{CP}:15017"),
            "--webhook-san",
            CP,
            "--proxy-image",
            "ward:test",
        ],
        &dir.join("control-plane.log"),
    );
    cp.wait_ready(admin, WAIT).unwrap();
    let logs = || std::fs::read_to_string(dir.join("control-plane.log")).unwrap_or_default();

    // caBundle: the mesh root, on every webhook of both configurations.
    let root = std::fs::read_to_string(dir.join("state/ca/root-cert.pem")).unwrap();
    let bundles = |kind: &str, name: &str| -> Vec<String> {
        api.json(&["get", kind, name])["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                w["clientConfig"]["caBundle"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    };
    let took = wait_until(
        "caBundle set by the control plane",
        || {
            [
                ("validatingwebhookconfiguration", "ward-validator"),
                ("mutatingwebhookconfiguration", "ward-sidecar-injector"),
            ]
            .iter()
            .all(|(k, n)| {
                let b = bundles(k, n);
                !b.is_empty() && b.iter().all(|b| base64_decode(b) == root.as_bytes())
            })
        },
        &logs,
    );
    println!(
        "caBundle set {} ms after the control plane was ready",
        took.as_millis()
    );
    wait_until(
        "the mesh root in namespace app",
        || {
            let (ok, text) = api.kubectl(
                &[
                    "get",
                    "configmap",
                    "istio-ca-root-cert",
                    "-n",
                    "app",
                    "-o",
                    "json",
                ],
                None,
            );
            ok && serde_json::from_str::<Value>(&text).unwrap()["data"]["root-cert.pem"]
                == root.as_str()
        },
        &logs,
    );

    // Validation: an invalid AuthorizationPolicy is refused at apply time with the field
    // path; nothing is stored. A valid one is.
    let (ok, out) = api.apply(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: app}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        principalz: [x]\n",
    );
    assert!(!ok, "an invalid policy was accepted: {out}");
    for part in [
        "denied the request",
        "AuthorizationPolicy app/bad",
        "spec.rules[0].from[0].source: WARD0101 unknown field `principalz`",
    ] {
        assert!(out.contains(part), "{part:?} not in {out}");
    }
    let (found, _) = api.kubectl(&["get", "authorizationpolicy", "bad", "-n", "app"], None);
    assert!(!found, "the invalid policy was stored");
    let (ok, out) = api.apply(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: good, namespace: app}\nspec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/app/sa/default]\n",
    );
    assert!(ok, "a valid policy was refused: {out}");
    // The older served version is checked the same way.
    let (ok, out) = api.apply(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: bad-mode, namespace: app}\nspec: {mtls: {mode: STRICTER}}\n",
    );
    assert!(!ok && out.contains("spec.mtls.mode"), "{out}");

    // Injection: Istio's namespace and pod rules.
    let cases = [
        ("labelled namespace", "app", "in-app", None, true),
        (
            "labelled namespace, pod says false",
            "app",
            "opt-out",
            Some("false"),
            false,
        ),
        ("unlabelled namespace", "plain", "in-plain", None, false),
        (
            "unlabelled namespace, pod says true",
            "plain",
            "opt-in",
            Some("true"),
            true,
        ),
    ];
    for (what, ns, name, inject, want) in cases {
        let probe = name != "opt-in";
        let (ok, out) = api.apply(&pod_yaml(name, ns, inject, probe));
        assert!(ok, "{what}: {out}\n{}", logs());
        let pod = api.json(&["get", "pod", name, "-n", ns]);
        let (inits, main) = containers(&pod);
        assert_eq!(main, ["app"], "{what}");
        if want {
            assert_eq!(inits, ["istio-init", "istio-proxy"], "{what}");
            let proxy = &pod["spec"]["initContainers"][1];
            assert_eq!(proxy["restartPolicy"], "Always", "{what}: a native sidecar");
            assert_eq!(
                proxy["startupProbe"]["httpGet"]["path"], "/healthz/ready",
                "{what}: the app starts after its proxy"
            );
            let args = proxy["args"].to_string();
            assert!(args.contains("--capture-installed"), "{args}");
            assert!(
                args.contains("--capture-exclude-outbound-ports=5432"),
                "{what}: the annotation is honoured: {args}"
            );
            let token = pod["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "istio-token")
                .unwrap_or_else(|| panic!("{what}: no token volume: {pod}"));
            assert_eq!(
                token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
                "istio-ca"
            );
            assert!(pod["metadata"]["annotations"]["sidecar.istio.io/status"].is_string());
            if !probe {
                continue;
            }
            // The app's probe goes to the sidecar's prober, the original to its env.
            assert_eq!(
                pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
                "/app-health/app/readyz",
                "{what}"
            );
            let probers = proxy["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "ISTIO_KUBE_APP_PROBERS")
                .unwrap()["value"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(probers.contains("\"port\":8080"), "{probers}");
        } else {
            assert!(inits.is_empty(), "{what}: injected: {inits:?}");
            assert_eq!(
                pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
                "/ready"
            );
        }
    }

    // Idempotent: applying a pod again, patching it, and creating a copy of an injected pod
    // leave one sidecar.
    let (ok, out) = api.apply(&pod_yaml("opt-in", "plain", Some("true"), false));
    assert!(ok, "{out}");
    assert_eq!(
        containers(&api.json(&["get", "pod", "opt-in", "-n", "plain"])).0,
        ["istio-init", "istio-proxy"]
    );
    api.must(
        &["label", "pod", "in-app", "-n", "app", "touched=yes"],
        None,
    );
    api.must(
        &["annotate", "pod", "in-app", "-n", "app", "touched=yes"],
        None,
    );
    assert_eq!(
        containers(&api.json(&["get", "pod", "in-app", "-n", "app"])).0,
        ["istio-init", "istio-proxy"]
    );
    let mut copy = api.json(&["get", "pod", "in-app", "-n", "app"]);
    copy["metadata"] = serde_json::json!({
        "name": "copy", "namespace": "app",
        "labels": copy["metadata"]["labels"], "annotations": copy["metadata"]["annotations"],
    });
    copy.as_object_mut().unwrap().remove("status");
    api.must(&["create", "-f", "-"], Some(&copy.to_string()));
    assert_eq!(
        containers(&api.json(&["get", "pod", "copy", "-n", "app"])).0,
        ["istio-init", "istio-proxy"],
        "an injected pod is not injected again"
    );
    let (_, body) = ward_test_support::http_get(admin, "/metrics").unwrap();
    assert!(
        body.lines()
            .any(|l| l.starts_with("ward_webhook_reviews_total")
                && l.contains("webhook=\"inject\"")
                && l.contains("result=\"patched\"")),
        "{body}"
    );

    // `ward uninstall | kubectl delete -f -`: the webhooks go (first), and everything else.
    drop(cp);
    let removal = api.ward(BIN, &["uninstall", "--kubeconfig", &kubeconfig]);
    api.must(&["delete", "--wait=false", "-f", "-"], Some(&removal));
    for (kind, name) in [
        ("validatingwebhookconfiguration", "ward-validator"),
        ("mutatingwebhookconfiguration", "ward-sidecar-injector"),
        ("clusterrole", "ward-control-plane"),
        ("crd", "authorizationpolicies.security.istio.io"),
    ] {
        let (found, _) = api.kubectl(&["get", kind, name], None);
        assert!(!found, "{kind} {name} is still there after ward uninstall");
    }
    let (found, _) = api.kubectl(
        &["get", "configmap", "istio-ca-root-cert", "-n", "app"],
        None,
    );
    assert!(
        !found,
        "the root ConfigMap is still there after ward uninstall"
    );
    // Without the webhooks, pods are created as they are.
    api.must(
        &["apply", "-f", "-"],
        Some(&pod_yaml("after", "app", None, true)),
    );
    assert!(containers(&api.json(&["get", "pod", "after", "-n", "app"]))
        .0
        .is_empty());
}

/// The injected `istio-init` step for real: `ward proxy --capture --capture-init` with the
/// flags the injector gives it, in a fresh network namespace (`unshare -n`), installs the
/// capture rules, exits 0 and leaves them, with the sidecar's user let out by owner and the
/// annotations' one-direction port exclusions.
#[test]
fn the_injected_capture_init_installs_the_rules_and_leaves_them() {
    const TEST: &str = "kubernetes_webhooks capture init";
    if !ward_test_support::is_root() {
        return skip_or_fail(TEST, "needs root (iptables in a new network namespace)");
    }
    for tool in ["unshare", "iptables-save", "iptables-restore"] {
        if !have(tool) {
            return skip_or_fail(TEST, &format!("{tool} is not installed"));
        }
    }
    let script = format!(
        "{BIN} proxy --capture --capture-init --capture-proxy-uid=1337 \
         --capture-exclude-outbound-ports=5432 --capture-exclude-inbound-ports=15021 \
         && echo INIT-OK && iptables-save -t nat"
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("INIT-OK"), "{text}");
    let after_exit = text.split("INIT-OK").nth(1).unwrap();
    let rules: Vec<&str> = after_exit
        .lines()
        .filter(|l| l.starts_with("-A WARD_"))
        .collect();
    let at = |rule: &str| {
        rules
            .iter()
            .position(|r| *r == rule)
            .unwrap_or_else(|| panic!("{rule:?} not in {rules:#?}"))
    };
    // Outbound: the proxy's marked sockets, then its user, then the exclusions, then capture.
    let mark = at("-A WARD_OUTPUT -m mark --mark 0x539 -j RETURN");
    let owner = at("-A WARD_OUTPUT -m owner --uid-owner 1337 -j RETURN");
    let db = at("-A WARD_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN");
    let capture = at("-A WARD_OUTPUT -j WARD_REDIRECT");
    assert!(mark < owner && owner < db && db < capture, "{rules:#?}");
    // Inbound: the prober's port is left alone; 5432 is excluded outbound only.
    at("-A WARD_INBOUND -p tcp -m tcp --dport 15021 -j RETURN");
    assert!(
        !rules.contains(&"-A WARD_INBOUND -p tcp -m tcp --dport 5432 -j RETURN"),
        "{rules:#?}"
    );
    at("-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006");
}
