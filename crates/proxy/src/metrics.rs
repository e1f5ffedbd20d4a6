//! Prometheus metrics: Istio's standard metrics with Istio's names, labels and buckets
//! (istio.io "Istio Standard Metrics"; ztunnel `src/proxy/metrics.rs`), and Ward's own under
//! `ward_`. Every metric is listed in docs/metrics.md.
//!
//! Every Istio label is always present; a value the config cannot vouch for is `unknown`,
//! because Kiali skips series that lack an expected label. Label values come from the config
//! (`ward_config::MeshDirectory`) and from what the TLS handshake verified, never from what a
//! peer says about itself, and never from request paths or unconfigured hosts, so the number of
//! series stays bounded by the config.

use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use ward_config::metrics_policy::MetricRules;
use ward_config::{ServiceMeta, WorkloadMeta, CLUSTER_ID};
use ward_policy::{AllowedBy, Decision, DeniedBy};

use crate::access_log::{ConnRecord, Direction};

/// The bucket bounds of Istio's histograms (`istio_request_duration_milliseconds`,
/// `istio_request_bytes`, `istio_response_bytes`): Envoy's default histogram buckets, which
/// Istio keeps unless `sidecar.istio.io/statsHistogramBuckets` says otherwise (envoyproxy/envoy
/// `source/common/stats/histogram_impl.cc`, `supportedBuckets`).
pub const ISTIO_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

const UNKNOWN: &str = "unknown";

/// The labels every Istio traffic metric has: who reported it, and both ends.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// `source` or `destination`.
    pub reporter: String,
    /// Source workload name.
    pub source_workload: String,
    /// Source workload namespace.
    pub source_workload_namespace: String,
    /// Source SPIFFE id.
    pub source_principal: String,
    /// Source app label.
    pub source_app: String,
    /// Source version label.
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
    /// Destination app label.
    pub destination_app: String,
    /// Destination version label.
    pub destination_version: String,
    /// Canonical service of the destination.
    pub destination_canonical_service: String,
    /// Canonical revision of the destination.
    pub destination_canonical_revision: String,
    /// Destination service host.
    pub destination_service: String,
    /// Destination service name.
    pub destination_service_name: String,
    /// Destination service namespace.
    pub destination_service_namespace: String,
    /// Destination cluster.
    pub destination_cluster: String,
}

/// The labels of the `istio_tcp_*` metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// Both ends.
    #[prometheus(flatten)]
    pub peers: PeerLabels,
    /// `tcp`.
    pub request_protocol: String,
    /// ztunnel's flags: `-`, `DENY`, `CONNECT`, `TLS_FAILURE`...
    pub response_flags: String,
    /// `mutual_tls` when the destination reports an mTLS connection, `none` for plaintext,
    /// `unknown` from the source side.
    pub connection_security_policy: String,
}

impl PeerLabels {
    /// The label named `tag` (Istio's label name), for a Telemetry `tagOverrides` REMOVE.
    fn tag_mut(&mut self, tag: &str) -> Option<&mut String> {
        Some(match tag {
            "reporter" => &mut self.reporter,
            "source_workload" => &mut self.source_workload,
            "source_workload_namespace" => &mut self.source_workload_namespace,
            "source_principal" => &mut self.source_principal,
            "source_app" => &mut self.source_app,
            "source_version" => &mut self.source_version,
            "source_canonical_service" => &mut self.source_canonical_service,
            "source_canonical_revision" => &mut self.source_canonical_revision,
            "source_cluster" => &mut self.source_cluster,
            "destination_workload" => &mut self.destination_workload,
            "destination_workload_namespace" => &mut self.destination_workload_namespace,
            "destination_principal" => &mut self.destination_principal,
            "destination_app" => &mut self.destination_app,
            "destination_version" => &mut self.destination_version,
            "destination_canonical_service" => &mut self.destination_canonical_service,
            "destination_canonical_revision" => &mut self.destination_canonical_revision,
            "destination_service" => &mut self.destination_service,
            "destination_service_name" => &mut self.destination_service_name,
            "destination_service_namespace" => &mut self.destination_service_namespace,
            "destination_cluster" => &mut self.destination_cluster,
            _ => return None,
        })
    }
}

impl TcpLabels {
    fn tag_mut(&mut self, tag: &str) -> Option<&mut String> {
        match tag {
            "request_protocol" => Some(&mut self.request_protocol),
            "response_flags" => Some(&mut self.response_flags),
            "connection_security_policy" => Some(&mut self.connection_security_policy),
            _ => self.peers.tag_mut(tag),
        }
    }
}

