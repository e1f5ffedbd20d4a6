//! `ward control-plane`: the config and the CA for proxies on other hosts, the CA served over
//! gRPC (Istio's CA API) on TLS 1.3; and `ward bootstrap`, which writes the file a proxy needs
//! for its first certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use ward_control::bootstrap::{audience_of_root, BootstrapFile, TokenKey};
use ward_control::ca_client;
use ward_control::ca_grpc::{self, CaGrpc, CaMetrics};
use ward_control::config_grpc::{ConfigGrpc, ConfigMetrics};
use ward_control::proxies::ProxyRegistry;
use ward_control::{CaService, ControlPlane, ReloadTiming};
use ward_identity::{SpiffeId, WorkloadCert};
use ward_kube::webhook::InjectSettings;
use ward_tls::CertStore;

use crate::admin::{self, respond, Router};
use crate::up::{parse_duration, parse_settle};

/// Options of `ward control-plane`.
#[derive(clap::Args)]
pub(crate) struct ControlPlaneArgs {
    /// Files or directories of Istio YAML (the same as `ward up`), reloaded when they change.
    /// With `--kubernetes`, loaded together with the API server's objects.
    #[arg(short = 'f', long = "filename", required_unless_present = "kubernetes")]
    paths: Vec<PathBuf>,
    /// Also read config from the Kubernetes API server: Istio objects, Pods, Services,
    /// EndpointSlices, Namespaces and the mesh ConfigMap (docs/kubernetes.md). Proxies may then
    /// bootstrap with their ServiceAccount tokens (TokenReview).
    #[arg(long)]
    kubernetes: bool,
    /// The kubeconfig to use with `--kubernetes`; else `KUBECONFIG`, `~/.kube/config`, or the
    /// pod's service account (in-cluster).
    #[arg(long, value_name = "PATH", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// The namespace of the mesh ConfigMap `istio` (the mesh's root namespace).
    #[arg(long, default_value = "istio-system", requires = "kubernetes")]
    istio_namespace: String,
    /// How long the API server's watches must be quiet after a change before Ward loads, so
    /// that a burst of changes (`kubectl apply -f dir/`) loads once.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    debounce: Duration,
    /// The longest a change waits for the watches to go quiet (a steady stream of changes
    /// still loads this often).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    debounce_max: Duration,
    /// Where the CA keeps its root and the bootstrap token key (created on first start).
    #[arg(long, default_value = "./.ward")]
    state_dir: PathBuf,
    /// gRPC address of the CA (Istio's `IstioCertificateService`), TLS 1.3 only.
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Admin HTTP address (/ready, /metrics).
    #[arg(long, default_value = "127.0.0.1:15014")]
    admin: SocketAddr,
    /// Lifetime of the certificates issued (workloads and the control plane's own), e.g. `24h`.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// How often the config files are checked for changes.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    poll_interval: Duration,
    /// How long changed config files must keep the same bytes before the change applies; `0s`
    /// applies the first read of every change.
    #[arg(long, default_value = "300ms", value_parser = parse_settle)]
    reload_settle: Duration,
    /// Connections the gRPC port serves at once (each connected proxy holds one); more are
    /// closed at accept. Keep it under the open-file limit.
    #[arg(long, value_name = "N", default_value_t = ca_grpc::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// A directory with Istio's `cacerts` files (ca-cert.pem, ca-key.pem, cert-chain.pem,
    /// root-cert.pem): the CA signs with that intermediate. Ignored when it holds no
    /// ca-cert.pem (an optional Secret not created); then `--state-dir` holds the CA.
    #[arg(long, value_name = "DIR")]
    cacerts_dir: Option<PathBuf>,
    #[command(flatten)]
    webhooks: WebhookArgs,
    #[command(flatten)]
    pub(crate) leader: LeaderArgs,
}

