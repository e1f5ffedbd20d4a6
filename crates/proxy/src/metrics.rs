//! Prometheus metrics with Istio's standard names and labels (istio.io "Istio Standard Metrics";
//! ztunnel `src/proxy/metrics.rs`). Every label is always present; missing values are `unknown`,
//! because Kiali skips series that lack any expected label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::access_log::{ConnRecord, Direction};

/// The TCP label set (Istio's, minus the HTTP-only ones).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// `source` or `destination`.
    pub reporter: String,
    /// Source workload name.
    pub source_workload: String,
    /// Source workload namespace.
    pub source_workload_namespace: String,
    /// Source SPIFFE id.
    pub source_principal: String,
    /// Source `app` label.
    pub source_app: String,
    /// Source `version` label.
    pub source_version: String,
    /// Canonical service of the source.
    pub source_canonical_service: String,
    /// Canonical revision of the source.
    pub source_canonical_revision: String,
    /// Source cluster.
    pub source_cluster: String,
    /// Destination workload name.
    pub destination_workload: String,
    /// Destination workload namespace.
    pub destination_workload_namespace: String,
    /// Destination SPIFFE id.
    pub destination_principal: String,
    /// Destination `app` label.
    pub destination_app: String,
    /// Destination `version` label.
    pub destination_version: String,
    /// Canonical service of the destination.
    pub destination_canonical_service: String,
    /// Canonical revision of the destination.
    pub destination_canonical_revision: String,
    /// Destination service host.
    pub destination_service: String,
    /// Destination service short name.
    pub destination_service_name: String,
    /// Destination service namespace.
    pub destination_service_namespace: String,
    /// Destination cluster.
    pub destination_cluster: String,
    /// `tcp`.
    pub request_protocol: String,
    /// ztunnel's flags: `-`, `DENY`, `CONNECT`, `TLS_FAILURE`...
    pub response_flags: String,
    /// `mutual_tls` when the destination reports an mTLS connection, `none` for plaintext,
    /// `unknown` from the source side.
    pub connection_security_policy: String,
}

/// Labels of the authorization decision counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// `allow` or `deny`.
    pub decision: String,
    /// `ns/name` of the deciding policy, or `none`.
    pub policy: String,
    /// Destination workload `ns/name`.
    pub destination_workload: String,
}

/// Labels of the JWKS cache age gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksLabels {
    /// The token issuer.
    pub issuer: String,
    /// The workload `ns/name` whose sidecar holds the cache.
    pub workload: String,
}

/// Labels of the refused-connection counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `hbone`, `plaintext`, `outbound`, `admin` or `dns`.
    pub listener: String,
    /// The workload `ns/name` the listener serves, `none` for the admin port.
    pub workload: String,
    /// Which cap refused it (`source_handshakes`, `listener_connections`, `budget`...).
    pub reason: String,
}

/// Labels of the DNS proxy's per-query counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// The question's type (`A`, `AAAA`, `SRV`...; `other` beyond the common ones, `none`
    /// without a question).
    pub query_type: String,
}

/// Labels of the DNS proxy's rejection counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsRejectedLabels {
    /// `malformed` (not a DNS message: FORMERR or dropped) or `in_flight_cap` (too many
    /// queries already waiting upstream: SERVFAIL at once).
    pub reason: String,
}

/// The DNS proxy's metrics (`crate::dns`): istio-agent's names where it has them
/// (istio/istio `pkg/dns/client/monitoring.go`), with a `query_type` label added; `ward_dns_*`
/// for the rest. docs/dns.md lists them.
pub struct DnsMetrics {
    requests: Family<DnsLabels, Counter>,
    local: Family<DnsLabels, Counter>,
    upstream_requests: Family<DnsLabels, Counter>,
    upstream_failures: Family<DnsLabels, Counter>,
    upstream_duration: Histogram,
    rejected: Family<DnsRejectedLabels, Counter>,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        DnsMetrics {
            requests: Family::default(),
            local: Family::default(),
            upstream_requests: Family::default(),
            upstream_failures: Family::default(),
            // istio-agent's buckets, in order.
            upstream_duration: Histogram::new([0.001, 0.005, 0.01, 0.1, 1.0, 5.0]),
            rejected: Family::default(),
        }
    }
}