impl HttpLabels {
    fn tag_mut(&mut self, tag: &str) -> Option<&mut String> {
        match tag {
            "request_protocol" => Some(&mut self.request_protocol),
            "response_code" => Some(&mut self.response_code),
            "response_flags" => Some(&mut self.response_flags),
            "grpc_response_status" => Some(&mut self.grpc_response_status),
            "connection_security_policy" => Some(&mut self.connection_security_policy),
            _ => self.peers.tag_mut(tag),
        }
    }
}

/// The labels of the HTTP metrics (`istio_requests_total`, `istio_request_*`,
/// `istio_response_bytes`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Both ends.
    #[prometheus(flatten)]
    pub peers: PeerLabels,
    /// `http` or `grpc`.
    pub request_protocol: String,
    /// The HTTP status sent to the client.
    pub response_code: String,
    /// Envoy's flags: `-`, `NR`, `UH`, `UF`, `UC`...
    pub response_flags: String,
    /// The gRPC status of a gRPC request; empty (so absent in Prometheus) otherwise, as Istio.
    pub grpc_response_status: String,
    /// As for TCP.
    pub connection_security_policy: String,
}

/// Labels of the authorization decision counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// The workload `ns/name` whose sidecar decided.
    pub workload: String,
    /// `allow`, `deny`, or `audit` (an AUDIT rule matched).
    pub decision: String,
    /// The action of the deciding policy: `ALLOW`, `DENY`, `CUSTOM`, `AUDIT`; `ALLOW` with
    /// policy `none` when ALLOW policies apply and none matched; `none` when no ALLOW policy
    /// applies; `PEER_AUTHENTICATION` for a refusal by the port's mTLS mode.
    pub action: String,
    /// `ns/name` of the deciding policy, or `none`.
    pub policy: String,
    /// Index of the deciding rule, or `none`.
    pub rule: String,
}

/// Labels of the JWT validation counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwtLabels {
    /// The workload `ns/name` whose sidecar checked.
    pub workload: String,
    /// `valid`, `no_token`, or why the token was rejected (docs/metrics.md).
    pub result: String,
}

/// Labels of the JWKS cache age gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksLabels {
    /// The token issuer.
    pub issuer: String,
    /// The workload `ns/name` whose sidecar holds the cache.
    pub workload: String,
}

/// Labels of the certificate expiry gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// The workload `ns/name`.
    pub workload: String,
    /// `leaf` (the workload's certificate) or `root` (the earliest-expiring root it trusts).
    pub kind: String,
}

/// Labels of the blocked egress counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressLabels {
    /// The workload `ns/name` whose egress was refused.
    pub source_workload: String,
    /// Its namespace.
    pub source_namespace: String,
    /// The host asked for (CONNECT target, URI, `Host` or SNI), or `unknown`.
    pub host: String,
    /// The port asked for.
    pub port: u16,
    /// `http`, `tls` or `tcp` (what the first bytes were; `connect` for a CONNECT refused).
    pub protocol: String,
}

/// Labels of the span counters (docs/tracing.md).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanLabels {
    /// The workload `ns/name` whose proxy made the span.
    pub workload: String,
    /// `exported`, or why it was dropped: `queue_full`, `export_failed`, `export_timeout`,
    /// `no_exporter`.
    pub outcome: String,
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

type HistogramFamily = Family<HttpLabels, Histogram, fn() -> Histogram>;

fn istio_histogram() -> Histogram {
    Histogram::new(ISTIO_BUCKETS)
}

