//! The Helm chart `deploy/helm/ward` with a real `helm` (`.ci/run` installs it): `helm lint`;
//! `helm template` renders exactly the objects `ward install` prints (less the Namespace,
//! which `helm install --create-namespace` makes), with the default values and with every
//! option set; and its output applies, server-side, to the real kube-apiserver of
//! `../shared/k8s`, where everything it names exists afterwards and its validating webhook
//! fails closed.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use ward_test_support::k8s::{self, ApiServer, StartOptions};
use ward_test_support::{have, skip_or_fail};

const BIN: &str = env!("CARGO_BIN_EXE_ward");

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/ward")
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The objects of a multi-document YAML stream whose documents are JSON (the chart's are).
fn documents(stream: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in stream.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if !line.trim_start().starts_with('#') {
            let doc = docs.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.into_iter()
        .filter(|doc| !doc.trim().is_empty())
        .map(|doc| serde_json::from_str(&doc).unwrap_or_else(|e| panic!("not JSON ({e}):\n{doc}")))
        .collect()
}

/// Objects sorted by kind and name, for comparison.
fn sorted(mut objects: Vec<Value>) -> Vec<Value> {
    objects.sort_by_key(|o| {
        format!(
            "{}/{}/{}",
            o["kind"].as_str().unwrap_or(""),
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        )
    });
    objects
}

fn helm_template(set: &[&str]) -> Vec<Value> {
    let chart = chart().display().to_string();
    let mut args = vec![
        "template",
        "ward",
        &chart,
        "--namespace",
        "mesh-root",
        "--include-crds",
    ];
    for s in set {
        args.extend(["--set", s]);
    }
    sorted(documents(&run("helm", &args)))
}

fn ward_install(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["install", "--crds", "always", "-n", "mesh-root"];
    all.extend(args);
    let list: Value = serde_json::from_str(&run(BIN, &all)).unwrap();
    sorted(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["kind"] != "Namespace")
            .cloned()
            .collect(),
    )
}

fn assert_same(helm: &[Value], ward: &[Value], what: &str) {
    assert_eq!(helm.len(), ward.len(), "{what}: object count");
    for (h, w) in helm.iter().zip(ward) {
        assert_eq!(
            h, w,
            "{what}: {} {} differs",
            w["kind"], w["metadata"]["name"]
        );
    }
}

#[test]
fn the_helm_chart_renders_what_ward_install_prints_and_applies() {
    const TEST: &str = "kubernetes_helm";
    if !have("helm") {
        return skip_or_fail(TEST, "helm is not installed (see .ci/run)");
    }
    run(
        "helm",
        &["lint", "--strict", &chart().display().to_string()],
    );

    // The default values are `ward install`'s defaults.
    let defaults = helm_template(&[]);
    assert_same(&defaults, &ward_install(&[]), "defaults");
    // Every option, as values and as flags.
    let set = helm_template(&[
        "image=registry.example/ward:1",
        "captureImage=registry.example/ward-capture:1",
        "failurePolicy=Ignore",
        "webhookUrl=https://127.1.200.30:15017/",
        "trustDomain=hospital.example",
        "replicas=3",
    ]);
    let flags = ward_install(&[
        "--image",
        "registry.example/ward:1",
        "--capture-image",
        "registry.example/ward-capture:1",
        "--failure-policy",
        "Ignore",
        "--webhook-url",
        "https://127.1.200.30:15017/",
        "--trust-domain",
        "hospital.example",
        "--replicas",
        "3",
    ]);
    assert_same(&set, &flags, "options");

    // The rendering applies to the real API server, and everything is there after.
    if !k8s::available(TEST) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let api = ApiServer::start(&tmp.path().join("k8s"), &StartOptions::default());
    api.must(&["create", "namespace", "mesh-root"], None);
    let stream: Vec<String> = defaults.iter().map(Value::to_string).collect();
    let list = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[{}]}}",
        stream.join(",")
    );
    api.must(
        &["apply", "--server-side", "--field-manager=helm", "-f", "-"],
        Some(&list),
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
    for o in &defaults {
        let kind = o["kind"].as_str().unwrap();
        let name = o["metadata"]["name"].as_str().unwrap();
        let mut args = vec!["get", kind, name];
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            args.extend(["-n", ns]);
        }
        api.must(&args, None);
    }
    // The chart's validating webhook is live and fails closed: with no control plane running
    // (no kubelet here), an Istio object is refused, not let in unchecked.
    let (ok, out) = api.apply(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: mesh-root}\nspec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/app/sa/web]\n",
    );
    assert!(!ok && out.contains("validation.ward.istio.io"), "{out}");
}
