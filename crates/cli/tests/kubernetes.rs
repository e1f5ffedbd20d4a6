//! `ward control-plane --kubernetes` against the real kube-apiserver and etcd of `../shared/k8s`
//! (one API server for this binary, one test): CRDs from `ward install crds`, then Pods (bound
//! to a Node, status patched to 127.130.0.x as a kubelet would), ServiceAccounts, a Service,
//! Sidecars, a PeerAuthentication STRICT and an AuthorizationPolicy applied with kubectl. Real
//! `ward proxy` processes bootstrap with bound ServiceAccount tokens (TokenRequest, audience
//! `istio-ca`); traffic through them follows the policy; a `kubectl apply` of a policy edit
//! reaches them (timed); an invalid object is refused with an Event on it while the last good
//! config serves; token abuse is refused; an API server stop and start is survived without
//! reloading anything.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ward_test_support::k8s::{self, metric, ApiServer, StartOptions};
use ward_test_support::{http_get, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_ward");
const WAIT: Duration = Duration::from_secs(60);
const CP: &str = "127.130.0.100";

/// The API server, with the endpoint reconciler off: the API server removes its own address
/// from the `kubernetes` Service's endpoints when it stops and adds it back when it starts: a
/// real change, which the control plane rightly loads. Without the reconciler, a restart changes
/// nothing, so the test can check that an unchanged relist reloads and pushes nothing.
fn start_api(dir: &Path, ports: Option<(String, String)>) -> ApiServer {
    ApiServer::start(
        dir,
        &StartOptions {
            extra_args: Some("--endpoint-reconciler-type=none".into()),
            ports,
        },
    )
}

/// An echo server on 127.0.0.1 (srv's app), in a thread.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Whether a fresh connection through `via` echoes.
fn echoes(via: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&via, Duration::from_secs(2)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let msg = b"ward-k8s";
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).is_ok() && &buf == msg
}

/// Waits until `cond` holds; returns how long it took.
fn wait_until(what: &str, cond: impl Fn() -> bool, logs: &dyn Fn() -> String) -> Duration {
    k8s::wait_until(what, WAIT, cond, logs)
}

fn generation(admin: SocketAddr) -> u64 {
    let (_, body) = http_get(admin, "/debug/config").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["generation"].as_u64().unwrap()
}

fn policy(allowed_sa: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: srv-allow, namespace: app}}\nspec:\n  selector: {{matchLabels: {{app: srv}}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/app/sa/{allowed_sa}]\n"
    )
}

fn sidecars(app_port: u16) -> String {
    let egress = |name: &str, ip: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: app}}\nspec:\n  workloadSelector: {{labels: {{app: {name}}}}}\n  egress:\n  - port: {{number: 9000, protocol: TCP, name: tcp-echo}}\n    bind: {ip}\n    hosts: [\"app/srv.app.svc.cluster.local\"]\n"
        )
    };
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: srv, namespace: app}}\nspec:\n  workloadSelector: {{labels: {{app: srv}}}}\n  ingress:\n  - port: {{number: 9000, protocol: TCP, name: tcp-echo}}\n    defaultEndpoint: 127.0.0.1:{app_port}\n---\n{}---\n{}",
        egress("cli", "127.130.0.1"),
        egress("oth", "127.130.0.2")
    )
}

/// A bootstrap bundle as `ward proxy --token-file` builds it, for `ward bootstrap --check`.
fn bundle(dir: &Path, name: &str, token: &str, workload: &str, sa: &str) -> PathBuf {
    let root = std::fs::read_to_string(dir.join("state/ca/root-cert.pem")).unwrap();
    let file = serde_json::json!({
        "controlPlane": format!("{CP}:15012"),
        "controlPlaneIdentity": "spiffe://cluster.local/ns/istio-system/sa/ward-control-plane",
        "workload": workload,
        "identity": format!("spiffe://cluster.local/ns/app/sa/{sa}"),
        "rootCert": root,
        "token": token,
        "expires": 0,
    });
    let path = dir.join(format!("{name}.bootstrap"));
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    path
}