/// All of one process's proxy metrics; shared by every sidecar in it.
pub struct Metrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    failed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    requests: Family<HttpLabels, Counter>,
    duration: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
    authz: Family<AuthzLabels, Counter>,
    jwt: Family<JwtLabels, Counter>,
    open_now: Gauge,
    jwks_age: Family<JwksLabels, Gauge>,
    cert_expiry: Family<CertLabels, Gauge>,
    cert_lifetime: Family<CertLabels, Gauge>,
    egress_blocked: Family<EgressLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    spans: Family<SpanLabels, Counter>,
    budget: Gauge,
    budget_in_use: Gauge,
    dns: DnsMetrics,
    coverage: crate::coverage::Coverage,
    audit: crate::audit::AuditMetrics,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            opened: Family::default(),
            closed: Family::default(),
            failed: Family::default(),
            sent: Family::default(),
            received: Family::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(istio_histogram),
            request_bytes: Family::new_with_constructor(istio_histogram),
            response_bytes: Family::new_with_constructor(istio_histogram),
            authz: Family::default(),
            jwt: Family::default(),
            open_now: Gauge::default(),
            jwks_age: Family::default(),
            cert_expiry: Family::default(),
            cert_lifetime: Family::default(),
            egress_blocked: Family::default(),
            refused: Family::default(),
            spans: Family::default(),
            budget: Gauge::default(),
            budget_in_use: Gauge::default(),
            dns: DnsMetrics::default(),
            coverage: crate::coverage::Coverage::default(),
            audit: crate::audit::AuditMetrics::default(),
        }
    }
}

/// Which sidecar reports a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reporter {
    /// The client's sidecar.
    Source,
    /// The server's sidecar.
    Destination,
}

/// Both ends of a connection or request, as far as the config and the handshake vouch for
/// them; turned into [`PeerLabels`] by [`Parties::labels`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parties<'a> {
    pub(crate) reporter: Reporter,
    /// The source workload, when the config says which it is.
    pub(crate) source: Option<&'a WorkloadMeta>,
    /// The source's verified identity (`spiffe://…`).
    pub(crate) source_principal: Option<&'a str>,
    /// The source namespace when the workload is not known (from the verified identity).
    pub(crate) source_namespace: Option<&'a str>,
    /// The destination workload.
    pub(crate) destination: Option<&'a WorkloadMeta>,
    /// The destination's identity (verified on the source side, ours on the destination side).
    pub(crate) destination_principal: Option<&'a str>,
    /// The destination namespace when the workload is not known.
    pub(crate) destination_namespace: Option<&'a str>,
    /// The configured service the traffic was for.
    pub(crate) service: Option<&'a ServiceMeta>,
}

fn or_unknown(v: Option<&str>) -> String {
    match v {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => UNKNOWN.to_owned(),
    }
}

impl Parties<'_> {
    /// The Istio labels of both ends.
    pub(crate) fn labels(&self) -> PeerLabels {
        let (s, d, svc) = (self.source, self.destination, self.service);
        let cluster = |known: bool| if known { CLUSTER_ID } else { UNKNOWN }.to_owned();
        PeerLabels {
            reporter: match self.reporter {
                Reporter::Source => "source",
                Reporter::Destination => "destination",
            }
            .to_owned(),
            source_workload: or_unknown(s.map(|m| m.name.as_str())),
            source_workload_namespace: or_unknown(
                s.map(|m| m.namespace.as_str()).or(self.source_namespace),
            ),
            source_principal: or_unknown(self.source_principal.or(s.map(|m| m.principal.as_str()))),
            source_app: or_unknown(s.and_then(|m| m.app.as_deref())),
            source_version: or_unknown(s.and_then(|m| m.version.as_deref())),
            source_canonical_service: or_unknown(s.map(|m| m.canonical_service.as_str())),
            source_canonical_revision: or_unknown(s.map(|m| m.canonical_revision.as_str())),
            source_cluster: cluster(s.is_some()),
            destination_workload: or_unknown(d.map(|m| m.name.as_str())),
            destination_workload_namespace: or_unknown(
                d.map(|m| m.namespace.as_str())
                    .or(self.destination_namespace),
            ),
            destination_principal: or_unknown(
                self.destination_principal
                    .or(d.map(|m| m.principal.as_str())),
            ),
            destination_app: or_unknown(d.and_then(|m| m.app.as_deref())),
            destination_version: or_unknown(d.and_then(|m| m.version.as_deref())),
            destination_canonical_service: or_unknown(d.map(|m| m.canonical_service.as_str())),
            destination_canonical_revision: or_unknown(d.map(|m| m.canonical_revision.as_str())),
            destination_service: or_unknown(svc.map(|m| m.host.as_str())),
            destination_service_name: or_unknown(svc.map(|m| m.name.as_str())),
            destination_service_namespace: or_unknown(svc.map(|m| m.namespace.as_str())),
            destination_cluster: cluster(d.is_some() || svc.is_some()),
        }
    }

    /// `connection_security_policy`: only the destination knows (Istio: "cannot be properly
    /// populated" by the source).
    pub(crate) fn security_policy(&self, mtls: bool) -> String {
        match (self.reporter, mtls) {
            (Reporter::Source, _) => UNKNOWN,
            (Reporter::Destination, true) => "mutual_tls",
            (Reporter::Destination, false) => "none",
        }
        .to_owned()
    }
}

