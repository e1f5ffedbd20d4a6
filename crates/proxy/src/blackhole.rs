//! Refusing egress to destinations that are not registered (`outboundTrafficPolicy:
//! REGISTRY_ONLY`, Istio's `BlackHoleCluster`), and keeping the evidence: every blocked
//! attempt gets an access record (`upstream_cluster="BlackHoleCluster"`, `response_flags="NR"`,
//! the host and port asked for, the source identity), a count in
//! `ward_egress_blocked_total` (docs/egress.md) and a record in the audit trail (docs/audit.md).
//!
//! How the app hears "no" follows Istio: a TCP or TLS connection is closed (reset here); an
//! HTTP request on an HTTP port gets a direct `502 Bad Gateway` from the proxy (Istio's
//! `block_all` route). The responder reads only the request head, never logs its path or
//! headers, and closes the connection after the reply.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ward_config::{Protocol, ProxyConfig};

use crate::access_log::ConnRecord;
use crate::audit::{AuditEvent, Verdict};
use crate::outbound::OutboundCtx;
use crate::refusal::{Refusal, ResponseFlag};
use crate::sniff::{sniff, Sniffed, SNIFF_LIMIT};

/// How long a blocked connection may take to say what it wants before it is refused anyway
/// (a server-first protocol says nothing).
const SNIFF_WAIT: Duration = Duration::from_secs(1);

/// The 502 an HTTP request to an unregistered host gets.
const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\n\
content-length: 59\r\nconnection: close\r\n\r\n\
egress refused: the host is not registered (REGISTRY_ONLY)\n";

/// What the first bytes of `tcp` are, peeked (not consumed), waiting at most `wait` for
/// enough of them.
pub(crate) async fn peek_sniff(tcp: &TcpStream, wait: Duration) -> Sniffed {
    let mut buf = vec![0u8; SNIFF_LIMIT];
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return sniff(&buf[..seen]),
        };
        let got = sniff(&buf[..n]);
        // The peer closed its side, or the buffer is full: no more bytes will change the answer.
        if got != Sniffed::Incomplete || n == 0 || n == buf.len() {
            return if got == Sniffed::Incomplete {
                Sniffed::Other
            } else {
                got
            };
        }
        if n == seen {
            // Nothing new since the last peek: wait a little for the rest.
            if tokio::time::Instant::now() >= deadline {
                return Sniffed::Other;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen = n;
    }
}

/// Whether `port` is an HTTP port of the mesh for this proxy: a port that some visible service
/// declares HTTP, HTTP2 or gRPC (Istio builds an HTTP listener for such a port, so an unknown
/// host on it meets its `block_all` route).
pub(crate) fn is_http_port(cfg: &ProxyConfig, port: u16) -> bool {
    cfg.services.values().flat_map(|s| &s.ports).any(|p| {
        p.number == port
            && matches!(
                p.protocol,
                Protocol::Http | Protocol::Http2 | Protocol::Grpc
            )
    })
}

/// The refusal of a blocked attempt; `what` names the destination.
pub(crate) fn refusal(what: &str) -> Refusal {
    Refusal {
        flag: ResponseFlag::NoRoute,
        ..Refusal::policy(
            None,
            None,
            format!("outboundTrafficPolicy REGISTRY_ONLY: {what} is not registered"),
        )
    }
}

/// Mark `rec` as blocked, count it and write it to the audit trail.
pub(crate) fn note_blocked(
    rec: &mut ConnRecord,
    ctx: &OutboundCtx,
    cfg: &ProxyConfig,
    port: u16,
    protocol: &str,
) {
    rec.upstream_cluster = Some("BlackHoleCluster");
    rec.dst_service = Some("BlackHoleCluster".to_owned());
    ctx.metrics.egress_blocked(
        &format!("{}/{}", cfg.workload.namespace, cfg.workload.name),
        &cfg.workload.namespace,
        rec.requested_host.as_deref(),
        port,
        protocol,
    );
    ctx.audit.record(&AuditEvent {
        time: std::time::SystemTime::now(),
        direction: "outbound",
        protocol: if protocol == "http" { "http" } else { "tcp" },
        verdict: Verdict::RegistryOnly,
        src_addr: rec.src_addr,
        src_identity: Some(&ctx.identity),
        dst_addr: rec.dst_addr,
        dst_identity: None,
        dst_host: rec.requested_host.as_deref(),
        request_principal: None,
        method: None,
        path: None,
        request_id: None,
        break_glass: None,
    });
}

/// A captured connection to `dst`, which is no service and no workload, under REGISTRY_ONLY:
/// find what it asked for, record and count it, then refuse it (a 502 for HTTP on an HTTP
/// port, else a reset). Returns the refusal for the connection's result.
pub(crate) async fn refuse_captured(
    app: &mut TcpStream,
    rec: &mut ConnRecord,
    ctx: &OutboundCtx,
    cfg: &ProxyConfig,
    dst: SocketAddr,
) -> Refusal {
    let sniffed = peek_sniff(app, SNIFF_WAIT).await;
    let from = match &sniffed {
        Sniffed::Tls { sni: Some(_) } => "sni",
        Sniffed::Http { host: Some(_), .. } => "host",
        _ => "none",
    };
    rec.requested(sniffed.host(), dst.port(), from);
    note_blocked(rec, ctx, cfg, dst.port(), sniffed.protocol());
    let what = match sniffed.host() {
        Some(host) => format!("{host} ({dst})"),
        None => dst.to_string(),
    };
    let mut refused = refusal(&what);
    if matches!(sniffed, Sniffed::Http { .. }) && is_http_port(cfg, dst.port()) {
        refused.status = Some(http::StatusCode::BAD_GATEWAY);
        respond_bad_gateway(app).await;
    } else {
        crate::reset_on_close(app);
    }
    refused
}

/// Answer the request at the head of `app` with a 502 and close: read the head (so the reply
/// is not lost to a reset of unread bytes), reply, then drain briefly what the client still
/// sends (a body) before closing.
pub(crate) async fn respond_bad_gateway(app: &mut TcpStream) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < SNIFF_LIMIT {
            match app.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(SNIFF_WAIT, read_head).await;
    let _ = app.write_all(BAD_GATEWAY).await;
    let _ = app.shutdown().await;
    let drain = async {
        let mut left = 64 * 1024usize;
        while left > 0 {
            match app.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(SNIFF_WAIT, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_502_says_its_length_right() {
        let text = std::str::from_utf8(BAD_GATEWAY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
