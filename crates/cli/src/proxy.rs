//! `ward proxy --bootstrap FILE`: one workload's sidecar on its own host, fed by a control plane
//! over the network (docs/multi-host.md); and `ward proxy-status`, the table of every proxy a
//! control plane serves.
//!
//! The sidecar is the one `ward up` runs (`ward_proxy::Sidecar`); only its two inputs come from
//! elsewhere: its configuration from the config stream (`ward_control::config_client`) and its
//! certificates from the control plane's CA over gRPC ([`RemoteCa`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use ward_config::ProxyConfig;
use ward_control::bootstrap::BootstrapFile;
use ward_control::ca_client::{self, Credential};
use ward_control::config_client::{CertSlot, ConfigClient};
use ward_control::proxies::ProxyStatus;
use ward_control::push::Assembled;
use ward_identity::{IssuedCert, SpiffeId};
use ward_proxy::listener::{Admission, FdBudget};
use ward_proxy::{
    CertificateProvider, MeshIdentity, Metrics, OwnListener, Sidecar, SidecarHandle, SignError,
};

use crate::admin::{self, respond, Router};
use crate::fdlimit::NofileLimit;
use crate::up::{
    install_capture, log_admission, remove_capture, wait_for_signal, CaptureArgs, LimitArgs,
};

/// Options of `ward proxy`.
#[derive(clap::Args)]
pub(crate) struct ProxyArgs {
    /// The bootstrap file `ward bootstrap` wrote for this workload: the control plane's address
    /// and identity, the CA root and the workload's token.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present_any = ["uninstall_capture", "token_file", "capture_init"],
        conflicts_with = "token_file"
    )]
    bootstrap: Option<PathBuf>,
    #[command(flatten)]
    kubernetes: KubernetesArgs,
    /// Admin HTTP address (/ready, /config_dump, /certs, /metrics).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Where the audit trail is written: `<DIR>/<namespace>/<name>/` (docs/audit.md).
    #[arg(long, value_name = "DIR", default_value = "/var/log/ward/audit")]
    audit_dir: PathBuf,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    capture: CaptureArgs,
    /// Install the capture rules (with the `--capture-*` options) in this network namespace,
    /// leave them, and exit: the injected `istio-init` container, which alone has NET_ADMIN
    /// (docs/kubernetes.md, "Sidecar injection").
    #[arg(long, requires = "capture", conflicts_with = "capture_installed")]
    capture_init: bool,
    /// The capture rules are already installed (by `--capture-init`, with
    /// `--capture-proxy-uid` naming this process's user): serve the capture ports, but neither
    /// install nor remove rules, and mark no socket (no `CAP_NET_ADMIN` needed).
    #[arg(long, requires = "capture")]
    capture_installed: bool,
    /// Serve the pod's rewritten HTTP and TCP probes here (`GET /app-health/<container>/<kind>`,
    /// Istio's agent port is 15021), carried out over loopback (docs/kubernetes.md).
    /// Also `GET /healthz/ready`: the proxy's own readiness, for the sidecar's startup probe.
    #[arg(long, value_name = "ADDR")]
    app_probe_listen: Option<SocketAddr>,
    /// The pod's original probes by rewritten path, JSON (Istio's format; the injector sets it).
    #[arg(
        long,
        value_name = "JSON",
        env = "ISTIO_KUBE_APP_PROBERS",
        hide_env_values = true
    )]
    app_probers: Option<String>,
}

/// How `ward proxy` bootstraps on Kubernetes (instead of `--bootstrap`): with its projected
/// ServiceAccount token, as Istio's agent does (docs/kubernetes.md).
#[derive(clap::Args)]
pub(crate) struct KubernetesArgs {
    /// The pod's projected ServiceAccount token (audience `istio-ca`), read at each start.
    #[arg(long, value_name = "FILE", requires_all = ["control_plane", "pod_name"])]
    token_file: Option<PathBuf>,
    /// The control plane's gRPC address, `host:port` (with `--token-file`).
    #[arg(long, value_name = "HOST:PORT", env = "CA_ADDR")]
    control_plane: Option<String>,
    /// The mesh root certificate(s), PEM (with `--token-file`).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/run/secrets/istio/root-cert.pem"
    )]
    root_cert: PathBuf,
    /// The pod's name: the workload is `<token namespace>/<pod name>`.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// The pod's namespace; when given, it must be the token's.
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// The mesh's trust domain.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// The mesh's root namespace, where the control plane runs (its identity is
    /// `spiffe://<trust domain>/ns/<root namespace>/sa/ward-control-plane`).
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
}