/// What an HTTP request's metrics record once its response has ended.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestOutcome<'a> {
    /// `http` or `grpc`.
    pub(crate) protocol: &'static str,
    /// The status sent to the client.
    pub(crate) code: u16,
    /// The response flag.
    pub(crate) flags: &'static str,
    /// The gRPC status, for a gRPC request that has one.
    pub(crate) grpc_status: Option<&'a str>,
    /// Request start to the end of the response, in milliseconds.
    pub(crate) duration_ms: f64,
    /// Bytes of the request (head and body).
    pub(crate) request_bytes: u64,
    /// Bytes of the response (head and body).
    pub(crate) response_bytes: u64,
}

/// The `result` label of a JWT rejection: Istio's failure kinds, in a fixed set of values.
pub(crate) fn jwt_result(e: ward_authn::JwtError) -> &'static str {
    use ward_authn::JwtError as E;
    match e {
        E::Expired => "expired",
        E::NotYetValid => "not_yet_valid",
        E::BadSignature => "bad_signature",
        E::UnknownIssuer => "unknown_issuer",
        E::JwksFetchFailed => "jwks_fetch_failed",
        E::NoMatchingKey => "no_matching_key",
        E::AudienceNotAllowed => "audience_not_allowed",
        E::AlgNotSupported | E::CritNotSupported => "unsupported",
        _ => "malformed",
    }
}

