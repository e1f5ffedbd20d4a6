//! DestinationRule (istio/api `networking/v1alpha3/destination_rule.proto`; v1 and v1beta1
//! share the schema): the policies a client applies to a service after routing (load
//! balancing, connection pools, outlier detection, client TLS) and its subsets. Ward accepts it
//! without enforcing it (WARD0102); the spec is decoded field for field and checked with the
//! rules of Istio's validation that are cheap to apply (istio/istio `pkg/config/validation`,
//! `ValidateDestinationRule`).
//!
//! [`ConnectionPoolSettings`] is also the Sidecar's `connectionPool` and
//! `inboundConnectionPool`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use ward_policy::spec::WorkloadSelector as PolicySelector;

use super::checks::{self, at, invalid};
use super::is_dns_name;
use super::proto::Duration;
use super::virtual_service::PortSelector;
use crate::diag::Finding;
use crate::meta::{check_label_name, check_labels};
use crate::yaml::push_index;

/// `spec` of a DestinationRule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// The service the rule applies to (required), as in the service registry.
    pub host: Option<String>,
    /// Policies for every subset and port.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named versions of the service (by endpoint labels).
    pub subsets: Option<Vec<Subset>>,
    /// Namespaces that see the rule; all when absent.
    pub export_to: Option<Vec<String>>,
    /// Applies the rule only to these workloads (`matchLabels`).
    pub workload_selector: Option<PolicySelector>,
}

/// Client policies for a service, a subset or a port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS to the service.
    pub tls: Option<ClientTlsSettings>,
    /// Overrides per port.
    pub port_level_settings: Option<Vec<PortTrafficPolicy>>,
    /// Tunnel the connections through a proxy (HTTP CONNECT or POST).
    pub tunnel: Option<TunnelSettings>,
    /// Send the PROXY protocol header.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Limit concurrent retries.
    pub retry_budget: Option<RetryBudget>,
}

/// `TrafficPolicy.PortTrafficPolicy`: the policies of one port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The port (required).
    pub port: Option<PortSelector>,
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS to the service.
    pub tls: Option<ClientTlsSettings>,
}

/// `TrafficPolicy.TunnelSettings`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// `CONNECT` (the default) or `POST`.
    pub protocol: Option<String>,
    /// The host to tunnel to (required): a DNS name or an IP address.
    pub target_host: Option<String>,
    /// The port to tunnel to (required).
    pub target_port: Option<u32>,
}

/// `TrafficPolicy.ProxyProtocol`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyProtocol {
    /// The PROXY protocol version; V1 when absent.
    pub version: Option<ProxyProtocolVersion>,
}

/// `ProxyProtocol.VERSION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProxyProtocolVersion {
    /// Human-readable header.
    V1,
    /// Binary header.
    V2,
}

/// `TrafficPolicy.RetryBudget`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Concurrent retries as a percentage of active and pending requests.
    pub percent: Option<f64>,
    /// Concurrent retries always allowed.
    pub min_retry_concurrency: Option<u32>,
    /// How long new requests count toward the budget.
    pub budget_interval: Option<Duration>,
}

/// A named version of the service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// The name (required), used by routes' `destination.subset`.
    pub name: Option<String>,
    /// Endpoint labels that select the subset.
    pub labels: Option<BTreeMap<String, String>>,
    /// Policies for the subset, overriding the rule's.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Load balancing. `simple` and `consistentHash` are a oneof.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// A standard algorithm.
    pub simple: Option<SimpleLb>,
    /// Session affinity by a hash.
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality-weighted load balancing.
    pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,
    /// Zone-aware load balancing.
    pub zone_aware_lb_setting: Option<ZoneAwareLoadBalancerSetting>,
    /// Deprecated: the slow-start window; use `warmup`.
    pub warmup_duration_secs: Option<Duration>,
    /// Slow start of new endpoints.
    pub warmup: Option<WarmupConfiguration>,
}

/// `LoadBalancerSettings.SimpleLB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Istio picks (LEAST_REQUEST).
    Unspecified,
    /// Deprecated: LEAST_REQUEST.
    LeastConn,
    /// A random endpoint.
    Random,
    /// The original destination.
    Passthrough,
    /// Each endpoint in turn.
    RoundRobin,
    /// The endpoint with fewer active requests of two random ones.
    LeastRequest,
}

