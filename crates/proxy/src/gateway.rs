//! The gateway workload's server ports (docs/ingress.md): a workload that Gateways select by its
//! labels serves each server port on its address, besides its HBONE port. The plan of every
//! server comes pure from the config ([`ward_config::gateways`]); this module binds nothing itself
//! (the sidecar reconciles the ports) and carries out, per connection:
//! - HTTP, HTTP2, GRPC: HTTP requests, routed by the server's VirtualServices
//!   (`crate::egress_http::serve_edge`);
//! - HTTPS: TLS terminated with the certificate of the server the ClientHello's SNI selects
//!   (SIMPLE, MUTUAL, OPTIONAL_MUTUAL), then HTTP as above;
//! - TLS with PASSTHROUGH: the ClientHello is peeked, its SNI picks a `tls[]` route, and the
//!   bytes go untouched to the destination (which does its own TLS); TLS with a terminating
//!   mode: terminated, then a `tcp[]` route;
//! - TCP: a `tcp[]` route.
//!
//! Every forward goes into the mesh over HBONE with the gateway's own certificate
//! (`crate::outbound::connect`), so the destination sees the gateway's SPIFFE id.
//!
//! Server certificates are built once per server and rebuilt when the server's settings change
//! (a Secret changes with the configuration) or one of its files changes on disk (size or
//! modification time, checked at each connection), as TLS origination does
//! (`crate::originate`). A credential that cannot be used keeps that server's handshakes
//! refused, logged once per change with the Gateway, the server and the file or Secret; the
//! other servers keep running.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use ward_config::gateways::{EdgeProtocol, EdgeServer, EdgeTls, L4Decision};
use ward_config::istio::{ServerTlsMode, TlsProtocol};
use ward_config::origination::Material;
use ward_config::ProxyConfig;

use crate::access_log::{ConnRecord, Direction};
use crate::connection::{ConnResult, End, InboundConn};
use crate::egress_http::Edge;
use crate::inbound::InboundCtx;
use crate::listener::Gate;
use crate::originate::{read, stamp, Stamp};
use crate::outbound::{OutboundCtx, Route, Upstream};
use crate::refusal::{Refusal, ResponseFlag};
use crate::splice::splice;

/// How long a client may take to send its ClientHello and finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every gateway connection of one workload shares.
pub(crate) struct GatewayCtx {
    /// The outbound side: config, HBONE pool with the gateway's certificate, metrics.
    pub(crate) outbound: Arc<OutboundCtx>,
    /// The inbound side: the JWT keys of the gateway's RequestAuthentications.
    pub(crate) inbound: Arc<InboundCtx>,
    /// Server certificates, by server.
    pub(crate) certs: EdgeCerts,
}

/// Serve one gateway port until `shutdown` flips to true.
pub(crate) async fn run_port(
    listener: TcpListener,
    ctx: Arc<GatewayCtx>,
    gate: Arc<Gate>,
    shutdown: watch::Receiver<bool>,
) {
    let Ok(bind) = listener.local_addr() else {
        return;
    };
    crate::listener::accept_loop(listener, gate, shutdown, move |tcp, src, permit| {
        let ctx = ctx.clone();
        async move {
            serve_connection(ctx, tcp, src, bind).await;
            drop(permit);
        }
    })
    .await
}

/// Checks every TLS server's credential now, so a bad one is logged when the config arrives
/// rather than at the first client; returns the problems (`Gateway ns/name spec.servers[i]:
/// why`).
pub(crate) fn check_servers(ctx: &GatewayCtx, cfg: &ProxyConfig) -> Vec<String> {
    cfg.gateway
        .servers()
        .iter()
        .filter(|s| terminates(s))
        .filter_map(|s| ctx.certs.config(s).err())
        .collect()
}

/// Whether the gateway terminates TLS on this server.
fn terminates(s: &EdgeServer) -> bool {
    s.tls.as_ref().is_some_and(|t| {
        matches!(
            t.mode,
            ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
        )
    })
}

