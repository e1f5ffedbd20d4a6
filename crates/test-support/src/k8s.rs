//! The real kube-apiserver and etcd of `../shared/k8s` (see its README: `start.sh` brings both
//! up on free loopback ports in a directory and prints a kubeconfig; `stop.sh` stops them), for
//! the Kubernetes tests and `ward-bench k8s-scale`: start and stop, `kubectl`, and a kubelet's
//! part (a Pod bound to a Node and marked Running at an address, a bound ServiceAccount token).
//! An API server takes about 300 MB: share one across a test binary, isolate by namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `../shared/k8s` beside the repository (this crate is `crates/test-support`).
pub fn shared_k8s() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/k8s")
}

/// Whether a test can use the API server: prints `SKIPPED …` (or fails under CI, see
/// [`crate::skip_or_fail`]) and returns false when `../shared/k8s` or `kubectl` is missing.
pub fn available(test: &str) -> bool {
    if !shared_k8s().join("start.sh").exists() {
        crate::skip_or_fail(test, "../shared/k8s (the test API server) is absent");
        return false;
    }
    if !crate::have("kubectl") {
        crate::skip_or_fail(test, "kubectl is not installed");
        return false;
    }
    true
}

/// How an API server is started.
#[derive(Default, Clone)]
pub struct StartOptions {
    /// More kube-apiserver flags (`APISERVER_EXTRA_ARGS`).
    pub extra_args: Option<String>,
    /// The API server's and etcd's ports (to start again on the same ones); free ones if None.
    pub ports: Option<(String, String)>,
}

/// The API server and etcd in `dir`, stopped on drop.
pub struct ApiServer {
    /// The directory `start.sh` works in.
    pub dir: PathBuf,
    /// The admin kubeconfig it wrote.
    pub kubeconfig: PathBuf,
}

impl ApiServer {
    /// Starts an API server in `dir` (panics if it cannot).
    pub fn start(dir: &Path, opts: &StartOptions) -> ApiServer {
        Self::try_start(dir, opts).unwrap()
    }

    /// Starts an API server in `dir`.
    pub fn try_start(dir: &Path, opts: &StartOptions) -> anyhow::Result<ApiServer> {
        let mut cmd = Command::new(shared_k8s().join("start.sh"));
        cmd.arg("-d").arg(dir);
        if let Some(extra) = &opts.extra_args {
            cmd.env("APISERVER_EXTRA_ARGS", extra);
        }
        if let Some((api, etcd)) = &opts.ports {
            cmd.args(["-p", api, "-e", etcd]);
        }
        let out = cmd.stderr(Stdio::inherit()).output()?;
        anyhow::ensure!(out.status.success(), "start.sh failed");
        let stdout = String::from_utf8(out.stdout)?;
        let last = stdout.lines().last().unwrap_or("").trim();
        anyhow::ensure!(!last.is_empty(), "start.sh printed no kubeconfig");
        Ok(ApiServer {
            dir: dir.to_owned(),
            kubeconfig: PathBuf::from(last),
        })
    }

    /// The API server's and etcd's ports, to start again on the same ones.
    pub fn ports(&self) -> (String, String) {
        let env = std::fs::read_to_string(self.dir.join("ports.env")).unwrap();
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_owned()
        };
        (get("APISERVER_PORT"), get("ETCD_PORT"))
    }

    /// Stops both processes (`stop.sh`).
    pub fn stop(&self) {
        let _ = Command::new(shared_k8s().join("stop.sh"))
            .arg(&self.dir)
            .status();
    }

    /// `kubectl ARGS` with `stdin`: whether it succeeded, and its stdout and stderr.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let input = stdin.unwrap_or("").as_bytes().to_vec();
        let mut pipe = child.stdin.take().unwrap();
        // Written from a thread: a large input and a large output would otherwise deadlock.
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `kubectl ARGS`, which must succeed; its output.
    pub fn must(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, text) = self.kubectl(args, stdin);
        assert!(ok, "kubectl {args:?}: {text}");
        text
    }

    /// `kubectl apply -f -`: whether it succeeded, and what it said.
    pub fn apply(&self, yaml: &str) -> (bool, String) {
        self.kubectl(&["apply", "-f", "-"], Some(yaml))
    }

    /// `kubectl apply -f -`, which must succeed.
    pub fn apply_ok(&self, yaml: &str) -> String {
        self.must(&["apply", "-f", "-"], Some(yaml))
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.must(&all, None)).unwrap()
    }

    /// `BIN ARGS` (the `ward` binary) with this cluster's kubeconfig; its stdout, which must
    /// be a success.
    pub fn ward(&self, bin: &str, args: &[&str]) -> String {
        let out = Command::new(bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ward {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A kubelet's part: Pod `namespace/name` of ServiceAccount `sa`, labelled `app: name`,
    /// bound to `node-1` and marked Running at `ip`.
    pub fn pod(&self, namespace: &str, name: &str, sa: &str, ip: &str) {
        self.apply_ok(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}\nspec:\n  nodeName: node-1\n  serviceAccountName: {sa}\n  automountServiceAccountToken: false\n  containers: [{{name: app, image: example.invalid/app}}]\n"
        ));
        let status = format!(
            r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}]}}}}"#
        );
        self.must(
            &[
                "patch",
                "pod",
                name,
                "-n",
                namespace,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status,
            ],
            None,
        );
    }

    /// A token of ServiceAccount `namespace/sa` for `audience`, bound to pod `pod` when given
    /// (the TokenRequest API, as a projected token).
    pub fn token(&self, namespace: &str, sa: &str, audience: &str, pod: Option<&str>) -> String {
        let mut args = vec![
            "create",
            "token",
            sa,
            "-n",
            namespace,
            "--audience",
            audience,
        ];
        if let Some(pod) = pod {
            args.extend(["--bound-object-kind", "Pod", "--bound-object-name", pod]);
        }
        self.must(&args, None).trim().to_owned()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `cond` holds, at most `limit` (then panics with `what` and `logs()`); returns
/// how long it took.
pub fn wait_until(
    what: &str,
    limit: Duration,
    cond: impl Fn() -> bool,
    logs: &dyn Fn() -> String,
) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out: {what}\n{}", logs());
        std::thread::sleep(Duration::from_millis(25));
    }
    start.elapsed()
}

/// The sum of a Prometheus metric's samples whose line contains `label`, from `/metrics` at
/// `admin`.
pub fn metric(admin: std::net::SocketAddr, name: &str, label: &str) -> f64 {
    let (_, body) = crate::http_get(admin, "/metrics").unwrap();
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