impl DnsMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "dns_requests",
            "DNS queries received by the DNS proxy",
            self.requests.clone(),
        );
        registry.register(
            "ward_dns_local_responses",
            "DNS queries answered from the mesh name table",
            self.local.clone(),
        );
        registry.register(
            "dns_upstream_requests",
            "DNS queries forwarded to the upstream resolvers",
            self.upstream_requests.clone(),
        );
        registry.register(
            "dns_upstream_failures",
            "Forwarded DNS queries no upstream resolver answered (SERVFAIL)",
            self.upstream_failures.clone(),
        );
        registry.register(
            "dns_upstream_request_duration_seconds",
            "Time from forwarding a DNS query to the upstream answer or the last failure",
            self.upstream_duration.clone(),
        );
        registry.register(
            "ward_dns_rejected",
            "DNS messages refused before being answered or forwarded, by reason",
            self.rejected.clone(),
        );
    }

    fn labels(query_type: &str) -> DnsLabels {
        DnsLabels {
            query_type: query_type.to_owned(),
        }
    }

    /// A query was received.
    pub(crate) fn request(&self, query_type: &str) {
        self.requests.get_or_create(&Self::labels(query_type)).inc();
    }

    /// A query was answered from the table (or refused locally: FORMERR, NOTIMP).
    pub(crate) fn local(&self, query_type: &str) {
        self.local.get_or_create(&Self::labels(query_type)).inc();
    }

    /// A query was forwarded upstream.
    pub(crate) fn upstream_request(&self, query_type: &str) {
        self.upstream_requests
            .get_or_create(&Self::labels(query_type))
            .inc();
    }

    /// A forwarded query got no answer from any upstream.
    pub(crate) fn upstream_failure(&self, query_type: &str) {
        self.upstream_failures
            .get_or_create(&Self::labels(query_type))
            .inc();
    }

    /// How long a forwarded query took.
    pub(crate) fn upstream_duration(&self, seconds: f64) {
        self.upstream_duration.observe(seconds);
    }

    /// A message was refused (`malformed`, `in_flight_cap`).
    pub(crate) fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&DnsRejectedLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// All of one process's proxy metrics; shared by every sidecar in it.
#[derive(Default)]
pub struct Metrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    failed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    authz: Family<AuthzLabels, Counter>,
    open_now: Gauge,
    jwks_age: Family<JwksLabels, Gauge>,
    refused: Family<RefusedLabels, Counter>,
    budget: Gauge,
    budget_in_use: Gauge,
    dns: DnsMetrics,
}

fn or_unknown(v: Option<&str>) -> String {
    match v {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => "unknown".to_owned(),
    }
}

fn split_workload(w: Option<&str>) -> (String, String) {
    match w.and_then(|w| w.split_once('/')) {
        Some((ns, name)) => (name.to_owned(), ns.to_owned()),
        None => ("unknown".to_owned(), "unknown".to_owned()),
    }
}