/// `LoadBalancerSettings.ConsistentHashLB`. `httpHeaderName`, `httpCookie`, `useSourceIp` and
/// `httpQueryParameterName` are a oneof (the hash key), and so are `ringHash` and `maglev`
/// (the algorithm).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    /// Hash this header.
    pub http_header_name: Option<String>,
    /// Hash this cookie (created when absent).
    pub http_cookie: Option<HttpCookie>,
    /// Hash the source IP.
    pub use_source_ip: Option<bool>,
    /// Hash this query parameter.
    pub http_query_parameter_name: Option<String>,
    /// The ring hash algorithm.
    pub ring_hash: Option<RingHash>,
    /// The Maglev algorithm.
    pub maglev: Option<MagLev>,
    /// Deprecated: the ring size; use `ringHash`.
    pub minimum_ring_size: Option<u64>,
}

/// `ConsistentHashLB.RingHash`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// Minimum number of virtual nodes.
    pub minimum_ring_size: Option<u64>,
}

/// `ConsistentHashLB.MagLev`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MagLev {
    /// Lookup table size: a prime.
    pub table_size: Option<u64>,
}

/// `ConsistentHashLB.HTTPCookie`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// The cookie's name (required).
    pub name: Option<String>,
    /// The cookie's path.
    pub path: Option<String>,
    /// The cookie's lifetime.
    pub ttl: Option<Duration>,
    /// More cookie attributes.
    pub attributes: Option<Vec<CookieAttribute>>,
}

/// `HTTPCookie.Attribute`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieAttribute {
    /// The attribute's name (required).
    pub name: Option<String>,
    /// Its value.
    pub value: Option<String>,
}

/// Slow start of new endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupConfiguration {
    /// The window (required).
    pub duration: Option<Duration>,
    /// Starting weight, as a percentage of the full weight.
    pub minimum_percent: Option<f64>,
    /// How fast the weight grows.
    pub aggression: Option<f64>,
}

/// Connection limits (DestinationRule, and Sidecar `connectionPool`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP limits.
    pub tcp: Option<TcpSettings>,
    /// HTTP limits.
    pub http: Option<HttpSettings>,
}

/// `ConnectionPoolSettings.TCPSettings`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Maximum connections to an endpoint.
    pub max_connections: Option<i32>,
    /// TCP connect timeout.
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Maximum lifetime of a connection.
    pub max_connection_duration: Option<Duration>,
    /// Idle timeout of a connection.
    pub idle_timeout: Option<Duration>,
}

/// `TCPSettings.TcpKeepalive`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Probes before the connection is dead.
    pub probes: Option<u32>,
    /// Idle time before the first probe.
    pub time: Option<Duration>,
    /// Time between probes.
    pub interval: Option<Duration>,
}

/// `ConnectionPoolSettings.HTTPSettings`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Maximum queued requests.
    pub http1_max_pending_requests: Option<i32>,
    /// Maximum active requests.
    pub http2_max_requests: Option<i32>,
    /// Maximum requests per connection.
    pub max_requests_per_connection: Option<i32>,
    /// Maximum concurrent retries.
    pub max_retries: Option<i32>,
    /// Idle timeout of a connection.
    pub idle_timeout: Option<Duration>,
    /// Whether to upgrade HTTP/1.1 connections to HTTP/2.
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Use the client's protocol upstream.
    pub use_client_protocol: Option<bool>,
    /// Maximum concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: Option<i32>,
    /// HTTP/2 PING keepalive.
    pub http2_keep_alive: Option<ConnectionKeepalive>,
}

/// `HTTPSettings.H2UpgradePolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// The mesh-wide default.
    Default,
    /// Do not upgrade.
    DoNotUpgrade,
    /// Upgrade.
    Upgrade,
}

/// `HTTPSettings.ConnectionKeepalive`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionKeepalive {
    /// Time between PINGs (required).
    pub interval: Option<Duration>,
    /// How long to wait for the PING's answer (required).
    pub timeout: Option<Duration>,
}

