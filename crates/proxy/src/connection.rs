//! One connection, from accept to finish:
//! - [`InboundConn`]: what is known of an inbound connection (the verified peer, the TLS facts,
//!   both addresses); the policy engine's attributes come from [`InboundConn::l4`].
//! - [`ConnResult`]: made when a connection is accepted, it owns the connection's access record.
//!   It counts the open once the connection is served ([`ConnResult::opened`]), and
//!   [`ConnResult::finish`] logs the record and counts it exactly once, with a real duration. If
//!   the task ends without finishing (cancelled at shutdown, a path that forgot), `Drop` finishes
//!   it as an internal failure, so no connection is ever missing from the log or the metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ward_config::{ProxyConfig, WorkloadMeta};
use ward_policy::{L4Attributes, Peer};
use ward_tls::PeerInfo;

use crate::access_log::ConnRecord;
use crate::metrics::Metrics;
use crate::refusal::{Refusal, ResponseFlag};
use crate::splice::{Side, SpliceEnd};

/// An inbound connection: an HBONE `CONNECT` stream (mTLS) or a plaintext socket.
#[derive(Clone, Debug)]
pub(crate) struct InboundConn {
    /// The verified peer, as the policy engine sees it; `None` for plaintext.
    pub(crate) peer: Option<Peer>,
    /// The peer's SPIFFE URI, for XFCC and logs.
    pub(crate) peer_id: Option<String>,
    /// SHA-256 of the peer's certificate, hex (XFCC `Hash=`).
    pub(crate) peer_cert_hash: Option<String>,
    /// `TLSv1.3` and the key-exchange group, when the hop was mTLS.
    pub(crate) tls: Option<(&'static str, String)>,
    /// The socket peer.
    pub(crate) src: SocketAddr,
    /// The workload address and port the connection is for.
    pub(crate) dst: SocketAddr,
    /// The original client's address (`remoteIpBlocks`, `remote.ip`) when it is not the socket
    /// peer: at a gateway, from `X-Forwarded-For` and `numTrustedProxies` (`crate::xff`).
    pub(crate) remote: Option<std::net::IpAddr>,
}

impl InboundConn {
    /// A connection over mTLS, from what the handshake verified.
    pub(crate) fn mtls(info: &PeerInfo, src: SocketAddr, dst: SocketAddr) -> InboundConn {
        InboundConn {
            peer: info.identity.as_ref().map(|id| Peer {
                principal: id.principal(),
                trust_domain: id.trust_domain().to_owned(),
                namespace: id.namespace().to_owned(),
                service_account: id.service_account().to_owned(),
            }),
            peer_id: info.identity.as_ref().map(|i| i.to_string()),
            peer_cert_hash: info.cert_sha256.clone(),
            tls: Some((info.tls_version, info.kx_group.clone())),
            src,
            dst,
            remote: None,
        }
    }

    /// A plaintext connection: no identity.
    pub(crate) fn plaintext(src: SocketAddr, dst: SocketAddr) -> InboundConn {
        InboundConn {
            peer: None,
            peer_id: None,
            peer_cert_hash: None,
            tls: None,
            src,
            dst,
            remote: None,
        }
    }

    /// The policy engine's view of the connection (no SNI inside the mesh).
    pub(crate) fn l4(&self) -> L4Attributes<'_> {
        L4Attributes {
            peer: self.peer.as_ref(),
            source_ip: self.src.ip(),
            remote_ip: self.remote.unwrap_or(self.src.ip()),
            destination_ip: self.dst.ip(),
            destination_port: self.dst.port(),
            sni: None,
        }
    }

    /// The source workload's metric labels: the workload the config gives this connection's
    /// address and verified identity (`ward_config::MeshDirectory::source`). `None` for
    /// plaintext: nothing proves who a plaintext peer is.
    pub(crate) fn source_meta(&self, cfg: &ProxyConfig) -> Option<Arc<WorkloadMeta>> {
        let id = self.peer_id.as_deref()?;
        cfg.directory.source(self.src.ip(), id).cloned()
    }