/// Leader election among replicas of `ward control-plane --kubernetes` (docs/kubernetes.md):
/// every replica serves; only the one holding the Lease `ward-control-plane` writes.
#[derive(clap::Args)]
pub(crate) struct LeaderArgs {
    /// This replica's name in the Lease; default `POD_NAME`, else `<host name>_<pid>`.
    #[arg(long, value_name = "NAME")]
    pub(crate) leader_id: Option<String>,
    /// How long the Lease must go unrenewed before another replica takes it over (whole
    /// seconds).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub(crate) leader_lease_duration: Duration,
    /// How long the leader keeps leading without renewing the Lease.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) leader_renew_deadline: Duration,
    /// How often each replica looks at the Lease (and the leader renews it).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) leader_retry_period: Duration,
}

impl LeaderArgs {
    /// The timings, checked.
    pub(crate) fn timing(&self) -> anyhow::Result<ward_kube::leader::Timing> {
        let t = ward_kube::leader::Timing {
            lease_duration: self.leader_lease_duration,
            renew_deadline: self.leader_renew_deadline,
            retry_period: self.leader_retry_period,
        };
        t.check().map_err(|e| anyhow::anyhow!(e))?;
        Ok(t)
    }
}

/// The admission webhooks of `ward control-plane --kubernetes` (docs/kubernetes.md).
#[derive(clap::Args)]
pub(crate) struct WebhookArgs {
    /// HTTPS address of the admission webhooks (`/validate`, `/inject`), with `--kubernetes`.
    #[arg(long, default_value = "0.0.0.0:15017")]
    webhook_listen: SocketAddr,
    /// More names (DNS names or IP addresses) in the control plane's certificate, for the API
    /// server to reach the webhooks by (with `ward install --webhook-url`); the Service name
    /// `ward-control-plane.<namespace>.svc` is always there.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    webhook_san: Vec<String>,
    /// The image of the injected sidecar (`istio-proxy`).
    #[arg(long, default_value = DEFAULT_IMAGE)]
    proxy_image: String,
    /// The image of the injected capture init container (`istio-init`), which needs
    /// `iptables`: the Dockerfile's `capture` target.
    #[arg(long, default_value = DEFAULT_CAPTURE_IMAGE)]
    capture_image: String,
    /// The control plane's gRPC address as injected sidecars dial it; default
    /// `ward-control-plane.<namespace>.svc:15012`.
    #[arg(long, value_name = "HOST:PORT")]
    injection_control_plane: Option<String>,
    /// How often the webhooks' `caBundle` and every namespace's `istio-ca-root-cert` are
    /// checked again (they are also checked when a namespace appears).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    publish_resync: Duration,
}

/// The image `ward install` and the injector use unless told otherwise.
pub(crate) const DEFAULT_IMAGE: &str = ward_kube::install::DEFAULT_IMAGE;
/// The capture init container's image unless told otherwise (the Dockerfile's `capture`
/// target: the same binary with `iptables`).
pub(crate) const DEFAULT_CAPTURE_IMAGE: &str = ward_kube::install::DEFAULT_CAPTURE_IMAGE;

/// Options of `ward bootstrap`.
#[derive(clap::Args)]
pub(crate) struct BootstrapArgs {
    /// The control plane's Istio YAML: the workload must be a WorkloadEntry there, and the
    /// mesh settings give its identity and the control plane's.
    #[arg(short = 'f', long = "filename", required_unless_present = "check")]
    paths: Vec<PathBuf>,
    /// The control plane's state directory (its CA root and token key).
    #[arg(long, default_value = "./.ward")]
    state_dir: PathBuf,
    /// The WorkloadEntry the token is for, `namespace/name`.
    #[arg(long, value_name = "NAMESPACE/NAME", required_unless_present = "check")]
    workload: Option<String>,
    /// The control plane's gRPC address as the proxy will dial it, `host:port`.
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "check")]
    control_plane: Option<String>,
    /// How long the token may be used (any number of times, by this one workload), e.g. `1h`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    /// Where to write the bootstrap file (JSON, mode 0600; replaced if it exists).
    #[arg(long, required_unless_present = "check")]
    out: Option<PathBuf>,
    /// Instead of writing a file, use this one as its proxy would: ask the control plane for a
    /// certificate with its token, print what was issued, and keep nothing.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["paths", "workload", "control_plane", "out"])]
    check: Option<PathBuf>,
}

