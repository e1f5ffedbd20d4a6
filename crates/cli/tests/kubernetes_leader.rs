//! Leader election between two `ward control-plane --kubernetes` replicas on the real
//! kube-apiserver and etcd of `../shared/k8s` (one API server, one test). Each replica has its
//! own CA (its own `--state-dir`), so what the cluster holds shows who wrote it: the webhooks'
//! `caBundle` and the root ConfigMap carry the leader's root, and Events name their reporting
//! instance. Both replicas are ready and serve; exactly one holds the Lease and writes; when it
//! is killed (SIGKILL, no release) the other takes the Lease over within about the lease
//! duration and writes; a proxy connected to the survivor keeps getting pushes throughout; and
//! the survivor, stopped by SIGTERM, releases the Lease.
//! Addresses: 127.1.200.0/24.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use ward_test_support::k8s::{self, metric, ApiServer, StartOptions};
use ward_test_support::{http_get, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_ward");
const WAIT: Duration = Duration::from_secs(60);
/// The lease duration the replicas run with (and its renew deadline and retry period).
const LEASE: Duration = Duration::from_secs(4);
const RETRY: Duration = Duration::from_millis(500);

fn wait_until(what: &str, cond: impl Fn() -> bool, logs: &dyn Fn() -> String) -> Duration {
    k8s::wait_until(what, WAIT, cond, logs)
}

/// One replica at `ip`, named `id`, with its own CA under `dir/<id>`.
fn replica(api: &ApiServer, dir: &Path, id: &str, ip: &str) -> Proc {
    let args: Vec<String> = vec![
        "control-plane".into(),
        "--kubernetes".into(),
        "--kubeconfig".into(),
        api.kubeconfig.display().to_string(),
        "--state-dir".into(),
        dir.join(id).display().to_string(),
        "--listen".into(),
        format!("{ip}:15012"),
        "--admin".into(),
        format!("{ip}:15014"),
        "--webhook-listen".into(),
        format!("{ip}:15017"),
        "--leader-id".into(),
        id.into(),
        "--leader-lease-duration".into(),
        format!("{}s", LEASE.as_secs()),
        "--leader-renew-deadline".into(),
        "3s".into(),
        "--leader-retry-period".into(),
        format!("{}ms", RETRY.as_millis()),
        // A follower that wrote would show within a second.
        "--publish-resync".into(),
        "1s".into(),
        "--debounce".into(),
        "50ms".into(),
    ];
    Proc::spawn(BIN, &args, &dir.join(format!("{id}.log")))
}

fn holder(api: &ApiServer) -> String {
    let (ok, text) = api.kubectl(
        &[
            "get",
            "lease",
            "ward-control-plane",
            "-n",
            "istio-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    if ok {
        text.trim().to_owned()
    } else {
        String::new()
    }
}

/// The root every webhook of both configurations trusts, if they all agree.
fn ca_bundle(api: &ApiServer) -> Option<String> {
    use base64::Engine as _;
    let mut all = Vec::new();
    for (kind, name) in [
        ("validatingwebhookconfiguration", "ward-validator"),
        ("mutatingwebhookconfiguration", "ward-sidecar-injector"),
    ] {
        for w in api.json(&["get", kind, name])["webhooks"]
            .as_array()
            .unwrap()
        {
            let b = w["clientConfig"]["caBundle"].as_str().unwrap_or("");
            let pem = base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default();
            all.push(String::from_utf8(pem).unwrap_or_default());
        }
    }
    let first = all.first()?.clone();
    all.iter().all(|b| *b == first).then_some(first)
}

fn root_config_map(api: &ApiServer) -> String {
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
    if !ok {
        return String::new();
    }
    serde_json::from_str::<Value>(&text).unwrap()["data"]["root-cert.pem"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// The reporting instances of the events on object `name` in `app`.
fn reporters(api: &ApiServer, name: &str) -> Vec<String> {
    let list = api.json(&["get", "events.events.k8s.io", "-n", "app"]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| e["reportingInstance"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn bad_policy(name: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: app}}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        principalz: [x]\n")
}

fn policy(name: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: app}}\nspec:\n  selector: {{matchLabels: {{app: srv}}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/app/sa/{name}]\n")
}

#[test]
fn one_replica_leads_and_writes_and_the_other_takes_over_when_it_dies() {
    const TEST: &str = "kubernetes_leader";
    if !k8s::available(TEST) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let api = ApiServer::start(&dir.join("k8s"), &StartOptions::default());
    let kubeconfig = api.kubeconfig.display().to_string();

    // `ward install`; the webhooks at an address nobody serves, failing open, so that invalid
    // objects reach the replicas (which report them as Events).
    let manifests = api.ward(
        BIN,
        &[
            "install",
            "--kubeconfig",
            &kubeconfig,
            "--crds",
            "always",
            "--webhook-url",
            "https://127.1.200.9:15017",
            "--failure-policy",
            "Ignore",
            "--image",
            "ward:test",
        ],
    );
    assert!(manifests.contains("\"kind\": \"Role\""), "leases RBAC");
    api.must(&["apply", "--server-side", "-f", "-"], Some(&manifests));
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
    api.apply_ok(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: srv, namespace: app}\n",
    );
    api.pod("app", "srv", "srv", "127.1.200.10");

    // Replica a first, so that it leads; then b.
    let (ip_a, ip_b) = ("127.1.200.1", "127.1.200.2");
    let admin_a: SocketAddr = format!("{ip_a}:15014").parse().unwrap();
    let admin_b: SocketAddr = format!("{ip_b}:15014").parse().unwrap();
    let mut a = replica(&api, dir, "cp-a", ip_a);
    a.wait_ready(admin_a, WAIT).unwrap();
    let logs = || {
        format!(
            "cp-a:\n{}\ncp-b:\n{}",
            std::fs::read_to_string(dir.join("cp-a.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("cp-b.log")).unwrap_or_default()
        )
    };
    wait_until("cp-a holds the Lease", || holder(&api) == "cp-a", &logs);
    let mut b = replica(&api, dir, "cp-b", ip_b);
    // Ready while following: readiness does not depend on leadership.
    b.wait_ready(admin_b, WAIT).unwrap();
    let root_a = std::fs::read_to_string(dir.join("cp-a/ca/root-cert.pem")).unwrap();
    let root_b = std::fs::read_to_string(dir.join("cp-b/ca/root-cert.pem")).unwrap();
    assert_ne!(root_a, root_b, "each replica has its own CA here");

    // Exactly one writes: a's root everywhere, and it stays so while b resyncs every second.
    wait_until(
        "a's root as caBundle and in the root ConfigMap",
        || ca_bundle(&api).as_deref() == Some(root_a.as_str()) && root_config_map(&api) == root_a,
        &logs,
    );
    wait_until(
        "ward_leader on both",
        || metric(admin_a, "ward_leader", "") == 1.0 && metric(admin_b, "ward_leader", "") == 0.0,
        &logs,
    );
    api.apply_ok(&bad_policy("bad-a"));
    wait_until(
        "an Event on bad-a",
        || !reporters(&api, "bad-a").is_empty(),
        &logs,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(holder(&api), "cp-a");
    assert_eq!(
        ca_bundle(&api).as_deref(),
        Some(root_a.as_str()),
        "b wrote the caBundle"
    );
    assert_eq!(root_config_map(&api), root_a, "b wrote the root ConfigMap");
    let by = reporters(&api, "bad-a");
    assert!(by.iter().all(|r| r == "cp-a"), "Events by {by:?}");
    api.must(
        &["delete", "authorizationpolicy", "bad-a", "-n", "app"],
        None,
    );

    // A proxy on b, with the pod's bound token and b's root.
    let token = dir.join("srv.token");
    std::fs::write(&token, api.token("app", "srv", "istio-ca", Some("srv"))).unwrap();
    let proxy_admin: SocketAddr = "127.1.200.10:15000".parse().unwrap();
    let mut proxy = Proc::spawn(
        BIN,
        &[
            "proxy".to_owned(),
            "--token-file".into(),
            token.display().to_string(),
            "--control-plane".into(),
            format!("{ip_b}:15012"),
            "--root-cert".into(),
            dir.join("cp-b/ca/root-cert.pem").display().to_string(),
            "--audit-dir".into(),
            dir.join("audit").display().to_string(),
            "--pod-name".into(),
            "srv".into(),
            "--pod-namespace".into(),
            "app".into(),
            "--admin".into(),
            proxy_admin.to_string(),
        ],
        &dir.join("proxy.log"),
    );
    proxy.wait_ready(proxy_admin, WAIT).unwrap();
    let dump = || {
        let (_, body) = http_get(proxy_admin, "/config_dump").unwrap();
        body
    };
    api.apply_ok(&policy("before"));
    wait_until(
        "a push before the takeover",
        || dump().contains("sa/before"),
        &logs,
    );

    // a dies without releasing the Lease; b takes it over and writes.
    a.kill();
    let killed = Instant::now();
    wait_until("cp-b holds the Lease", || holder(&api) == "cp-b", &logs);
    let took_over = killed.elapsed();
    wait_until(
        "b's root as caBundle and in the root ConfigMap",
        || ca_bundle(&api).as_deref() == Some(root_b.as_str()) && root_config_map(&api) == root_b,
        &logs,
    );
    let wrote = killed.elapsed();
    assert_eq!(metric(admin_b, "ward_leader", ""), 1.0);
    println!(
        "leader killed: Lease taken over after {} ms, caBundle and root ConfigMap rewritten after {} ms (lease duration {} ms, retry period {} ms)",
        took_over.as_millis(),
        wrote.as_millis(),
        LEASE.as_millis(),
        RETRY.as_millis()
    );
    // b saw the record last change at most one retry period after a's last renewal, and
    // looks every retry period: the lease duration and two retry periods bound the takeover,
    // with a second for kubectl and the machine.
    assert!(
        took_over <= LEASE + 2 * RETRY + Duration::from_secs(1),
        "takeover took {took_over:?}"
    );

    // The new leader reports invalid objects; the proxy on b keeps getting pushes.
    api.apply_ok(&bad_policy("bad-b"));
    wait_until(
        "an Event on bad-b",
        || !reporters(&api, "bad-b").is_empty(),
        &logs,
    );
    let by = reporters(&api, "bad-b");
    assert!(by.iter().all(|r| r == "cp-b"), "Events by {by:?}");
    api.must(
        &["delete", "authorizationpolicy", "bad-b", "-n", "app"],
        None,
    );
    let start = Instant::now();
    api.apply_ok(&policy("after"));
    wait_until(
        "a push after the takeover",
        || dump().contains("sa/after"),
        &logs,
    );
    println!(
        "after the takeover, a policy edit reached the proxy in {} ms",
        start.elapsed().as_millis()
    );
    drop(proxy);

    // A replica stopped by a signal gives the Lease up (holder cleared), so that another
    // replica need not wait out the lease duration.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &b.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        b.wait_exit(Duration::from_secs(10)).is_some(),
        "b did not stop"
    );
    assert_eq!(holder(&api), "", "the Lease was not released\n{}", logs());
}
