//! `ward up`: the CA, the control plane and one sidecar per WorkloadEntry in one process.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use ward_config::DemoApp;
use ward_control::{CaService, ControlPlane, ReloadTiming};
use ward_identity::{IssuedCert, SpiffeId};
use ward_policy::duration::{self, Grammar};
use ward_proxy::capture;
use ward_proxy::listener::{Admission, FdBudget, Limits};
use ward_proxy::{
    CertificateProvider, MeshIdentity, Metrics, OwnListener, Sidecar, SidecarHandle, SignError,
};

use crate::admin::{self, AdminState};
use crate::fdlimit::NofileLimit;

/// Options of `ward up`.
#[derive(clap::Args)]
pub(crate) struct UpArgs {
    /// Files or directories of Istio YAML (WorkloadEntry, ServiceEntry, Sidecar,
    /// PeerAuthentication, AuthorizationPolicy, mesh settings).
    #[arg(
        short = 'f',
        long = "filename",
        required_unless_present = "uninstall_capture"
    )]
    paths: Vec<PathBuf>,
    /// Where the CA keeps its root (created on first start).
    #[arg(long, default_value = "./.ward")]
    state_dir: PathBuf,
    /// Where the sidecars write their audit trails, `<DIR>/<namespace>/<name>/` (docs/audit.md).
    /// Default: `<state-dir>/audit`.
    #[arg(long, value_name = "DIR")]
    audit_dir: Option<PathBuf>,
    /// Write no audit trail at all (benchmarks, development; docs/audit.md). Also from the
    /// environment (`WARD_NO_AUDIT=true`), so a harness can turn it off for the processes it
    /// starts.
    #[arg(long, env = "WARD_NO_AUDIT", conflicts_with = "audit_dir")]
    no_audit: bool,
    /// Use Istio's `cacerts` layout from this directory instead of Ward's own root.
    #[arg(long)]
    cacerts: Option<PathBuf>,
    /// Admin HTTP address (/ready, /config_dump, /certs, /metrics).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Workload certificate lifetime, e.g. `24h`, `30m`, `90s`.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// How often the config files are checked for changes.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    poll_interval: Duration,
    /// How long changed config files must keep the same bytes before the change applies, so
    /// that a file caught while it is being rewritten in place never applies half-written.
    /// `0s` applies the first read of every change.
    #[arg(long, default_value = "300ms", value_parser = parse_settle)]
    reload_settle: Duration,
    /// Run sidecars only for these WorkloadEntries (`namespace/name`, comma-separated or
    /// repeated); the others are reached over the network. For a mesh across several hosts or
    /// network namespaces: every host runs `ward up` on the same YAML and the same CA
    /// (`--cacerts`, or a copy of `--state-dir`), each naming its own workloads. Default: all.
    #[arg(long, value_delimiter = ',', value_name = "NAMESPACE/NAME")]
    workloads: Vec<String>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    capture: CaptureArgs,
}

/// The listener caps, shared by `ward up` and `ward proxy`.
#[derive(clap::Args)]
pub(crate) struct LimitArgs {
    /// Open connections one sidecar listener may hold (HBONE, a service port, an egress
    /// listener); never more than half the process's connection budget, which the open-file
    /// limit sets (docs/security.md, "Connection limits").
    #[arg(long, value_name = "N", value_parser = parse_cap,
          default_value_t = Limits::default().connections_per_listener)]
    max_connections_per_listener: usize,
    /// Open connections one source address may hold on one inbound listener (HBONE or a
    /// service port).
    #[arg(long, value_name = "N", value_parser = parse_cap,
          default_value_t = Limits::default().connections_per_source)]
    max_connections_per_source: usize,
    /// Connections still in their TLS handshake on one HBONE listener.
    #[arg(long, value_name = "N", value_parser = parse_cap,
          default_value_t = Limits::default().handshakes_per_listener)]
    max_handshakes_per_listener: usize,
    /// Connections still in their TLS handshake from one source address on one HBONE listener.
    #[arg(long, value_name = "N", value_parser = parse_cap,
          default_value_t = Limits::default().handshakes_per_source)]
    max_handshakes_per_source: usize,
}

