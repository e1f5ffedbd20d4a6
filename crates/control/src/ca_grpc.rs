//! The CA over gRPC: Istio's `istio.v1.auth.IstioCertificateService/CreateCertificate`
//! (crates/wire), served over Ward's own TLS 1.3 (`ward_tls::control_plane_server_config`).
//!
//! Every call is authenticated, then bound to exactly one workload identity, then signed:
//! - a client certificate presented in the handshake (a renewal) is the credential: its SPIFFE
//!   id, which must still belong to a WorkloadEntry of the loaded config; a token sent beside it
//!   is not read;
//! - otherwise `authorization: Bearer <bootstrap token>` (a first request): the token's
//!   workload (`namespace/name`) must be a WorkloadEntry of the loaded config, and its
//!   `serviceAccount`, namespace and the trust domain give the identity;
//! - otherwise the call is refused (`UNAUTHENTICATED`).
//!
//! The CSR must then ask for exactly that identity ([`ward_ca::Ca::sign`] checks it;
//! `PERMISSION_DENIED` otherwise). Every refusal is logged with the peer address and the
//! reason, never with the token. The decision ([`bind`]) is a function of the credential, the
//! config snapshot and the time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tonic::{Code, Request, Response, Status};

use ward_ca::{CaError, CsrError};
use ward_config::MeshSnapshot;
use ward_identity::SpiffeId;
use ward_wire::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use ward_wire::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};

use crate::bootstrap::{BootstrapError, TokenKey};
use crate::config_grpc::ConfigGrpc;
use crate::{CaService, ControlPlane};

/// The service account of the control plane's own identity, in the mesh's root namespace:
/// `spiffe://<trust domain>/ns/<root namespace>/sa/ward-control-plane`.
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "ward-control-plane";

/// The port Istio's CA and XDS server (istiod) listen on for proxies, and Ward's default.
pub const DEFAULT_PORT: u16 = 15012;

/// Longest request accepted (a CSR is under 1 KiB).
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;
/// Time a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once by default (`ward control-plane --max-connections`); more are
/// closed at accept. Each connected proxy holds one.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// The control plane's SPIFFE id in a mesh.
pub fn control_plane_identity(
    trust_domain: &str,
    root_namespace: &str,
) -> Result<SpiffeId, ward_identity::IdentityError> {
    SpiffeId::new(trust_domain, root_namespace, CONTROL_PLANE_SERVICE_ACCOUNT)
}

/// The DNS name in the control plane's certificate beside its SPIFFE id, for gRPC clients that
/// check a host name (`grpc.ssl_target_name_override`): `ward-control-plane.<root ns>.svc`.
pub fn control_plane_dns_name(root_namespace: &str) -> String {
    format!("{CONTROL_PLANE_SERVICE_ACCOUNT}.{root_namespace}.svc")
}

/// What the TLS handshake proved about the caller; put on each request of the connection.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The SPIFFE id of the verified client certificate, if one was presented.
    pub certificate: Option<SpiffeId>,
}

/// A request's credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A verified client certificate's identity.
    Certificate(SpiffeId),
    /// A bearer token (not yet verified).
    Token(String),
    /// Nothing.
    None,
}

/// Why a call was refused: the gRPC code and a message for the caller and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `UNAUTHENTICATED`, `PERMISSION_DENIED`, `INVALID_ARGUMENT` or `INTERNAL`.
    pub code: Code,
    /// Why, without any secret.
    pub reason: String,
}

impl Refusal {
    fn new(code: Code, reason: impl Into<String>) -> Self {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

/// The one identity a call may get a certificate for, and how the caller proved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The identity the CSR must ask for.
    pub identity: SpiffeId,
    /// `"certificate"` or `"token"`.
    pub via: &'static str,
    /// The workload a token named (`namespace/name`).
    pub workload: Option<String>,
}

/// The credential of a request: the client certificate if one was verified, else the
/// `authorization` header's bearer token.
pub fn credential(
    certificate: Option<SpiffeId>,
    authorization: Option<&[u8]>,
) -> Result<Credential, Refusal> {
    if let Some(id) = certificate {
        return Ok(Credential::Certificate(id));
    }
    let Some(value) = authorization else {
        return Ok(Credential::None);
    };
    let value = std::str::from_utf8(value)
        .map_err(|_| Refusal::new(Code::Unauthenticated, "authorization header is not text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Refusal::new(
                Code::Unauthenticated,
                "authorization header is not `Bearer <token>`",
            )
        })?;
    Ok(Credential::Token(token.to_owned()))
}

