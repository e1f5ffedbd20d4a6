//! The explicit forward proxy: a Sidecar egress listener whose `port.protocol` is
//! `HTTP_PROXY` serves HTTP `CONNECT` (RFC 9110 §9.3.6) and absolute-form requests (RFC 9112
//! §3.2.2), so apps that honour `HTTPS_PROXY` / `HTTP_PROXY` (`curl -x`) reach the hosts the
//! Sidecar allows, and only those (docs/egress.md).
//!
//! One connection carries one decision: the host is the CONNECT target, the absolute URI's
//! host, or (origin-form) the `Host` header, decided by `ward_config::egress::plan_forward`
//! (pure) against the ServiceEntry hosts the listener's `hosts` select. Then:
//! - a `Host` header that disagrees with the CONNECT target or the URI is refused (400), so a
//!   spoofed `Host` never picks the destination;
//! - in a CONNECT tunnel, a TLS ClientHello whose SNI names another host is refused (reset),
//!   and so is a plaintext request whose `Host` does;
//! - an absolute-form request is sent on as origin-form with `connection: close`, so the
//!   connection can never carry a second request to another host.
//!
//! Refusals answer as Envoy's HTTP_PROXY listener does in Istio: an unregistered host under
//! REGISTRY_ONLY gets `502 Bad Gateway` (the `block_all` route), CONNECT included; an upstream
//! that cannot be reached gets 503.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use ward_config::egress::{plan_forward, sni_agrees, EgressPlan};
use ward_config::{ForwardProxy, ProxyConfig};

use crate::access_log::{ConnRecord, Direction};
use crate::connection::{ConnResult, End};
use crate::listener::Gate;
use crate::outbound::{OutboundCtx, Route, Upstream};
use crate::refusal::{Refusal, ResponseFlag};
use crate::sniff::{host_of_authority, sniff, Sniffed, SNIFF_LIMIT};
use crate::splice::splice;

/// How long a client may take to send its request head, and the first bytes of a tunnel.
const HEAD_WAIT: Duration = Duration::from_secs(10);

/// Serve one forward-proxy listener until `shutdown` flips to true.
pub(crate) async fn run_listener(
    listener: TcpListener,
    ctx: Arc<OutboundCtx>,
    gate: Arc<Gate>,
    shutdown: watch::Receiver<bool>,
) {
    let Ok(bind) = listener.local_addr() else {
        return;
    };
    crate::listener::accept_loop(listener, gate, shutdown, move |tcp, src, permit| {
        let ctx = ctx.clone();
        async move {
            serve(ctx, tcp, src, bind).await;
            drop(permit);
        }
    })
    .await
}

/// What the request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// `CONNECT`, or a request to send on.
    pub tunnel: bool,
    /// The host (lower case, no trailing dot).
    pub host: String,
    /// The port.
    pub port: u16,
    /// `connect`, `uri` or `host`.
    pub from: &'static str,
    /// For a request to send on: its head, rewritten to origin-form with `connection: close`.
    pub forward_head: Vec<u8>,
}

/// Why a request head is refused before any decision (400).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadRequest(pub String);

/// Split `host:port` (port required unless `default_port`).
fn authority(text: &str, default_port: Option<u16>) -> Result<(String, u16), BadRequest> {
    let bad = || BadRequest(format!("`{text}` is not a host and port"));
    let host = host_of_authority(text);
    if host.is_empty() {
        return Err(bad());
    }
    let port_text = if text.starts_with('[') {
        text.rsplit_once("]:").map(|(_, p)| p)
    } else {
        text.rsplit_once(':').map(|(_, p)| p)
    };
    let port = match (port_text, default_port) {
        (Some(p), _) => p.parse::<u16>().map_err(|_| bad())?,
        (None, Some(d)) => d,
        (None, None) => return Err(bad()),
    };
    if port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

/// Hop-by-hop headers and the proxy's own, never sent on (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "upgrade",
];