/// Transparent capture, shared by `ward up` and `ward proxy` (docs/capture.md).
#[derive(clap::Args)]
pub(crate) struct CaptureArgs {
    /// Capture the hosted workload's TCP traffic transparently with iptables (root, in the
    /// workload's network namespace; under `ward up`, exactly one workload in `--workloads`): outbound to
    /// 127.0.0.1:15001, inbound to port 15006. The rules are removed on SIGINT/SIGTERM
    /// (docs/capture.md).
    #[arg(long)]
    pub(crate) capture: bool,
    /// Remove the capture rules from this network namespace, and exit.
    #[arg(long, conflicts_with = "capture")]
    pub(crate) uninstall_capture: bool,
    /// Ports never captured, inbound or outbound (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "PORT", requires = "capture")]
    capture_exclude_ports: Vec<u16>,
    /// Inbound ports never captured (comma-separated; Istio's
    /// `traffic.sidecar.istio.io/excludeInboundPorts`).
    #[arg(long, value_delimiter = ',', value_name = "PORT", requires = "capture")]
    capture_exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports never captured (comma-separated; Istio's
    /// `traffic.sidecar.istio.io/excludeOutboundPorts`).
    #[arg(long, value_delimiter = ',', value_name = "PORT", requires = "capture")]
    capture_exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations never captured (CIDRs, comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "CIDR", requires = "capture")]
    capture_exclude_cidrs: Vec<ipnet::IpNet>,
    /// Outbound destinations captured (CIDRs, comma-separated); default: all.
    #[arg(long, value_delimiter = ',', value_name = "CIDR", requires = "capture")]
    capture_include_cidrs: Vec<ipnet::IpNet>,
    /// Also serve DNS on 127.0.0.1:15053 (mesh service names answered with their addresses,
    /// other names forwarded to /etc/resolv.conf's resolvers) and redirect the workload's DNS
    /// (port 53, UDP and TCP) there (docs/dns.md).
    #[arg(long, requires = "capture")]
    capture_dns: bool,
    /// The source address of health probes, whose inbound TCP reaches the app uncaptured
    /// (docs/capture.md, "Health probes"; Istio ambient uses 169.254.7.127). Default: none.
    #[arg(long, value_name = "IP", requires = "capture")]
    capture_probe_source: Option<std::net::IpAddr>,
    /// A user whose outbound traffic is never captured: the proxy's, when it runs as another
    /// user without `CAP_NET_ADMIN` beside rules installed by `ward proxy --capture-init`
    /// (injected pods: 1337, as Istio's).
    #[arg(long, value_name = "UID", requires = "capture")]
    capture_proxy_uid: Option<u32>,
}

impl CaptureArgs {
    /// The DNS proxy's settings under `--capture-dns`: the upstreams of /etc/resolv.conf, its
    /// forwarded queries marked so that the capture rules let them out.
    pub(crate) fn dns_settings(
        &self,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Option<ward_proxy::dns::Settings>> {
        if !self.capture_dns {
            return Ok(None);
        }
        let resolv = ward_proxy::dns::read_resolv_conf(std::path::Path::new("/etc/resolv.conf"))
            .context("--capture-dns: the upstream resolvers")?;
        Ok(Some(ward_proxy::dns::Settings {
            upstreams: resolv.nameservers,
            mark: Some(capture::SOCKET_MARK),
            limits: ward_proxy::dns::Limits::default(),
            metrics: metrics.clone(),
        }))
    }

    /// The rules' options; the admin port (on `admin`) is never captured.
    pub(crate) fn options(&self, admin: SocketAddr) -> capture::CaptureOptions {
        capture::CaptureOptions {
            exclude_ports: self.capture_exclude_ports.clone(),
            exclude_inbound_ports: self.capture_exclude_inbound_ports.clone(),
            exclude_outbound_ports: self.capture_exclude_outbound_ports.clone(),
            exclude_cidrs: self.capture_exclude_cidrs.clone(),
            include_cidrs: self.capture_include_cidrs.clone(),
            dns: self.capture_dns,
            admin_port: Some(admin.port()),
            probe_source: self.capture_probe_source,
            proxy_uid: self.capture_proxy_uid,
        }
    }
}

impl LimitArgs {
    /// The caps as the proxy crate takes them.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            connections_per_listener: self.max_connections_per_listener,
            connections_per_source: self.max_connections_per_source,
            handshakes_per_listener: self.max_handshakes_per_listener,
            handshakes_per_source: self.max_handshakes_per_source,
        }
    }
}

