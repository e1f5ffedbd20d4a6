//! `ward-bench k8s-scale`: `ward control-plane --kubernetes` on the real kube-apiserver and etcd
//! of `../shared/k8s` (crates/test-support/src/k8s.rs starts them) holding a cluster's worth of
//! objects, as issue 16's scale simulation asks: by default 10,000 Pods (bound to fake Nodes,
//! their status patched Running with an address, as a kubelet would), 2,000 Services with their
//! EndpointSlices (as the EndpointSlice controller would write them) and 1,000
//! AuthorizationPolicies, over 10 namespaces. It measures:
//! - the control plane's resident memory once ready, against the same control plane on the
//!   empty cluster (so per object);
//! - its time to first ready (start to `/ready` 200: every watch listed, the config loaded);
//! - with N simulated proxies connected (config stream clients authenticated with Ward
//!   bootstrap tokens for N of the Pods, which acknowledge each version without decoding it:
//!   `push::thin_proxy`), the time from a mesh-wide policy change (a patch of one
//!   AuthorizationPolicy in the root namespace through the API) to each proxy receiving it:
//!   p50, p99, max.
//!
//! Pod and Service addresses are data only: no traffic goes anywhere but the control plane on
//! 127.0.0.1 and the API server on 127.0.0.1.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use ward_test_support::k8s::{ApiServer, StartOptions};

use crate::process::{free_port, Proc};
use crate::procstat;
use crate::push;

/// Namespaces the objects are spread over.
const NAMESPACES: usize = 10;
/// Fake nodes the pods are bound to.
const NODES: usize = 10;
/// Requests to the API server in flight while filling it.
const IN_FLIGHT: usize = 16;
const READY_LIMIT: Duration = Duration::from_secs(1800);
const CONNECT_LIMIT: Duration = Duration::from_secs(600);
/// Proxies connecting at once (see `simulate`).
const CONNECTING: usize = 32;
/// How long a connecting proxy holds its slot waiting for its first config.
const FIRST_CONFIG_WAIT: Duration = Duration::from_secs(60);
const CHANGE_LIMIT: Duration = Duration::from_secs(300);

/// The sizes of one run.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Sizes {
    pub(crate) pods: usize,
    pub(crate) services: usize,
    pub(crate) policies: usize,
    pub(crate) proxies: usize,
    pub(crate) changes: usize,
}

#[derive(Debug, Serialize)]
struct Change {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The control plane's CPU time (user + system) from the patch until every proxy had it,
    /// ms: rendering, loading, translating and pushing the change.
    cpu_ms: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    schema: &'static str,
    date: String,
    ward_binary: String,
    sizes: Sizes,
    /// Objects Ward watches that the run created (pods, services, slices, policies).
    objects: usize,
    /// Filling the API server, s.
    fill_s: f64,
    /// The control plane on the empty cluster (CRDs, namespaces): ready after, s; RSS, KiB.
    empty_ready_s: f64,
    empty_rss_kib: u64,
    /// With every object: ready after, s; RSS once ready, KiB; per object, bytes.
    ready_s: f64,
    rss_ready_kib: u64,
    rss_per_object_bytes: f64,
    /// With the proxies connected.
    connect_s: f64,
    rss_connected_kib: u64,
    /// The API server's and etcd's RSS at the end, KiB.
    apiserver_rss_kib: u64,
    etcd_rss_kib: u64,
    changes: Vec<Change>,
}