impl KubernetesArgs {
    /// The bootstrap bundle of a proxy started with `--token-file`.
    fn bundle(&self) -> anyhow::Result<Option<BootstrapFile>> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let (Some(control_plane), Some(pod)) = (&self.control_plane, &self.pod_name) else {
            anyhow::bail!("--token-file needs --control-plane and --pod-name");
        };
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("--token-file {}", path.display()))?;
        let root = std::fs::read_to_string(&self.root_cert)
            .with_context(|| format!("--root-cert {}", self.root_cert.display()))?;
        let server = ward_control::ca_grpc::control_plane_identity(
            &self.trust_domain,
            &self.root_namespace,
        )?;
        let bundle = BootstrapFile::from_service_account_token(
            &token,
            pod,
            control_plane,
            &server.to_string(),
            &self.trust_domain,
            root,
        )
        .with_context(|| format!("--token-file {}", path.display()))?;
        if let Some(ns) = &self.pod_namespace {
            let token_ns = bundle.workload.split('/').next().unwrap_or("");
            if ns != token_ns {
                anyhow::bail!("--pod-namespace {ns}: the token is of namespace {token_ns}");
            }
        }
        bundle
            .roots_der()
            .map_err(|e| anyhow::anyhow!("--root-cert {}: {e}", self.root_cert.display()))?;
        Ok(Some(bundle))
    }
}