/// Decide what a complete request head asks for. Pure.
pub(crate) fn parse_head(head: &[u8]) -> Result<Target, BadRequest> {
    let mut headers = [httparse::EMPTY_HEADER; 96];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(BadRequest("incomplete request head".into())),
        Err(e) => return Err(BadRequest(format!("malformed request head: {e}"))),
    }
    let method = req.method.unwrap_or_default();
    let path = req.path.unwrap_or_default();
    let host_header = {
        let mut hosts = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("host"));
        let first = hosts.next();
        if hosts.next().is_some() {
            return Err(BadRequest("more than one Host header".into()));
        }
        match first.map(|h| std::str::from_utf8(h.value)) {
            Some(Ok(v)) => Some(v.trim().to_owned()),
            Some(Err(_)) => return Err(BadRequest("Host header is not text".into())),
            None => None,
        }
    };
    // The Host header must name what the request line names (RFC 9112 §3.2.2: a proxy
    // ignores a disagreeing Host; Ward refuses it, so it can never be mistaken for the target).
    let agree = |host: &str, port: u16, default: u16| -> Result<(), BadRequest> {
        match &host_header {
            None => Ok(()),
            Some(h) => {
                let (hh, hp) = authority(h, Some(default))?;
                if hh == host && hp == port {
                    Ok(())
                } else {
                    Err(BadRequest(format!(
                        "Host header `{hh}:{hp}` disagrees with the request target `{host}:{port}`"
                    )))
                }
            }
        }
    };
    if method == "CONNECT" {
        let (host, port) = authority(path, None)?;
        agree(&host, port, port)?;
        return Ok(Target {
            tunnel: true,
            host,
            port,
            from: "connect",
            forward_head: Vec::new(),
        });
    }
    let (host, port, origin, from) = if let Some(rest) = path.strip_prefix("http://") {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (auth, tail) = rest.split_at(end);
        if auth.contains('@') {
            return Err(BadRequest("user information in the URI".into()));
        }
        let (host, port) = authority(auth, Some(80))?;
        agree(&host, port, 80)?;
        let origin = if tail.starts_with('/') {
            tail.to_owned()
        } else {
            format!("/{tail}")
        };
        (host, port, origin, "uri")
    } else if path.starts_with('/') {
        let Some(h) = &host_header else {
            return Err(BadRequest("no Host header".into()));
        };
        let (host, port) = authority(h, Some(80))?;
        (host, port, path.to_owned(), "host")
    } else {
        return Err(BadRequest(
            "only CONNECT, `http://` absolute-form and origin-form requests are proxied".into(),
        ));
    };
    let version = if req.version == Some(0) { "1.0" } else { "1.1" };
    let mut out = format!("{method} {origin} HTTP/{version}\r\n").into_bytes();
    let mut has_host = false;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        has_host |= name == "host";
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !has_host {
        let line = if port == 80 {
            format!("host: {host}\r\n")
        } else {
            format!("host: {host}:{port}\r\n")
        };
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    Ok(Target {
        tunnel: false,
        host,
        port,
        from,
        forward_head: out,
    })
}

/// Read a request head from `app`: the head and whatever came after it.
async fn read_head(app: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), BadRequest> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = buf.split_off(end + 4);
                return Ok((std::mem::take(&mut buf), rest));
            }
            if buf.len() > SNIFF_LIMIT {
                return Err(BadRequest("request head over 16 KiB".into()));
            }
            match app.read(&mut chunk).await {
                Ok(0) => return Err(BadRequest("closed before a complete request head".into())),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(BadRequest(format!("reading the request head: {e}"))),
            }
        }
    };
    tokio::time::timeout(HEAD_WAIT, read)
        .await
        .map_err(|_| BadRequest("no complete request head within 10 s".into()))?
}

/// A status line and empty body, closing the connection.
async fn reply(app: &mut TcpStream, status: &str) {
    let msg =
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").into_bytes();
    let _ = app.write_all(&msg).await;
    let _ = app.shutdown().await;
}

