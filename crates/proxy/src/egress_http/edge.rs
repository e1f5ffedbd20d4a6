//! HTTP at a gateway server (docs/ingress.md): a request that arrived on a Gateway server's
//! port (plaintext, or after the TLS the gateway terminated) is admitted like any other
//! (`crate::admission`), checked against the server's `hosts`, redirected to `https` when the
//! server says `httpsRedirect`, checked by the gateway workload's RequestAuthentication and
//! AuthorizationPolicy (`crate::inbound_http::check_at_edge`), then decided by the server's
//! VirtualService table (the same pure `ward_config::http_routing` as the `mesh` gateway) and
//! carried out by `routed.rs`: forwarded into the mesh over HBONE with the gateway's own
//! identity, so the destination's AuthorizationPolicy sees the gateway's principal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use ward_config::ProxyConfig;

use super::routed::Scope;
use super::{Body, Built, Clients, Downstream, RequestLog};
use crate::admission::RequestHead;
use crate::http_metrics::CountingBody;
use crate::outbound::OutboundCtx;
use crate::refusal::{Refusal, ResponseFlag};

/// Where a gateway connection came in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Edge {
    /// The server port.
    pub(crate) port: u16,
    /// The gateway terminated TLS on the connection (`https`).
    pub(crate) tls: bool,
    /// The server the TLS handshake chose by SNI; `None`: chosen per request by `Host`.
    pub(crate) server: Option<usize>,
}

/// Serve HTTP on one gateway connection until it closes.
pub(crate) async fn serve<I>(
    ctx: Arc<OutboundCtx>,
    inbound: Arc<crate::inbound::InboundCtx>,
    io: I,
    src: SocketAddr,
    bind: SocketAddr,
    edge: Edge,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let down = Arc::new(Downstream {
        ctx,
        src,
        bind,
        clients: Clients::default(),
        edge: Some((edge, inbound)),
    });
    let svc = hyper::service::service_fn(move |req| {
        let down = down.clone();
        async move { Ok::<_, Infallible>(down.serve_request(req).await) }
    });
    if let Err(e) = crate::inbound_http::edge_server()
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!(error = %e, "gateway http connection ended with an error");
    }
}

/// The host of an authority, lowercase, without its port.
fn host_of(authority: &str) -> String {
    crate::sniff::host_of_authority(authority).to_ascii_lowercase()
}

impl Downstream {
    /// One request at a gateway server (the module doc says the order).
    pub(super) async fn serve_at_edge(
        &self,
        config: &Arc<ProxyConfig>,
        built: &Built,
        req: Request<CountingBody>,
        log: &mut RequestLog,
        challenge: &mut Option<String>,
    ) -> Result<Response<Body>, Refusal> {
        let Some((edge, inbound)) = &self.edge else {
            return Err(super::no_route());
        };
        let head = RequestHead {
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
        };
        let authority = super::admit_head(&head)?;
        log.authority.clone_from(&authority);
        let host = host_of(&authority);
        let gw = &config.gateway;
        let index = match edge.server {
            Some(i) => Some(i),
            None => gw
                .on_port(edge.port)
                .into_iter()
                .find(|i| gw.servers()[*i].matches_host(&host)),
        };
        let Some(index) = index else {
            return Err(super::no_route());
        };
        let Some(server) = gw.servers().get(index) else {
            return Err(super::no_route());
        };
        log.gateway = Some(server.gateway.clone());
        if server.https_redirect && !edge.tls {
            // Envoy's `https_redirect`: the same host and path, scheme `https`, its default port.
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            log.answer = Some((ResponseFlag::None, "https_redirect"));
            let location = format!("https://{host}{path}");
            let mut resp = Response::new(super::routed::empty());
            *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
            if let Ok(v) = http::HeaderValue::from_str(&location) {
                resp.headers_mut().insert(http::header::LOCATION, v);
            }
            return Ok(resp);
        }
        let (mut parts, body) = req.into_parts();
        let checked = crate::inbound_http::check_at_edge(
            inbound,
            config,
            self.src,
            SocketAddr::new(self.bind.ip(), edge.port),
            &mut parts,
        );
        let principal = match checked {
            Ok(p) => p,
            Err((refusal, c)) => {
                *challenge = c;
                return Err(refusal);
            }
        };
        log.request_principal = principal;
        let req = Request::from_parts(parts, body);
        let Some(table) = gw.table(index) else {
            return Err(super::no_route());
        };
        let scope = Scope {
            table,
            service: None,
            authority: &authority,
            port: edge.port,
            gateway: &server.gateway,
            scheme: if edge.tls { "https" } else { "http" },
        };
        self.serve_routed(config, built, &scope, req, log).await
    }
}