    /// Copy what is known of the source into `rec`.
    pub(crate) fn describe(&self, rec: &mut ConnRecord) {
        rec.src_addr = self.src;
        rec.dst_addr = self.dst;
        rec.src_identity = self.peer_id.clone();
        rec.src_namespace = self.peer.as_ref().map(|p| p.namespace.clone());
        if let Some((version, group)) = &self.tls {
            rec.tls_version = Some((*version).to_owned());
            rec.tls_kx_group = Some(group.clone());
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Served until both sides finished: bytes sent toward the source and received from it.
    Served {
        /// Bytes toward the source.
        sent: u64,
        /// Bytes from the source.
        recv: u64,
    },
    /// Refused before it was served, or cut short while it was.
    Refused(Refusal),
}

impl End {
    /// A splice's end as the connection's: the bytes from the source and toward it, or the
    /// failed side's fault, or the policy that closed it.
    pub(crate) fn from_splice(end: SpliceEnd) -> End {
        match end {
            SpliceEnd::Done(recv, sent) => End::Served { sent, recv },
            SpliceEnd::Failed(side, e) => End::Refused(match side {
                Side::Downstream => Refusal::downstream(ResponseFlag::None, e.to_string()),
                Side::Upstream => Refusal::upstream(ResponseFlag::None, e.to_string()),
            }),
            SpliceEnd::Closed(refusal) => End::Refused(refusal),
        }
    }
}

/// A connection's access record and metrics, finished exactly once (see the module docs).
pub(crate) struct ConnResult {
    rec: ConnRecord,
    started: Instant,
    metrics: Arc<Metrics>,
    open: bool,
    finished: bool,
    /// The connection's place under its destination's `maxConnections`, given back when the
    /// result is finished.
    slot: Option<crate::tcp_pool::Slot>,
    /// The destination's `maxConnectionDuration`.
    max_duration: Option<Duration>,
}

impl ConnResult {
    /// Start the result of a connection accepted now.
    pub(crate) fn new(rec: ConnRecord, metrics: Arc<Metrics>) -> ConnResult {
        ConnResult::new_at(rec, metrics, Instant::now())
    }

    /// Start the result of a connection accepted at `started`.
    pub(crate) fn new_at(rec: ConnRecord, metrics: Arc<Metrics>, started: Instant) -> ConnResult {
        ConnResult {
            rec,
            started,
            metrics,
            open: false,
            finished: false,
            slot: None,
            max_duration: None,
        }
    }

    /// The record, to add what becomes known (peer, endpoint, decision).
    pub(crate) fn record(&mut self) -> &mut ConnRecord {
        &mut self.rec
    }

    /// Hold the connection's `slot` under its destination's `maxConnections` until the
    /// connection ends, and close it after `max_duration` (`maxConnectionDuration`).
    pub(crate) fn hold(&mut self, slot: crate::tcp_pool::Slot, max_duration: Option<Duration>) {
        self.slot = Some(slot);
        self.max_duration = max_duration;
    }

    /// The connection's `maxConnectionDuration`, if its destination sets one.
    pub(crate) fn max_duration(&self) -> Option<Duration> {
        self.max_duration
    }

    /// The connection is served from now on: count the open (once).
    pub(crate) fn opened(&mut self) {
        if !self.open {
            self.open = true;
            self.metrics.conn_open(&self.rec);
        }
    }

    /// Log and count the connection's end.
    pub(crate) fn finish(mut self, end: End) {
        self.complete(end);
    }

    fn complete(&mut self, end: End) {
        if self.finished {
            return;
        }
        self.finished = true;
        let rec = &mut self.rec;
        rec.duration = self.started.elapsed();
        match end {
            End::Served { sent, recv } => {
                rec.bytes_sent = sent;
                rec.bytes_recv = recv;
            }
            End::Refused(refusal) => {
                let error = if refusal.by_policy() {
                    rec.authz_decision = Some("deny");
                    rec.authz_policy = refusal.policy.clone();
                    rec.authz_rule = refusal.rule;
                    rec.authz_detail = Some(refusal.detail.clone());
                    if self.open {
                        format!("closed by policy change: {}", refusal.detail)
                    } else {
                        format!("denied: {}", refusal.detail)
                    }
                } else {
                    refusal.detail
                };
                rec.response_flags = refusal.flag;
                rec.fault = Some(refusal.fault);
                rec.error = Some(error);
            }
        }
        rec.emit();
        if self.open {
            self.metrics.conn_closed(rec);
        } else {
            self.metrics.conn_failed(rec);
        }
        self.slot = None;
    }
}

impl Drop for ConnResult {
    fn drop(&mut self) {
        if !self.finished {
            self.complete(End::Refused(Refusal::internal(
                ResponseFlag::None,
                "connection task ended before the connection finished",
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::Direction;
    use crate::refusal::Fault;

    fn result(metrics: &Arc<Metrics>) -> ConnResult {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        ConnResult::new(ConnRecord::new(Direction::Inbound, a, a), metrics.clone())
    }

    #[test]
    fn each_end_is_counted_once_as_opened_closed_or_failed() {
        let metrics = Arc::new(Metrics::default());
        let mut served = result(&metrics);
        served.opened();
        served.opened();
        served.finish(End::Served { sent: 3, recv: 4 });
        assert_eq!(metrics.totals(), (1, 1, 0), "(opened, closed, failed)");
        result(&metrics).finish(End::Refused(Refusal::upstream(ResponseFlag::Connect, "x")));
        assert_eq!(metrics.totals(), (1, 1, 1));
        // Dropped without finishing: still counted, as failed, once.
        drop(result(&metrics));
        assert_eq!(metrics.totals(), (1, 1, 2));
        let mut cut = result(&metrics);
        cut.opened();
        drop(cut);
        assert_eq!(metrics.totals(), (2, 2, 2));
    }

    #[test]
    fn a_policy_refusal_fills_the_decision_and_says_whether_it_was_open() {
        let metrics = Arc::new(Metrics::default());
        let mut r = result(&metrics);
        r.complete(End::Refused(Refusal::policy(
            Some("app/p".into()),
            Some(1),
            "rbac_access_denied_matched_policy[app/p]",
        )));
        assert_eq!(r.rec.authz_decision, Some("deny"));
        assert_eq!(r.rec.authz_policy.as_deref(), Some("app/p"));
        assert_eq!(r.rec.authz_rule, Some(1));
        assert_eq!(r.rec.response_flags, ResponseFlag::Deny);
        assert_eq!(r.rec.fault, Some(Fault::Policy));
        assert!(r.rec.error.as_deref().unwrap().starts_with("denied: "));
        assert!(r.rec.duration > std::time::Duration::ZERO);
        let mut open = result(&metrics);
        open.opened();
        open.complete(End::Refused(Refusal::policy(None, None, "x")));
        assert_eq!(
            open.rec.error.as_deref(),
            Some("closed by policy change: x")
        );
    }
}