async fn serve_connection(ctx: Arc<GatewayCtx>, tcp: TcpStream, src: SocketAddr, bind: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let cfg = ctx.outbound.config.borrow().clone();
    let port = bind.port();
    let on_port = cfg.gateway.on_port(port);
    let Some(first) = on_port.first().and_then(|i| cfg.gateway.servers().get(*i)) else {
        crate::reset_on_close(&tcp);
        return;
    };
    match first.protocol {
        EdgeProtocol::Http | EdgeProtocol::Http2 => {
            let edge = Edge {
                port,
                tls: false,
                server: None,
                peer: None,
            };
            crate::egress_http::serve_edge(
                ctx.outbound.clone(),
                ctx.inbound.clone(),
                tcp,
                src,
                bind,
                edge,
            )
            .await;
        }
        EdgeProtocol::Tls if !terminates(first) => {
            serve_passthrough(&ctx, &cfg, tcp, src, bind).await;
        }
        EdgeProtocol::Https | EdgeProtocol::Tls => {
            serve_terminated(&ctx, &cfg, tcp, src, bind, first.protocol).await;
        }
        EdgeProtocol::Tcp => {
            let index = on_port[0];
            let decision = cfg.gateway.decide_tcp(index, fastrand::u32(..));
            forward_l4(&ctx, &cfg, tcp, src, bind, decision).await;
        }
    }
}

/// An HBONE `CONNECT` from a mesh workload to one of the gateway's server ports (how sidecars
/// reach an egress gateway: docs/egress.md, "Egress gateway"). The mesh's mTLS is the hop's
/// TLS, so what the tunnel carries is served as the server's plaintext would be: HTTP (an
/// `HTTP`, `HTTP2`, `GRPC` server, or an `HTTPS` server with `ISTIO_MUTUAL`) request by request,
/// with the peer's verified SPIFFE id for the gateway's AuthorizationPolicy; a `TCP` server (or
/// `TLS` with `ISTIO_MUTUAL`) by its `tcp[]` route once the policy allows the connection. A
/// port whose servers terminate TLS themselves (SIMPLE, MUTUAL) or pass it through is not
/// served over HBONE yet: the CONNECT is refused (404).
pub(crate) async fn serve_tunnel(
    ctx: Arc<GatewayCtx>,
    req: ward_hbone::ConnectRequest,
    conn: Arc<InboundConn>,
    mut result: ConnResult,
) {
    let cfg = ctx.outbound.config.borrow().clone();
    let port = conn.dst.port();
    let servers: Vec<&EdgeServer> = cfg
        .gateway
        .on_port(port)
        .into_iter()
        .filter_map(|i| cfg.gateway.servers().get(i))
        .collect();
    let kind = servers.first().map(|s| (s.protocol, s.mesh_only()));
    let http = matches!(
        kind,
        Some((EdgeProtocol::Http | EdgeProtocol::Http2, _) | (EdgeProtocol::Https, true))
    );
    let tcp = matches!(
        kind,
        Some((EdgeProtocol::Tcp, _) | (EdgeProtocol::Tls, true))
    );
    if !http && !tcp {
        req.reject(http::StatusCode::NOT_FOUND);
        return result.finish(End::Refused(Refusal::downstream(
            ResponseFlag::NoRoute,
            format!("gateway port {port} is not served over HBONE (TLS terminated or passed through at the gateway)"),
        )));
    }
    if http {
        let tunnel = match req.accept() {
            Ok(t) => t,
            Err(e) => {
                return result.finish(End::Refused(Refusal::downstream(
                    ResponseFlag::None,
                    e.to_string(),
                )))
            }
        };
        result.opened();
        let edge = Edge {
            port,
            tls: true,
            server: None,
            peer: Some(conn.clone()),
        };
        let bind = conn.dst;
        let src = conn.src;
        crate::egress_http::serve_edge(
            ctx.outbound.clone(),
            ctx.inbound.clone(),
            tunnel,
            src,
            bind,
            edge,
        )
        .await;
        return result.finish(End::Served { sent: 0, recv: 0 });
    }
    // TCP: the connection is decided at L4, as a sidecar's inbound TCP port is.
    let decision = cfg.authz.evaluate_l4(&conn.l4());
    crate::inbound::log_dry_run_and_audit(&decision, conn.src, conn.peer_id.as_deref(), conn.dst);
    let workload = format!("{}/{}", cfg.workload.namespace, cfg.workload.name);
    ctx.outbound.metrics.authz_decision(&workload, &decision);
    if !decision.is_allowed() {
        req.reject(http::StatusCode::UNAUTHORIZED);
        return result.finish(End::Refused(Refusal::denied_by(&decision)));
    }
    let index = cfg.gateway.on_port(port).first().copied();
    let decision = index.and_then(|i| cfg.gateway.decide_tcp(i, fastrand::u32(..)));
    let (mut out, upstream) = connect_l4(&ctx, &cfg, conn.src, conn.dst, decision).await;
    let upstream = match upstream {
        Ok(u) => u,
        Err(refusal) => {
            req.reject(http::StatusCode::SERVICE_UNAVAILABLE);
            out.finish(End::Refused(refusal.clone()));
            return result.finish(End::Refused(refusal));
        }
    };
    let mut tunnel = match req.accept() {
        Ok(t) => t,
        Err(e) => {
            let refusal = Refusal::downstream(ResponseFlag::None, e.to_string());
            out.finish(End::Refused(refusal.clone()));
            return result.finish(End::Refused(refusal));
        }
    };
    result.opened();
    out.opened();
    let end = match upstream {
        Upstream::Tunnel(mut t) => splice(&mut tunnel, &mut t, None).await,
        Upstream::Plain(mut s) => splice(&mut tunnel, &mut s, None).await,
        Upstream::Tls(mut s) => splice(&mut tunnel, &mut *s, None).await,
    };
    out.finish(End::from_splice(end));
    result.finish(End::Served { sent: 0, recv: 0 });
}