/// One app connection to the forward proxy at `bind`.
async fn serve(ctx: Arc<OutboundCtx>, mut app: TcpStream, src: SocketAddr, bind: SocketAddr) {
    let _ = app.set_nodelay(true);
    let cfg = ctx.config.borrow().clone();
    let mut rec = ConnRecord::new(Direction::Outbound, src, bind);
    rec.src_workload = Some(format!("{}/{}", cfg.workload.namespace, cfg.workload.name));
    rec.src_namespace = Some(cfg.workload.namespace.clone());
    rec.src_identity = Some(ctx.identity.clone());
    rec.telemetry(&cfg);
    rec.src_meta = Some(crate::inbound::own_meta(&cfg));
    let mut result = ConnResult::new(rec, ctx.metrics.clone());
    let Some(proxy) = cfg.egress.forward_proxies.iter().find(|p| p.bind == bind) else {
        crate::reset_on_close(&app);
        return result.finish(End::Refused(Refusal::internal(
            ResponseFlag::NoRoute,
            "no forward proxy configured here any more",
        )));
    };
    let (head, rest) = match read_head(&mut app).await {
        Ok(read) => read,
        Err(BadRequest(why)) => {
            reply(&mut app, "400 Bad Request").await;
            return result.finish(End::Refused(Refusal::downstream(ResponseFlag::None, why)));
        }
    };
    let target = match parse_head(&head) {
        Ok(t) => t,
        Err(BadRequest(why)) => {
            reply(&mut app, "400 Bad Request").await;
            return result.finish(End::Refused(Refusal::downstream(ResponseFlag::None, why)));
        }
    };
    result
        .record()
        .requested(Some(&target.host), target.port, target.from);
    let end = match connect_target(&ctx, &cfg, proxy, &target, &mut result).await {
        Err((status, refusal)) => {
            reply(&mut app, status).await;
            End::Refused(refusal)
        }
        Ok(up) if target.tunnel => tunnel(&ctx, &cfg, app, up, rest, &target, &mut result).await,
        Ok(up) => {
            let mut first = target.forward_head.clone();
            first.extend_from_slice(&rest);
            result.opened();
            carry(app, up, first).await
        }
    };
    result.finish(end);
}

/// Decide the target and connect to it; a refusal comes with the status to answer.
async fn connect_target(
    ctx: &OutboundCtx,
    cfg: &ProxyConfig,
    proxy: &ForwardProxy,
    target: &Target,
    result: &mut ConnResult,
) -> Result<Upstream, (&'static str, Refusal)> {
    let unavailable = |r: Refusal| ("503 Service Unavailable", r);
    match plan_forward(cfg, proxy, &target.host, target.port) {
        EgressPlan::BlackHole => {
            let protocol = if target.tunnel { "connect" } else { "http" };
            crate::blackhole::note_blocked(result.record(), ctx, cfg, target.port, protocol);
            let mut refused =
                crate::blackhole::refusal(&format!("{}:{}", target.host, target.port));
            refused.status = Some(http::StatusCode::BAD_GATEWAY);
            Err(("502 Bad Gateway", refused))
        }
        EgressPlan::Service {
            service,
            endpoints,
            resolve_host,
            port,
        } if endpoints.is_empty() => {
            let tls = origination(cfg, &service, target);
            let rec = result.record();
            rec.dst_service = Some(service.clone());
            rec.service = crate::outbound::service_meta(cfg, &service);
            let up = dial_resolved(ctx, cfg, &resolve_host, port, result)
                .await
                .map_err(unavailable)?;
            crate::originate::wrap(ctx, tls.as_ref(), up, result.record())
                .await
                .map_err(unavailable)
        }
        EgressPlan::Service {
            service, endpoints, ..
        } => {
            let tls = origination(cfg, &service, target);
            let route = Route {
                pool: crate::outbound::TcpPolicy::of(cfg, &service, None, target.port),
                service,
                endpoints,
                tls,
            };
            crate::outbound::connect_any(ctx, cfg, &route, result)
                .await
                .map_err(unavailable)
        }
        EgressPlan::Passthrough { host, port } => {
            let rec = result.record();
            rec.upstream_cluster = Some("PassthroughCluster");
            rec.dst_service = Some("PassthroughCluster".to_owned());
            dial_resolved(ctx, cfg, &host, port, result)
                .await
                .map_err(unavailable)
        }
    }
}

/// The TLS the proxy originates for an absolute-form request (`GET http://host/`) to
/// `service`: the DestinationRule `tls` of the service port the request names, as an egress
/// listener for that port would (docs/egress-tls.md), so an app behind `HTTP_PROXY` gets the
/// same origination. A CONNECT tunnel carries the app's own TLS: nothing is originated. When
/// the rule gives no `sni` and the entry is a wildcard (`*.example.com`), the SNI (and the
/// name checked) is the host the request names, as Istio takes it from the request. Pure.
fn origination(
    cfg: &ProxyConfig,
    service: &str,
    target: &Target,
) -> Option<(Arc<ward_config::origination::TlsOrigination>, bool)> {
    if target.tunnel {
        return None;
    }
    let port = cfg
        .services
        .get(service)?
        .ports
        .iter()
        .find(|p| p.number == target.port)?;
    let tls = port.tls.clone()?;
    let tls = if tls.sni.starts_with('*') {
        let mut named = (*tls).clone();
        named.sni.clone_from(&target.host);
        Arc::new(named)
    } else {
        tls
    };
    Some((tls, true))
}