/// A connection cap: a whole number of at least 1.
fn parse_cap(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?}: expected a whole number of at least 1")),
    }
}

/// Which WorkloadEntries this process runs sidecars for.
#[derive(Clone, Debug, Default)]
pub(crate) struct Hosted(Option<BTreeSet<String>>);

impl Hosted {
    /// Checks each `namespace/name` is well formed and names a WorkloadEntry of `snap`.
    fn parse(names: &[String], snap: &ward_config::MeshSnapshot) -> anyhow::Result<Hosted> {
        if names.is_empty() {
            return Ok(Hosted(None));
        }
        let mut set = BTreeSet::new();
        for name in names {
            let well_formed = name
                .split_once('/')
                .is_some_and(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'));
            if !well_formed {
                anyhow::bail!("--workloads: {name:?} is not namespace/name");
            }
            if !snap.proxies.contains_key(name) {
                let known: Vec<&str> = snap.proxies.keys().map(String::as_str).collect();
                anyhow::bail!(
                    "--workloads: no WorkloadEntry {name} in the config (it has: {})",
                    known.join(", ")
                );
            }
            set.insert(name.clone());
        }
        Ok(Hosted(Some(set)))
    }

    /// How many workloads `--workloads` names; `None`: all of them.
    fn len(&self) -> Option<usize> {
        self.0.as_ref().map(BTreeSet::len)
    }

    /// Whether this process runs `key`'s sidecar.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.0.as_ref().is_none_or(|set| set.contains(key))
    }
}

/// A positive duration flag: `90s`, `15m`, `24h`, `500ms`, `2d`, `1m30s`, `90` (seconds); the
/// grammar is [`ward_policy::duration`]'s.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = duration::parse(s, Grammar::FLAGS).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

/// `--reload-settle`: a duration flag that may be zero (apply the first read of a change).
pub(crate) fn parse_settle(s: &str) -> Result<Duration, String> {
    duration::parse(s, Grammar::FLAGS).map_err(|e| e.to_string())
}

/// The in-process CA call of each sidecar.
struct LocalCa(Arc<CaService>);

impl CertificateProvider for LocalCa {
    fn sign(
        &self,
        id: SpiffeId,
        csr_der: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<IssuedCert, SignError>> + Send + '_>> {
        Box::pin(async move {
            self.0
                .sign(&id, &csr_der)
                .map_err(|e| SignError(e.to_string()))
        })
    }
}