/// TLS terminated with the certificate of the server the SNI selects; then HTTP (HTTPS) or a
/// `tcp[]` route (TLS).
async fn serve_terminated(
    ctx: &Arc<GatewayCtx>,
    cfg: &Arc<ProxyConfig>,
    tcp: TcpStream,
    src: SocketAddr,
    bind: SocketAddr,
    protocol: EdgeProtocol,
) {
    let port = bind.port();
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::debug!(%src, error = %e, "gateway: no TLS ClientHello");
            return;
        }
        Err(_) => return,
    };
    let sni = start
        .client_hello()
        .server_name()
        .map(|s| s.to_ascii_lowercase());
    let Some(index) = cfg.gateway.server_for_sni(port, sni.as_deref()) else {
        tracing::info!(%src, port, sni = sni.as_deref(), "gateway: no server for this SNI");
        return;
    };
    let Some(server) = cfg.gateway.servers().get(index) else {
        return;
    };
    let config = match ctx.certs.config(server) {
        Ok(c) => c,
        Err(_) => return, // Logged when the credential was built.
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%src, port, sni = sni.as_deref(), error = %e, "gateway: TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    if protocol == EdgeProtocol::Https {
        let edge = Edge {
            port,
            tls: true,
            server: Some(index),
            peer: None,
        };
        crate::egress_http::serve_edge(
            ctx.outbound.clone(),
            ctx.inbound.clone(),
            crate::splice::TlsOverTcp::new(tls, false),
            src,
            bind,
            edge,
        )
        .await;
        return;
    }
    let decision = cfg.gateway.decide_tcp(index, fastrand::u32(..));
    let (mut result, upstream) = connect_l4(ctx, cfg, src, bind, decision).await;
    // A client that ends without close_notify has cut the stream: the splice ends as a failure.
    let mut tls = crate::splice::TlsOverTcp::new(tls, false);
    let end = match upstream {
        Ok(Upstream::Tunnel(mut t)) => {
            result.opened();
            End::from_splice(splice(&mut tls, &mut t, None).await)
        }
        Ok(Upstream::Plain(mut s)) => {
            result.opened();
            End::from_splice(splice(&mut tls, &mut s, None).await)
        }
        Ok(Upstream::Tls(mut s)) => {
            result.opened();
            End::from_splice(splice(&mut tls, &mut *s, None).await)
        }
        Err(refusal) => End::Refused(refusal),
    };
    result.finish(end);
}