/// Options of `ward proxy-status`.
#[derive(clap::Args)]
pub(crate) struct ProxyStatusArgs {
    /// The control plane's admin address (`ward control-plane --admin`).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:15014")]
    control_plane: SocketAddr,
    /// Print the control plane's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Certificates from the control plane's CA over gRPC: the bootstrap token until the sidecar
/// has a certificate, then that certificate (a renewal).
struct RemoteCa {
    bundle: Arc<BootstrapFile>,
    certs: CertSlot,
}

impl CertificateProvider for RemoteCa {
    fn sign(
        &self,
        _id: SpiffeId,
        csr_der: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<IssuedCert, SignError>> + Send + '_>> {
        Box::pin(async move {
            let credential = match self.certs.get().filter(|s| s.is_ready()) {
                Some(store) => Credential::Store(store.clone()),
                None => Credential::Token,
            };
            ca_client::sign_csr(&self.bundle, credential, &csr_der, None)
                .await
                .map_err(|e| SignError(e.to_string()))
        })
    }
}

/// `ward proxy`.
pub(crate) async fn run(args: ProxyArgs, nofile: NofileLimit) -> anyhow::Result<()> {
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
    if args.capture_init {
        let opts = args.capture.options(args.admin);
        let guard = install_capture(&opts)?;
        // The rules stay for the proxy container, and go with the pod's network namespace.
        std::mem::forget(guard);
        println!("ward: capture rules installed");
        return Ok(());
    }
    let (bootstrap, bundle) = match (&args.bootstrap, args.kubernetes.bundle()?) {
        (Some(path), _) => (path.clone(), BootstrapFile::read(path)?),
        (None, Some(bundle)) => (
            args.kubernetes.token_file.clone().unwrap_or_default(),
            bundle,
        ),
        (None, None) => anyhow::bail!("--bootstrap FILE or --token-file FILE is required"),
    };
    let bundle = Arc::new(bundle);
    let key = bundle.workload.clone();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = watch::channel(false);
    if let Some(addr) = args.app_probe_listen {
        let probers = match &args.app_probers {
            Some(table) => crate::probes::parse(table).context("--app-probers")?,
            None => crate::probes::Probers::new(),
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--app-probe-listen: cannot listen on {addr}"))?;
        tracing::info!(%addr, probes = probers.len(), "serving the pod's probes");
        tokio::spawn(crate::probes::serve(
            listener,
            probers,
            ready_rx,
            shutdown_rx.clone(),
        ));
    }

    let certs: CertSlot = CertSlot::default();
    let (assembled_tx, mut assembled) = watch::channel::<Option<Arc<Assembled>>>(None);
    let client = ConfigClient::new(
        bundle.clone(),
        certs.clone(),
        format!("ward {}", env!("CARGO_PKG_VERSION")),
        assembled_tx,
    );
    let client_task = tokio::spawn(client.run(shutdown_rx.clone()));
    tracing::info!(workload = %key, control_plane = %bundle.control_plane, "waiting for the first config");

    // The first config; the client stops (and drops its sender) only when it is refused.
    let first = tokio::select! {
        r = assembled.wait_for(Option::is_some) => r.ok().and_then(|a| a.clone()),
        () = wait_for_signal() => return Ok(()),
    };
    let Some(first) = first else {
        let why = match client_task.await {
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(())) => "the config stream stopped".to_owned(),
            Err(e) => e.to_string(),
        };
        anyhow::bail!(
            "{}: no config from {}: {why}",
            bootstrap.display(),
            bundle.control_plane
        );
    };

    let (config_tx, config_rx) = watch::channel(Arc::new(first.config.clone()));
    tokio::spawn(forward_configs(assembled.clone(), config_tx));

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let admission = Admission {
        limits: args.limits.limits(),
        budget: Arc::new(FdBudget::from_limit(nofile.effective())),
    };
    log_admission(&admission);
    metrics.connection_budget(admission.budget.capacity());
    let ca = Arc::new(RemoteCa {
        bundle: bundle.clone(),
        certs: certs.clone(),
    });
    let mesh = MeshIdentity {
        trust_domain: first.mesh.trust_domain.clone(),
        aliases: first.mesh.trust_domain_aliases.clone(),
    };
    let dns = args.capture.dns_settings(&metrics)?;
    let _capture = if args.capture.capture && !args.capture_installed {
        let mut opts = args.capture.options(args.admin);
        // The control plane stays reachable directly: its connections are not the app's.
        opts.exclude_cidrs
            .extend(control_plane_addresses(&bundle.control_plane).await?);
        Some(install_capture(&opts)?)
    } else {
        None
    };
    let (sidecar, handle) =
        Sidecar::new(key.clone(), config_rx, ca, mesh, metrics.clone(), admission)
            .with_context(|| format!("workload {key}"))?;
    let sidecar = sidecar
        .with_capture(args.capture.capture)
        .with_dns(dns)
        .with_audit_dir(Some(args.audit_dir.clone()));
    let _ = certs.set(handle.cert_store());
    let sidecar = sidecar.with_process_listeners(vec![OwnListener {
        addr: args.admin,
        what: "the admin API".to_owned(),
    }]);
    let mut sidecar_task = tokio::spawn(sidecar.run(shutdown_rx.clone()));

    let admin_listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("--admin: cannot listen on {}", args.admin))?;
    let state = Arc::new(ProxyAdmin {
        handle: handle.clone(),
        assembled: assembled.clone(),
        registry: Arc::new(Mutex::new(registry)),
    });
    {
        // The prober's `/healthz/ready` follows the admin port's `/ready`.
        let (state, mut shutdown) = (state.clone(), shutdown_rx.clone());
        tokio::spawn(async move {
            loop {
                ready_tx.send_replace(state.ready().is_ok());
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        });
    }
    let router: Router = {
        let state = state.clone();
        Arc::new(move |req| route(&state, req))
    };
    let verify: admin::Verifier = {
        let handle = handle.clone();
        Arc::new(move |from: &str| {
            (from.is_empty() || from == handle.key()).then(|| handle.clone())
        })
    };
    tokio::spawn(admin::serve_routes(
        admin_listener,
        router,
        Some(verify),
        None,
        metrics,
        shutdown_rx.clone(),
    ));
    tokio::spawn(announce_ready(args.admin, state));

    tokio::select! {
        () = wait_for_signal() => {}
        r = &mut sidecar_task => {
            let _ = shutdown_tx.send(true);
            match r {
                Ok(Err(e)) => anyhow::bail!("sidecar {key} failed: {e}"),
                _ => anyhow::bail!("sidecar {key} stopped"),
            }
        }
    }
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    // The sidecar seals its audit trail before it returns.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(6), sidecar_task).await;
    Ok(())
}

/// The control plane's addresses (`host:port` resolved), as single-address ranges.
async fn control_plane_addresses(addr: &str) -> anyhow::Result<Vec<ipnet::IpNet>> {
    let found: Vec<ipnet::IpNet> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving the control plane {addr}"))?
        .map(|a| ipnet::IpNet::from(a.ip()))
        .collect();
    if found.is_empty() {
        anyhow::bail!("the control plane {addr} resolves to no address");
    }
    Ok(found)
}

/// Feeds each new config from the stream to the sidecar. A config whose `jwtRules` did not
/// change keeps the sidecar's compiled authenticator, and with it the tokens already verified.
async fn forward_configs(
    mut assembled: watch::Receiver<Option<Arc<Assembled>>>,
    config: watch::Sender<Arc<ProxyConfig>>,
) {
    while assembled.changed().await.is_ok() {
        let Some(next) = assembled.borrow_and_update().clone() else {
            continue;
        };
        let mut next = next.config.clone();
        config.send_if_modified(|cur| {
            next.jwt_rules.keep_compiled(&cur.jwt_rules);
            if **cur == next {
                false
            } else {
                *cur = Arc::new(next.clone());
                true
            }
        });
    }
}

/// What `ward proxy`'s admin port reads.
struct ProxyAdmin {
    handle: SidecarHandle,
    assembled: watch::Receiver<Option<Arc<Assembled>>>,
    registry: Arc<Mutex<Registry>>,
}

impl ProxyAdmin {
    /// Ready once the sidecar has its certificate, its config and every listener.
    fn ready(&self) -> Result<(), String> {
        if self.handle.cert().is_none() {
            return Err("no certificate yet".into());
        }
        if !self.handle.is_ready() {
            return Err(format!("listeners not ready {:?}", self.handle.problems()));
        }
        if let Some(p) = self
            .handle
            .audit_problem()
            .filter(|_| self.handle.audit_fail_closed())
        {
            return Err(format!("{p} (fail-closed)"));
        }
        Ok(())
    }