/// Runs the scale simulation with `sizes`; writes k8s-scale.json and k8s-scale.md into `out`.
pub(crate) fn run(ward: &Path, sizes: Sizes, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        sizes.proxies <= sizes.pods,
        "--proxies must not exceed --pods"
    );
    anyhow::ensure!(
        sizes.services > 0
            && sizes.services <= sizes.pods
            && sizes.services.is_multiple_of(NAMESPACES),
        "--services must be a multiple of {NAMESPACES}, at most --pods"
    );
    anyhow::ensure!(
        sizes.policies <= sizes.services,
        "--policies must not exceed --services (one per service at most)"
    );
    let k8s = ward_test_support::k8s::shared_k8s();
    if !k8s.join("start.sh").exists() {
        bail!("{} is absent: no API server to run against", k8s.display());
    }
    push::raise_nofile();
    let tmp = tempfile::tempdir()?;
    eprintln!("ward-bench k8s-scale: starting the API server");
    // 2,000 Services need more cluster IPs than start.sh's /24.
    let api = ApiServer::try_start(
        &tmp.path().join("k8s"),
        &StartOptions {
            extra_args: Some("--service-cluster-ip-range=10.96.0.0/16".into()),
            ports: None,
        },
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let results = rt.block_on(simulate(ward, &api, tmp.path(), sizes))?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(
        out.join("k8s-scale.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    let md = markdown(&results);
    std::fs::write(out.join("k8s-scale.md"), &md)?;
    println!("{md}");
    Ok(())
}

fn kubectl(api: &ApiServer, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let (ok, text) = api.kubectl(args, stdin);
    anyhow::ensure!(ok, "kubectl {args:?}: {text}");
    Ok(text)
}

async fn simulate(
    ward: &Path,
    api: &ApiServer,
    dir: &Path,
    sizes: Sizes,
) -> anyhow::Result<Results> {
    // The Istio CRDs Ward reads, from Ward itself; the namespaces.
    let crds = Command::new(ward).args(["install", "crds"]).output()?;
    anyhow::ensure!(crds.status.success(), "ward install crds failed");
    kubectl(
        api,
        &["apply", "-f", "-"],
        Some(&String::from_utf8(crds.stdout)?),
    )?;
    kubectl(
        api,
        &[
            "wait",
            "--for",
            "condition=established",
            "crd",
            "--all",
            "--timeout=120s",
        ],
        None,
    )?;
    let client = ward_kube_client(&api.kubeconfig).await?;
    let mut basics = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}),
    ];
    for k in 0..NAMESPACES {
        basics.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns{k}")}}));
    }
    for n in 0..NODES {
        basics.push(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{n}")}}),
        );
    }
    basics.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": "trustDomain: cluster.local\nrootNamespace: istio-system\n"}}));
    basics.push(
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "istio-system"},
        "spec": {"mtls": {"mode": "STRICT"}}}),
    );
    basics.push(mesh_policy(0));
    kubectl(
        api,
        &["apply", "-f", "-"],
        Some(&json!({"apiVersion": "v1", "kind": "List", "items": basics}).to_string()),
    )?;

    // The control plane on the empty cluster: the baseline.
    eprintln!("ward-bench k8s-scale: the control plane on the empty cluster");
    let (empty_ready_s, empty_rss_kib) = {
        let cp = ControlPlane::start(ward, api, &dir.join("empty"))?;
        let ready = cp.wait_ready().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        (ready, procstat::memory(cp.proc.pid())?.rss_kib)
    };

    eprintln!(
        "ward-bench k8s-scale: filling the API server: {} pods, {} services (+ EndpointSlices), {} policies",
        sizes.pods, sizes.services, sizes.policies
    );
    let filled = Instant::now();
    fill(&client, sizes).await?;
    let fill_s = filled.elapsed().as_secs_f64();
    eprintln!("ward-bench k8s-scale: filled in {fill_s:.0} s");
    let objects = sizes.pods + 2 * sizes.services + sizes.policies;

    eprintln!("ward-bench k8s-scale: the control plane on the full cluster");
    let cp = ControlPlane::start(ward, api, &dir.join("full"))?;
    let ready_s = cp.wait_ready().await?;
    eprintln!("ward-bench k8s-scale: ready after {ready_s:.1} s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_ready_kib = procstat::memory(cp.proc.pid())?.rss_kib;

    // The simulated proxies: the first `proxies` pods, with Ward bootstrap tokens.
    let workloads: Vec<(String, String)> = (0..sizes.proxies)
        .map(|i| {
            let (ns, sa) = (pod_namespace(i), service_of(i, sizes));
            (
                format!("{ns}/p{i}"),
                format!("spiffe://cluster.local/ns/{ns}/sa/sa{sa}"),
            )
        })
        .collect();
    let bundles = push::bundles_for(&cp.state, &cp.listen, &workloads)?;
    let receipts: push::Receipts = Arc::new(Mutex::new(vec![Vec::new(); sizes.proxies]));
    let (shutdown_tx, shutdown) = watch::channel(false);
    let started = Instant::now();
    // At most CONNECTING proxies between connecting and their first config: a thousand TLS
    // handshakes at once on a loaded machine outlast the control plane's handshake timeout
    // (crates/control/src/ca_grpc.rs), and the clients' backoff then spreads them over minutes.
    // A proxy whose first config has not come after FIRST_CONFIG_WAIT gives its slot up and
    // keeps retrying on its own (with backoff).
    let connecting = Arc::new(Semaphore::new(CONNECTING));
    for (i, bundle) in bundles.into_iter().enumerate() {
        let (slots, shutdown, receipts) = (connecting.clone(), shutdown.clone(), receipts.clone());
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            tokio::spawn(push::thin_proxy(i, bundle, receipts.clone(), shutdown));
            let no_config = || receipts.lock().map(|r| r[i].is_empty()).unwrap_or(false);
            let _ = tokio::time::timeout(FIRST_CONFIG_WAIT, async {
                while no_config() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
        });
    }
    push::wait_count(
        &receipts,
        |r| r.iter().filter(|v| !v.is_empty()).count(),
        sizes.proxies,
        CONNECT_LIMIT,
    )
    .await
    .context("connecting the proxies")?;
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected_kib = procstat::memory(cp.proc.pid())?.rss_kib;

    // Mesh-wide policy changes through the API server.
    let policies =
        Api::<DynamicObject>::namespaced_with(client.clone(), "istio-system", &authz_resource());
    let mut changes = Vec::new();
    let tick_hz = procstat::clock_ticks_per_second().max(1);
    for c in 1..=sizes.changes {
        let before: Vec<usize> = receipts
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .iter()
            .map(Vec::len)
            .collect();
        let cpu0 = procstat::stat(cp.proc.pid())?.cpu_ticks;
        let t0 = Instant::now();
        policies
            .patch(
                "deny-retired",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": mesh_policy(c)["spec"]})),
            )
            .await
            .context("patching the mesh-wide policy")?;
        let counted = before.clone();
        push::wait_count(
            &receipts,
            move |r| {
                r.iter()
                    .zip(&counted)
                    .filter(|(v, b)| v.len() > **b)
                    .count()
            },
            sizes.proxies,
            CHANGE_LIMIT,
        )
        .await
        .with_context(|| format!("change {c}"))?;
        let cpu_ticks = procstat::stat(cp.proc.pid())?
            .cpu_ticks
            .saturating_sub(cpu0);
        let mut ms: Vec<f64> = {
            let r = receipts.lock().map_err(|_| anyhow::anyhow!("lock"))?;
            r.iter()
                .zip(&before)
                .filter_map(|(v, b)| v.get(*b))
                .map(|t| t.saturating_duration_since(t0).as_secs_f64() * 1000.0)
                .collect()
        };
        ms.sort_by(f64::total_cmp);
        let change = Change {
            p50_ms: push::quantile(&ms, 0.50),
            p99_ms: push::quantile(&ms, 0.99),
            max_ms: ms.last().copied().unwrap_or(0.0),
            cpu_ms: cpu_ticks as f64 * 1000.0 / tick_hz as f64,
        };
        eprintln!("ward-bench k8s-scale: change {c}: {change:?}");
        changes.push(change);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = shutdown_tx.send(true);
    let pid_of = |file: &str| -> u64 {
        std::fs::read_to_string(api.dir.join(file))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .and_then(|p| procstat::memory(p).ok())
            .map_or(0, |m| m.rss_kib)
    };
    let (apiserver_rss_kib, etcd_rss_kib) = (pid_of("apiserver.pid"), pid_of("etcd.pid"));
    drop(cp);
    Ok(Results {
        schema: "ward-bench-k8s-scale/1",
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        ward_binary: ward.display().to_string(),
        sizes,
        objects,
        fill_s,
        empty_ready_s,
        empty_rss_kib,
        ready_s,
        rss_ready_kib,
        rss_per_object_bytes: rss_ready_kib.saturating_sub(empty_rss_kib) as f64 * 1024.0
            / objects.max(1) as f64,
        connect_s,
        rss_connected_kib,
        apiserver_rss_kib,
        etcd_rss_kib,
        changes,
    })
}

async fn ward_kube_client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let file = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

fn pod_namespace(i: usize) -> String {
    format!("ns{}", i % NAMESPACES)
}

/// The service pod `i` belongs to (and the ServiceAccount it runs as): services take pods in
/// turn within a namespace, so service `s` lives in namespace `s % NAMESPACES` like its pods.
fn service_of(i: usize, sizes: Sizes) -> usize {
    i % sizes.services
}

/// Pod `i`'s address: data only (nothing is sent there).
fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 128 + (i >> 16), (i >> 8) & 0xff, i & 0xff)
}