/// The CA options both commands load the CA with.
fn ca_options(trust_domain: &str, cert_ttl: Duration) -> ward_ca::CaOptions {
    ward_ca::CaOptions {
        trust_domain: trust_domain.to_owned(),
        default_ttl: cert_ttl,
        max_ttl: Duration::from_secs(90 * 86_400).max(cert_ttl),
    }
}

/// `ward bootstrap`: a token for one workload, in a file with everything its proxy needs; or,
/// with `--check FILE`, one certificate request made with that file.
pub(crate) fn bootstrap(args: BootstrapArgs, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    if let Some(path) = &args.check {
        return rt.block_on(check(path));
    }
    let (Some(workload), Some(control_plane), Some(out)) =
        (&args.workload, &args.control_plane, &args.out)
    else {
        anyhow::bail!("--workload, --control-plane and --out are required");
    };
    let control = ControlPlane::start(args.paths.clone())
        .map_err(|d| anyhow::anyhow!("config has errors:\n{d}"))?;
    let mesh = control.mesh().clone();
    let snap = control.snapshot().borrow().clone();
    let Some(proxy) = snap.proxies.get(workload) else {
        let known: Vec<&str> = snap.proxies.keys().map(String::as_str).collect();
        anyhow::bail!(
            "--workload: no WorkloadEntry {workload} in the config (it has: {})",
            known.join(", ")
        );
    };
    let ca = ward_ca::Ca::load_or_create(
        &args.state_dir,
        ca_options(&mesh.trust_domain, Duration::from_secs(86_400)),
    )
    .with_context(|| format!("loading the CA under {}", args.state_dir.display()))?;
    let roots = ca.roots_der();
    let root = roots.first().context("the CA has no root")?;
    let tokens = TokenKey::load_or_create(&args.state_dir)?;
    let now = SystemTime::now();
    let token = tokens.issue(workload, &audience_of_root(root), now, args.ttl)?;
    let expires = now
        .checked_add(args.ttl)
        .unwrap_or(now)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let server_id = ca_grpc::control_plane_identity(&mesh.trust_domain, &mesh.root_namespace)?;
    let file = BootstrapFile {
        control_plane: control_plane.clone(),
        control_plane_identity: server_id.to_string(),
        workload: workload.clone(),
        identity: proxy.workload.identity.clone(),
        root_cert: ca.root_pem(),
        token,
        expires,
    };
    file.write(out)?;
    println!(
        "ward: wrote {} for {workload} ({}), token valid for {}s",
        out.display(),
        proxy.workload.identity,
        args.ttl.as_secs()
    );
    Ok(())
}

/// `ward bootstrap --check FILE`: one certificate request with the file's token.
async fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let file = BootstrapFile::read(path)?;
    let cert = ca_client::request_certificate(&file, ca_client::Credential::Token, None)
        .await
        .with_context(|| {
            format!(
                "{}: no certificate from {}",
                path.display(),
                file.control_plane
            )
        })?;
    println!(
        "ward: {} issued a certificate for {} (serial {}, valid until {})",
        file.control_plane,
        cert.id,
        cert.issued.serial,
        ward_proxy::humantime_utc(cert.issued.not_after)
    );
    Ok(())
}