/// PASSTHROUGH: the SNI of the peeked ClientHello picks a `tls[]` route; the bytes go on
/// untouched.
async fn serve_passthrough(
    ctx: &Arc<GatewayCtx>,
    cfg: &Arc<ProxyConfig>,
    tcp: TcpStream,
    src: SocketAddr,
    bind: SocketAddr,
) {
    let sniffed = crate::blackhole::peek_sniff(&tcp, HANDSHAKE_TIMEOUT).await;
    let sni = match &sniffed {
        crate::sniff::Sniffed::Tls { sni } => sni.clone(),
        _ => None,
    };
    let decision = sni.as_deref().and_then(|sni| {
        let index = cfg.gateway.server_for_sni(bind.port(), Some(sni))?;
        cfg.gateway.decide_tls(index, sni, fastrand::u32(..))
    });
    forward_l4(ctx, cfg, tcp, src, bind, decision).await;
}

/// Connect to an L4 route's destination (over HBONE for mesh endpoints), with the access
/// record of the connection.
async fn connect_l4(
    ctx: &Arc<GatewayCtx>,
    cfg: &Arc<ProxyConfig>,
    src: SocketAddr,
    bind: SocketAddr,
    decision: Option<L4Decision>,
) -> (ConnResult, Result<Upstream, Refusal>) {
    let mut rec = ConnRecord::new(Direction::Outbound, src, bind);
    rec.src_workload = Some(format!("{}/{}", cfg.workload.namespace, cfg.workload.name));
    rec.src_namespace = Some(cfg.workload.namespace.clone());
    rec.src_identity = Some(ctx.outbound.identity.clone());
    rec.telemetry(cfg);
    // A gateway's connections are its SERVER side (Telemetry `accessLogging`).
    rec.logged = cfg.access_logging.server.logs(None);
    rec.src_meta = Some(crate::inbound::own_meta(cfg));
    let mut result = ConnResult::new(rec, ctx.outbound.metrics.clone());
    let Some(decision) = decision else {
        let refusal = Refusal::downstream(ResponseFlag::NoRoute, "no tcp or tls route");
        return (result, Err(refusal));
    };
    let upstream = match l4_route(cfg, &decision, bind.port()) {
        Ok(route) => crate::outbound::connect_any(&ctx.outbound, cfg, &route, &mut result).await,
        Err(refusal) => {
            result.record().dst_service = Some(decision.destination.host.clone());
            Err(refusal)
        }
    };
    (result, upstream)
}

async fn forward_l4(
    ctx: &Arc<GatewayCtx>,
    cfg: &Arc<ProxyConfig>,
    tcp: TcpStream,
    src: SocketAddr,
    bind: SocketAddr,
    decision: Option<L4Decision>,
) {
    let (result, upstream) = connect_l4(ctx, cfg, src, bind, decision).await;
    crate::outbound::finish_spliced(tcp, upstream, result).await;
}