/// Ejection of failing endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Deprecated: use `consecutiveGatewayErrors` or `consecutive5xxErrors`.
    pub consecutive_errors: Option<i32>,
    /// Count local-origin errors apart from upstream ones.
    pub split_external_local_origin_errors: Option<bool>,
    /// Local-origin failures before ejection.
    pub consecutive_local_origin_failures: Option<u32>,
    /// Gateway errors (502, 503, 504) before ejection.
    pub consecutive_gateway_errors: Option<u32>,
    /// 5xx errors before ejection.
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Time between sweeps.
    pub interval: Option<Duration>,
    /// Minimum ejection time.
    pub base_ejection_time: Option<Duration>,
    /// Maximum share of endpoints ejected, 0-100.
    pub max_ejection_percent: Option<i32>,
    /// Healthy share below which detection stops, 0-100.
    pub min_health_percent: Option<i32>,
    /// HTTP status codes that count as errors.
    pub outlier_detection_http_error_codes: Option<Vec<u32>>,
}

/// TLS to the service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// The TLS mode.
    pub mode: Option<ClientTlsMode>,
    /// Client certificate file (MUTUAL).
    pub client_certificate: Option<String>,
    /// Client private key file (MUTUAL).
    pub private_key: Option<String>,
    /// CA bundle file to verify the server.
    pub ca_certificates: Option<String>,
    /// Secret holding the client certificate, key and CA.
    pub credential_name: Option<String>,
    /// Accepted server identities.
    pub subject_alt_names: Option<Vec<String>>,
    /// SNI to send.
    pub sni: Option<String>,
    /// Skip verifying the server's certificate.
    pub insecure_skip_verify: Option<bool>,
    /// Certificate revocation list file.
    pub ca_crl: Option<String>,
}

/// `ClientTLSSettings.TLSmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plaintext.
    Disable,
    /// TLS, server verified.
    Simple,
    /// mTLS with the given client certificate.
    Mutual,
    /// mTLS with the workload's Istio certificate.
    IstioMutual,
}

/// Locality-weighted load balancing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLoadBalancerSetting {
    /// Traffic shares per locality.
    pub distribute: Option<Vec<LocalityDistribute>>,
    /// Failover between regions.
    pub failover: Option<Vec<LocalityFailover>>,
    /// Labels that order failover.
    pub failover_priority: Option<Vec<String>>,
    /// Whether locality load balancing is on.
    pub enabled: Option<bool>,
}

/// `LocalityLoadBalancerSetting.Distribute`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityDistribute {
    /// The origin locality, `region/zone/subzone` with `*` wildcards.
    pub from: Option<String>,
    /// Destination localities → weight.
    pub to: Option<BTreeMap<String, u32>>,
}

/// A failover from one region (or zone) to another (`LocalityLoadBalancerSetting.Failover`,
/// `ZoneAwareLoadBalancerSetting.Failover`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    /// The origin.
    pub from: Option<String>,
    /// Where traffic goes when the origin's endpoints are unhealthy.
    pub to: Option<String>,
}

/// Zone-aware load balancing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneAwareLoadBalancerSetting {
    /// Whether zone-aware load balancing is on.
    pub enabled: Option<bool>,
    /// Failover between zones.
    pub failover: Option<Vec<LocalityFailover>>,
    /// Labels that order failover.
    pub failover_priority: Option<Vec<String>>,
    /// Minimum cluster size for zone awareness.
    pub min_cluster_size: Option<u64>,
}

impl DestinationRuleSpec {
    /// Problems Istio's validation would reject.
    pub(crate) fn validate(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        checks::require_text(&mut out, "spec", "host", self.host.as_deref());
        if let Some(policy) = &self.traffic_policy {
            policy.validate("spec.trafficPolicy", &mut out);
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, subset) in self.subsets.iter().flatten().enumerate() {
            let path = push_index("spec.subsets", i);
            subset.validate(&path, &mut out);
            if let Some(name) = &subset.name {
                if !names.insert(name.as_str()) {
                    invalid(
                        &mut out,
                        &at(&path, "name"),
                        format!("subset name `{name}` is used twice"),
                    );
                }
            }
        }
        out.extend(super::check_export_to(
            self.export_to.as_deref(),
            "spec.exportTo",
        ));
        if let Some(selector) = &self.workload_selector {
            out.extend(check_labels(
                &selector.match_labels,
                "spec.workloadSelector.matchLabels",
            ));
        }
        out
    }
}

impl Subset {
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        match self.name.as_deref() {
            None | Some("") => invalid(out, path, "missing required field `name`"),
            Some(name) => {
                if let Err(why) = check_label_name(name) {
                    invalid(
                        out,
                        &at(path, "name"),
                        why.replace("namespace", "subset name"),
                    );
                }
            }
        }
        if let Some(labels) = &self.labels {
            out.extend(check_labels(labels, &at(path, "labels")));
        }
        if let Some(policy) = &self.traffic_policy {
            policy.validate(&at(path, "trafficPolicy"), out);
        }
    }
}