pub(crate) async fn run(args: UpArgs, nofile: NofileLimit) -> anyhow::Result<()> {
    if args.capture.uninstall_capture {
        let removed = remove_capture().context("removing the capture rules")?;
        println!(
            "ward: {}",
            if removed {
                "capture rules removed"
            } else {
                "no capture rules installed"
            }
        );
        return Ok(());
    }
    let control = ControlPlane::start(args.paths.clone())
        .map_err(|d| anyhow::anyhow!("config has errors:\n{d}"))?;
    let mesh = control.mesh().clone();
    let hosted = Hosted::parse(&args.workloads, &control.snapshot().borrow())?;
    let _capture = if args.capture.capture {
        if hosted.len() != Some(1) {
            anyhow::bail!(
                "--capture captures one network namespace for one workload: give exactly one \
                 --workloads namespace/name"
            );
        }
        Some(install_capture(&args.capture.options(args.admin))?)
    } else {
        None
    };
    let ca_opts = ward_ca::CaOptions {
        trust_domain: mesh.trust_domain.clone(),
        default_ttl: args.cert_ttl,
        max_ttl: Duration::from_secs(90 * 86_400).max(args.cert_ttl),
    };
    let ca = match &args.cacerts {
        Some(dir) => ward_ca::Ca::from_cacerts(dir, ca_opts)
            .with_context(|| format!("loading cacerts from {}", dir.display()))?,
        None => ward_ca::Ca::load_or_create(&args.state_dir, ca_opts)
            .with_context(|| format!("loading the CA under {}", args.state_dir.display()))?,
    };
    let ca = Arc::new(CaService::new(ca, args.cert_ttl));
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let config_metrics = admin::ConfigMetrics::register(&mut registry);
    let admission = Admission {
        limits: args.limits.limits(),
        budget: Arc::new(FdBudget::from_limit(nofile.effective())),
    };
    log_admission(&admission);
    metrics.connection_budget(admission.budget.capacity());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let timing = ReloadTiming {
        poll: args.poll_interval,
        settle: args.reload_settle,
    };
    tokio::spawn(control.clone().watch_files(timing, shutdown_rx.clone()));

    // The sidecars' trails are `<DIR>/<namespace>/<name>/`; break-glass records go to the
    // control plane's own, `<DIR>/<root namespace>/ward-control-plane/` (docs/break-glass.md).
    let audit_dir = (!args.no_audit).then(|| {
        args.audit_dir
            .clone()
            .unwrap_or_else(|| args.state_dir.join("audit"))
    });
    let trail = match &audit_dir {
        Some(dir) => {
            let dir = dir.join(&mesh.root_namespace).join("ward-control-plane");
            let id = ward_control::ca_grpc::control_plane_identity(
                &mesh.trust_domain,
                &mesh.root_namespace,
            )?;
            let trail = crate::trail::Trail::new(&dir, ca.clone(), id);
            Some(Box::new(trail) as Box<dyn ward_proxy::breakglass::AuditSink>)
        }
        None => None,
    };
    let break_glass = Arc::new(ward_proxy::breakglass::BreakGlass::new(trail));
    let sidecars: Arc<Mutex<BTreeMap<String, SidecarHandle>>> = Arc::default();
    let admin_state = Arc::new(AdminState {
        break_glass: break_glass.clone(),
        control: control.clone(),
        sidecars: sidecars.clone(),
        registry: Mutex::new(registry),
        hosted: hosted.clone(),
        config_metrics,
    });
    let admin_listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("admin: cannot listen on {}", args.admin))?;
    tokio::spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
        metrics.clone(),
        shutdown_rx.clone(),
    ));
    tracing::info!(admin = %args.admin, trust_domain = %mesh.trust_domain, "ward control plane started");

    let metrics_for_dns = metrics.clone();
    let supervisor = Supervisor {
        control: control.clone(),
        ca: Arc::new(LocalCa(ca)),
        mesh: MeshIdentity {
            trust_domain: mesh.trust_domain.clone(),
            aliases: mesh.trust_domain_aliases.clone(),
        },
        metrics,
        admission,
        sidecars,
        hosted,
        admin: args.admin,
        capture: args.capture.capture,
        dns: args.capture.dns_settings(&metrics_for_dns)?,
        audit_dir,
        running: BTreeMap::new(),
        tasks: tokio::task::JoinSet::new(),
        demo_apps: BTreeSet::new(),
        break_glass,
    };
    let sup = tokio::spawn(supervisor.run(shutdown_rx.clone()));
    tokio::spawn(announce_ready(args.admin, admin_state));

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    // The sidecars seal their audit trails (each waits at most 5 s for its writer).
    let _ = tokio::time::timeout(Duration::from_secs(6), sup).await;
    Ok(())
}

/// Capture rules installed in this network namespace; removed when dropped, so every return
/// from [`run`] after the install (a clean exit on SIGINT/SIGTERM, or an error) takes them out.
pub(crate) struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        match remove_capture() {
            Ok(_) => tracing::info!("capture rules removed"),
            Err(e) => {
                tracing::error!(error = %e, "capture rules not removed; run `ward up --uninstall-capture`")
            }
        }
    }
}

/// Removes the rules of both families; whether there were any. IPv6 rules are removed when
/// `ip6tables` can be run at all.
pub(crate) fn remove_capture() -> anyhow::Result<bool> {
    let v4 = capture::remove(capture::Family::V4)?;
    let v6 = capture::remove(capture::Family::V6).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "no IPv6 capture rules to remove");
        false
    });
    Ok(v4 || v6)
}

