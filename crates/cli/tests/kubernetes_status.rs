//! `status.validationMessages` on the real kube-apiserver and etcd of `../shared/k8s`: a
//! WorkloadEntry with a field Ward does not enforce (`locality`, WARD0103) applied with
//! kubectl gets Istio's analysis message shape in its status (`kubectl get -o yaml`), written
//! by the leading control plane through the status subresource; fixed, the message is removed.
//! Addresses: 127.1.240.0/24.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ward_test_support::k8s::{self, ApiServer, StartOptions};
use ward_test_support::Proc;

const BIN: &str = env!("CARGO_BIN_EXE_ward");
const WAIT: Duration = Duration::from_secs(60);
const CP: &str = "127.1.240.1";

fn entry(extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: vm, namespace: app}}\nspec:\n  address: 127.1.240.9\n  serviceAccount: vm\n  labels: {{app: vm}}\n{extra}"
    )
}

/// `status.validationMessages` of WorkloadEntry app/vm, as `kubectl get -o yaml` prints them.
fn messages_yaml(api: &ApiServer) -> String {
    let (ok, text) = api.kubectl(
        &["get", "workloadentry", "vm", "-n", "app", "-o", "yaml"],
        None,
    );
    assert!(ok, "{text}");
    text
}

#[test]
fn findings_are_written_to_status_validation_messages_and_cleared_when_fixed() {
    const TEST: &str = "kubernetes_status";
    if !k8s::available(TEST) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let api = ApiServer::start(&tmp.path().join("k8s"), &StartOptions::default());
    let crds = api.ward(BIN, &["install", "crds"]);
    api.must(&["apply", "-f", "-"], Some(&crds));
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
    api.must(&["create", "namespace", "istio-system"], None);
    api.must(&["create", "namespace", "app"], None);
    // A field Ward accepts but does not act on: a warning, so the config loads.
    api.apply_ok(&entry("  locality: us-east/zone1\n"));

    let log = tmp.path().join("cp.log");
    let args: Vec<String> = vec![
        "control-plane".into(),
        "--kubernetes".into(),
        "--kubeconfig".into(),
        api.kubeconfig.display().to_string(),
        "--state-dir".into(),
        tmp.path().join("state").display().to_string(),
        "--listen".into(),
        format!("{CP}:15012"),
        "--admin".into(),
        format!("{CP}:15014"),
        "--webhook-listen".into(),
        format!("{CP}:15017"),
        "--leader-lease-duration".into(),
        "4s".into(),
        "--leader-renew-deadline".into(),
        "3s".into(),
        "--leader-retry-period".into(),
        "500ms".into(),
    ];
    let _cp = Proc::spawn(BIN, &args, &log);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    k8s::wait_until(
        "the leader writes the finding into status.validationMessages",
        WAIT,
        || messages_yaml(&api).contains("WARD0103"),
        &|| format!("{}\n{}", messages_yaml(&api), logs()),
    );
    let object = api.json(&["get", "workloadentry", "vm", "-n", "app"]);
    let messages = object["status"]["validationMessages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{object}");
    let m = &messages[0];
    assert_eq!(m["type"]["code"], "WARD0103", "{m}");
    assert_eq!(m["type"]["name"], "FieldNotEnforced", "{m}");
    assert_eq!(m["level"], "WARNING", "{m}");
    assert!(
        m["documentationUrl"]
            .as_str()
            .unwrap()
            .contains("docs/analyze.md"),
        "{m}"
    );
    // The spec is the user's, untouched: only the status subresource was written.
    assert_eq!(object["spec"]["locality"], "us-east/zone1", "{object}");

    // Fixed: the message goes.
    api.apply_ok(&entry(""));
    k8s::wait_until(
        "the fixed object's validationMessages are removed",
        WAIT,
        || !messages_yaml(&api).contains("validationMessages"),
        &|| format!("{}\n{}", messages_yaml(&api), logs()),
    );
}