impl TrafficPolicy {
    /// istio/istio validateTrafficPolicy.
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        let empty = self.load_balancer.is_none()
            && self.connection_pool.is_none()
            && self.outlier_detection.is_none()
            && self.tls.is_none()
            && self.port_level_settings.is_none()
            && self.tunnel.is_none()
            && self.proxy_protocol.is_none()
            && self.retry_budget.is_none();
        if empty {
            invalid(out, path, "a traffic policy needs at least one field");
            return;
        }
        checks::not_both(
            out,
            path,
            ("tunnel", self.tunnel.is_some()),
            ("proxyProtocol", self.proxy_protocol.is_some()),
        );
        validate_policies(
            path,
            Policies {
                load_balancer: self.load_balancer.as_ref(),
                connection_pool: self.connection_pool.as_ref(),
                outlier_detection: self.outlier_detection.as_ref(),
                tls: self.tls.as_ref(),
            },
            out,
        );
        for (i, port_policy) in self.port_level_settings.iter().flatten().enumerate() {
            port_policy.validate(&push_index(&at(path, "portLevelSettings"), i), out);
        }
        if let Some(tunnel) = &self.tunnel {
            tunnel.validate(&at(path, "tunnel"), out);
        }
    }
}

/// The policies a traffic policy and a port-level policy both have.
struct Policies<'a> {
    load_balancer: Option<&'a LoadBalancerSettings>,
    connection_pool: Option<&'a ConnectionPoolSettings>,
    outlier_detection: Option<&'a OutlierDetection>,
    tls: Option<&'a ClientTlsSettings>,
}

fn validate_policies(path: &str, policies: Policies<'_>, out: &mut Vec<Finding>) {
    if let Some(lb) = policies.load_balancer {
        lb.validate(&at(path, "loadBalancer"), out);
    }
    if let Some(pool) = policies.connection_pool {
        pool.validate(&at(path, "connectionPool"), out);
    }
    if let Some(outlier) = policies.outlier_detection {
        outlier.validate(&at(path, "outlierDetection"), out);
    }
    if let Some(tls) = policies.tls {
        tls.validate(&at(path, "tls"), out);
    }
}

impl PortTrafficPolicy {
    /// istio/istio validatePortTrafficPolicies.
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        match &self.port {
            None => invalid(out, path, "missing required field `port`"),
            Some(port) => port.validate(&at(path, "port"), out),
        }
        let policies = Policies {
            load_balancer: self.load_balancer.as_ref(),
            connection_pool: self.connection_pool.as_ref(),
            outlier_detection: self.outlier_detection.as_ref(),
            tls: self.tls.as_ref(),
        };
        if policies.load_balancer.is_none()
            && policies.connection_pool.is_none()
            && policies.outlier_detection.is_none()
            && policies.tls.is_none()
        {
            invalid(out, path, "a port traffic policy needs at least one policy");
        }
        validate_policies(path, policies, out);
    }
}

impl TunnelSettings {
    /// istio/istio validateTunnelSettings.
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        if let Some(protocol) = self.protocol.as_deref().filter(|p| !p.is_empty()) {
            if protocol != "CONNECT" && protocol != "POST" {
                invalid(
                    out,
                    &at(path, "protocol"),
                    format!("`{protocol}` is not `CONNECT` or `POST`"),
                );
            }
        }
        match self.target_host.as_deref() {
            None | Some("") => invalid(out, path, "missing required field `targetHost`"),
            Some(host) if host.parse::<IpAddr>().is_err() && !is_dns_name(host) => invalid(
                out,
                &at(path, "targetHost"),
                format!("`{host}` is neither a DNS name nor an IP address"),
            ),
            Some(_) => {}
        }
        match self.target_port {
            None => invalid(out, path, "missing required field `targetPort`"),
            Some(port) => checks::port(out, &at(path, "targetPort"), port),
        }
    }
}