/// The mesh-wide DENY policy in the root namespace; `version` changes every proxy's config.
fn mesh_policy(version: usize) -> serde_json::Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": "deny-retired", "namespace": "istio-system"},
           "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principals": [
               format!("cluster.local/ns/retired/sa/v{version}")]}}]}]}})
}

fn authz_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("security.istio.io", "v1", "AuthorizationPolicy"),
        "authorizationpolicies",
    )
}

/// Creates everything, `IN_FLIGHT` requests at a time.
async fn fill(client: &kube::Client, sizes: Sizes) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let spawn = |tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
                 f: std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>,
    >| {
        let slots = slots.clone();
        tasks.spawn(async move {
            let _permit = slots.acquire_owned().await?;
            f.await
        });
    };
    let pp = PostParams::default();
    // ServiceAccounts (one per service; the API server refuses a pod whose account is
    // missing) and Services with a selector.
    for s in 0..sizes.services {
        let ns = pod_namespace(s);
        let (c, pp) = (client.clone(), pp.clone());
        spawn(
            &mut tasks,
            Box::pin(async move {
                let sa: ServiceAccount = serde_json::from_value(
                    json!({"metadata": {"name": format!("sa{s}"), "namespace": ns}}),
                )?;
                Api::<ServiceAccount>::namespaced(c.clone(), &ns)
                    .create(&pp, &sa)
                    .await?;
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("svc{s}"), "namespace": ns},
                    "spec": {"selector": {"app": format!("svc{s}")}, "ports": [
                        {"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"},
                        {"name": "grpc-api", "port": 9090, "targetPort": 9090, "protocol": "TCP"}]}}))?;
                Api::<Service>::namespaced(c, &ns).create(&pp, &svc).await?;
                Ok(())
            }),
        );
    }
    drain(&mut tasks, "services").await?;
    // Pods: created bound to a node, then marked Running with an address.
    for i in 0..sizes.pods {
        let (ns, s) = (pod_namespace(i), service_of(i, sizes));
        let (c, pp) = (client.clone(), pp.clone());
        spawn(
            &mut tasks,
            Box::pin(async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("p{i}"), "namespace": ns,
                                 "labels": {"app": format!("svc{s}"), "version": "v1"}},
                    "spec": {"nodeName": format!("node-{}", i % NODES),
                             "serviceAccountName": format!("sa{s}"),
                             "automountServiceAccountToken": false,
                             "containers": [{"name": "app", "image": "example.invalid/app",
                                             "ports": [{"containerPort": 8080}]}]}}))?;
                let api = Api::<Pod>::namespaced(c, &ns);
                api.create(&pp, &pod).await?;
                let ip = pod_ip(i);
                api.patch_status(
                    &format!("p{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip,
                        "podIPs": [{"ip": ip}],
                        "conditions": [{"type": "Ready", "status": "True"}]}})),
                )
                .await?;
                Ok(())
            }),
        );
    }
    drain(&mut tasks, "pods").await?;
    // EndpointSlices, as the EndpointSlice controller writes them for each Service.
    for s in 0..sizes.services {
        let ns = pod_namespace(s);
        let (c, pp) = (client.clone(), pp.clone());
        let members: Vec<usize> = (s..sizes.pods).step_by(sizes.services).collect();
        spawn(
            &mut tasks,
            Box::pin(async move {
                let endpoints: Vec<serde_json::Value> = members
                    .iter()
                    .map(|i| {
                        json!({"addresses": [pod_ip(*i)], "conditions": {"ready": true},
                                    "nodeName": format!("node-{}", i % NODES),
                                    "targetRef": {"kind": "Pod", "namespace": pod_namespace(*i),
                                                  "name": format!("p{i}")}})
                    })
                    .collect();
                let slice: EndpointSlice = serde_json::from_value(json!({
                    "metadata": {"name": format!("svc{s}-1"), "namespace": ns,
                                 "labels": {"kubernetes.io/service-name": format!("svc{s}"),
                                            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
                    "addressType": "IPv4",
                    "endpoints": endpoints,
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                              {"name": "grpc-api", "port": 9090, "protocol": "TCP"}]}))?;
                Api::<EndpointSlice>::namespaced(c, &ns)
                    .create(&pp, &slice)
                    .await?;
                Ok(())
            }),
        );
    }
    drain(&mut tasks, "endpoint slices").await?;
    // AuthorizationPolicies: one per service for the first `policies` services, each letting
    // in the next service's account and GETs from its namespace.
    let resource = authz_resource();
    for j in 0..sizes.policies {
        let ns = pod_namespace(j);
        let next = (j + 1) % sizes.services;
        let (c, pp, resource) = (client.clone(), pp.clone(), resource.clone());
        spawn(
            &mut tasks,
            Box::pin(async move {
                let mut obj: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": format!("ap{j}"), "namespace": ns},
                    "spec": {"selector": {"matchLabels": {"app": format!("svc{j}")}},
                             "action": "ALLOW",
                             "rules": [
                                {"from": [{"source": {"principals": [format!(
                                    "cluster.local/ns/{}/sa/sa{next}", pod_namespace(next))]}}]},
                                {"from": [{"source": {"namespaces": [ns.clone()]}}],
                                 "to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"]}}]}]}}))?;
                obj.types = Some(kube::api::TypeMeta {
                    api_version: "security.istio.io/v1".into(),
                    kind: "AuthorizationPolicy".into(),
                });
                Api::<DynamicObject>::namespaced_with(c, &ns, &resource)
                    .create(&pp, &obj)
                    .await?;
                Ok(())
            }),
        );
    }
    drain(&mut tasks, "policies").await?;
    Ok(())
}