/// Decides which identity `credential` may get a certificate for, against the loaded config
/// `snap` at `now`.
pub fn bind(
    credential: &Credential,
    snap: &MeshSnapshot,
    tokens: &TokenKey,
    audience: &str,
    now: SystemTime,
) -> Result<Binding, Refusal> {
    match credential {
        Credential::None => Err(Refusal::new(
            Code::Unauthenticated,
            "no credentials: send a bootstrap token (authorization: Bearer) or a client certificate",
        )),
        Credential::Certificate(id) => {
            let text = id.to_string();
            if !snap.proxies.values().any(|p| p.workload.identity == text) {
                return Err(Refusal::new(
                    Code::PermissionDenied,
                    format!("client certificate identity {id} belongs to no WorkloadEntry in the config"),
                ));
            }
            Ok(Binding {
                identity: id.clone(),
                via: "certificate",
                workload: None,
            })
        }
        Credential::Token(token) => {
            let claims = tokens
                .verify(token, audience, now)
                .map_err(|e| token_refusal(&e))?;
            let proxy = snap.proxies.get(&claims.sub).ok_or_else(|| {
                Refusal::new(
                    Code::PermissionDenied,
                    format!(
                        "bootstrap token is for workload {}, which is not a WorkloadEntry in the config",
                        claims.sub
                    ),
                )
            })?;
            let identity = SpiffeId::parse(&proxy.workload.identity).map_err(|e| {
                Refusal::new(
                    Code::Internal,
                    format!("workload {} has no valid identity: {e}", claims.sub),
                )
            })?;
            Ok(Binding {
                identity,
                via: "token",
                workload: Some(claims.sub),
            })
        }
    }
}

fn token_refusal(e: &BootstrapError) -> Refusal {
    Refusal::new(
        Code::Unauthenticated,
        format!("bootstrap token refused: {e}"),
    )
}

/// Counts of certificate requests by result, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct CaMetrics {
    requests: Family<Vec<(String, String)>, Counter>,
    handshake_failures: Counter,
}

impl CaMetrics {
    /// Registers `ward_ca_requests_total{result}` and `ward_ca_handshake_failures_total`.
    pub fn register(registry: &mut Registry) -> CaMetrics {
        let m = CaMetrics::default();
        registry.register(
            "ward_ca_requests",
            "CreateCertificate calls, by result (issued or the gRPC code of the refusal)",
            m.requests.clone(),
        );
        registry.register(
            "ward_ca_handshake_failures",
            "Connections to the CA port whose TLS handshake failed",
            m.handshake_failures.clone(),
        );
        m
    }

    fn count(&self, result: &str) {
        self.requests
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc();
    }
}

/// The gRPC CA service.
#[derive(Clone)]
pub struct CaGrpc {
    inner: Arc<Inner>,
}

struct Inner {
    ca: Arc<CaService>,
    control: Arc<ControlPlane>,
    tokens: Arc<TokenKey>,
    audience: String,
    metrics: CaMetrics,
}

impl CaGrpc {
    /// A service signing with `ca`, binding callers with `control`'s loaded config and
    /// verifying tokens with `tokens` for `audience` (see [`crate::bootstrap::audience_of_root`]).
    pub fn new(
        ca: Arc<CaService>,
        control: Arc<ControlPlane>,
        tokens: Arc<TokenKey>,
        audience: String,
        metrics: CaMetrics,
    ) -> CaGrpc {
        CaGrpc {
            inner: Arc::new(Inner {
                ca,
                control,
                tokens,
                audience,
                metrics,
            }),
        }
    }