impl Metrics {
    /// Create the metrics and register them.
    pub fn register(registry: &mut Registry) -> std::sync::Arc<Metrics> {
        let m = Metrics::default();
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            m.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            m.closed.clone(),
        );
        registry.register(
            "istio_tcp_connections_failed",
            "TCP connections failed (unstable)",
            m.failed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent toward the source",
            m.sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the source",
            m.received.clone(),
        );
        registry.register(
            "ward_authz_decisions",
            "Authorization decisions (connections at L4, requests at L7)",
            m.authz.clone(),
        );
        registry.register(
            "istio_tcp_sockets_open",
            "Connections open now (unstable)",
            m.open_now.clone(),
        );
        registry.register(
            "ward_jwks_age_seconds",
            "Seconds since the issuer's JWKS was last fetched successfully (-1: never)",
            m.jwks_age.clone(),
        );
        registry.register(
            "ward_connections_refused",
            "Connections refused at a listener before being served, by the cap that refused them",
            m.refused.clone(),
        );
        registry.register(
            "ward_connection_budget",
            "Connections the listeners of this process may hold together (from the open-file limit)",
            m.budget.clone(),
        );
        registry.register(
            "ward_connection_budget_in_use",
            "Connections held now against the connection budget",
            m.budget_in_use.clone(),
        );
        m.dns.register(registry);
        std::sync::Arc::new(m)
    }

    /// The DNS proxy's metrics.
    pub fn dns(&self) -> &DnsMetrics {
        &self.dns
    }

    /// Count a connection refused at a listener.
    pub fn connection_refused(&self, listener: &str, workload: &str, reason: &str) {
        self.refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_owned(),
                workload: workload.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Publish the size of the process-wide connection budget.
    pub fn connection_budget(&self, capacity: usize) {
        self.budget.set(i64::try_from(capacity).unwrap_or(i64::MAX));
    }

    /// A connection took (`1`) or gave back (`-1`) its place in the budget.
    pub(crate) fn connection_budget_in_use(&self, delta: i64) {
        self.budget_in_use.inc_by(delta);
    }

    fn labels(rec: &ConnRecord) -> TcpLabels {
        let (src_w, src_ns) = split_workload(rec.src_workload.as_deref());
        let (dst_w, dst_ns) = split_workload(rec.dst_workload.as_deref());
        let service = or_unknown(rec.dst_service.as_deref());
        let (svc_name, svc_ns) = match rec
            .dst_service
            .as_deref()
            .map(|s| s.split('.').collect::<Vec<_>>())
        {
            Some(parts) if parts.len() >= 2 => (parts[0].to_owned(), parts[1].to_owned()),
            Some(parts) if parts.len() == 1 => (parts[0].to_owned(), "unknown".to_owned()),
            _ => ("unknown".to_owned(), "unknown".to_owned()),
        };
        let security = match rec.direction {
            Direction::Outbound => "unknown",
            Direction::Inbound if rec.tls_version.is_some() => "mutual_tls",
            Direction::Inbound => "none",
        };
        TcpLabels {
            reporter: match rec.direction {
                Direction::Inbound => "destination",
                Direction::Outbound => "source",
            }
            .to_owned(),
            source_canonical_service: src_w.clone(),
            source_workload: src_w,
            source_workload_namespace: rec.src_namespace.clone().unwrap_or(src_ns),
            source_principal: or_unknown(rec.src_identity.as_deref()),
            source_app: "unknown".to_owned(),
            source_version: "unknown".to_owned(),
            source_canonical_revision: "latest".to_owned(),
            source_cluster: "unknown".to_owned(),
            destination_canonical_service: dst_w.clone(),
            destination_workload: dst_w,
            destination_workload_namespace: dst_ns,
            destination_principal: or_unknown(rec.dst_identity.as_deref()),
            destination_app: "unknown".to_owned(),
            destination_version: "unknown".to_owned(),
            destination_canonical_revision: "latest".to_owned(),
            destination_service: service,
            destination_service_name: svc_name,
            destination_service_namespace: svc_ns,
            destination_cluster: "unknown".to_owned(),
            request_protocol: "tcp".to_owned(),
            response_flags: rec.response_flags.as_str().to_owned(),
            connection_security_policy: security.to_owned(),
        }
    }

    /// A connection is served from now on ([`crate::connection::ConnResult::opened`]).
    pub(crate) fn conn_open(&self, rec: &ConnRecord) {
        self.open_now.inc();
        self.opened.get_or_create(&Self::labels(rec)).inc();
    }

    /// A connection counted open has ended.
    pub(crate) fn conn_closed(&self, rec: &ConnRecord) {
        let labels = Self::labels(rec);
        self.open_now.dec();
        self.closed.get_or_create(&labels).inc();
        self.sent.get_or_create(&labels).inc_by(rec.bytes_sent);
        self.received.get_or_create(&labels).inc_by(rec.bytes_recv);
    }

    /// A connection ended without ever being served.
    pub(crate) fn conn_failed(&self, rec: &ConnRecord) {
        self.failed.get_or_create(&Self::labels(rec)).inc();
    }

    /// Connections opened, closed and failed, over every label set.
    #[cfg(test)]
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        let mut registry = Registry::default();
        registry.register("o", "", self.opened.clone());
        registry.register("c", "", self.closed.clone());
        registry.register("f", "", self.failed.clone());
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        let sum = |name: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(&format!("{name}_total{{")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        (sum("o"), sum("c"), sum("f"))
    }

    /// Record how old an issuer's cached keys are (`None`: never fetched, reported as -1).
    pub fn jwks_age(&self, workload: &str, issuer: &str, age_seconds: Option<u64>) {
        let labels = JwksLabels {
            issuer: issuer.to_owned(),
            workload: workload.to_owned(),
        };
        self.jwks_age
            .get_or_create(&labels)
            .set(age_seconds.map(|a| a as i64).unwrap_or(-1));
    }

    /// Count an authorization decision.
    pub fn decision(&self, allowed: bool, policy: Option<&str>, destination_workload: &str) {
        self.authz
            .get_or_create(&AuthzLabels {
                decision: if allowed { "allow" } else { "deny" }.to_owned(),
                policy: policy.unwrap_or("none").to_owned(),
                destination_workload: destination_workload.to_owned(),
            })
            .inc();
    }
}