/// `ward control-plane`.
pub(crate) async fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut elector = None;
    let (control, mut cluster) = if args.kubernetes {
        let k = crate::kubernetes::start(
            args.kubeconfig.as_deref(),
            &args.istio_namespace,
            args.paths.clone(),
            &args.leader,
            &mut registry,
            shutdown_rx.clone(),
        )
        .await?;
        (k.control.clone(), Some(k))
    } else {
        let control = ControlPlane::start(args.paths.clone())
            .map_err(|d| anyhow::anyhow!("config has errors:\n{d}"))?;
        (control, None)
    };
    if let Some(k) = cluster.as_mut() {
        elector = k.elector.take();
    }
    let mesh = control.mesh().clone();
    let ca = match args
        .cacerts_dir
        .as_ref()
        .filter(|d| d.join("ca-cert.pem").exists())
    {
        Some(dir) => ward_ca::Ca::from_cacerts(dir, ca_options(&mesh.trust_domain, args.cert_ttl))
            .with_context(|| format!("--cacerts-dir {}", dir.display()))?,
        None => ward_ca::Ca::load_or_create(
            &args.state_dir,
            ca_options(&mesh.trust_domain, args.cert_ttl),
        )
        .with_context(|| format!("loading the CA under {}", args.state_dir.display()))?,
    };
    let ca = Arc::new(CaService::new(ca, args.cert_ttl));
    let root = ca
        .roots_der()
        .into_iter()
        .next()
        .context("the CA has no root")?;
    let tokens = Arc::new(TokenKey::load_or_create(&args.state_dir)?);

    let server_id = ca_grpc::control_plane_identity(&mesh.trust_domain, &mesh.root_namespace)?;
    let mut dns = vec![ca_grpc::control_plane_dns_name(&mesh.root_namespace)];
    dns.extend(args.webhooks.webhook_san.iter().cloned());
    let store = CertStore::new(server_id.clone());
    store
        .install(&issue_own(&ca, &server_id, &dns)?)
        .context("installing the control plane's certificate")?;
    let tls = ward_tls::control_plane_server_config(store.clone(), &mesh.trust_domain)?;

    let ca_metrics = CaMetrics::register(&mut registry);
    let config_metrics = ConfigMetrics::register(&mut registry);
    let status_metrics = admin::ConfigMetrics::register(&mut registry);
    let proxies = Arc::new(ProxyRegistry::default());
    let mut ca_service = CaGrpc::new(
        ca.clone(),
        control.clone(),
        tokens.clone(),
        audience_of_root(&root),
        ca_metrics,
    );
    let mut config_service = ConfigGrpc::new(
        control.clone(),
        tokens,
        audience_of_root(&root),
        proxies.clone(),
        config_metrics,
    );
    if let Some(k) = &cluster {
        ca_service = ca_service.with_token_reviewer(k.reviewer.clone());
        config_service = config_service.with_token_reviewer(k.reviewer.clone());
    }
    let services = ca_grpc::Services {
        ca: ca_service,
        config: config_service,
    };
    if let Some(k) = cluster {
        let hooks = Arc::new(crate::webhook::Webhooks {
            cluster: k.cluster.clone(),
            inject: InjectSettings {
                image: args.webhooks.proxy_image.clone(),
                capture_image: args.webhooks.capture_image.clone(),
                control_plane: args
                    .webhooks
                    .injection_control_plane
                    .clone()
                    .unwrap_or_else(|| {
                        format!(
                            "{}:15012",
                            ca_grpc::control_plane_dns_name(&mesh.root_namespace)
                        )
                    }),
                trust_domain: mesh.trust_domain.clone(),
                root_namespace: mesh.root_namespace.clone(),
            },
            reviews: crate::webhook::Webhooks::register(&mut registry),
        });
        let listener = tokio::net::TcpListener::bind(args.webhooks.webhook_listen)
            .await
            .with_context(|| {
                format!(
                    "--webhook-listen: cannot listen on {}",
                    args.webhooks.webhook_listen
                )
            })?;
        tokio::spawn(crate::webhook::serve(
            listener,
            ward_tls::webhook_server_config(store.clone())?,
            hooks,
            shutdown_rx.clone(),
        ));
        tokio::spawn(crate::webhook::publish(
            k.client.clone(),
            k.cluster.clone(),
            k.leading.clone(),
            ca.root_pem(),
            args.webhooks.publish_resync,
            shutdown_rx.clone(),
        ));
        tokio::spawn(k.follow(args.debounce, args.debounce_max, shutdown_rx.clone()));
    }
    let timing = ReloadTiming {
        poll: args.poll_interval,
        settle: args.reload_settle,
    };
    if !args.paths.is_empty() {
        tokio::spawn(control.clone().watch_files(timing, shutdown_rx.clone()));
    }
    tokio::spawn(rotate_own(
        ca.clone(),
        store.clone(),
        dns,
        shutdown_rx.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen: cannot listen on {}", args.listen))?;
    tokio::spawn(ca_grpc::serve(
        listener,
        tls,
        services,
        args.max_connections.max(1),
        shutdown_rx.clone(),
    ));

    let admin_listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("--admin: cannot listen on {}", args.admin))?;
    // The admin gate's counters are the proxy's; a control plane has no sidecar listeners, so
    // they stay out of its registry.
    let gate_metrics = ward_proxy::Metrics::register(&mut Registry::default());
    let registry = Arc::new(Mutex::new(registry));
    let admin_state = Arc::new(ControlAdmin {
        store: store.clone(),
        registry,
        proxies,
        control: control.clone(),
        status_metrics,
    });
    let router: Router = Arc::new(move |req| route(&admin_state, req));
    tokio::spawn(admin::serve_routes(
        admin_listener,
        router,
        None,
        None,
        gate_metrics,
        shutdown_rx.clone(),
    ));
    tracing::info!(
        listen = %args.listen,
        admin = %args.admin,
        identity = %server_id,
        trust_domain = %mesh.trust_domain,
        "ward control plane serving the CA and the config stream"
    );
    println!(
        "ward: control plane ready: CA and config on {} (gRPC, TLS 1.3) as {server_id}; admin on http://{}",
        args.listen, args.admin
    );

    crate::up::wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    // A leader gives its Lease up, so another replica takes over at once.
    if let Some(elector) = elector {
        let _ = tokio::time::timeout(Duration::from_secs(3), elector).await;
    }
    Ok(())
}

