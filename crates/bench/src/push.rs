//! `ward-bench push`: one `ward control-plane` and N simulated proxies on loopback, each a real
//! config stream client (`ward_control::config_client`, the code `ward proxy` runs) on its own
//! TLS connection. It measures the control plane's resident memory per connected proxy, and for
//! one-policy changes (one namespace's policy; a mesh-wide policy) the time from the file write
//! to each affected proxy applying the change, and the bytes sent.
//!
//! Traffic stays on 127.0.0.1; every wait is bounded.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::sync::watch;
use ward_control::bootstrap::{audience_of_root, BootstrapFile, TokenKey};
use ward_control::config_client::{CertSlot, ConfigClient};
use ward_control::push::Assembled;

use crate::process::{free_port, Proc};
use crate::procstat;

/// Namespaces the simulated workloads are spread over.
const NAMESPACES: usize = 10;
/// Longest wait for all proxies to connect, or for one change to reach them.
const CONNECT_LIMIT: Duration = Duration::from_secs(180);
const CHANGE_LIMIT: Duration = Duration::from_secs(60);

/// One kind of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum ChangeKind {
    /// The AuthorizationPolicy of namespace `ns0`: its workloads' `authz` section.
    NamespacePolicy,
    /// An AuthorizationPolicy in the root namespace: every proxy's `authz` section.
    MeshPolicy,
    /// A new WorkloadEntry (no simulated proxy connects for it) in `ns0`, behind its service: one part of
    /// every proxy's mesh directory and one part of every service table.
    WorkloadAdded,
}

/// What one change cost.
#[derive(Debug, Serialize)]
struct ChangeResult {
    kind: ChangeKind,
    /// Proxies whose config changed.
    affected: usize,
    /// Proxies that received something they should not have.
    unaffected_received: usize,
    /// File write to each affected proxy applying it, ms.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Bytes the control plane sent for the change (protobuf, all proxies).
    bytes: u64,
}

/// The figures for one fleet size.
#[derive(Debug, Serialize)]
struct FleetResult {
    proxies: usize,
    /// Time for every proxy to connect and apply its first config, s.
    connect_s: f64,
    /// Control plane VmRSS before any proxy connected and with all connected, KiB.
    rss_before_kib: u64,
    rss_after_kib: u64,
    /// (after - before) / proxies, KiB.
    rss_per_proxy_kib: f64,
    /// Bytes of every first (full) config, per proxy.
    full_bytes_per_proxy: f64,
    changes: Vec<ChangeResult>,
}

/// The whole run.
#[derive(Debug, Serialize)]
struct PushResults {
    schema: &'static str,
    date: String,
    ward_binary: String,
    poll_interval_ms: u64,
    fleets: Vec<FleetResult>,
}

/// Runs the push benchmark for each fleet size in `sizes`, `changes` changes each, and writes
/// `push.json` and `push.md` into `out`.
pub(crate) fn run(ward: &Path, sizes: &[usize], changes: usize, out: &Path) -> anyhow::Result<()> {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let mut fleets = Vec::new();
    for &n in sizes {
        eprintln!("ward-bench push: {n} proxies");
        fleets.push(rt.block_on(fleet(ward, n, changes))?);
    }
    let results = PushResults {
        schema: "ward-bench-push/1",
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        ward_binary: ward.display().to_string(),
        poll_interval_ms: POLL.as_millis() as u64,
        fleets,
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("push.json"), serde_json::to_vec_pretty(&results)?)?;
    let md = markdown(&results);
    std::fs::write(out.join("push.md"), &md)?;
    println!("{md}");
    Ok(())
}

/// How often the control plane polls its files in the benchmark (settle: 0).
const POLL: Duration = Duration::from_millis(10);