    /// Authenticates, binds and signs one request.
    fn handle(
        &self,
        caller: &Caller,
        authorization: Option<&[u8]>,
        request: &IstioCertificateRequest,
    ) -> Result<(Binding, IstioCertificateResponse, String), Refusal> {
        let inner = &self.inner;
        let credential = credential(caller.certificate.clone(), authorization)?;
        let snap = inner.control.snapshot().borrow().clone();
        let binding = bind(
            &credential,
            &snap,
            &inner.tokens,
            &inner.audience,
            SystemTime::now(),
        )?;
        let csr = csr_der(&request.csr)?;
        let requested = u64::try_from(request.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let issued = inner
            .ca
            .sign_requested(&binding.identity, &csr, requested)
            .map_err(|e| sign_refusal(&binding.identity, e))?;
        let cert_chain = issued
            .chain_der
            .iter()
            .chain(issued.roots_der.iter())
            .map(|der| pem_certificate(der))
            .collect();
        Ok((
            binding,
            IstioCertificateResponse { cert_chain },
            issued.serial,
        ))
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaGrpc {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let Some(caller) = request.extensions().get::<Caller>().cloned() else {
            return Err(Status::internal("no connection information"));
        };
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes().to_vec());
        match self.handle(&caller, authorization.as_deref(), request.get_ref()) {
            Ok((binding, response, serial)) => {
                tracing::info!(
                    peer = %caller.addr,
                    identity = %binding.identity,
                    via = binding.via,
                    workload = binding.workload.as_deref().unwrap_or("-"),
                    serial = %serial,
                    "certificate issued"
                );
                self.inner.metrics.count("issued");
                Ok(Response::new(response))
            }
            Err(refusal) => {
                tracing::warn!(
                    peer = %caller.addr,
                    code = ?refusal.code,
                    reason = %refusal.reason,
                    "certificate request refused"
                );
                self.inner.metrics.count(&format!("{:?}", refusal.code));
                Err(Status::new(refusal.code, refusal.reason))
            }
        }
    }
}

/// The CSR's DER from its PEM (`CERTIFICATE REQUEST`, or OpenSSL's older `NEW CERTIFICATE
/// REQUEST`).
fn csr_der(text: &str) -> Result<Vec<u8>, Refusal> {
    let block = pem::parse(text)
        .map_err(|_| Refusal::new(Code::InvalidArgument, "csr is not a PEM block"))?;
    if !matches!(
        block.tag(),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
    ) {
        return Err(Refusal::new(
            Code::InvalidArgument,
            "csr is not a PEM CERTIFICATE REQUEST",
        ));
    }
    Ok(block.into_contents())
}

fn sign_refusal(identity: &SpiffeId, e: CaError) -> Refusal {
    match e {
        CaError::Csr(CsrError::San { reason }) => Refusal::new(
            Code::PermissionDenied,
            format!("the CSR must ask for exactly {identity}, the identity this caller is bound to ({reason})"),
        ),
        CaError::Csr(e) => Refusal::new(Code::InvalidArgument, e.to_string()),
        e => {
            tracing::error!(error = %e, "the CA cannot sign");
            Refusal::new(Code::Internal, "the CA cannot sign")
        }
    }
}

fn pem_certificate(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// What the control plane's port serves: the CA and the config stream.
#[derive(Clone)]
pub struct Services {
    /// `istio.v1.auth.IstioCertificateService`.
    pub ca: CaGrpc,
    /// `ward.config.v1.ProxyConfigService`.
    pub config: ConfigGrpc,
}

/// The config stream's path prefix; every other path goes to the CA service.
const CONFIG_PATH: &str = "/ward.config.v1.ProxyConfigService/";

/// How often the server pings an idle connection, and how long it waits for the answer before
/// closing it: a proxy that vanished without closing its stream is dropped within a minute.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `services` on `listener` over TLS (`tls`: `ward_tls::control_plane_server_config`),
/// at most `max_connections` at once, until `shutdown` flips to true. A failed handshake
/// (plaintext, TLS 1.2, a certificate from another CA) closes the connection and is logged.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    services: Services,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "control plane: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(peer = %addr, "control plane: too many connections, closing");
            continue;
        };
        let (acceptor, services) = (acceptor.clone(), services.clone());
        tokio::spawn(async move {
            serve_connection(tcp, addr, acceptor, services).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    services: Services,
) {
    let _ = tcp.set_nodelay(true);
    let metrics = services.ca.inner.metrics.clone();
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(peer = %addr, error = %e, "control plane TLS handshake refused");
            metrics.handshake_failures.inc();
            return;
        }
        Err(_) => {
            tracing::warn!(peer = %addr, "control plane TLS handshake timed out");
            metrics.handshake_failures.inc();
            return;
        }
    };
    let caller = Caller {
        addr,
        certificate: ward_tls::peer_info(tls.get_ref().1).identity,
    };
    let ca = IstioCertificateServiceServer::new(services.ca).max_decoding_message_size(MAX_MESSAGE);
    let config = services.config;
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(caller.clone());
            let (mut ca, config, caller) = (ca.clone(), config.clone(), caller.clone());
            async move {
                if req.uri().path().starts_with(CONFIG_PATH) {
                    Ok(config.serve(caller, req).await)
                } else {
                    tower::Service::call(&mut ca, req).await
                }
            }
        });
    let served = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(KEEPALIVE_INTERVAL))
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(peer = %addr, error = %e, "control plane connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_prefers_the_certificate_and_reads_only_bearer_tokens() {
        let id = SpiffeId::new("cluster.local", "ns", "a").unwrap();
        assert_eq!(
            credential(Some(id.clone()), Some(b"Bearer x")),
            Ok(Credential::Certificate(id))
        );
        assert_eq!(
            credential(None, Some(b"Bearer abc")),
            Ok(Credential::Token("abc".into()))
        );
        assert_eq!(credential(None, None), Ok(Credential::None));
        for bad in [&b"Basic abc"[..], b"Bearer ", b"abc", b"\xff"] {
            let e = credential(None, Some(bad)).unwrap_err();
            assert_eq!(e.code, Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn csr_must_be_a_pem_request() {
        assert_eq!(
            csr_der(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            ),
            Ok(vec![0, 0, 0])
        );
        for bad in [
            "",
            "AAAA",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            assert_eq!(csr_der(bad).unwrap_err().code, Code::InvalidArgument);
        }
    }

    const MESH: &str = r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: a
  namespace: app
spec:
  address: 127.0.0.10
  serviceAccount: sa-a
"#;

    fn snapshot() -> Arc<MeshSnapshot> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
        let Ok(control) = ControlPlane::start(vec![dir.path().to_owned()]) else {
            panic!("config refused");
        };
        let snap = control.snapshot().borrow().clone();
        snap
    }

    #[test]
    fn bind_gives_the_config_identity_of_the_token_workload_or_the_certificate() {
        let snap = snapshot();
        let state = tempfile::tempdir().unwrap();
        let tokens = TokenKey::load_or_create(state.path()).unwrap();
        let now = SystemTime::now();
        let aud = "ward-control-plane:x";
        let token = |w: &str| tokens.issue(w, aud, now, Duration::from_secs(60)).unwrap();
        let sa_a = SpiffeId::parse("spiffe://cluster.local/ns/app/sa/sa-a").unwrap();

        // The identity comes from the WorkloadEntry's serviceAccount, not from its name.
        let bound = bind(&Credential::Token(token("app/a")), &snap, &tokens, aud, now).unwrap();
        assert_eq!(bound.identity, sa_a);
        assert_eq!(bound.workload.as_deref(), Some("app/a"));
        let bound = bind(
            &Credential::Certificate(sa_a.clone()),
            &snap,
            &tokens,
            aud,
            now,
        )
        .unwrap();
        assert_eq!((bound.identity, bound.via), (sa_a, "certificate"));

        let stranger = SpiffeId::parse("spiffe://cluster.local/ns/app/sa/a").unwrap();
        let cases = [
            (
                Credential::Token(token("app/gone")),
                Code::PermissionDenied,
                "not a WorkloadEntry",
            ),
            (
                Credential::Certificate(stranger),
                Code::PermissionDenied,
                "belongs to no WorkloadEntry",
            ),
            (Credential::None, Code::Unauthenticated, "no credentials"),
            (
                Credential::Token("x.y.z".into()),
                Code::Unauthenticated,
                "bootstrap token refused",
            ),
        ];
        for (credential, code, why) in cases {
            let refusal = bind(&credential, &snap, &tokens, aud, now).unwrap_err();
            assert_eq!(refusal.code, code, "{credential:?}");
            assert!(
                refusal.reason.contains(why),
                "{credential:?}: {}",
                refusal.reason
            );
        }
    }
}