/// The endpoints an L4 destination names: the service's port (the destination's, else the
/// only one, else the server's), load-balanced from a random start. Pure.
fn l4_route(cfg: &ProxyConfig, decision: &L4Decision, server_port: u16) -> Result<Route, Refusal> {
    let d = &decision.destination;
    let no_cluster = |why: String| Refusal::internal(ResponseFlag::NoClusterFound, why);
    let service = cfg
        .services
        .get(&d.host)
        .ok_or_else(|| no_cluster(format!("{} is not a service the gateway sees", d.host)))?;
    let number = match (d.port, service.ports.as_slice()) {
        (Some(p), _) => p,
        (None, [only]) => only.number,
        (None, _) => server_port,
    };
    let port = service
        .ports
        .iter()
        .find(|p| p.number == number)
        .ok_or_else(|| no_cluster(format!("{number} is not a port of {}", d.host)))?;
    let policy = cfg.mesh_routes.destination(&d.host);
    let (endpoints, _) = ward_config::traffic_policy::DestinationPolicy::endpoints(
        policy,
        &d.host,
        d.subset.as_deref(),
        &port.endpoints,
    )
    .map_err(|e| no_cluster(e.to_string()))?;
    let mut endpoints: Vec<_> = endpoints.into_iter().cloned().collect();
    if !endpoints.is_empty() {
        let n = fastrand::usize(..endpoints.len());
        endpoints.rotate_left(n);
    }
    Ok(Route {
        service: d.host.clone(),
        endpoints,
        tls: None,
        pool: crate::outbound::TcpPolicy::of(cfg, &d.host, d.subset.as_deref(), number),
    })
}

/// Server TLS configs by server (`Gateway ns/name spec.servers[i]`).
#[derive(Default)]
pub(crate) struct EdgeCerts {
    cache: Mutex<HashMap<String, Built>>,
}

struct Built {
    tls: EdgeTls,
    stamps: Vec<Stamp>,
    config: Result<Arc<ServerConfig>, String>,
}

impl EdgeCerts {
    /// The TLS config of a terminating server, built or rebuilt when its settings or files
    /// changed; `Err` names the Gateway, the server and what is wrong (never key material).
    pub(crate) fn config(&self, server: &EdgeServer) -> Result<Arc<ServerConfig>, String> {
        let key = format!("Gateway {} {}", server.gateway, server.field);
        let Some(tls) = &server.tls else {
            return Err(format!("{key}: no tls settings"));
        };
        let stamps: Vec<Stamp> = files(tls).iter().map(|p| stamp(p)).collect();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(built) = cache.get(&key) {
            if built.tls == *tls && built.stamps == stamps {
                return built.config.clone();
            }
        }
        let alpn = server.protocol == EdgeProtocol::Https;
        let config = build(tls, alpn)
            .map(Arc::new)
            .map_err(|why| format!("{key} (port {}): {why}", server.port));
        match &config {
            Ok(_) => {
                tracing::info!(server = %key, port = server.port, "gateway server certificate loaded")
            }
            Err(why) => tracing::error!(
                server = %key,
                port = server.port,
                "gateway server off: its credential cannot be used: {why}"
            ),
        }
        cache.insert(
            key,
            Built {
                tls: tls.clone(),
                stamps,
                config: config.clone(),
            },
        );
        config
    }
}