/// The mesh: `n` WorkloadEntries spread over [`NAMESPACES`] namespaces, a ServiceEntry per
/// namespace, STRICT mTLS, and an ALLOW policy per namespace (`version` is written into ns0's,
/// so bumping it changes that namespace's workloads only). `mesh_version` adds a mesh-wide
/// DENY policy in the root namespace whose value changes every proxy. `added` more workloads
/// join `ns0` (addresses 10.255.x.y); no simulated proxy connects for them.
fn mesh_yaml(n: usize, ns0_version: usize, mesh_version: usize, added: usize) -> String {
    let mut y = String::from(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n",
    );
    for k in 0..NAMESPACES {
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc, namespace: ns{k}}}\nspec:\n  hosts: [svc.ns{k}.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 8080, name: http, protocol: HTTP}}]\n  workloadSelector: {{labels: {{tier: ns{k}}}}}\n"
        );
        let methods = if k == 0 {
            format!("[GET, HEAD, \"X-V{ns0_version}\"]")
        } else {
            "[GET, HEAD]".to_owned()
        };
        let _ = write!(
            y,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-ns, namespace: ns{k}}}\nspec:\n  rules:\n  - from: [{{source: {{namespaces: [ns{k}, ns{}]}}}}]\n    to: [{{operation: {{methods: {methods}}}}}]\n",
            (k + 1) % NAMESPACES
        );
    }
    let _ = write!(
        y,
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-retired, namespace: istio-system}}\nspec:\n  action: DENY\n  rules:\n  - from: [{{source: {{principals: [\"cluster.local/ns/retired/sa/v{mesh_version}\"]}}}}]\n"
    );
    for i in 0..n {
        let k = i % NAMESPACES;
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: w{i}, namespace: ns{k}}}\nspec:\n  address: 10.{}.{}.{}\n  serviceAccount: w{i}\n  labels: {{app: w{i}, tier: ns{k}}}\n",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        );
    }
    for j in 0..added {
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: added{j}, namespace: ns0}}\nspec:\n  address: 10.255.{}.{}\n  serviceAccount: added\n  labels: {{app: added{j}, tier: ns0}}\n",
            (j >> 8) & 0xff,
            j & 0xff
        );
    }
    y
}

/// Each simulated proxy's receipts: when its config changed, by proxy index.
pub(crate) type Receipts = Arc<Mutex<Vec<Vec<Instant>>>>;