/// The action, policy and rule labels of a decision.
fn decision_labels(d: &Decision) -> (&'static str, String, String) {
    let rule = |r: &ward_policy::RuleRef| (r.policy.to_string(), r.rule.to_string());
    match d {
        Decision::Allow {
            by: AllowedBy::Rule(r),
            ..
        } => {
            let (p, n) = rule(r);
            ("ALLOW", p, n)
        }
        Decision::Allow {
            by: AllowedBy::NoAllowPolicies,
            ..
        } => ("none", "none".into(), "none".into()),
        Decision::Deny {
            by: DeniedBy::DenyRule(r),
            ..
        } => {
            let (p, n) = rule(r);
            ("DENY", p, n)
        }
        Decision::Deny {
            by: DeniedBy::NoAllowMatch,
            ..
        } => ("ALLOW", "none".into(), "none".into()),
        Decision::Deny {
            by: DeniedBy::CustomUnsupported(p),
            ..
        } => ("CUSTOM", p.to_string(), "none".into()),
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Metrics {
    /// What the sidecars served over mTLS and in plaintext (`GET /coverage`).
    pub fn coverage(&self) -> &crate::coverage::Coverage {
        &self.coverage
    }

    /// Create the metrics and register them.
    pub fn register(registry: &mut Registry) -> Arc<Metrics> {
        let m = Metrics::default();
        let r = registry;
        // Counters are registered without `_total`: the encoder adds it.
        r.register(
            "istio_requests",
            "HTTP requests, counted when their response ends",
            m.requests.clone(),
        );
        r.register(
            "istio_request_duration_milliseconds",
            "Request duration, from the request to the end of the response",
            m.duration.clone(),
        );
        r.register(
            "istio_request_bytes",
            "Request sizes (head and body)",
            m.request_bytes.clone(),
        );
        r.register(
            "istio_response_bytes",
            "Response sizes (head and body)",
            m.response_bytes.clone(),
        );
        r.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            m.opened.clone(),
        );
        r.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            m.closed.clone(),
        );
        r.register(
            "istio_tcp_connections_failed",
            "TCP connections failed (unstable)",
            m.failed.clone(),
        );
        r.register(
            "istio_tcp_sent_bytes",
            "Bytes sent toward the source",
            m.sent.clone(),
        );
        r.register(
            "istio_tcp_received_bytes",
            "Bytes received from the source",
            m.received.clone(),
        );
        r.register(
            "istio_tcp_sockets_open",
            "Connections open now (unstable)",
            m.open_now.clone(),
        );
        r.register(
            "ward_authz_decisions",
            "Authorization decisions (connections at L4, requests at L7) by action, policy and rule",
            m.authz.clone(),
        );
        r.register(
            "ward_jwt_validations",
            "Request authentication outcomes on workloads with jwtRules",
            m.jwt.clone(),
        );
        r.register(
            "ward_jwks_age_seconds",
            "Seconds since the issuer's JWKS was last fetched successfully (-1: never)",
            m.jwks_age.clone(),
        );
        r.register(
            "ward_cert_expiry_timestamp_seconds",
            "When a workload's certificate (kind=leaf) or the earliest of its roots (kind=root) expires, in seconds since the epoch",
            m.cert_expiry.clone(),
        );
        r.register(
            "ward_cert_lifetime_seconds",
            "How long a workload's certificate (kind=leaf) is valid, from NotBefore to NotAfter; renewal is due at half of it",
            m.cert_lifetime.clone(),
        );
        r.register(
            "ward_egress_blocked",
            "Outbound connections and requests refused because their destination is not registered (outboundTrafficPolicy REGISTRY_ONLY), or refused at an egress gateway",
            m.egress_blocked.clone(),
        );
        r.register(
            "ward_connections_refused",
            "Connections refused at a listener before being served, by the cap that refused them",
            m.refused.clone(),
        );
        r.register(
            "ward_spans",
            "Spans the proxies finished, by what became of them: exported to the collector, or dropped (queue full, export failed or timed out, no exporter)",
            m.spans.clone(),
        );
        r.register(
            "ward_connection_budget",
            "Connections the listeners of this process may hold together (from the open-file limit)",
            m.budget.clone(),
        );
        r.register(
            "ward_connection_budget_in_use",
            "Connections held now against the connection budget",
            m.budget_in_use.clone(),
        );
        m.dns.register(r);
        m.audit.register(r);
        Arc::new(m)
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

    /// Count `n` spans of `workload` with their outcome (`crate::trace`).
    pub(crate) fn spans(&self, workload: &str, outcome: &str, n: u64) {
        self.spans
            .get_or_create(&SpanLabels {
                workload: workload.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc_by(n);
    }

    /// Publish the size of the process-wide connection budget.
    pub fn connection_budget(&self, capacity: usize) {
        self.budget.set(i64::try_from(capacity).unwrap_or(i64::MAX));
    }

    /// A connection took (`1`) or gave back (`-1`) its place in the budget.
    pub(crate) fn connection_budget_in_use(&self, delta: i64) {
        self.budget_in_use.inc_by(delta);
    }

    /// The TCP labels of a connection's record.
    pub(crate) fn tcp_labels(rec: &ConnRecord) -> TcpLabels {
        let parties = Parties {
            reporter: match rec.direction {
                Direction::Inbound => Reporter::Destination,
                Direction::Outbound => Reporter::Source,
            },
            source: rec.src_meta.as_deref(),
            source_principal: rec.src_identity.as_deref(),
            source_namespace: rec.src_namespace.as_deref(),
            destination: rec.dst_meta.as_deref(),
            destination_principal: rec.dst_identity.as_deref(),
            destination_namespace: rec.dst_namespace.as_deref(),
            service: rec.service.as_deref(),
        };
        TcpLabels {
            peers: parties.labels(),
            request_protocol: "tcp".to_owned(),
            response_flags: rec.response_flags.as_str().to_owned(),
            connection_security_policy: parties.security_policy(rec.tls_version.is_some()),
        }
    }

    /// The record's labels for `metric` (a standard metric name), or `None` when a Telemetry
    /// override disables it there.
    fn tcp_labels_for(rec: &ConnRecord, labels: &TcpLabels, metric: &str) -> Option<TcpLabels> {
        let rules = rec.metrics.as_deref().map(|m| match rec.direction {
            Direction::Inbound => &m.server,
            Direction::Outbound => &m.client,
        });
        let Some(o) = rules.and_then(|r| r.get(metric)) else {
            return Some(labels.clone());
        };
        if o.disabled {
            return None;
        }
        let mut labels = labels.clone();
        for tag in &o.removed_tags {
            if let Some(v) = labels.tag_mut(tag) {
                v.clear();
            }
        }
        Some(labels)
    }

    /// A connection is served from now on ([`crate::connection::ConnResult::opened`]).
    pub(crate) fn conn_open(&self, rec: &ConnRecord) {
        self.open_now.inc();
        let labels = Self::tcp_labels(rec);
        if let Some(l) = Self::tcp_labels_for(rec, &labels, "TCP_OPENED_CONNECTIONS") {
            self.opened.get_or_create(&l).inc();
        }
    }

    /// A connection counted open has ended.
    pub(crate) fn conn_closed(&self, rec: &ConnRecord) {
        let labels = Self::tcp_labels(rec);
        self.open_now.dec();
        if let Some(l) = Self::tcp_labels_for(rec, &labels, "TCP_CLOSED_CONNECTIONS") {
            self.closed.get_or_create(&l).inc();
        }
        if let Some(l) = Self::tcp_labels_for(rec, &labels, "TCP_SENT_BYTES") {
            self.sent.get_or_create(&l).inc_by(rec.bytes_sent);
        }
        if let Some(l) = Self::tcp_labels_for(rec, &labels, "TCP_RECEIVED_BYTES") {
            self.received.get_or_create(&l).inc_by(rec.bytes_recv);
        }
    }

    /// A connection ended without ever being served.
    pub(crate) fn conn_failed(&self, rec: &ConnRecord) {
        self.failed.get_or_create(&Self::tcp_labels(rec)).inc();
    }

    /// An HTTP request whose response has ended (or was cut short).
    pub(crate) fn http_request(
        &self,
        peers: PeerLabels,
        connection_security_policy: String,
        o: &RequestOutcome<'_>,
        rules: Option<&MetricRules>,
    ) {
        let labels = HttpLabels {
            peers,
            request_protocol: o.protocol.to_owned(),
            response_code: o.code.to_string(),
            response_flags: o.flags.to_owned(),
            grpc_response_status: o.grpc_status.unwrap_or_default().to_owned(),
            connection_security_policy,
        };
        // Each metric with its own Telemetry override: disabled, or some labels emptied.
        let for_metric = |metric: &str| -> Option<HttpLabels> {
            let Some(o) = rules.and_then(|r| r.get(metric)) else {
                return Some(labels.clone());
            };
            if o.disabled {
                return None;
            }
            let mut l = labels.clone();
            for tag in &o.removed_tags {
                if let Some(v) = l.tag_mut(tag) {
                    v.clear();
                }
            }
            Some(l)
        };
        if let Some(l) = for_metric("REQUEST_COUNT") {
            self.requests.get_or_create(&l).inc();
        }
        if let Some(l) = for_metric("REQUEST_DURATION") {
            self.duration.get_or_create(&l).observe(o.duration_ms);
        }
        if let Some(l) = for_metric("REQUEST_SIZE") {
            self.request_bytes
                .get_or_create(&l)
                .observe(o.request_bytes as f64);
        }
        if let Some(l) = for_metric("RESPONSE_SIZE") {
            self.response_bytes
                .get_or_create(&l)
                .observe(o.response_bytes as f64);
        }
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

    /// The audit trail's metrics (docs/audit.md).
    pub(crate) fn audit(&self) -> &crate::audit::AuditMetrics {
        &self.audit
    }

    /// Count an AuthorizationPolicy decision made by `workload`'s sidecar, and each AUDIT rule
    /// that matched.
    pub(crate) fn authz_decision(&self, workload: &str, d: &Decision) {
        let (action, policy, rule) = decision_labels(d);
        let decision = if d.is_allowed() { "allow" } else { "deny" };
        self.count_authz(workload, decision, action, policy, rule);
        for a in d.audit() {
            let (policy, rule) = (a.policy.to_string(), a.rule.to_string());
            self.count_authz(workload, "audit", "AUDIT", policy, rule);
        }
    }

    /// Count a connection refused by the port's PeerAuthentication (`policy`: the deciding
    /// one, `None` for Ward's STRICT default).
    pub(crate) fn peer_authn_refusal(&self, workload: &str, policy: Option<&str>) {
        let policy = policy.unwrap_or("none").to_owned();
        self.count_authz(
            workload,
            "deny",
            "PEER_AUTHENTICATION",
            policy,
            "none".into(),
        );
    }

    fn count_authz(
        &self,
        workload: &str,
        decision: &str,
        action: &str,
        policy: String,
        rule: String,
    ) {
        self.authz
            .get_or_create(&AuthzLabels {
                workload: workload.to_owned(),
                decision: decision.to_owned(),
                action: action.to_owned(),
                policy,
                rule,
            })
            .inc();
    }

    /// Count one request's JWT outcome (`result`: `valid`, `no_token`, or [`jwt_result`]).
    pub(crate) fn jwt_validation(&self, workload: &str, result: &str) {
        self.jwt
            .get_or_create(&JwtLabels {
                workload: workload.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Publish when `workload`'s certificate (`kind` `leaf`) or its earliest root (`root`)
    /// expires.
    pub(crate) fn cert_expiry(&self, workload: &str, kind: &str, not_after: SystemTime) {
        self.cert_expiry
            .get_or_create(&CertLabels {
                workload: workload.to_owned(),
                kind: kind.to_owned(),
            })
            .set(unix_seconds(not_after));
    }

    /// Publish how long `workload`'s installed certificate is valid.
    pub(crate) fn cert_lifetime(&self, workload: &str, lifetime: std::time::Duration) {
        self.cert_lifetime
            .get_or_create(&CertLabels {
                workload: workload.to_owned(),
                kind: "leaf".to_owned(),
            })
            .set(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX));
    }

    /// Count an outbound connection or request refused because its destination is not
    /// registered (`outboundTrafficPolicy: REGISTRY_ONLY`; docs/egress.md).
    pub(crate) fn egress_blocked(
        &self,
        source_workload: &str,
        source_namespace: &str,
        host: Option<&str>,
        port: u16,
        protocol: &str,
    ) {
        self.egress_blocked
            .get_or_create(&EgressLabels {
                source_workload: source_workload.to_owned(),
                source_namespace: source_namespace.to_owned(),
                host: or_unknown(host),
                port,
                protocol: protocol.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn meta(name: &str, labels: &[(&str, &str)]) -> WorkloadMeta {
        WorkloadMeta::of(&ward_config::WorkloadInfo {
            name: name.into(),
            namespace: "demo".into(),
            service_account: name.into(),
            address: "127.0.0.1".parse().unwrap(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect::<BTreeMap<_, _>>(),
            identity: format!("spiffe://cluster.local/ns/demo/sa/{name}"),
            demo_app: None,
            keep_override_headers: false,
            audit_fail_closed: false,
            num_trusted_proxies: 0,
        })
    }

    fn encode(m: &Arc<Metrics>, registry: &Registry) -> String {
        let _ = m;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn peer_labels_are_istios_with_unknown_for_what_the_config_cannot_say() {
        let web = meta("web", &[("app", "web"), ("version", "v1")]);
        let echo = meta("echo", &[]);
        let svc = ServiceMeta::new("echo.demo.svc.cluster.local", "demo");
        let known = Parties {
            reporter: Reporter::Destination,
            source: Some(&web),
            source_principal: Some("spiffe://cluster.local/ns/demo/sa/web"),
            source_namespace: None,
            destination: Some(&echo),
            destination_principal: None,
            destination_namespace: None,
            service: Some(&svc),
        };
        let l = known.labels();
        assert_eq!(
            (
                l.source_workload.as_str(),
                l.source_app.as_str(),
                l.source_version.as_str(),
                l.source_canonical_revision.as_str(),
                l.source_cluster.as_str()
            ),
            ("web", "web", "v1", "v1", "Kubernetes")
        );
        assert_eq!(
            (
                l.destination_app.as_str(),
                l.destination_canonical_service.as_str(),
                l.destination_canonical_revision.as_str(),
                l.destination_principal.as_str()
            ),
            (
                "unknown",
                "echo",
                "latest",
                "spiffe://cluster.local/ns/demo/sa/echo"
            )
        );
        assert_eq!(
            (
                l.destination_service.as_str(),
                l.destination_service_name.as_str(),
                l.destination_service_namespace.as_str()
            ),
            ("echo.demo.svc.cluster.local", "echo", "demo")
        );
        assert_eq!(known.security_policy(true), "mutual_tls");
        assert_eq!(known.security_policy(false), "none");
        // A plaintext caller: nothing about the source is known.
        let plaintext = Parties {
            source: None,
            source_principal: None,
            service: None,
            ..known
        };
        let l = plaintext.labels();
        for v in [
            &l.source_workload,
            &l.source_workload_namespace,
            &l.source_principal,
            &l.source_app,
            &l.source_canonical_service,
            &l.source_cluster,
            &l.destination_service,
        ] {
            assert_eq!(v, "unknown");
        }
        assert_eq!(l.destination_cluster, "Kubernetes");
        let source_side = Parties {
            reporter: Reporter::Source,
            ..known
        };
        assert_eq!(source_side.labels().reporter, "source");
        assert_eq!(source_side.security_policy(true), "unknown");
    }

    #[test]
    fn exposition_has_istios_names_buckets_and_every_label() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let web = meta("web", &[]);
        let parties = Parties {
            reporter: Reporter::Destination,
            source: Some(&web),
            source_principal: None,
            source_namespace: None,
            destination: None,
            destination_principal: None,
            destination_namespace: None,
            service: None,
        };
        m.http_request(
            parties.labels(),
            parties.security_policy(true),
            &RequestOutcome {
                protocol: "http",
                code: 200,
                flags: "-",
                grpc_status: None,
                duration_ms: 3.0,
                request_bytes: 120,
                response_bytes: 2000,
            },
            None,
        );
        let text = encode(&m, &registry);
        assert!(text.contains("# TYPE istio_requests counter"), "{text}");
        let requests = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .expect("istio_requests_total series");
        for label in [
            "reporter=\"destination\"",
            "source_workload=\"web\"",
            "destination_workload=\"unknown\"",
            "request_protocol=\"http\"",
            "response_code=\"200\"",
            "response_flags=\"-\"",
            "grpc_response_status=\"\"",
            "connection_security_policy=\"mutual_tls\"",
            "destination_service_name=\"unknown\"",
            "source_canonical_revision=\"latest\"",
        ] {
            assert!(requests.contains(label), "{label} in {requests}");
        }
        for bound in ISTIO_BUCKETS {
            let le = format!("le=\"{bound:?}\"");
            assert!(
                text.lines().any(
                    |l| l.starts_with("istio_request_duration_milliseconds_bucket{")
                        && l.contains(&le)
                ),
                "bucket {le}"
            );
        }
        let in_bucket = |name: &str, le: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{name}_bucket{{")) && l.contains(le))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        // 3 ms is in the 5 ms bucket, not the 1 ms one; 2000 bytes in 2500, not 1000.
        assert_eq!(
            in_bucket("istio_request_duration_milliseconds", "le=\"1.0\"").as_deref(),
            Some("0")
        );
        assert_eq!(
            in_bucket("istio_request_duration_milliseconds", "le=\"5.0\"").as_deref(),
            Some("1")
        );
        assert_eq!(
            in_bucket("istio_response_bytes", "le=\"1000.0\"").as_deref(),
            Some("0")
        );
        assert_eq!(
            in_bucket("istio_response_bytes", "le=\"2500.0\"").as_deref(),
            Some("1")
        );
        // A family without series is not written: blocked egress shows once something is
        // blocked.
        assert!(!text.contains("ward_egress_blocked"));
        m.egress_blocked("demo/web", "demo", Some("api.example.com"), 443, "tls");
        let text = encode(&m, &registry);
        assert!(text.contains(
            "ward_egress_blocked_total{source_workload=\"demo/web\",source_namespace=\"demo\",host=\"api.example.com\",port=\"443\",protocol=\"tls\"} 1"
        ));
    }

    #[test]
    fn decisions_are_counted_by_action_policy_and_rule() {
        use ward_policy::{PolicyRef, RuleRef};
        let rule = RuleRef {
            policy: PolicyRef::new("demo", "allow-web"),
            rule: 2,
        };
        let allow = Decision::Allow {
            by: AllowedBy::Rule(rule.clone()),
            audit: vec![RuleRef {
                policy: PolicyRef::new("demo", "audit-all"),
                rule: 0,
            }],
            dry_run: vec![],
        };
        assert_eq!(
            decision_labels(&allow),
            ("ALLOW", "demo/allow-web".into(), "2".into())
        );
        let no_match = Decision::Deny {
            by: DeniedBy::NoAllowMatch,
            audit: vec![],
            dry_run: vec![],
        };
        assert_eq!(
            decision_labels(&no_match),
            ("ALLOW", "none".into(), "none".into())
        );
        let denied = Decision::Deny {
            by: DeniedBy::DenyRule(rule),
            audit: vec![],
            dry_run: vec![],
        };
        assert_eq!(decision_labels(&denied).0, "DENY");
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.authz_decision("demo/echo", &allow);
        let text = encode(&m, &registry);
        assert!(text.contains("ward_authz_decisions_total{workload=\"demo/echo\",decision=\"allow\",action=\"ALLOW\",policy=\"demo/allow-web\",rule=\"2\"} 1"), "{text}");
        assert!(
            text.contains(
                "decision=\"audit\",action=\"AUDIT\",policy=\"demo/audit-all\",rule=\"0\"} 1"
            ),
            "{text}"
        );
    }
}