/// The control plane's own certificate: its SPIFFE id and `dns` names, from its own CA.
fn issue_own(ca: &CaService, id: &SpiffeId, dns: &[String]) -> anyhow::Result<WorkloadCert> {
    let key = ward_identity::generate_csr(id)?;
    let issued = ca.sign_control_plane(id, dns, &key.csr_der)?;
    Ok(WorkloadCert {
        id: id.clone(),
        key_pkcs8_der: key.key_pkcs8_der.clone(),
        issued,
    })
}

/// Renews the control plane's certificate at about half its lifetime, like a workload's.
async fn rotate_own(
    ca: Arc<CaService>,
    store: Arc<CertStore>,
    dns: Vec<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let id = store.id().clone();
    let mut renew_at = store
        .current()
        .map(|c| c.not_before + (c.not_after.duration_since(c.not_before).unwrap_or_default() / 2));
    loop {
        let wait = renew_at
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match issue_own(&ca, &id, &dns).and_then(|c| {
            store.install(&c)?;
            Ok(c.renew_at(0.5))
        }) {
            Ok(next) => {
                tracing::info!(identity = %id, "control plane certificate renewed");
                renew_at = Some(next);
            }
            Err(e) => {
                tracing::error!(identity = %id, error = %e, "control plane certificate renewal failed");
                renew_at = None;
            }
        }
    }
}

/// What the control plane's admin port reads.
struct ControlAdmin {
    store: Arc<CertStore>,
    registry: Arc<Mutex<Registry>>,
    proxies: Arc<ProxyRegistry>,
    control: Arc<ControlPlane>,
    /// `ward_config_*` of the loaded config, refreshed at each scrape.
    status_metrics: Arc<admin::ConfigMetrics>,
}

/// The control plane's admin routes: `/ready` (its certificate is installed and valid),
/// `/metrics`, `/debug/proxies` (every proxy on the config stream, as `ward proxy-status`
/// prints it) and `/debug/config` (the config status: generation, last rejection).
fn route(state: &ControlAdmin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    match req.uri().path() {
        "/ready" | "/healthz/ready" => {
            if state.store.is_ready() {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: no valid control plane certificate\n",
                )
            }
        }
        "/metrics" => {
            state.status_metrics.update(&state.control.status());
            admin::metrics_response(&state.registry)
        }
        "/debug/proxies" => {
            let body = serde_json::json!({
                "generation": state.control.status().generation,
                "proxies": state.proxies.list(),
            });
            respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&body).unwrap_or_default(),
            )
        }
        "/debug/config" => respond(
            StatusCode::OK,
            "application/json",
            serde_json::to_vec_pretty(&state.control.status()).unwrap_or_default(),
        ),
        "/" => respond(
            StatusCode::OK,
            "text/plain",
            "ward control plane admin: /ready /metrics /debug/proxies /debug/config\n",
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