/// Marks this process's sockets and installs the rules: IPv4 must succeed; IPv6 is installed
/// where `ip6tables` works, else a warning says it is not captured.
pub(crate) fn install_capture(opts: &capture::CaptureOptions) -> anyhow::Result<CaptureGuard> {
    let opts = opts.clone();
    capture::set_socket_mark(capture::SOCKET_MARK);
    let v4 = capture::Plan::for_family(&opts, capture::SOCKET_MARK, capture::Family::V4);
    capture::install(&v4).context("installing the capture rules (needs root)")?;
    let guard = CaptureGuard;
    let v6 = capture::Plan::for_family(&opts, capture::SOCKET_MARK, capture::Family::V6);
    match capture::install(&v6) {
        Ok(()) => tracing::info!(
            rules = v4.rules.len() + v6.rules.len(),
            mark = capture::SOCKET_MARK,
            "capture rules installed (IPv4 and IPv6)"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            mark = capture::SOCKET_MARK,
            "capture rules installed for IPv4 only: IPv6 traffic is not captured"
        ),
    }
    Ok(guard)
}

/// Say how the open-file limit was split, once at start.
pub(crate) fn log_admission(a: &Admission) {
    let b = &a.budget;
    tracing::info!(
        open_file_limit = b.limit(),
        reserve = b.reserve(),
        connection_budget = b.capacity(),
        per_listener = a.limits.connections_per_listener.min(b.listener_share()),
        per_source = a.limits.connections_per_source,
        handshakes_per_listener = a.limits.handshakes_per_listener,
        handshakes_per_source = a.limits.handshakes_per_source,
        "connection limits"
    );
    if a.limits.connections_per_listener > b.listener_share() {
        tracing::debug!(
            asked = a.limits.connections_per_listener,
            share = b.listener_share(),
            "--max-connections-per-listener is more than half the connection budget; each listener gets half"
        );
    }
    if b.capacity() < 64 {
        tracing::warn!(
            open_file_limit = b.limit(),
            "the open-file limit leaves fewer than 64 connections for the listeners; raise the hard limit (LimitNOFILE=, ulimit -Hn)"
        );
    }
}

pub(crate) async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Print to stdout when the mesh is first ready, for people running `ward up` by hand.
async fn announce_ready(admin_addr: SocketAddr, state: Arc<AdminState>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !admin::mesh_ready(&state).0 {
            continue;
        }
        let snap = state.control.snapshot().borrow().clone();
        let hosted: Vec<_> = snap
            .proxies
            .iter()
            .filter(|(key, _)| state.hosted.contains(key))
            .map(|(_, p)| p)
            .collect();
        println!(
            "ward: mesh ready: {} sidecar(s); admin on http://{admin_addr}",
            hosted.len()
        );
        for p in hosted {
            for l in &p.outbound {
                println!(
                    "  {}/{} reaches {}:{} at {}",
                    p.workload.namespace, p.workload.name, l.service, l.service_port, l.bind
                );
            }
        }
        return;
    }
}

/// Starts and stops sidecars as WorkloadEntries come and go.
struct Supervisor {
    control: Arc<ControlPlane>,
    ca: Arc<dyn CertificateProvider>,
    mesh: MeshIdentity,
    metrics: Arc<Metrics>,
    /// Listener caps and the process-wide connection budget, for every sidecar.
    admission: Admission,
    /// Shared with the admin API.
    sidecars: Arc<Mutex<BTreeMap<String, SidecarHandle>>>,
    /// `--workloads`: the sidecars this process runs.
    hosted: Hosted,
    /// `--admin`: no sidecar's JWKS fetch may reach it.
    admin: SocketAddr,
    /// `--capture`: the sidecar serves the capture ports.
    capture: bool,
    /// `--capture-dns`: the sidecar serves the DNS proxy with these settings.
    dns: Option<ward_proxy::dns::Settings>,
    /// `--audit-dir`: where each sidecar writes its audit trail; `None` with `--no-audit`.
    audit_dir: Option<PathBuf>,
    /// Each running sidecar's stop switch.
    running: BTreeMap<String, watch::Sender<bool>>,
    /// The sidecar tasks, awaited at shutdown so each seals its audit trail.
    tasks: tokio::task::JoinSet<()>,
    /// Demo app addresses already served.
    demo_apps: BTreeSet<SocketAddr>,
    /// Break-glass grants, shared with the admin API.
    break_glass: Arc<ward_proxy::breakglass::BreakGlass>,
}