async fn drain(
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    what: &str,
) -> anyhow::Result<()> {
    while let Some(r) = tasks.join_next().await {
        r.with_context(|| format!("creating {what}"))?
            .with_context(|| format!("creating {what}"))?;
    }
    Ok(())
}

/// One `ward control-plane --kubernetes`, stopped on drop.
struct ControlPlane {
    proc: Proc,
    admin: String,
    listen: String,
    state: PathBuf,
    started: Instant,
}

impl ControlPlane {
    fn start(ward: &Path, api: &ApiServer, dir: &Path) -> anyhow::Result<ControlPlane> {
        std::fs::create_dir_all(dir)?;
        let state = dir.join("state");
        let listen = format!("127.0.0.1:{}", free_port()?);
        let admin = format!("127.0.0.1:{}", free_port()?);
        let webhooks = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(ward);
        cmd.args(["control-plane", "--kubernetes", "--kubeconfig"])
            .arg(&api.kubeconfig)
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", &listen, "--admin", &admin])
            .args(["--webhook-listen", &webhooks])
            .args(["--max-connections", "100000"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("cp.log"))?);
        let started = Instant::now();
        let proc = Proc::spawn("ward control-plane", &mut cmd)?;
        Ok(ControlPlane {
            proc,
            admin,
            listen,
            state,
            started,
        })
    }