/// Resolve `host` (cached for its TTL) and connect to the first of its addresses that answers.
pub(crate) async fn dial_resolved(
    ctx: &OutboundCtx,
    cfg: &ProxyConfig,
    host: &str,
    port: u16,
    result: &mut ConnResult,
) -> Result<Upstream, Refusal> {
    let ips = ctx
        .resolvers
        .lookup(&cfg.egress.dns_resolvers, host)
        .await
        .map_err(|e| Refusal::upstream(ResponseFlag::NoHealthyUpstream, e.to_string()))?;
    let mut last = Refusal::upstream(
        ResponseFlag::NoHealthyUpstream,
        format!("{host}: no address"),
    );
    for ip in ips {
        let addr = SocketAddr::new(ip, port);
        result.record().dst_addr = addr;
        match crate::outbound::passthrough(addr).await {
            Ok(up) => return Ok(up),
            Err(refusal) => last = refusal,
        }
    }
    Err(last)
}

/// A CONNECT tunnel: answer 200, check the first bytes the app sends (a TLS SNI or an HTTP
/// `Host` must name the CONNECT target), then carry the bytes both ways.
async fn tunnel(
    ctx: &OutboundCtx,
    cfg: &ProxyConfig,
    mut app: TcpStream,
    up: Upstream,
    mut first: Vec<u8>,
    target: &Target,
    result: &mut ConnResult,
) -> End {
    if app
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return End::Refused(Refusal::downstream(
            ResponseFlag::None,
            "client gone before the tunnel opened",
        ));
    }
    let mut chunk = [0u8; 4096];
    let read_first = async {
        while sniff(&first) == Sniffed::Incomplete && first.len() < SNIFF_LIMIT {
            match app.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => first.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(HEAD_WAIT, read_first).await;
    let sniffed = sniff(&first);
    if let Some(named) = sniffed.host() {
        if !sni_agrees(named, &target.host) {
            let what = match sniffed {
                Sniffed::Tls { .. } => "TLS SNI",
                _ => "Host header",
            };
            let rec = result.record();
            rec.requested(
                Some(named),
                target.port,
                if what == "TLS SNI" { "sni" } else { "host" },
            );
            crate::blackhole::note_blocked(rec, ctx, cfg, target.port, sniffed.protocol());
            crate::reset_on_close(&app);
            return End::Refused(Refusal::policy(
                None,
                None,
                format!(
                    "{what} `{named}` disagrees with the CONNECT target `{}`",
                    target.host
                ),
            ));
        }
    }
    result.opened();
    carry(app, up, first).await
}

/// Send `first` upstream, then splice.
async fn carry(mut app: TcpStream, up: Upstream, first: Vec<u8>) -> End {
    match up {
        Upstream::Plain(mut s) => {
            if let Err(e) = s.write_all(&first).await {
                return End::Refused(Refusal::upstream(ResponseFlag::None, e.to_string()));
            }
            End::from_splice(splice(&mut app, &mut s, None).await)
        }
        Upstream::Tunnel(mut t) => {
            if let Err(e) = t.write_all(&first).await {
                return End::Refused(Refusal::upstream(ResponseFlag::None, e.to_string()));
            }
            End::from_splice(splice(&mut app, &mut t, None).await)
        }
        Upstream::Tls(mut s) => {
            if let Err(e) = s.write_all(&first).await {
                return End::Refused(Refusal::upstream(ResponseFlag::None, e.to_string()));
            }
            End::from_splice(splice(&mut app, &mut *s, None).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workload in `shop` with a forward proxy, two HTTP entries on port 80 (one a wildcard),
    /// each with a DestinationRule originating TLS.
    fn shop() -> ProxyConfig {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 127.9.1.1, serviceAccount: web, labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: web, namespace: shop}
spec:
  workloadSelector: {labels: {app: web}}
  egress:
  - port: {number: 15080, name: http-proxy, protocol: HTTP_PROXY}
    bind: 127.9.1.1
    hosts: ["./*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}]
  endpoints: [{address: 203.0.113.7}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: any, namespace: shop}
spec:
  hosts: ["*.example.org"]
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: shop}
spec:
  host: api.example.com
  trafficPolicy: {tls: {mode: SIMPLE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: any, namespace: shop}
spec:
  host: "*.example.org"
  trafficPolicy: {tls: {mode: SIMPLE}}
"#;
        let set = ward_config::load_str("test.yaml", yaml).unwrap();
        let snap = ward_config::translate(&set).unwrap();
        snap.proxies["shop/web"].clone()
    }

    #[test]
    fn absolute_form_requests_get_the_rules_origination_and_tunnels_none() {
        let cfg = shop();
        let get = target("GET http://api.example.com/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
            .unwrap();
        let (tls, http) = origination(&cfg, "api.example.com", &get).unwrap();
        assert!(http);
        assert_eq!(tls.rule, "DestinationRule shop/api");
        assert_eq!(tls.sni, "api.example.com");
        // A wildcard entry: the SNI is the host the URI names.
        let wild =
            target("GET http://a.example.org/ HTTP/1.1\r\nHost: a.example.org\r\n\r\n").unwrap();
        let (tls, _) = origination(&cfg, "*.example.org", &wild).unwrap();
        assert_eq!(tls.sni, "a.example.org");
        // A CONNECT tunnel carries the app's own TLS: nothing is originated.
        let tunnel =
            target("CONNECT api.example.com:80 HTTP/1.1\r\nHost: api.example.com:80\r\n\r\n")
                .unwrap();
        assert!(origination(&cfg, "api.example.com", &tunnel).is_none());
        // A port the entry does not have: nothing.
        let other = target(
            "GET http://api.example.com:8080/ HTTP/1.1\r\nHost: api.example.com:8080\r\n\r\n",
        )
        .unwrap();
        assert!(origination(&cfg, "api.example.com", &other).is_none());
    }

    fn target(head: &str) -> Result<Target, BadRequest> {
        parse_head(head.as_bytes())
    }

    #[test]
    fn connect_names_its_target_and_host_must_agree() {
        let t = target("CONNECT quay.io:443 HTTP/1.1\r\nHost: quay.io:443\r\n\r\n").unwrap();
        assert_eq!(
            (t.tunnel, t.host.as_str(), t.port, t.from),
            (true, "quay.io", 443, "connect")
        );
        assert!(target("CONNECT quay.io:443 HTTP/1.1\r\nHost: evil.net:443\r\n\r\n").is_err());
        assert!(target("CONNECT quay.io HTTP/1.1\r\n\r\n").is_err());
        assert!(target("CONNECT quay.io:0 HTTP/1.1\r\n\r\n").is_err());
        assert!(target("CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").is_ok());
    }

    #[test]
    fn absolute_form_is_sent_on_as_origin_form_that_closes() {
        let t = target(
            "GET http://Open-EMR.org/wiki?x=1 HTTP/1.1\r\nHost: open-emr.org\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.from),
            ("open-emr.org", 80, "uri")
        );
        assert_eq!(
            String::from_utf8(t.forward_head).unwrap(),
            "GET /wiki?x=1 HTTP/1.1\r\nHost: open-emr.org\r\nAccept: */*\r\nconnection: close\r\n\r\n"
        );
        let t = target("GET http://docker.io:8080 HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(
            String::from_utf8(t.forward_head).unwrap(),
            "GET / HTTP/1.0\r\nhost: docker.io:8080\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn a_spoofed_host_never_picks_the_destination() {
        for head in [
            "GET http://quay.io/ HTTP/1.1\r\nHost: evil.net\r\n\r\n",
            "GET http://quay.io/ HTTP/1.1\r\nHost: quay.io:8080\r\n\r\n",
            "GET http://quay.io/ HTTP/1.1\r\nHost: quay.io\r\nHost: evil.net\r\n\r\n",
            "GET http://evil.net@quay.io/ HTTP/1.1\r\n\r\n",
            "GET https://quay.io/ HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(target(head).is_err(), "{head}");
        }
        // Origin-form: the Host header is the only name there is, and it is decided on.
        let t = target("GET /x HTTP/1.1\r\nHost: docker.io\r\n\r\n").unwrap();
        assert_eq!((t.host.as_str(), t.from), ("docker.io", "host"));
    }
}
