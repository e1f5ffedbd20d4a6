//! One access record per connection, with ztunnel's key names (`src.addr`, `dst.identity`, ...)
//! extended with the TLS facts and the authorization decision that Ward promises to prove.
//! Records go to the tracing target `access`; nothing from the payload is ever logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ward_config::{ServiceMeta, WorkloadMeta};

use crate::refusal::{Fault, ResponseFlag};

/// The request headers `policy`'s filters read, copied from `headers` (a value that is not
/// UTF-8 is left out, as if absent). Empty, and free, when no filter reads a header.
pub(crate) fn filter_headers(
    policy: &ward_config::access_log_policy::AccessLogPolicy,
    headers: &http::HeaderMap,
) -> Vec<(String, String)> {
    let names = policy.filter_headers();
    names
        .into_iter()
        .filter_map(|n| {
            let v = headers.get(n.as_str())?.to_str().ok()?.to_owned();
            Some((n, v))
        })
        .collect()
}

/// Kept headers as a filter reads them (names are lower case on both sides).
pub(crate) struct FilterHeaders<'a>(pub(crate) &'a [(String, String)]);

impl ward_config::access_log_policy::Headers for FilterHeaders<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Which way the connection flows, seen from the sidecar that reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Arriving at this workload.
    Inbound,
    /// Leaving this workload for a service.
    Outbound,
}

impl Direction {
    /// The ztunnel spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Everything recorded about one connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnRecord {
    /// inbound or outbound.
    pub direction: Direction,
    /// The peer that opened the connection.
    pub src_addr: SocketAddr,
    /// `ns/name` of the source workload, when known.
    pub src_workload: Option<String>,
    /// Source namespace (from the identity when mTLS).
    pub src_namespace: Option<String>,
    /// Source SPIFFE id; only with mTLS.
    pub src_identity: Option<String>,
    /// Where the bytes go (workload ip:port, or the app's endpoint).
    pub dst_addr: SocketAddr,
    /// The HBONE address used, when tunnelled.
    pub dst_hbone_addr: Option<SocketAddr>,
    /// The service host, when known.
    pub dst_service: Option<String>,
    /// `PassthroughCluster` / `BlackHoleCluster` for captured traffic to no known destination.
    pub upstream_cluster: Option<&'static str>,
    /// `ns/name` of the destination workload.
    pub dst_workload: Option<String>,
    /// Destination namespace.
    pub dst_namespace: Option<String>,
    /// Destination SPIFFE id (verified on outbound, ours on inbound).
    pub dst_identity: Option<String>,
    /// "TLSv1.3", when the hop was mTLS.
    pub tls_version: Option<String>,
    /// The negotiated key-exchange group, e.g. "X25519MLKEM768".
    pub tls_kx_group: Option<String>,
    /// Ward's reason for how the connection went where Envoy has no flag for it, e.g.
    /// `tls_originated`, `tls_origination_handshake` (docs/egress-tls.md).
    pub reason: Option<&'static str>,
    /// "allow" or "deny", when a decision was made.
    pub authz_decision: Option<&'static str>,
    /// The deciding policy as `ns/name`, when one decided.
    pub authz_policy: Option<String>,
    /// Index of the deciding rule.
    pub authz_rule: Option<usize>,
    /// Envoy-style detail, e.g. `rbac_access_denied_matched_policy[none]`.
    pub authz_detail: Option<String>,
    /// The break-glass grant that lifted a denial of this connection.
    pub break_glass: Option<String>,
    /// Bytes sent toward the source.
    pub bytes_sent: u64,
    /// Bytes received from the source.
    pub bytes_recv: u64,
    /// Connection lifetime.
    pub duration: Duration,
    /// ztunnel-style flag: `-`, `DENY`, `CONNECT`, `TLS_FAILURE`, ...
    pub response_flags: ResponseFlag,
    /// Why it failed, when it failed.
    pub error: Option<String>,
    /// Who was at fault, when it failed.
    pub fault: Option<Fault>,
    /// The source workload's metric labels, when the config says which workload it is.
    pub src_meta: Option<Arc<WorkloadMeta>>,
    /// The destination workload's metric labels.
    pub dst_meta: Option<Arc<WorkloadMeta>>,
    /// The configured service the connection was for (its metric labels).
    pub service: Option<Arc<ServiceMeta>>,
    /// Egress: the host the app asked for (CONNECT target, absolute URI, `Host` or TLS SNI),
    /// at most 255 bytes.
    pub requested_host: Option<String>,
    /// Egress: the port the app asked for.
    pub requested_port: Option<u16>,
    /// Egress: where the requested host came from: `connect`, `uri`, `host`, `sni` or `none`.
    pub requested_from: Option<&'static str>,
    /// Whether the record is written: false when a Telemetry `accessLogging` turns the log off
    /// for this direction, or its filter cannot match a connection (no response code).
    pub logged: bool,
    /// The workload's metric overrides (Telemetry `metrics`); `None`: every metric, every label.
    pub metrics: Option<Arc<ward_config::metrics_policy::MetricsPolicy>>,
}