impl Supervisor {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut snapshot = self.control.snapshot();
        loop {
            let snap = snapshot.borrow_and_update().clone();
            self.reconcile(&snap).await;
            tokio::select! {
                r = snapshot.changed() => if r.is_err() { break },
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        for (_, tx) in std::mem::take(&mut self.running) {
            let _ = tx.send(true);
        }
        while self.tasks.join_next().await.is_some() {}
    }

    async fn reconcile(&mut self, snap: &ward_config::MeshSnapshot) {
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|k| !snap.proxies.contains_key(*k) || !self.hosted.contains(k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(tx) = self.running.remove(&k) {
                let _ = tx.send(true);
            }
            if let Ok(mut s) = self.sidecars.lock() {
                s.remove(&k);
            }
            tracing::info!(workload = %k, "sidecar stopped: WorkloadEntry removed");
        }
        for (key, cfg) in snap.proxies.iter().filter(|(k, _)| self.hosted.contains(k)) {
            if let Some(app) = cfg.workload.demo_app {
                for port in &cfg.inbound {
                    if !self.demo_apps.insert(port.target) {
                        continue;
                    }
                    match tokio::net::TcpListener::bind(port.target).await {
                        Ok(l) => {
                            tracing::info!(workload = %key, addr = %port.target, app = ?app, "demo app started");
                            match app {
                                DemoApp::Echo => tokio::spawn(crate::echo::serve(l)),
                                DemoApp::Fhir => tokio::spawn(crate::demo_apps::serve_fhir(l)),
                            };
                        }
                        Err(e) => {
                            tracing::error!(workload = %key, addr = %port.target, error = %e, "demo app cannot listen")
                        }
                    }
                }
            }
            if self.running.contains_key(key) {
                continue;
            }
            let Some(rx) = self.control.subscribe(key) else {
                continue;
            };
            match Sidecar::new(
                key.clone(),
                rx,
                self.ca.clone(),
                self.mesh.clone(),
                self.metrics.clone(),
                self.admission.clone(),
            ) {
                Ok((sidecar, handle)) => {
                    let mut own = vec![OwnListener {
                        addr: self.admin,
                        what: "the admin API".to_owned(),
                    }];
                    if self.capture {
                        own.extend(capture::listeners());
                    }
                    let sidecar = sidecar
                        .with_process_listeners(own)
                        .with_capture(self.capture)
                        .with_dns(self.dns.clone())
                        .with_break_glass(self.break_glass.clone())
                        .with_audit_dir(self.audit_dir.clone());
                    let (tx, stop) = watch::channel(false);
                    self.running.insert(key.clone(), tx);
                    if let Ok(mut s) = self.sidecars.lock() {
                        s.insert(key.clone(), handle);
                    }
                    let key = key.clone();
                    // Finished tasks (removed workloads) are reaped as new ones start.
                    while self.tasks.try_join_next().is_some() {}
                    self.tasks.spawn(async move {
                        if let Err(e) = sidecar.run(stop).await {
                            tracing::error!(workload = %key, error = %e, "sidecar failed");
                        }
                    });
                }
                Err(e) => tracing::error!(workload = %key, error = %e, "sidecar cannot start"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("h").is_err());
        // The flag-only forms of the shared grammar (crates/policy/src/duration.rs).
        assert_eq!(
            parse_duration("2d").unwrap(),
            Duration::from_secs(2 * 86_400)
        );
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("0").is_err());
        assert_eq!(parse_settle("0s").unwrap(), Duration::ZERO);
        assert!(parse_settle("-1s").is_err());
    }
}