impl LoadBalancerSettings {
    /// istio/istio validateLoadBalancer.
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        checks::one_of(
            out,
            path,
            &[
                ("simple", self.simple.is_some()),
                ("consistentHash", self.consistent_hash.is_some()),
            ],
        );
        checks::not_both(
            out,
            path,
            ("localityLbSetting", self.locality_lb_setting.is_some()),
            ("zoneAwareLbSetting", self.zone_aware_lb_setting.is_some()),
        );
        if let Some(hash) = &self.consistent_hash {
            hash.validate(&at(path, "consistentHash"), out);
        }
        if let Some(warmup) = &self.warmup {
            let warmup_path = at(path, "warmup");
            checks::require(out, &warmup_path, "duration", warmup.duration.as_ref());
            if let Some(percent) = warmup.minimum_percent {
                checks::percentage(out, &at(&warmup_path, "minimumPercent"), percent);
            }
            if let Some(aggression) = warmup.aggression.filter(|a| *a <= 0.0) {
                invalid(
                    out,
                    &at(&warmup_path, "aggression"),
                    format!("aggression {aggression} must be greater than 0"),
                );
            }
        }
    }
}

/// Envoy's limit on the Maglev table size (istio/istio validateLoadBalancer: "tableSize must be
/// less than 5000011 for maglev").
const MAGLEV_TABLE_LIMIT: u64 = 5_000_011;

impl ConsistentHashLb {
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        checks::one_of(
            out,
            path,
            &[
                ("httpHeaderName", self.http_header_name.is_some()),
                ("httpCookie", self.http_cookie.is_some()),
                ("useSourceIp", self.use_source_ip.is_some()),
                (
                    "httpQueryParameterName",
                    self.http_query_parameter_name.is_some(),
                ),
            ],
        );
        checks::one_of(
            out,
            path,
            &[
                ("ringHash", self.ring_hash.is_some()),
                ("maglev", self.maglev.is_some()),
            ],
        );
        let algorithm = self.ring_hash.is_some() || self.maglev.is_some();
        if algorithm && self.minimum_ring_size.is_some_and(|s| s != 0) {
            invalid(
                out,
                path,
                "the deprecated `minimumRingSize` cannot be combined with `ringHash` or `maglev`",
            );
        }
        if let Some(cookie) = &self.http_cookie {
            let cookie_path = at(path, "httpCookie");
            checks::require_text(out, &cookie_path, "name", cookie.name.as_deref());
            let mut names = std::collections::BTreeSet::new();
            for (i, attribute) in cookie.attributes.iter().flatten().enumerate() {
                let attribute_path = push_index(&at(&cookie_path, "attributes"), i);
                match attribute.name.as_deref() {
                    None | Some("") => {
                        invalid(out, &attribute_path, "missing required field `name`");
                    }
                    Some(name) if !names.insert(name) => invalid(
                        out,
                        &at(&attribute_path, "name"),
                        format!("cookie attribute `{name}` is set twice"),
                    ),
                    Some(_) => {}
                }
            }
        }
        if let Some(maglev) = &self.maglev {
            let size = maglev.table_size.unwrap_or(0);
            if size == 0 || size >= MAGLEV_TABLE_LIMIT || !is_prime(size) {
                invalid(
                    out,
                    &at(&at(path, "maglev"), "tableSize"),
                    format!("the Maglev table size must be a prime below {MAGLEV_TABLE_LIMIT}"),
                );
            }
        }
    }
}

/// Trial division (callers pass sizes below [`MAGLEV_TABLE_LIMIT`]: at most ~2200 divisions).
fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| *d <= n / d)
            .all(|d| !n.is_multiple_of(d))
}

impl ConnectionPoolSettings {
    /// istio/istio validateConnectionPool (for DestinationRules; Sidecar pools are only
    /// decoded).
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        if self.tcp.is_none() && self.http.is_none() {
            invalid(out, path, "a connection pool needs `tcp` or `http`");
        }
        if let Some(http) = &self.http {
            let http_path = at(path, "http");
            for (field, value) in [
                ("http1MaxPendingRequests", http.http1_max_pending_requests),
                ("http2MaxRequests", http.http2_max_requests),
                ("maxRequestsPerConnection", http.max_requests_per_connection),
                ("maxRetries", http.max_retries),
                ("maxConcurrentStreams", http.max_concurrent_streams),
            ] {
                checks::non_negative(out, &at(&http_path, field), value);
            }
            if http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
                && http.use_client_protocol == Some(true)
            {
                invalid(
                    out,
                    &http_path,
                    "`useClientProtocol` cannot be true when `h2UpgradePolicy` is UPGRADE",
                );
            }
            if let Some(keepalive) = &http.http2_keep_alive {
                let keepalive_path = at(&http_path, "http2KeepAlive");
                checks::require(
                    out,
                    &keepalive_path,
                    "interval",
                    keepalive.interval.as_ref(),
                );
                checks::require(out, &keepalive_path, "timeout", keepalive.timeout.as_ref());
            }
        }
        if let Some(tcp) = &self.tcp {
            checks::non_negative(
                out,
                &at(&at(path, "tcp"), "maxConnections"),
                tcp.max_connections,
            );
        }
    }
}