impl ConnRecord {
    /// A record with nothing known yet but the two ends.
    pub(crate) fn new(direction: Direction, src_addr: SocketAddr, dst_addr: SocketAddr) -> Self {
        ConnRecord {
            direction,
            src_addr,
            src_workload: None,
            src_namespace: None,
            src_identity: None,
            dst_addr,
            dst_hbone_addr: None,
            dst_service: None,
            upstream_cluster: None,
            dst_workload: None,
            dst_namespace: None,
            dst_identity: None,
            tls_version: None,
            tls_kx_group: None,
            reason: None,
            authz_decision: None,
            authz_policy: None,
            authz_rule: None,
            authz_detail: None,
            break_glass: None,
            bytes_sent: 0,
            bytes_recv: 0,
            duration: Duration::ZERO,
            response_flags: ResponseFlag::None,
            error: None,
            fault: None,
            src_meta: None,
            dst_meta: None,
            service: None,
            requested_host: None,
            requested_port: None,
            requested_from: None,
            logged: true,
            metrics: None,
        }
    }

    /// Apply the workload's Telemetry to this record: whether it is logged (`accessLogging`),
    /// and the metric overrides its counts follow (`metrics`).
    pub(crate) fn telemetry(&mut self, cfg: &ward_config::ProxyConfig) {
        let rule = match self.direction {
            Direction::Inbound => &cfg.access_logging.server,
            Direction::Outbound => &cfg.access_logging.client,
        };
        self.logged = rule.logs(None);
        self.metrics = Some(cfg.metrics.clone());
    }

    /// Record the host and port an egress connection asked for (`from`: how it said so). A
    /// DNS name is at most 253 bytes; anything longer is cut, so a client cannot flood the log.
    pub(crate) fn requested(&mut self, host: Option<&str>, port: u16, from: &'static str) {
        self.requested_host = host.map(|h| {
            let mut end = h.len().min(255);
            while !h.is_char_boundary(end) {
                end -= 1;
            }
            h[..end].to_owned()
        });
        self.requested_port = Some(port);
        self.requested_from = Some(from);
    }

    /// Emit the record: "connection complete" or, when it failed before carrying data,
    /// "connection failed" (ztunnel's two messages).
    pub(crate) fn emit(&self) {
        if !self.logged {
            return;
        }
        macro_rules! ev {
            ($lvl:expr, $msg:literal) => {
                tracing::event!(
                    target: "access",
                    $lvl,
                    direction = self.direction.as_str(),
                    src.addr = %self.src_addr,
                    src.workload = self.src_workload.as_deref(),
                    src.namespace = self.src_namespace.as_deref(),
                    src.identity = self.src_identity.as_deref(),
                    dst.addr = %self.dst_addr,
                    dst.hbone_addr = self.dst_hbone_addr.map(|a| a.to_string()).as_deref(),
                    dst.service = self.dst_service.as_deref(),
                    upstream_cluster = self.upstream_cluster,
                    dst.workload = self.dst_workload.as_deref(),
                    dst.namespace = self.dst_namespace.as_deref(),
                    dst.identity = self.dst_identity.as_deref(),
                    requested.host = self.requested_host.as_deref(),
                    requested.port = self.requested_port,
                    requested.from = self.requested_from,
                    tls.version = self.tls_version.as_deref(),
                    tls.kx_group = self.tls_kx_group.as_deref(),
                    ward.reason = self.reason,
                    authz.decision = self.authz_decision,
                    authz.policy = self.authz_policy.as_deref(),
                    authz.rule = self.authz_rule.map(|r| r as u64),
                    authz.detail = self.authz_detail.as_deref(),
                    ward.break_glass = self.break_glass.as_deref(),
                    bytes_sent = self.bytes_sent,
                    bytes_recv = self.bytes_recv,
                    duration_ms = self.duration.as_secs_f64() * 1000.0,
                    response_flags = self.response_flags.as_str(),
                    error = self.error.as_deref(),
                    fault = self.fault.map(Fault::as_str),
                    $msg
                )
            };
        }
        if self.error.is_some() {
            ev!(tracing::Level::WARN, "connection failed");
        } else {
            ev!(tracing::Level::INFO, "connection complete");
        }
    }
}