fn files(tls: &EdgeTls) -> Vec<String> {
    [&tls.certificate, &tls.private_key, &tls.ca]
        .into_iter()
        .filter_map(|m| match m {
            Some(Material::File(p)) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// OpenSSL cipher names (what `cipherSuites` lists, as Envoy takes them) and the rustls suites
/// they are. rustls has no CBC or RSA-key-exchange suites: those names are not served
/// (docs/ingress.md). TLS 1.3 suites are not configurable, in Envoy either.
const CIPHERS: &[(&str, &str)] = &[
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// The crypto provider for a server: aws-lc-rs, its TLS 1.2 suites narrowed to `cipherSuites`.
fn provider(ciphers: &[String]) -> Result<CryptoProvider, String> {
    let mut provider = aws_lc_rs::default_provider();
    if ciphers.is_empty() {
        return Ok(provider);
    }
    let wanted: Vec<&str> = ciphers
        .iter()
        .filter_map(|c| CIPHERS.iter().find(|(o, _)| o == c).map(|(_, r)| *r))
        .collect();
    if wanted.is_empty() {
        return Err(format!(
            "cipherSuites: none of {} is served by rustls (it serves {})",
            ciphers.join(", "),
            CIPHERS
                .iter()
                .map(|(o, _)| *o)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    provider.cipher_suites.retain(|s| match s {
        rustls::SupportedCipherSuite::Tls13(_) => true,
        rustls::SupportedCipherSuite::Tls12(_) => {
            let name = format!("{:?}", s.suite());
            wanted.contains(&name.as_str())
        }
    });
    Ok(provider)
}

/// The versions `minProtocolVersion`/`maxProtocolVersion` allow; rustls serves TLS 1.2 and 1.3
/// only, so a minimum of 1.0 or 1.1 is 1.2.
fn versions(tls: &EdgeTls) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let min13 = tls.min_version == Some(TlsProtocol::TlsV1_3);
    let max12 = matches!(
        tls.max_version,
        Some(TlsProtocol::TlsV1_0 | TlsProtocol::TlsV1_1 | TlsProtocol::TlsV1_2)
    );
    let mut out = Vec::new();
    if !min13 {
        out.push(&rustls::version::TLS12);
    }
    if !max12 {
        out.push(&rustls::version::TLS13);
    }
    if out.is_empty() {
        return Err("minProtocolVersion is above maxProtocolVersion".to_owned());
    }
    Ok(out)
}

/// Build the server config `tls` describes.
fn build(tls: &EdgeTls, alpn: bool) -> Result<ServerConfig, String> {
    if let Some(why) = &tls.broken {
        return Err(why.clone());
    }
    let cert = tls
        .certificate
        .as_ref()
        .ok_or("no server certificate (serverCertificate or credentialName)")?;
    let key = tls
        .private_key
        .as_ref()
        .ok_or("no private key (privateKey or credentialName)")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e:?}", cert.describe()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate", cert.describe()));
    }
    let private = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| format!("{}: no usable PEM private key: {e:?}", key.describe()))?;
    let provider = Arc::new(provider(&tls.cipher_suites)?);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(tls)?)
        .map_err(|e| e.to_string())?;
    let builder = match tls.mode {
        ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
            let ca = tls
                .ca
                .as_ref()
                .ok_or("MUTUAL needs a CA (caCertificates, or ca.crt in the credential)")?;
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(ca)?) {
                let c = c.map_err(|e| format!("{}: {e:?}", ca.describe()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("{}: {e}", ca.describe()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no PEM certificate", ca.describe()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tls.mode == ServerTlsMode::OptionalMutual {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(|e| format!("{} and {}: {e}", cert.describe(), key.describe()))?;
    if alpn {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> EdgeTls {
        EdgeTls {
            mode: ServerTlsMode::Simple,
            certificate: None,
            private_key: None,
            ca: None,
            min_version: None,
            max_version: None,
            cipher_suites: vec![],
            subject_alt_names: vec![],
            broken: None,
        }
    }

    #[test]
    fn versions_and_ciphers_follow_the_settings() {
        let mut t = tls();
        assert_eq!(versions(&t).unwrap().len(), 2);
        t.min_version = Some(TlsProtocol::TlsV1_3);
        assert_eq!(versions(&t).unwrap(), [&rustls::version::TLS13]);
        t.max_version = Some(TlsProtocol::TlsV1_2);
        assert!(versions(&t).is_err());
        let p = provider(&["ECDHE-RSA-AES128-GCM-SHA256".to_owned()]).unwrap();
        let tls12 = p
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)))
            .count();
        assert_eq!(tls12, 1);
        assert!(provider(&["AES128-SHA".to_owned()]).is_err());
    }

    #[test]
    fn a_missing_file_is_named() {
        let mut t = tls();
        t.certificate = Some(Material::File("/nonexistent/cert.pem".to_owned()));
        t.private_key = Some(Material::File("/nonexistent/key.pem".to_owned()));
        let err = build(&t, true).unwrap_err();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    }
}