impl OutlierDetection {
    /// istio/istio validateOutlierDetection.
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        let local_failures = self.consecutive_local_origin_failures.unwrap_or(0);
        if local_failures > 0 && self.split_external_local_origin_errors != Some(true) {
            invalid(
                out,
                &at(path, "consecutiveLocalOriginFailures"),
                "`consecutiveLocalOriginFailures` needs `splitExternalLocalOriginErrors: true`",
            );
        }
        for (field, value) in [
            ("maxEjectionPercent", self.max_ejection_percent),
            ("minHealthPercent", self.min_health_percent),
        ] {
            if let Some(value) = value {
                checks::percentage(out, &at(path, field), f64::from(value));
            }
        }
    }
}

impl ClientTlsSettings {
    /// istio/istio `agent.ValidateTLS`.
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        let mode = self.mode.unwrap_or(ClientTlsMode::Disable);
        let mutual_or_simple = matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual);
        if self.insecure_skip_verify == Some(true) && mutual_or_simple {
            let mut conflicting = vec![];
            if set(&self.ca_certificates) {
                conflicting.push("caCertificates");
            }
            if mode == ClientTlsMode::Simple && set(&self.credential_name) {
                conflicting.push("credentialName");
            }
            if self.subject_alt_names.is_some() {
                conflicting.push("subjectAltNames");
            }
            for field in conflicting {
                invalid(
                    out,
                    &at(path, field),
                    format!("`{field}` cannot be set when `insecureSkipVerify` is true"),
                );
            }
        }
        if mutual_or_simple && set(&self.credential_name) {
            for (value, field) in [
                (&self.client_certificate, "clientCertificate"),
                (&self.private_key, "privateKey"),
                (&self.ca_certificates, "caCertificates"),
                (&self.ca_crl, "caCrl"),
            ] {
                if set(value) {
                    invalid(
                        out,
                        &at(path, field),
                        format!("`{field}` cannot be set with `credentialName`"),
                    );
                }
            }
            return;
        }
        if mode == ClientTlsMode::Mutual {
            for (value, field) in [
                (&self.client_certificate, "clientCertificate"),
                (&self.private_key, "privateKey"),
            ] {
                if !set(value) {
                    invalid(
                        out,
                        path,
                        format!("MUTUAL TLS needs `{field}` (or `credentialName`)"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::findings_of;
    use super::*;
    use crate::diag::code;

    #[test]
    fn destination_rule_validation() {
        let cases: Vec<(&str, Vec<&str>)> = vec![
            ("host: a\n", vec![]),
            ("subsets: [{name: v1}]\n", vec!["spec"]),
            ("host: \"\"\n", vec!["spec"]),
            (
                "host: a\nsubsets:\n- name: v1\n  labels: {version: v1}\n- name: v1\n- labels: {\"a b\": c}\n- name: V2\n  trafficPolicy: {}\n",
                vec![
                    "spec.subsets[1].name",
                    "spec.subsets[2]",
                    "spec.subsets[2].labels[\"a b\"]",
                    "spec.subsets[3].name",
                    "spec.subsets[3].trafficPolicy",
                ],
            ),
            (
                "host: a\nexportTo: [\".\", Bad]\nworkloadSelector: {matchLabels: {\"\": x}}\n",
                vec!["spec.exportTo[1]", "spec.workloadSelector.matchLabels[\"\"]"],
            ),
            (
                "host: a\ntrafficPolicy:\n  tunnel: {protocol: GET, targetHost: \"bad host\", targetPort: 0}\n  proxyProtocol: {version: V2}\n",
                vec![
                    "spec.trafficPolicy",
                    "spec.trafficPolicy.tunnel.protocol",
                    "spec.trafficPolicy.tunnel.targetHost",
                    "spec.trafficPolicy.tunnel.targetPort",
                ],
            ),
            ("host: a\ntrafficPolicy: {tunnel: {}}\n", vec!["spec.trafficPolicy.tunnel", "spec.trafficPolicy.tunnel"]),
            (
                "host: a\ntrafficPolicy:\n  loadBalancer:\n    simple: ROUND_ROBIN\n    consistentHash:\n      httpHeaderName: x-user\n      useSourceIp: true\n      httpCookie: {attributes: [{name: a}, {name: a}, {}]}\n      ringHash: {minimumRingSize: 1024}\n      maglev: {tableSize: 65536}\n      minimumRingSize: 10\n    localityLbSetting: {enabled: true}\n    zoneAwareLbSetting: {enabled: true}\n    warmup: {minimumPercent: 101, aggression: 0}\n",
                vec![
                    "spec.trafficPolicy.loadBalancer",
                    "spec.trafficPolicy.loadBalancer",
                    "spec.trafficPolicy.loadBalancer.consistentHash",
                    "spec.trafficPolicy.loadBalancer.consistentHash",
                    "spec.trafficPolicy.loadBalancer.consistentHash",
                    "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie",
                    "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[1].name",
                    "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[2]",
                    "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
                    "spec.trafficPolicy.loadBalancer.warmup",
                    "spec.trafficPolicy.loadBalancer.warmup.minimumPercent",
                    "spec.trafficPolicy.loadBalancer.warmup.aggression",
                ],
            ),
            ("host: a\ntrafficPolicy: {loadBalancer: {consistentHash: {maglev: {tableSize: 65537}}}}\n", vec![]),
            (
                "host: a\ntrafficPolicy:\n  connectionPool: {}\n  portLevelSettings:\n  - connectionPool:\n      tcp: {maxConnections: -1}\n      http: {http2MaxRequests: -5, h2UpgradePolicy: UPGRADE, useClientProtocol: true, http2KeepAlive: {interval: 10s}}\n  - port: {number: 8080}\n",
                vec![
                    "spec.trafficPolicy.connectionPool",
                    "spec.trafficPolicy.portLevelSettings[0]",
                    "spec.trafficPolicy.portLevelSettings[0].connectionPool.tcp.maxConnections",
                    "spec.trafficPolicy.portLevelSettings[0].connectionPool.http.http2MaxRequests",
                    "spec.trafficPolicy.portLevelSettings[0].connectionPool.http",
                    "spec.trafficPolicy.portLevelSettings[0].connectionPool.http.http2KeepAlive",
                    "spec.trafficPolicy.portLevelSettings[1]",
                ],
            ),
            (
                "host: a\ntrafficPolicy:\n  outlierDetection: {consecutiveLocalOriginFailures: 3, maxEjectionPercent: 110, minHealthPercent: -1}\n",
                vec![
                    "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
                    "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
                    "spec.trafficPolicy.outlierDetection.minHealthPercent",
                ],
            ),
            (
                "host: a\ntrafficPolicy:\n  tls: {mode: SIMPLE, insecureSkipVerify: true, caCertificates: /ca.pem, subjectAltNames: [x]}\n  portLevelSettings:\n  - port: {number: 443}\n    tls: {mode: MUTUAL, credentialName: c, privateKey: /k.pem}\n  - port: {number: 8443}\n    tls: {mode: MUTUAL}\n",
                vec![
                    "spec.trafficPolicy.tls.caCertificates",
                    "spec.trafficPolicy.tls.subjectAltNames",
                    "spec.trafficPolicy.portLevelSettings[0].tls.privateKey",
                    "spec.trafficPolicy.portLevelSettings[1].tls",
                    "spec.trafficPolicy.portLevelSettings[1].tls",
                ],
            ),
            ("host: a\ntrafficPolicy: {tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem}}\n", vec![]),
        ];
        for (yaml, want) in cases {
            let got = findings_of(yaml, DestinationRuleSpec::validate);
            let mut got: Vec<String> = got
                .into_iter()
                .inspect(|(_, c)| assert_eq!(*c, code::INVALID, "{yaml}"))
                .map(|(f, _)| f)
                .collect();
            got.sort();
            let mut want: Vec<String> = want.into_iter().map(str::to_owned).collect();
            want.sort();
            assert_eq!(got, want, "{yaml}");
        }
    }

    #[test]
    fn primes() {
        let primes: Vec<u64> = (0..30).filter(|n| is_prime(*n)).collect();
        assert_eq!(primes, vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_536));
    }
}