async fn fleet(ward: &Path, n: usize, changes: usize) -> anyhow::Result<FleetResult> {
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("config");
    std::fs::create_dir_all(&config)?;
    let write = |ns0: usize, mesh: usize, added: usize| -> anyhow::Result<()> {
        let path = config.join("mesh.yaml");
        let staged = config.join(".mesh.yaml.tmp");
        std::fs::write(&staged, mesh_yaml(n, ns0, mesh, added))?;
        std::fs::rename(&staged, &path)?;
        Ok(())
    };
    write(0, 0, 0)?;
    let state = tmp.path().join("state");
    let listen = format!("127.0.0.1:{}", free_port()?);
    let admin = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = Command::new(ward);
    cmd.args(["control-plane", "-f"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen", &listen, "--admin", &admin])
        .args(["--poll-interval", "10ms", "--reload-settle", "0s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("cp.log"))?);
    let cp = Proc::spawn("ward control-plane", &mut cmd)?;
    wait_ready(&admin).await?;
    let rss_before = procstat::memory(cp.pid())?.rss_kib;

    let bundles = bundles(&state, &listen, n)?;
    let receipts: Receipts = Arc::new(Mutex::new(vec![Vec::new(); n]));
    let (shutdown_tx, shutdown) = watch::channel(false);
    let started = Instant::now();
    for (i, bundle) in bundles.into_iter().enumerate() {
        let (tx, rx) = watch::channel::<Option<Arc<Assembled>>>(None);
        let client = ConfigClient::new(Arc::new(bundle), CertSlot::default(), "bench".into(), tx);
        tokio::spawn(client.run(shutdown.clone()));
        tokio::spawn(record(i, rx, receipts.clone()));
    }
    wait_count(
        &receipts,
        |r| r.iter().filter(|v| !v.is_empty()).count(),
        n,
        CONNECT_LIMIT,
    )
    .await
    .context("connecting the proxies")?;
    let connect_s = started.elapsed().as_secs_f64();
    // Let allocations settle before reading the resident set.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = procstat::memory(cp.pid())?.rss_kib;
    let full_bytes = metric(&admin, "ward_config_response_bytes_total").await?;

    let mut results = Vec::new();
    let (mut ns0, mut mesh, mut added) = (0, 0, 0);
    for c in 0..changes {
        let kind = match c % 3 {
            0 => ChangeKind::NamespacePolicy,
            1 => ChangeKind::MeshPolicy,
            _ => ChangeKind::WorkloadAdded,
        };
        let affected: Vec<usize> = match kind {
            ChangeKind::NamespacePolicy => (0..n).filter(|i| i % NAMESPACES == 0).collect(),
            ChangeKind::MeshPolicy | ChangeKind::WorkloadAdded => (0..n).collect(),
        };
        let before: Vec<usize> = receipts
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .iter()
            .map(Vec::len)
            .collect();
        let bytes_before = metric(&admin, "ward_config_response_bytes_total").await?;
        match kind {
            ChangeKind::NamespacePolicy => ns0 += 1,
            ChangeKind::MeshPolicy => mesh += 1,
            ChangeKind::WorkloadAdded => added += 1,
        }
        let t0 = Instant::now();
        write(ns0, mesh, added)?;
        let want = affected.len();
        let counted = before.clone();
        wait_count(
            &receipts,
            move |r| {
                r.iter()
                    .zip(&counted)
                    .filter(|(v, b)| v.len() > **b)
                    .count()
            },
            want,
            CHANGE_LIMIT,
        )
        .await
        .with_context(|| format!("change {c} ({kind:?})"))?;
        // Give a stray push to an unaffected proxy time to show.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let bytes = metric(&admin, "ward_config_response_bytes_total").await? - bytes_before;
        let (mut ms, mut stray) = (Vec::new(), 0);
        {
            let r = receipts.lock().map_err(|_| anyhow::anyhow!("lock"))?;
            for (i, (v, b)) in r.iter().zip(&before).enumerate() {
                if v.len() > *b {
                    if affected.binary_search(&i).is_ok() {
                        ms.push(v[*b].saturating_duration_since(t0).as_secs_f64() * 1000.0);
                    } else {
                        stray += 1;
                    }
                }
            }
        }
        ms.sort_by(f64::total_cmp);
        results.push(ChangeResult {
            kind,
            affected: want,
            unaffected_received: stray,
            p50_ms: quantile(&ms, 0.50),
            p99_ms: quantile(&ms, 0.99),
            max_ms: ms.last().copied().unwrap_or(0.0),
            bytes: bytes as u64,
        });
        eprintln!(
            "ward-bench push: {n} proxies, change {c}: {:?}",
            results.last()
        );
    }
    let _ = shutdown_tx.send(true);
    drop(cp);
    Ok(FleetResult {
        proxies: n,
        connect_s,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_per_proxy_kib: rss_after.saturating_sub(rss_before) as f64 / n as f64,
        full_bytes_per_proxy: full_bytes / n as f64,
        changes: results,
    })
}

/// Records when proxy `i`'s config changes.
pub(crate) async fn record(
    i: usize,
    mut rx: watch::Receiver<Option<Arc<Assembled>>>,
    receipts: Receipts,
) {
    while rx.changed().await.is_ok() {
        let now = Instant::now();
        if let Ok(mut r) = receipts.lock() {
            if let Some(v) = r.get_mut(i) {
                v.push(now);
            }
        }
    }
}

/// A simulated proxy that speaks the config stream like `ward proxy` (its bootstrap token, the
/// control plane's identity checked, each response acknowledged with its version and nonce)
/// but keeps nothing of what it receives: it records when each new version arrived. At
/// Kubernetes scale a proxy's decoded config is tens of MB, and a real proxy decodes it on its
/// own node; a thousand decoded copies would not fit in the bench machine's memory. Reconnects
/// (with nothing held, so the control plane sends everything again) until `shutdown`.
pub(crate) async fn thin_proxy(
    i: usize,
    bundle: BootstrapFile,
    receipts: Receipts,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        tokio::select! {
            r = thin_session(i, &bundle, &receipts) => if r.is_ok() {
                delay = Duration::from_millis(200);
            },
            _ = shutdown.wait_for(|s| *s) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn thin_session(i: usize, bundle: &BootstrapFile, receipts: &Receipts) -> anyhow::Result<()> {
    use ward_wire::ward::config::v1::proxy_config_service_client::ProxyConfigServiceClient;
    use ward_wire::ward::config::v1::ConfigRequest;

    let tls = ward_control::ca_client::tls_config(bundle, None)?;
    let channel = ward_control::ca_client::connect(&bundle.control_plane, tls, None).await?;
    let mut client = ProxyConfigServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ConfigRequest {
        workload: bundle.workload.clone(),
        proxy_version: "ward-bench".into(),
        ..Default::default()
    })
    .await?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", ward_control::ca_client::bearer(bundle)?);
    let mut responses = client.stream_config(request).await?.into_inner();
    let mut version = String::new();
    while let Some(response) = responses.message().await? {
        if response.version_info != version {
            let now = Instant::now();
            if let Some(v) = receipts.lock().ok().as_mut().and_then(|r| r.get_mut(i)) {
                v.push(now);
            }
            version.clone_from(&response.version_info);
        }
        tx.send(ConfigRequest {
            version_info: response.version_info,
            response_nonce: response.nonce,
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}

pub(crate) async fn wait_count(
    receipts: &Receipts,
    count: impl Fn(&[Vec<Instant>]) -> usize,
    want: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let got = receipts.lock().map(|r| count(&r)).unwrap_or(0);
        if got >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{got} of {want} proxies after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A bootstrap file per workload, signed with the control plane's own token key.
fn bundles(state: &Path, listen: &str, n: usize) -> anyhow::Result<Vec<BootstrapFile>> {
    let workloads: Vec<(String, String)> = (0..n)
        .map(|i| {
            let ns = i % NAMESPACES;
            (
                format!("ns{ns}/w{i}"),
                format!("spiffe://cluster.local/ns/ns{ns}/sa/w{i}"),
            )
        })
        .collect();
    bundles_for(state, listen, &workloads)
}

/// A bootstrap file for each (workload, identity), signed with the control plane's own token
/// key (under `state`), for the control plane at `listen`.
pub(crate) fn bundles_for(
    state: &Path,
    listen: &str,
    workloads: &[(String, String)],
) -> anyhow::Result<Vec<BootstrapFile>> {
    let root_pem = std::fs::read_to_string(state.join("ca/root-cert.pem"))
        .context("reading the control plane's root")?;
    let root_der = pem_der(&root_pem)?;
    let tokens = TokenKey::load_or_create(state)?;
    let audience = audience_of_root(&root_der);
    let now = SystemTime::now();
    workloads
        .iter()
        .map(|(workload, identity)| {
            Ok(BootstrapFile {
                control_plane: listen.to_owned(),
                control_plane_identity:
                    "spiffe://cluster.local/ns/istio-system/sa/ward-control-plane".into(),
                identity: identity.clone(),
                root_cert: root_pem.clone(),
                token: tokens.issue(workload, &audience, now, Duration::from_secs(3600))?,
                expires: 0,
                workload: workload.clone(),
            })
        })
        .collect()
}

fn pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

async fn wait_ready(admin: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok((200, _)) = get(admin, "/ready").await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the control plane at {admin} was not ready after 60 s")
}

/// Sum of a metric's samples on the control plane's `/metrics`.
async fn metric(admin: &str, name: &str) -> anyhow::Result<f64> {
    let (_, body) = get(admin, "/metrics").await?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

pub(crate) async fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// The soft open-file limit raised to the hard one: each simulated proxy holds a socket.
pub(crate) fn raise_nofile() {
    if let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(limit),
                maximum: Some(limit),
            },
        );
    }
}

fn markdown(r: &PushResults) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Config push: one control plane, simulated proxies\n\n{} — `{}`; the control plane polls its files every {} ms, so each latency includes up to one poll.\n",
        r.date, r.ward_binary, r.poll_interval_ms
    );
    let _ = writeln!(
        md,
        "| proxies | connect (s) | CP RSS before → after (MiB) | RSS per proxy (KiB) | full config per proxy (bytes) |\n|---:|---:|---:|---:|---:|"
    );
    for f in &r.fleets {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} → {:.1} | {:.1} | {:.0} |",
            f.proxies,
            f.connect_s,
            f.rss_before_kib as f64 / 1024.0,
            f.rss_after_kib as f64 / 1024.0,
            f.rss_per_proxy_kib,
            f.full_bytes_per_proxy
        );
    }
    let _ = writeln!(
        md,
        "\n| proxies | change | affected | others sent anything | p50 (ms) | p99 (ms) | max (ms) | bytes sent |\n|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for f in &r.fleets {
        for c in &f.changes {
            let kind = match c.kind {
                ChangeKind::NamespacePolicy => "one namespace's policy",
                ChangeKind::MeshPolicy => "a mesh-wide policy",
                ChangeKind::WorkloadAdded => "a workload added",
            };
            let _ = writeln!(
                md,
                "| {} | {kind} | {} | {} | {:.1} | {:.1} | {:.1} | {} |",
                f.proxies, c.affected, c.unaffected_received, c.p50_ms, c.p99_ms, c.max_ms, c.bytes
            );
        }
    }
    md
}

/// Where `ward-bench push` writes by default.
pub(crate) fn default_out(day: &str) -> PathBuf {
    Path::new("bench/results").join(format!("{day}-push"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_mesh_loads_and_a_namespace_change_touches_only_that_namespace() {
        let proxies = |ns0, mesh, added| {
            let yaml = mesh_yaml(30, ns0, mesh, added);
            let set = ward_config::load_str("mesh.yaml", &yaml).unwrap();
            ward_config::translate(&set).unwrap().proxies
        };
        let (a, b, c) = (proxies(0, 0, 0), proxies(1, 0, 0), proxies(1, 1, 0));
        assert_eq!(a.len(), 30);
        let changed = |x: &BTreeMap<String, ward_config::ProxyConfig>,
                       y: &BTreeMap<String, ward_config::ProxyConfig>| {
            x.iter().filter(|(k, v)| y[*k] != **v).count()
        };
        assert_eq!(changed(&a, &b), 3, "ns0 holds every tenth workload");
        assert_eq!(
            changed(&b, &c),
            30,
            "the mesh-wide policy concerns everyone"
        );
        // An added workload (no simulated proxy connects for it) is in everyone's directory.
        let d = proxies(1, 1, 1);
        assert_eq!(d.len(), 31);
        assert!(d
            .values()
            .all(|p| p.directory.workload("ns0/added0").is_some()));
    }

    #[test]
    fn quantiles_pick_from_the_sorted_samples() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 51.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
