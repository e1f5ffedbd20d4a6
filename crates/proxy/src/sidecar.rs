//! One sidecar: owns the workload's certificate task, its listeners, and the reaction to config
//! pushes (listener reconciliation, re-check of open connections).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::watch;
use ward_authn::jwks_uri::OwnListener;
use ward_config::ProxyConfig;
use ward_hbone::HBONE_PORT;
use ward_identity::SpiffeId;
use ward_tls::{CertStore, CertSummary};

use crate::capture::{INBOUND_CAPTURE_PORT, OUTBOUND_CAPTURE_PORT};
use crate::certs::{run_rotation, CertificateProvider};
use crate::conntrack::ConnTracker;
use crate::inbound::{self, InboundCtx};
use crate::listener::{self, Admission, Gate};
use crate::metrics::Metrics;
use crate::outbound::{self, OutboundCtx};
use crate::pool::HbonePool;

/// How long a stopping sidecar waits for its audit writer's last checkpoint.
const AUDIT_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The workload identity in the config is not a valid SPIFFE id.
    #[error("workload {workload}: invalid identity {identity:?}: {reason}")]
    Identity {
        /// `ns/name`.
        workload: String,
        /// The identity as configured.
        identity: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The mTLS server configuration could not be built.
    #[error("workload {workload}: TLS setup failed: {reason}")]
    Tls {
        /// `ns/name`.
        workload: String,
        /// Why.
        reason: String,
    },
    /// The HBONE port could not be bound.
    #[error("workload {workload}: cannot listen on {addr}: {source}")]
    Bind {
        /// `ns/name`.
        workload: String,
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The DNS proxy could not start.
    #[error("{0}")]
    Dns(String),
}

/// The mesh-wide facts a sidecar's TLS server needs.
#[derive(Clone, Debug)]
pub struct MeshIdentity {
    /// The local trust domain.
    pub trust_domain: String,
    /// Trust domains treated as equal to it.
    pub aliases: Vec<String>,
}

/// A sidecar waiting to run.
pub struct Sidecar {
    key: String,
    id: SpiffeId,
    config: watch::Receiver<Arc<ProxyConfig>>,
    ca: Arc<dyn CertificateProvider>,
    mesh: MeshIdentity,
    metrics: Arc<Metrics>,
    /// Ward's listeners outside this sidecar (the admin API), for the JWKS fetcher.
    process_listeners: Vec<OwnListener>,
    /// The caps of this sidecar's listeners and the process-wide budget they draw from.
    admission: Admission,
    /// Serve the capture ports (15001, 15006) and the captured inbound ports
    /// (docs/capture.md). The iptables rules are installed by the caller ([`crate::capture`]).
    capture: bool,
    /// Serve the DNS proxy (docs/dns.md) with these settings, its table built from the
    /// config's service addresses.
    dns: Option<crate::dns::Settings>,
    /// Write the audit trail under this directory (`<dir>/<namespace>/<name>/`); none: no trail.
    audit_dir: Option<std::path::PathBuf>,
    handle: SidecarHandle,
    /// Break-glass grants (process-wide); none by default.
    break_glass: Arc<crate::breakglass::BreakGlass>,
}

/// What the admin API and the supervisor can see of a running sidecar. Cheap to clone.
#[derive(Clone)]
pub struct SidecarHandle {
    key: String,
    certs: Arc<CertStore>,
    /// Set by the sidecar task when every configured listener is bound.
    listeners_ready: Arc<AtomicBool>,
    /// Listener bind failures, by address; written by the sidecar task.
    problems: Arc<Mutex<Vec<String>>>,
    config: watch::Receiver<Arc<ProxyConfig>>,
    tracker: Arc<ConnTracker>,
    /// The audit trail's health; written by its writer task.
    audit: Arc<crate::audit::AuditHealth>,
    /// The certificate installed last; written by the certificate task.
    latest: Arc<crate::audit::LatestCert>,
}

impl SidecarHandle {
    /// `ns/name` of the workload.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// Certificate installed, config present, every listener bound.
    pub fn is_ready(&self) -> bool {
        self.certs.is_ready() && self.listeners_ready.load(Ordering::Acquire)
    }
    /// The current certificate, for `/certs`.
    pub fn cert(&self) -> Option<CertSummary> {
        self.certs.current()
    }
    /// The sidecar's certificate store, for a client that authenticates to the control plane
    /// with the workload's certificate (`ward proxy`'s config stream and renewals).
    pub fn cert_store(&self) -> Arc<CertStore> {
        self.certs.clone()
    }
    /// The config the sidecar is serving.
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.config.borrow().clone()
    }
    /// Why the audit trail is not being written, when it is not (docs/audit.md).
    pub fn audit_problem(&self) -> Option<String> {
        self.audit.problem()
    }
    /// Whether the workload refuses what its audit trail cannot record
    /// (`ward.dev/audit-on-failure: fail-closed`).
    pub fn audit_fail_closed(&self) -> bool {
        self.config.borrow().workload.audit_fail_closed
    }
    /// The certificate installed last, with its chain and roots (`/certs`).
    pub fn issued(&self) -> Option<Arc<ward_identity::IssuedCert>> {
        self.latest.issued()
    }
    /// Listener problems, for `/ready` and logs.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().map(|p| p.clone()).unwrap_or_default()
    }
    /// Open inbound connections.
    pub fn open_connections(&self) -> usize {
        self.tracker.len()
    }
    /// Opens one probe connection to `target` (`host:port`) as this workload would, and
    /// reports what the handshake proved and what the destination decided (`ward verify
    /// mtls`, docs/verify.md).
    pub async fn probe(&self, target: &str) -> crate::probe::ProbeReport {
        crate::probe::probe(self.certs.clone(), self.config(), target).await
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ListenerKind {
    InboundPlaintext,
    Outbound,
    /// An explicit forward proxy (Sidecar egress `port.protocol: HTTP_PROXY`).
    ForwardProxy,
    /// A Gateway server port (docs/ingress.md).
    Gateway,
}

impl Sidecar {
    /// Prepare a sidecar for the workload `key` (`ns/name`), fed by `config`, whose listeners
    /// admit connections as `admission` says.
    pub fn new(
        key: String,
        config: watch::Receiver<Arc<ProxyConfig>>,
        ca: Arc<dyn CertificateProvider>,
        mesh: MeshIdentity,
        metrics: Arc<Metrics>,
        admission: Admission,
    ) -> Result<(Sidecar, SidecarHandle), SidecarError> {
        let identity = config.borrow().workload.identity.clone();
        let id = SpiffeId::parse(&identity).map_err(|e| SidecarError::Identity {
            workload: key.clone(),
            identity: identity.clone(),
            reason: e.to_string(),
        })?;
        let handle = SidecarHandle {
            key: key.clone(),
            certs: CertStore::new(id.clone()),
            listeners_ready: Arc::new(AtomicBool::new(false)),
            problems: Arc::new(Mutex::new(Vec::new())),
            config: config.clone(),
            tracker: Arc::new(ConnTracker::default()),
            audit: Arc::default(),
            latest: Arc::default(),
        };
        Ok((
            Sidecar {
                key,
                id,
                config,
                ca,
                mesh,
                metrics,
                process_listeners: Vec::new(),
                admission,
                capture: false,
                dns: None,
                break_glass: Arc::default(),
                audit_dir: None,
                handle: handle.clone(),
            },
            handle,
        ))
    }

    /// The same sidecar, told of Ward's listeners outside it (the admin API's actual address),
    /// which its JWKS fetcher must never reach, as it never reaches the sidecar's own.
    #[must_use]
    pub fn with_process_listeners(self, listeners: Vec<OwnListener>) -> Sidecar {
        Sidecar {
            process_listeners: listeners,
            ..self
        }
    }

    /// The same sidecar, serving transparently captured traffic when `on`: the outbound capture
    /// port `127.0.0.1:15001` (and `[::1]:15001`), the inbound capture port `0.0.0.0:15006` (and
    /// `[::]:15006`; both IPv6 ones only where the namespace has IPv6), and the inbound ports
    /// of the workload's ServiceEntries ([`ProxyConfig::with_service_inbound`]). The iptables
    /// rules that send traffic there are installed apart, with [`crate::capture::install`]:
    /// one network namespace, one captured workload.
    #[must_use]
    pub fn with_capture(self, on: bool) -> Sidecar {
        Sidecar {
            capture: on,
            ..self
        }
    }

    /// The same sidecar, also answering DNS on `127.0.0.1:15053` (UDP and TCP) when `dns` is
    /// given: the names of the services the workload can see from its config's service
    /// addresses, everything else forwarded to `dns.upstreams` (docs/dns.md). The rules that
    /// redirect the app's port-53 traffic there are installed apart ([`crate::capture`]).
    #[must_use]
    pub fn with_dns(self, dns: Option<crate::dns::Settings>) -> Sidecar {
        Sidecar { dns, ..self }
    }

    /// The same sidecar, lifting its workload's AuthorizationPolicy denials while `grants`
    /// holds an active break-glass grant for it (docs/break-glass.md).
    #[must_use]
    pub fn with_break_glass(self, grants: Arc<crate::breakglass::BreakGlass>) -> Sidecar {
        Sidecar {
            break_glass: grants,
            ..self
        }
    }

    /// The same sidecar, writing its audit trail under `dir` (in `<dir>/<namespace>/<name>/`),
    /// or none (docs/audit.md).
    #[must_use]
    pub fn with_audit_dir(self, dir: Option<std::path::PathBuf>) -> Sidecar {
        Sidecar {
            audit_dir: dir,
            ..self
        }
    }

    /// The config the data path serves: with capture, the captured inbound ports too.
    fn served(&self, cfg: &Arc<ProxyConfig>) -> Arc<ProxyConfig> {
        if self.capture {
            Arc::new(cfg.with_service_inbound())
        } else {
            cfg.clone()
        }
    }

    /// Binds a capture port.
    async fn bind_capture(&self, addr: SocketAddr) -> Result<TcpListener, SidecarError> {
        TcpListener::bind(addr)
            .await
            .map_err(|source| SidecarError::Bind {
                workload: self.key.clone(),
                addr,
                source,
            })
    }

    /// Run until `shutdown` flips to true (or the config sender is dropped).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), SidecarError> {
        let h = self.handle.clone();
        let rotation = tokio::spawn(run_rotation(
            h.certs.clone(),
            self.ca.clone(),
            self.metrics.clone(),
            self.key.clone(),
            h.latest.clone(),
        ));
        let _rotation = AbortOnDrop(rotation);
        let tls =
            ward_tls::server_config(h.certs.clone(), &self.mesh.trust_domain, &self.mesh.aliases)
                .map_err(|e| SidecarError::Tls {
                workload: self.key.clone(),
                reason: e.to_string(),
            })?;
        let address = self.config.borrow().workload.address;
        let hbone_addr = SocketAddr::new(address, HBONE_PORT);
        let hbone = TcpListener::bind(hbone_addr)
            .await
            .map_err(|source| SidecarError::Bind {
                workload: self.key.clone(),
                addr: hbone_addr,
                source,
            })?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let first = self.config.borrow().clone();
        let (served_tx, served) = watch::channel(self.served(&first));
        // Without capture the data path reads the pushed config itself, as it arrives; with
        // capture, the served one this task derives from it.
        let data_config = if self.capture {
            served.clone()
        } else {
            self.config.clone()
        };
        let (audit, audit_task) = match &self.audit_dir {
            Some(dir) => crate::audit::start(
                crate::audit::trail_dir(dir, &self.key),
                &self.key,
                self.id.to_string(),
                h.latest.clone(),
                h.audit.clone(),
                self.metrics.audit(),
                stop_rx.clone(),
            ),
            None => (crate::audit::AuditSink::default(), tokio::spawn(async {})),
        };
        let tracer = Arc::new(crate::trace::Tracer::new(self.metrics.clone()));
        let inbound_ctx = Arc::new(InboundCtx {
            config: data_config.clone(),
            tracker: h.tracker.clone(),
            metrics: self.metrics.clone(),
            identity: self.id.to_string(),
            upstreams: crate::upstream::Upstreams::default(),
            authn: Arc::new(crate::jwks_fetch::AuthnState::default()),
            break_glass: self.break_glass.clone(),
            audit: audit.clone(),
            tracer: tracer.clone(),
        });
        tokio::spawn(crate::jwks_fetch::run_fetcher(
            inbound_ctx.authn.clone(),
            self.config.clone(),
            self.process_listeners.clone(),
            self.metrics.clone(),
            stop_rx.clone(),
        ));
        let outbound_ctx = Arc::new(OutboundCtx {
            config: data_config,
            pool: Arc::new(HbonePool::new(address, h.certs.clone())),
            metrics: self.metrics.clone(),
            identity: self.id.to_string(),
            routes: Default::default(),
            resolvers: Default::default(),
            originator: Default::default(),
            audit,
            tracer,
            tcp_pools: Default::default(),
        });
        let gateway_ctx = Arc::new(crate::gateway::GatewayCtx {
            outbound: outbound_ctx.clone(),
            inbound: inbound_ctx.clone(),
            certs: Default::default(),
        });
        tokio::spawn(inbound::run_hbone(
            hbone,
            tls,
            inbound_ctx.clone(),
            gateway_ctx.clone(),
            self.gate(listener::Kind::Hbone),
            stop_rx.clone(),
        ));
        if self.capture {
            let out = self.bind_capture(SocketAddr::new(
                Ipv4Addr::LOCALHOST.into(),
                OUTBOUND_CAPTURE_PORT,
            ));
            let inb = self.bind_capture(SocketAddr::new(
                Ipv4Addr::UNSPECIFIED.into(),
                INBOUND_CAPTURE_PORT,
            ));
            let (out, inb) = (out.await?, inb.await?);
            let mut outs = vec![out];
            let mut inbs = vec![inb];
            // IPv6: where the namespace has no IPv6, there is nothing to capture either.
            let v6 = |port| SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
            match (
                crate::capture::bind_v6_only(SocketAddr::new(
                    Ipv6Addr::LOCALHOST.into(),
                    OUTBOUND_CAPTURE_PORT,
                )),
                crate::capture::bind_v6_only(v6(INBOUND_CAPTURE_PORT)),
            ) {
                (Ok(out6), Ok(in6)) => {
                    outs.push(out6);
                    inbs.push(in6);
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(workload = %self.key, error = %e, "no IPv6 capture ports")
                }
            }
            for out in outs {
                tokio::spawn(outbound::run_capture_listener(
                    out,
                    outbound_ctx.clone(),
                    self.gate(listener::Kind::Outbound),
                    stop_rx.clone(),
                ));
            }
            for inb in inbs {
                tokio::spawn(inbound::run_capture_listener(
                    inb,
                    inbound_ctx.clone(),
                    self.gate(listener::Kind::Plaintext),
                    stop_rx.clone(),
                ));
            }
        }
        let dns_tx = match self.dns.clone() {
            Some(settings) => {
                let (tx, rx) = watch::channel(Arc::new(dns_table(&first)));
                let listen = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), crate::dns::PROXY_PORT);
                let server = crate::dns::DnsServer::bind(listen, settings)
                    .await
                    .map_err(|e| SidecarError::Dns(e.to_string()))?;
                tokio::spawn(server.run(rx, stop_rx.clone()));
                tracing::info!(workload = %self.key, %listen, "DNS proxy serving");
                Some(tx)
            }
            None => None,
        };
        // Each listener has its own stop switch, so reconciliation can close just one.
        let mut listeners: HashMap<(ListenerKind, SocketAddr), watch::Sender<bool>> =
            HashMap::new();
        loop {
            let cfg = self.config.borrow_and_update().clone();
            if let Some(tx) = &dns_tx {
                tx.send_replace(Arc::new(dns_table(&cfg)));
            }
            served_tx.send_replace(self.served(&cfg));
            let cfg = served.borrow().clone();
            self.reconcile(
                &cfg,
                &mut listeners,
                &inbound_ctx,
                &outbound_ctx,
                &gateway_ctx,
            )
            .await;
            let closed = h.tracker.recheck(|open| inbound::recheck(&cfg, open));
            if closed > 0 {
                tracing::info!(workload = %self.key, closed, "policy change closed open connections");
            }
            tokio::select! {
                changed = self.config.changed() => if changed.is_err() { break },
                () = crate::stopped(&mut shutdown) => break,
            }
        }
        let _ = stop_tx.send(true);
        for (_, tx) in listeners {
            let _ = tx.send(true);
        }
        // The audit writer seals the trail with a last checkpoint before the sidecar is gone.
        if tokio::time::timeout(AUDIT_CLOSE_TIMEOUT, audit_task)
            .await
            .is_err()
        {
            tracing::error!(target: "audit", workload = %self.key, "the audit trail was not closed in time: its last records may be unsealed");
        }
        Ok(())
    }

    /// A new listener's admission gate.
    fn gate(&self, kind: listener::Kind) -> Arc<Gate> {
        Gate::sidecar(kind, &self.key, &self.admission, self.metrics.clone())
    }

    async fn reconcile(
        &self,
        cfg: &ProxyConfig,
        listeners: &mut HashMap<(ListenerKind, SocketAddr), watch::Sender<bool>>,
        inbound_ctx: &Arc<InboundCtx>,
        outbound_ctx: &Arc<OutboundCtx>,
        gateway_ctx: &Arc<crate::gateway::GatewayCtx>,
    ) {
        // Captured inbound ports are reached through the inbound capture port, never bound.
        let mut want: Vec<(ListenerKind, SocketAddr)> = cfg
            .inbound
            .iter()
            .filter(|p| !cfg.service_inbound.contains(p))
            .map(|p| {
                (
                    ListenerKind::InboundPlaintext,
                    SocketAddr::new(cfg.workload.address, p.port),
                )
            })
            .collect();
        want.extend(
            cfg.outbound
                .iter()
                .map(|l| (ListenerKind::Outbound, l.bind)),
        );
        want.extend(
            cfg.egress
                .forward_proxies
                .iter()
                .map(|p| (ListenerKind::ForwardProxy, p.bind)),
        );
        want.extend(cfg.gateway.bound_ports().into_iter().map(|port| {
            (
                ListenerKind::Gateway,
                SocketAddr::new(cfg.workload.address, port),
            )
        }));
        // A bad credential is logged now; its server refuses handshakes, the others run.
        for problem in crate::gateway::check_servers(gateway_ctx, cfg) {
            tracing::debug!(workload = %self.key, "{problem}");
        }
        listeners.retain(|k, tx| {
            let keep = want.contains(k);
            if !keep {
                let _ = tx.send(true);
            }
            keep
        });
        let mut problems = Vec::new();
        for key in want {
            if listeners.contains_key(&key) {
                continue;
            }
            let listener = match TcpListener::bind(key.1).await {
                Ok(l) => l,
                Err(e) => {
                    let p = format!("cannot listen on {} ({:?}): {e}", key.1, key.0);
                    tracing::error!(workload = %self.key, "{p}");
                    problems.push(p);
                    continue;
                }
            };
            let (tx, rx) = watch::channel(false);
            match key.0 {
                ListenerKind::InboundPlaintext => {
                    let gate = self.gate(listener::Kind::Plaintext);
                    tokio::spawn(inbound::run_plaintext(
                        listener,
                        inbound_ctx.clone(),
                        gate,
                        rx,
                    ));
                }
                ListenerKind::Outbound => {
                    let gate = self.gate(listener::Kind::Outbound);
                    tokio::spawn(outbound::run_listener(
                        listener,
                        outbound_ctx.clone(),
                        gate,
                        rx,
                    ));
                }
                ListenerKind::Gateway => {
                    let gate = self.gate(listener::Kind::Outbound);
                    tokio::spawn(crate::gateway::run_port(
                        listener,
                        gateway_ctx.clone(),
                        gate,
                        rx,
                    ));
                }
                ListenerKind::ForwardProxy => {
                    let gate = self.gate(listener::Kind::Outbound);
                    tokio::spawn(crate::forward_proxy::run_listener(
                        listener,
                        outbound_ctx.clone(),
                        gate,
                        rx,
                    ));
                }
            }
            listeners.insert(key, tx);
        }
        let ready = problems.is_empty();
        if let Ok(mut p) = self.handle.problems.lock() {
            *p = problems;
        }
        self.handle.listeners_ready.store(ready, Ordering::Release);
    }
}

/// Abort a task when the owner goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The DNS proxy's table for a proxy: every service host it can see with its addresses (an
/// address range is never an answer), scoped to the workload's namespace the way a Kubernetes
/// pod's resolver searches (docs/dns.md).
fn dns_table(cfg: &ProxyConfig) -> crate::dns::DnsTable {
    let hosts = cfg.services.iter().map(|(host, service)| {
        let addresses = service
            .addresses
            .iter()
            .filter(|net| net.prefix_len() == net.max_prefix_len())
            .map(|net| net.addr())
            .collect();
        (host.clone(), addresses)
    });
    let scope = crate::dns::Scope::kubernetes(&cfg.workload.namespace, "svc.cluster.local");
    crate::dns::DnsTable::new(hosts, &scope)
}