    /// Waits for `/ready`; seconds since the start.
    async fn wait_ready(&self) -> anyhow::Result<f64> {
        while self.started.elapsed() < READY_LIMIT {
            if let Ok((200, _)) = push::get(&self.admin, "/ready").await {
                return Ok(self.started.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the control plane was not ready after {READY_LIMIT:?}")
    }
}

fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let mib = |k: u64| k as f64 / 1024.0;
    let _ = writeln!(
        md,
        "# Kubernetes scale simulation\n\n{} — `{}`, the real kube-apiserver and etcd of `../shared/k8s`.\n",
        r.date, r.ward_binary
    );
    let _ = writeln!(
        md,
        "Cluster: {} Pods (Running, bound to fake Nodes), {} Services + {} EndpointSlices, {} AuthorizationPolicies over {} namespaces ({} objects; created in {:.0} s).\n",
        r.sizes.pods, r.sizes.services, r.sizes.services, r.sizes.policies, NAMESPACES, r.objects, r.fill_s
    );
    let _ = writeln!(md, "| | empty cluster | full cluster |\n|---|---:|---:|");
    let _ = writeln!(
        md,
        "| time to first ready (s) | {:.1} | {:.1} |",
        r.empty_ready_s, r.ready_s
    );
    let _ = writeln!(
        md,
        "| control plane RSS once ready (MiB) | {:.1} | {:.1} |",
        mib(r.empty_rss_kib),
        mib(r.rss_ready_kib)
    );
    let _ = writeln!(
        md,
        "\nRSS per object: {:.0} bytes. With {} simulated proxies connected (in {:.1} s): {:.1} MiB. API server {:.0} MiB, etcd {:.0} MiB at the end.\n",
        r.rss_per_object_bytes,
        r.sizes.proxies,
        r.connect_s,
        mib(r.rss_connected_kib),
        mib(r.apiserver_rss_kib),
        mib(r.etcd_rss_kib)
    );
    let _ = writeln!(
        md,
        "A mesh-wide AuthorizationPolicy patched through the API server, to each of the {} simulated proxies receiving it (includes the control plane's debounce, a 10 ms quiet window; the simulated proxies acknowledge each version without decoding it, as a proxy on its own node would decode it in parallel with the others):\n\n| change | p50 (ms) | p99 (ms) | max (ms) | control-plane CPU (ms) |\n|---:|---:|---:|---:|---:|",
        r.sizes.proxies
    );
    for (i, c) in r.changes.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            i + 1,
            c.p50_ms,
            c.p99_ms,
            c.max_ms,
            c.cpu_ms
        );
    }
    md
}

/// Where `ward-bench k8s-scale` writes by default.
pub(crate) fn default_out(day: &str) -> PathBuf {
    Path::new("bench/results").join(format!("{day}-k8s-scale"))
}