    /// The audit trail is failing on a fail-open workload: ready, but degraded.
    fn degraded(&self) -> Option<String> {
        self.handle
            .audit_problem()
            .filter(|_| !self.handle.audit_fail_closed())
    }
}

fn route(state: &ProxyAdmin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    let json = |value: serde_json::Value| {
        respond(
            StatusCode::OK,
            "application/json",
            serde_json::to_vec_pretty(&value).unwrap_or_default(),
        )
    };
    match req.uri().path() {
        "/ready" | "/healthz/ready" => match state.ready() {
            Ok(()) => match state.degraded() {
                Some(p) => respond(
                    StatusCode::OK,
                    "text/plain",
                    format!(
                        "ready, degraded:\n{}: {p} (fail-open)\n",
                        state.handle.key()
                    ),
                ),
                None => respond(StatusCode::OK, "text/plain", "ready\n"),
            },
            Err(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {}: {why}\n", state.handle.key()),
            ),
        },
        "/config_dump" => {
            let assembled = state.assembled.borrow().clone();
            let mut dump = serde_json::json!({
                "version": assembled.as_ref().map(|a| a.version.clone()),
                "mesh": assembled.as_ref().map(|a| a.mesh.clone()),
                "config": &*state.handle.config(),
            });
            // Private keys from Secrets (DestinationRule `credentialName`) are not shown.
            ward_config::origination::redact_keys(&mut dump);
            json(dump)
        }
        "/certs" => {
            let cert = admin::cert_entry(state.handle.key(), &state.handle);
            json(serde_json::json!({ "certificates": [cert] }))
        }
        "/metrics" => admin::metrics_response(&state.registry),
        "/" => respond(
            StatusCode::OK,
            "text/plain",
            "ward proxy admin: /ready /config_dump /certs /metrics, POST /verify/mtls\n",
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Print to stdout when the proxy is first ready.
async fn announce_ready(admin_addr: SocketAddr, state: Arc<ProxyAdmin>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if state.ready().is_err() {
            continue;
        }
        let config = state.handle.config();
        println!(
            "ward: proxy ready: {} as {}; admin on http://{admin_addr}",
            state.handle.key(),
            config.workload.identity
        );
        for l in &config.outbound {
            println!("  reaches {}:{} at {}", l.service, l.service_port, l.bind);
        }
        return;
    }
}

/// `ward proxy-status`: the control plane's `/debug/proxies` as a table.
pub(crate) async fn status(args: ProxyStatusArgs) -> anyhow::Result<()> {
    let body = http_get(args.control_plane, "/debug/proxies")
        .await
        .with_context(|| format!("--control-plane {}", args.control_plane))?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let parsed: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("{}/debug/proxies: not JSON", args.control_plane))?;
    let proxies: Vec<ProxyStatus> =
        serde_json::from_value(parsed.get("proxies").cloned().unwrap_or_default())
            .with_context(|| format!("{}/debug/proxies: unexpected shape", args.control_plane))?;
    print!("{}", status_table(&proxies));
    Ok(())
}

/// The rows of `ward proxy-status`, like `istioctl proxy-status`: one per connected proxy.
fn status_table(proxies: &[ProxyStatus]) -> String {
    let header = [
        "WORKLOAD", "IDENTITY", "PEER", "VIA", "CONFIG", "VERSION", "ACKED", "NACK",
    ];
    let short = |v: &Option<String>| {
        v.as_deref()
            .map_or("-".to_owned(), |v| v.chars().take(12).collect())
    };
    let rows: Vec<[String; 8]> = proxies
        .iter()
        .map(|p| {
            let state = serde_json::to_value(p.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            [
                p.workload.clone(),
                p.identity.clone(),
                p.peer.clone(),
                p.via.clone(),
                state,
                short(&p.sent_version),
                short(&p.acked_version),
                p.last_nack.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

/// One HTTP/1.1 GET on a plain connection; the body when the status is 200.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<Bytes> {
    let (status, body) = admin_request(addr, http::Method::GET, path).await?;
    if status != StatusCode::OK {
        anyhow::bail!("{path}: HTTP {status}");
    }
    Ok(body)
}

/// One HTTP/1.1 request to an admin port; its status and body.
pub(crate) async fn admin_request(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_has_one_aligned_row_per_proxy() {
        let mut a = ProxyStatus::connected(
            "app/a",
            "spiffe://cluster.local/ns/app/sa/a",
            "10.0.0.2:4000",
            "certificate",
        );
        a.sent_version = Some("0123456789abcdef".into());
        a.acked_version = a.sent_version.clone();
        a.state = ward_control::proxies::SyncState::Synced;
        let mut b = ProxyStatus::connected("app/bb", "id-b", "10.0.0.3:4000", "token");
        b.sent_version = Some("ffff".into());
        b.last_nack = Some("section \"authz\" is not JSON".into());
        b.state = ward_control::proxies::SyncState::Stale;
        let table = status_table(&[a, b]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("WORKLOAD  IDENTITY"), "{table}");
        assert!(
            lines[1].contains("SYNCED  0123456789ab  0123456789ab  -"),
            "{table}"
        );
        assert!(lines[2].contains("STALE   ffff"), "{table}");
        assert!(
            lines[2].ends_with("section \"authz\" is not JSON"),
            "{table}"
        );
        let col = lines[0].find("PEER").unwrap();
        assert_eq!(&lines[1][col..col + 8], "10.0.0.2");
    }
}