/// `ward bootstrap --check` with a bundle: whether a certificate was issued, and the output.
fn check(path: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["bootstrap", "--check"])
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn control_plane_on_the_real_api_server_drives_proxies_with_service_account_identities() {
    const TEST: &str = "kubernetes";
    if !k8s::available(TEST) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let api = start_api(&dir.join("k8s"), None);

    // CRDs rendered by Ward, then the cluster's objects.
    let crds = Command::new(BIN)
        .args(["install", "crds"])
        .output()
        .unwrap();
    assert!(crds.status.success());
    api.apply_ok(&String::from_utf8(crds.stdout).unwrap());
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
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    trustDomain: cluster.local\n",
    );
    for sa in ["srv", "cli", "oth"] {
        api.apply_ok(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: app}}\n"
        ));
    }
    api.pod("app", "srv", "srv", "127.130.0.10");
    api.pod("app", "cli", "cli", "127.130.0.1");
    api.pod("app", "oth", "oth", "127.130.0.2");
    let app_port = echo_server();
    api.apply_ok(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: srv, namespace: app}}\nspec:\n  selector: {{app: srv}}\n  ports:\n  - {{name: tcp-echo, port: 9000, targetPort: 9000}}\n---\n{}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: STRICT}}}}\n---\n{}",
        sidecars(app_port),
        policy("cli")
    ));

    // The control plane, Kubernetes only.
    let admin: SocketAddr = format!("{CP}:15014").parse().unwrap();
    let mut cp = Proc::spawn(
        BIN,
        &[
            "control-plane".to_owned(),
            "--kubernetes".into(),
            "--kubeconfig".into(),
            api.kubeconfig.display().to_string(),
            "--state-dir".into(),
            dir.join("state").display().to_string(),
            "--listen".into(),
            format!("{CP}:15012"),
            "--admin".into(),
            admin.to_string(),
            // Not the default 0.0.0.0: tests share the machine.
            "--webhook-listen".into(),
            format!("{CP}:15017"),
        ],
        &dir.join("control-plane.log"),
    );
    cp.wait_ready(admin, WAIT).unwrap();
    let cp_logs = || std::fs::read_to_string(dir.join("control-plane.log")).unwrap_or_default();

    // Proxies, each with its pod's bound token.
    let mut proxies = Vec::new();
    for (name, ip) in [
        ("srv", "127.130.0.10"),
        ("cli", "127.130.0.1"),
        ("oth", "127.130.0.2"),
    ] {
        let token_file = dir.join(format!("{name}.token"));
        std::fs::write(&token_file, api.token("app", name, "istio-ca", Some(name))).unwrap();
        let proxy_admin: SocketAddr = format!("{ip}:15000").parse().unwrap();
        let mut p = Proc::spawn(
            BIN,
            &[
                "proxy".to_owned(),
                "--token-file".into(),
                token_file.display().to_string(),
                "--control-plane".into(),
                format!("{CP}:15012"),
                "--root-cert".into(),
                dir.join("state/ca/root-cert.pem").display().to_string(),
                "--audit-dir".into(),
                dir.join("audit").display().to_string(),
                "--pod-name".into(),
                name.into(),
                "--pod-namespace".into(),
                "app".into(),
                "--admin".into(),
                proxy_admin.to_string(),
            ],
            &dir.join(format!("proxy-{name}.log")),
        );
        p.wait_ready(proxy_admin, WAIT)
            .unwrap_or_else(|e| panic!("proxy {name}: {e}\ncontrol plane:\n{}", cp_logs()));
        let (_, certs) = http_get(proxy_admin, "/certs").unwrap();
        assert!(
            certs.contains(&format!("spiffe://cluster.local/ns/app/sa/{name}")),
            "{certs}"
        );
        proxies.push(p);
    }
    let via_cli: SocketAddr = "127.130.0.1:9000".parse().unwrap();
    let via_oth: SocketAddr = "127.130.0.2:9000".parse().unwrap();
    wait_until("cli reaches srv", || echoes(via_cli), &cp_logs);
    assert!(!echoes(via_oth), "oth is not allowed by the policy");

    // A policy edit with kubectl reaches the proxies.
    let start = Instant::now();
    api.apply_ok(&policy("oth"));
    let stored = start.elapsed();
    let after = wait_until(
        "the edit reaches srv's proxy",
        || echoes(via_oth) && !echoes(via_cli),
        &cp_logs,
    );
    println!(
        "policy edit: kubectl apply took {} ms; enforced by the proxies {} ms after it returned",
        stored.as_millis(),
        after.as_millis()
    );

    // An invalid object: refused whole, an Event on it with the field path, the last good
    // config keeps serving.
    let serving = generation(admin);
    api.apply_ok(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: app}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        principalz: [x]\n",
    );
    wait_until(
        "an Event on the invalid object",
        || {
            api.kubectl(
                &[
                    "get",
                    "events",
                    "-n",
                    "app",
                    "--field-selector",
                    "involvedObject.name=bad",
                    "-o",
                    "json",
                ],
                None,
            )
            .1
            .contains("spec.rules[0].from[0].source: WARD0101 unknown field `principalz`")
        },
        &cp_logs,
    );
    assert_eq!(generation(admin), serving, "the last good config serves");
    assert!(echoes(via_oth));
    api.must(&["delete", "authorizationpolicy", "bad", "-n", "app"], None);

    // Token abuse: only a token bound to the very pod, for `istio-ca`, gets that pod's identity.
    let own = bundle(
        dir,
        "own",
        &api.token("app", "cli", "istio-ca", Some("cli")),
        "app/cli",
        "cli",
    );
    let (ok, out) = check(&own);
    assert!(ok, "cli's own token: {out}");
    let cases = [
        (
            "SA cli's token asking for srv's identity",
            bundle(
                dir,
                "steal",
                &api.token("app", "cli", "istio-ca", Some("cli")),
                "app/srv",
                "srv",
            ),
            "PermissionDenied",
        ),
        (
            "wrong audience",
            bundle(
                dir,
                "aud",
                &api.token(
                    "app",
                    "cli",
                    "https://kubernetes.default.svc.cluster.local",
                    Some("cli"),
                ),
                "app/cli",
                "cli",
            ),
            "Unauthenticated",
        ),
        (
            "a token bound to no pod",
            bundle(
                dir,
                "unbound",
                &api.token("app", "cli", "istio-ca", None),
                "app/cli",
                "cli",
            ),
            "not bound to a pod",
        ),
    ];
    for (name, file, want) in &cases {
        let (ok, out) = check(file);
        assert!(!ok, "{name}: a certificate was issued: {out}");
        assert!(out.contains(want), "{name}: {out}");
    }
    api.pod("app", "gone", "cli", "127.130.0.50");
    let gone_token = api.token("app", "cli", "istio-ca", Some("gone"));
    let gone = bundle(dir, "gone", &gone_token, "app/gone", "cli");
    // While the pod runs, its token works (once the control plane has seen it running).
    wait_until("pod gone is a workload", || check(&gone).0, &cp_logs);
    let before = generation(admin);
    let delete = [
        "delete",
        "pod",
        "gone",
        "-n",
        "app",
        "--force",
        "--grace-period=0",
    ];
    api.must(&delete, None);
    wait_until(
        "pod gone is no workload",
        || generation(admin) > before,
        &cp_logs,
    );
    let (ok, out) = check(&gone);
    assert!(!ok, "a deleted pod's token got a certificate: {out}");
    // Refused by the API server (the bound pod is gone) or, while its cache still has the pod,
    // by the control plane (no such running workload).
    assert!(
        out.contains("Unauthenticated") || out.contains("not a running workload"),
        "{out}"
    );

    // API server loss: the proxies keep serving; on its return the watches relist and nothing
    // is reloaded.
    let serving = generation(admin);
    let identical = metric(admin, "ward_kubernetes_renders_total", "identical");
    let responses = metric(admin, "ward_config_responses_total", "");
    let ports = api.ports();
    api.stop();
    std::thread::sleep(Duration::from_secs(2));
    assert!(echoes(via_oth), "serving without the API server");
    assert!(!echoes(via_cli));
    let api2 = start_api(&dir.join("k8s"), Some(ports));
    wait_until(
        "the watches relist after the API server returns",
        || metric(admin, "ward_kubernetes_renders_total", "identical") > identical,
        &cp_logs,
    );
    assert_eq!(
        generation(admin),
        serving,
        "an unchanged relist reloads nothing"
    );
    assert_eq!(
        metric(admin, "ward_config_responses_total", ""),
        responses,
        "and pushes nothing"
    );
    // And the watches follow changes again.
    let start = Instant::now();
    api2.apply_ok(&policy("cli"));
    wait_until(
        "an edit after the restart",
        || echoes(via_cli) && !echoes(via_oth),
        &cp_logs,
    );
    println!(
        "after an API server restart, a policy edit enforced in {} ms",
        start.elapsed().as_millis()
    );
    drop(proxies);
    drop(cp);
    // Dropping `api` would stop api2's processes (the same directory); api2's drop stops them.
    std::mem::forget(api);
}
