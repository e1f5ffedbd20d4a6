//! DestinationRule `subsets` and `loadBalancer`, as the sidecars' outbound HTTP routing uses
//! them (docs/routing.md, "DestinationRule subsets and load balancing"). Pure: built once per
//! config ([`destination_policies`]), then read per request ([`DestinationPolicy::endpoints`],
//! [`order`]).
//!
//! Rules (istio/api `networking/v1alpha3/destination_rule.proto`):
//! - a subset is the service's endpoints whose workload labels include every label of the
//!   subset ("Labels apply a filter over the endpoints of a service in the service registry");
//! - a subset's `trafficPolicy.loadBalancer` overrides the rule's ("Traffic policies specified
//!   at the subset level will override the corresponding settings specified at the
//!   DestinationRule level");
//! - without a policy Istio's default is `LEAST_REQUEST` (so is `UNSPECIFIED` and the
//!   deprecated `LEAST_CONN`);
//! - the rule for a host is looked up in the client's namespace, then the service's, then the
//!   root namespace, each in creation order; the rule must be exported to the client's
//!   namespace (istio/istio `pilot/pkg/model/push_context.go`, `destinationRule`).
//!
//! TLS settings of the rule are another module's concern (`crate::origination`); a subset's
//! own `tls` (or port entry) is resolved here with it, per service port
//! ([`SubsetPolicy::tls`]), since only a request routed to the subset uses it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::istio::{
    ConnectionPoolSettings, DestinationRuleSpec, H2UpgradePolicy, LoadBalancerSettings,
    OutlierDetection, SimpleLb, TrafficPolicy,
};
use crate::load::{ConfigSet, Resource};
use crate::meta::parse_timestamp;
use crate::origination::{subset_origination, TlsOrigination};
use crate::snapshot::{Endpoint, MeshService};

/// How a request picks one endpoint of a destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancer {
    /// The one with fewer requests in flight of two picked at random (Istio's default).
    #[default]
    LeastRequest,
    /// Each endpoint in turn.
    RoundRobin,
    /// One at random.
    Random,
    /// By a hash of this request header (`consistentHash.httpHeaderName`, lowercase).
    HeaderHash(String),
    /// By a hash of the source IP (`consistentHash.useSourceIp`).
    SourceIpHash,
}

/// The policy of one destination host: its subsets and load balancing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationPolicy {
    /// The DestinationRule, `namespace/name`.
    pub rule: String,
    /// The rule's load balancer; `None`: Istio's default.
    pub load_balancer: Option<LoadBalancer>,
    /// Subsets by name.
    pub subsets: BTreeMap<String, SubsetPolicy>,
    /// The rule's `connectionPool` and `outlierDetection`, and its `portLevelSettings` ones.
    #[serde(default)]
    pub resilience: Layered,
}

/// `connectionPool` and `outlierDetection` at one level of a rule (the rule or a subset), and
/// per port (`portLevelSettings`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layered {
    /// The level's own.
    pub all: Resilience,
    /// By service port number.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<u16, Resilience>,
}

/// The connection limits and the outlier detection of one destination (Envoy's cluster:
/// a service port, or a subset of it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resilience {
    /// `connectionPool`; `None`: Istio's defaults (no limits a proxy would reach).
    pub pool: Option<ConnectionPool>,
    /// `outlierDetection`; `None`: no endpoint is ever ejected.
    pub outlier: Option<Outlier>,
}

/// DestinationRule `connectionPool`, as the HTTP client side of a proxy enforces it
/// (docs/routing.md, "Connection pool and outlier detection"). `None` or 0 (for the
/// `int32` fields Istio reads 0 as "unset"): no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    /// `tcp.maxConnections`: HTTP/1.1 connections carrying a request to the destination at once.
    pub max_connections: Option<u32>,
    /// `tcp.connectTimeout` (Istio's default 10s).
    pub connect_timeout: Option<Duration>,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending_requests: Option<u32>,
    /// `http.http2MaxRequests`: requests in flight to the destination (HTTP/1.1 and HTTP/2).
    pub max_requests: Option<u32>,
    /// `http.maxRequestsPerConnection`: a connection is not reused after this many.
    pub max_requests_per_connection: Option<u32>,
    /// `http.idleTimeout`: an idle connection is not reused (and is closed) after this long.
    pub idle_timeout: Option<Duration>,
    /// `tcp.tcpKeepalive`: TCP keepalive on the connections the proxy opens to the
    /// destination; `None`: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<Keepalive>,
    /// `tcp.maxConnectionDuration`: a TCP connection forwarded to the destination is closed
    /// after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    /// `http.maxRetries`: retries in flight to the destination at once (Istio's default is
    /// unlimited, `u32::MAX`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// `http.http2KeepAlive`: PINGs on the HTTP/2 connections the proxy opens to the
    /// destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive: Option<H2Keepalive>,
}

/// `http.http2KeepAlive`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct H2Keepalive {
    /// `interval`: time between PINGs.
    pub interval: Duration,
    /// `timeout`: how long a PING's answer may take before the connection is closed.
    pub timeout: Duration,
}

/// `tcp.tcpKeepalive`: each value unset keeps the operating system's (Linux: 7200s, 75s, 9).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Keepalive {
    /// `time`: idle time before the first probe.
    pub time: Option<Duration>,
    /// `interval`: time between probes.
    pub interval: Option<Duration>,
    /// `probes`: unanswered probes before the connection is dead.
    pub probes: Option<u32>,
}

/// DestinationRule `outlierDetection`, with Istio's and Envoy's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outlier {
    /// Consecutive 5xx answers (or failures to get one) that eject; `None`: off.
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504 answers (or failures to get one) that eject; `None`: off.
    pub consecutive_gateway: Option<u32>,
    /// Time between ejection sweeps (default 10s).
    pub interval: Duration,
    /// The ejection time, multiplied by how many times in a row the endpoint was ejected
    /// (default 30s).
    pub base_ejection_time: Duration,
    /// The share of the destination's endpoints that may be ejected at once (default 10);
    /// one endpoint may always be.
    pub max_ejection_percent: u32,
    /// `splitExternalLocalOriginErrors`: failures to get a response (connect failure, reset,
    /// timeout) are counted apart, by `consecutive_local_origin`, instead of as 5xx and
    /// gateway errors.
    #[serde(default)]
    pub split_local_origin: bool,
    /// `consecutiveLocalOriginFailures` (Envoy's default 5): consecutive local-origin
    /// failures that eject, when `split_local_origin` is on.
    #[serde(default = "default_local_origin")]
    pub consecutive_local_origin: u32,
    /// `minHealthPercent` (default 0, off): when fewer than this share of the destination's
    /// endpoints are not ejected, the load balancer ignores ejections (Envoy's panic
    /// threshold, which Istio sets from this field).
    #[serde(default)]
    pub min_health_percent: u32,
}

fn default_local_origin() -> u32 {
    5
}

/// Envoy's `max_ejection_time` default: an ejection never lasts longer (Istio does not set it).
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

impl Default for Outlier {
    fn default() -> Outlier {
        Outlier {
            consecutive_5xx: Some(5),
            consecutive_gateway: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            split_local_origin: false,
            consecutive_local_origin: default_local_origin(),
            min_health_percent: 0,
        }
    }
}

fn positive(v: Option<i32>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0)
}

impl ConnectionPool {
    fn from_spec(spec: &ConnectionPoolSettings) -> ConnectionPool {
        let tcp = spec.tcp.as_ref();
        let http = spec.http.as_ref();
        ConnectionPool {
            max_connections: positive(tcp.and_then(|t| t.max_connections)),
            connect_timeout: tcp
                .and_then(|t| t.connect_timeout)
                .map(|d| d.get())
                .filter(|d| !d.is_zero()),
            max_pending_requests: positive(http.and_then(|h| h.http1_max_pending_requests)),
            max_requests: positive(http.and_then(|h| h.http2_max_requests)),
            max_requests_per_connection: positive(http.and_then(|h| h.max_requests_per_connection)),
            idle_timeout: http
                .and_then(|h| h.idle_timeout)
                .map(|d| d.get())
                .filter(|d| !d.is_zero()),
            tcp_keepalive: tcp
                .and_then(|t| t.tcp_keepalive.as_ref())
                .map(|k| Keepalive {
                    time: k.time.map(|d| d.get()).filter(|d| !d.is_zero()),
                    interval: k.interval.map(|d| d.get()).filter(|d| !d.is_zero()),
                    probes: k.probes.filter(|p| *p > 0),
                }),
            max_connection_duration: tcp
                .and_then(|t| t.max_connection_duration)
                .map(|d| d.get())
                .filter(|d| !d.is_zero()),
            max_retries: positive(http.and_then(|h| h.max_retries)),
            // Both are required by Istio's API; one missing or 0 turns the PINGs off (the load
            // warns of it with the rest of the unserved fields).
            http2_keep_alive: http
                .and_then(|h| h.http2_keep_alive.as_ref())
                .and_then(|k| {
                    let interval = k.interval.map(|d| d.get()).filter(|d| !d.is_zero())?;
                    let timeout = k.timeout.map(|d| d.get()).filter(|d| !d.is_zero())?;
                    Some(H2Keepalive { interval, timeout })
                }),
        }
    }
}

impl Outlier {
    /// istio/istio `applyOutlierDetection`: `consecutive5xxErrors` 0 turns the 5xx count off,
    /// absent keeps Envoy's 5; `consecutiveGatewayErrors` counts only when set above 0; the
    /// deprecated `consecutiveErrors` is the gateway count.
    fn from_spec(spec: &OutlierDetection) -> Outlier {
        let d = Outlier::default();
        let deprecated = spec.consecutive_errors.and_then(|v| u32::try_from(v).ok());
        let five_xx = match (spec.consecutive_5xx_errors, deprecated) {
            (Some(n), _) => Some(n),
            // Only the deprecated field: Istio turns the 5xx count off.
            (None, Some(_)) => Some(0),
            (None, None) => d.consecutive_5xx,
        };
        Outlier {
            consecutive_5xx: five_xx.filter(|n| *n > 0),
            consecutive_gateway: spec
                .consecutive_gateway_errors
                .or(deprecated)
                .filter(|n| *n > 0),
            interval: spec
                .interval
                .map(|i| i.get())
                .filter(|i| !i.is_zero())
                .unwrap_or(d.interval),
            base_ejection_time: spec
                .base_ejection_time
                .map(|i| i.get())
                .filter(|i| !i.is_zero())
                .unwrap_or(d.base_ejection_time),
            max_ejection_percent: spec
                .max_ejection_percent
                .and_then(|p| u32::try_from(p).ok())
                .map_or(d.max_ejection_percent, |p| p.min(100)),
            split_local_origin: spec.split_external_local_origin_errors.unwrap_or(false),
            // Istio passes the field on only above 0; Envoy's default stands otherwise.
            consecutive_local_origin: spec
                .consecutive_local_origin_failures
                .filter(|n| *n > 0)
                .unwrap_or(d.consecutive_local_origin),
            min_health_percent: spec
                .min_health_percent
                .and_then(|p| u32::try_from(p).ok())
                .map_or(d.min_health_percent, |p| p.min(100)),
        }
    }
}

impl Layered {
    fn from_policy(policy: Option<&TrafficPolicy>) -> Layered {
        let Some(p) = policy else {
            return Layered::default();
        };
        let all = Resilience {
            pool: p.connection_pool.as_ref().map(ConnectionPool::from_spec),
            outlier: p.outlier_detection.as_ref().map(Outlier::from_spec),
        };
        let ports = p
            .port_level_settings
            .iter()
            .flatten()
            .filter_map(|level| {
                let number = level.port.as_ref()?.number?;
                let number = u16::try_from(number).ok()?;
                let r = Resilience {
                    pool: level
                        .connection_pool
                        .as_ref()
                        .map(ConnectionPool::from_spec),
                    outlier: level.outlier_detection.as_ref().map(Outlier::from_spec),
                };
                (r != Resilience::default()).then_some((number, r))
            })
            .collect();
        Layered { all, ports }
    }

    /// Each of the two policies, from the most specific place that sets it: this level's port
    /// entry, then this level.
    fn at(&self, port: u16) -> Resilience {
        let entry = self.ports.get(&port);
        Resilience {
            pool: entry
                .and_then(|e| e.pool.clone())
                .or_else(|| self.all.pool.clone()),
            outlier: entry
                .and_then(|e| e.outlier.clone())
                .or_else(|| self.all.outlier.clone()),
        }
    }
}

/// One subset: which endpoints, and how to pick one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubsetPolicy {
    /// The addresses of the service's endpoints whose labels match the subset's.
    pub members: BTreeSet<IpAddr>,
    /// The subset's own load balancer, overriding the rule's.
    pub load_balancer: Option<LoadBalancer>,
    /// The TLS originated toward the subset, by service port, for the ports where the subset's
    /// `trafficPolicy` decides it (`None`: none, e.g. `DISABLE`); other ports use the
    /// service port's own (`MeshServicePort::tls`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tls: BTreeMap<u16, Option<Arc<TlsOrigination>>>,
    /// The subset's own `connectionPool` and `outlierDetection`, overriding the rule's.
    #[serde(default)]
    pub resilience: Layered,
}

/// Why a destination has no endpoint to send to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubsetError {
    /// The route names a subset no DestinationRule of the host defines.
    #[error("no DestinationRule defines subset {subset:?} of {host}")]
    Unknown {
        /// The host.
        host: String,
        /// The subset.
        subset: String,
    },
}

impl DestinationPolicy {
    /// The endpoints of `subset` (all of them without one), and the load balancer to pick
    /// among them.
    pub fn endpoints<'e>(
        policy: Option<&DestinationPolicy>,
        host: &str,
        subset: Option<&str>,
        all: &'e [Endpoint],
    ) -> Result<(Vec<&'e Endpoint>, LoadBalancer), SubsetError> {
        let rule_lb = policy.and_then(|p| p.load_balancer.clone());
        let Some(subset) = subset else {
            return Ok((all.iter().collect(), rule_lb.unwrap_or_default()));
        };
        let found =
            policy
                .and_then(|p| p.subsets.get(subset))
                .ok_or_else(|| SubsetError::Unknown {
                    host: host.to_owned(),
                    subset: subset.to_owned(),
                })?;
        let endpoints = all
            .iter()
            .filter(|e| found.members.contains(&e.address.ip()))
            .collect();
        let lb = found.load_balancer.clone().or(rule_lb).unwrap_or_default();
        Ok((endpoints, lb))
    }
}

impl DestinationPolicy {
    /// Whether the rule sets a `connectionPool` or `outlierDetection` anywhere (at the rule,
    /// a subset, or a port): the proxy then serves its HTTP requests one by one.
    pub fn limits_requests(&self) -> bool {
        let set = |l: &Layered| l.all != Resilience::default() || !l.ports.is_empty();
        set(&self.resilience) || self.subsets.values().any(|s| set(&s.resilience))
    }

    /// The connection limits and outlier detection of `subset` (or the whole service) on
    /// `port`. Istio's precedence (istio/istio `MergeTrafficPolicy`): the subset's port entry,
    /// the subset's, the rule's port entry, the rule's; each policy taken whole from the first
    /// place that sets it.
    pub fn resilience(
        policy: Option<&DestinationPolicy>,
        subset: Option<&str>,
        port: u16,
    ) -> Resilience {
        let Some(policy) = policy else {
            return Resilience::default();
        };
        let rule = policy.resilience.at(port);
        let Some(own) = subset
            .and_then(|s| policy.subsets.get(s))
            .map(|s| s.resilience.at(port))
        else {
            return rule;
        };
        Resilience {
            pool: own.pool.or(rule.pool),
            outlier: own.outlier.or(rule.outlier),
        }
    }
}

/// What a load balancer reads about the request and the proxy's state.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pick {
    /// The round-robin counter of this destination (incremented per request by the caller).
    pub turn: u64,
    /// Two uniform random numbers.
    pub rolls: (u64, u64),
    /// The hash key of the request (the header value, or the source IP), when the load
    /// balancer hashes and the request has one.
    pub hash: Option<u64>,
}

/// The endpoints in the order to try them: the load balancer's choice first, then the others
/// in turn after it (used when the first cannot be reached). `active` gives the requests in
/// flight to an endpoint (for `LEAST_REQUEST`).
pub fn order<'e>(
    endpoints: &[&'e Endpoint],
    lb: &LoadBalancer,
    pick: Pick,
    active: impl Fn(SocketAddr) -> u64,
) -> Vec<&'e Endpoint> {
    let n = endpoints.len();
    if n == 0 {
        return Vec::new();
    }
    let len = n as u64;
    let index = |x: u64| usize::try_from(x % len).unwrap_or(0);
    let first = match lb {
        LoadBalancer::RoundRobin => index(pick.turn),
        LoadBalancer::Random => index(pick.rolls.0),
        LoadBalancer::LeastRequest => {
            // Power of two choices (Envoy's LEAST_REQUEST with equal weights).
            let (a, b) = (index(pick.rolls.0), index(pick.rolls.1));
            let load = |i: usize| endpoints.get(i).map_or(u64::MAX, |e| active(e.address));
            if load(b) < load(a) {
                b
            } else {
                a
            }
        }
        LoadBalancer::HeaderHash(_) | LoadBalancer::SourceIpHash => match pick.hash {
            Some(h) => index(h),
            // No key: a random endpoint (Envoy hashes nothing and picks at random).
            None => index(pick.rolls.0),
        },
    };
    let mut out: Vec<&Endpoint> = endpoints.to_vec();
    out.rotate_left(first);
    out
}

/// A stable hash of a load-balancing key (FNV-1a, 64 bits): the same key picks the same
/// endpoint in every proxy and across restarts while the endpoints do not change.
pub fn hash_key(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn load_balancer(settings: Option<&LoadBalancerSettings>) -> Option<LoadBalancer> {
    let s = settings?;
    if let Some(hash) = &s.consistent_hash {
        if let Some(h) = &hash.http_header_name {
            return Some(LoadBalancer::HeaderHash(h.to_ascii_lowercase()));
        }
        if hash.use_source_ip == Some(true) {
            return Some(LoadBalancer::SourceIpHash);
        }
        // Cookies and query parameters are not served: the default applies (docs/routing.md).
        return None;
    }
    Some(match s.simple? {
        SimpleLb::RoundRobin => LoadBalancer::RoundRobin,
        SimpleLb::Random => LoadBalancer::Random,
        SimpleLb::LeastRequest | SimpleLb::LeastConn | SimpleLb::Unspecified => {
            LoadBalancer::LeastRequest
        }
        // The original destination: not meaningful on an egress listener.
        SimpleLb::Passthrough => return None,
    })
}

fn policy_lb(policy: Option<&TrafficPolicy>) -> Option<LoadBalancer> {
    load_balancer(policy.and_then(|p| p.load_balancer.as_ref()))
}

/// Whether DestinationRule `host` (as written, in `namespace`) names `service`: a short name is
/// completed in the rule's namespace; `*.suffix` matches by suffix.
fn names(host: &str, namespace: &str, service: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let full = if host.contains('.') || host.contains('*') {
        host
    } else {
        format!("{host}.{namespace}.svc.{}", crate::routes::CLUSTER_DOMAIN)
    };
    match full.strip_prefix('*') {
        Some(suffix) => service.len() > suffix.len() && service.ends_with(suffix),
        None => full == service,
    }
}

fn visible(export_to: Option<&[String]>, own: &str, client: &str) -> bool {
    match export_to {
        None | Some([]) => true,
        Some(list) => list.iter().any(|e| match e.as_str() {
            "*" => true,
            "." => own == client,
            "~" => false,
            named => named == client,
        }),
    }
}

/// The destination policies a workload in `client_namespace` uses, by service host, for the
/// services it sees. `labels` gives a workload's labels by its `namespace/name`. Rules with a
/// `workloadSelector` are not used (docs/routing.md).
pub fn destination_policies(
    set: &ConfigSet,
    client_namespace: &str,
    root_namespace: &str,
    services: &BTreeMap<String, MeshService>,
    labels: impl Fn(&str) -> Option<BTreeMap<String, String>>,
) -> BTreeMap<String, DestinationPolicy> {
    // Creation order, then load order.
    let mut ranked: Vec<(usize, &Resource<DestinationRuleSpec>)> = set
        .destination_rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.spec.workload_selector.is_none())
        .filter(|(_, r)| {
            visible(
                r.spec.export_to.as_deref(),
                &r.meta.namespace,
                client_namespace,
            )
        })
        .collect();
    ranked.sort_by_key(|(i, r)| {
        let created = r
            .meta
            .creation_timestamp
            .as_deref()
            .and_then(parse_timestamp);
        (created.is_none(), created, *i)
    });
    let mut out = BTreeMap::new();
    for (host, service) in services {
        let rank = |ns: &str| {
            if ns == client_namespace {
                0
            } else if ns == service.namespace {
                1
            } else if ns == root_namespace {
                2
            } else {
                3
            }
        };
        let Some((_, rule)) = ranked
            .iter()
            .filter(|(_, r)| {
                r.spec
                    .host
                    .as_deref()
                    .is_some_and(|h| names(h, &r.meta.namespace, host))
            })
            .filter(|(_, r)| rank(&r.meta.namespace) < 3)
            .min_by_key(|(_, r)| rank(&r.meta.namespace))
        else {
            continue;
        };
        let endpoints: Vec<&Endpoint> = service.ports.iter().flat_map(|p| &p.endpoints).collect();
        let mut subsets = BTreeMap::new();
        for (index, subset) in rule.spec.subsets.iter().flatten().enumerate() {
            let Some(name) = &subset.name else { continue };
            let tls = service
                .ports
                .iter()
                .filter_map(|p| {
                    subset_origination(set, rule, index, host, p.number)
                        .map(|o| (p.number, o.map(Arc::new)))
                })
                .collect();
            let wanted = subset.labels.clone().unwrap_or_default();
            let members = endpoints
                .iter()
                .filter(|e| {
                    let Some(key) = &e.workload else {
                        return wanted.is_empty();
                    };
                    labels(key)
                        .is_some_and(|have| wanted.iter().all(|(k, v)| have.get(k) == Some(v)))
                })
                .map(|e| e.address.ip())
                .collect();
            subsets.insert(
                name.clone(),
                SubsetPolicy {
                    members,
                    load_balancer: policy_lb(subset.traffic_policy.as_ref()),
                    tls,
                    resilience: Layered::from_policy(subset.traffic_policy.as_ref()),
                },
            );
        }
        out.insert(
            host.clone(),
            DestinationPolicy {
                rule: rule.key(),
                load_balancer: policy_lb(rule.spec.traffic_policy.as_ref()),
                subsets,
                resilience: Layered::from_policy(rule.spec.traffic_policy.as_ref()),
            },
        );
    }
    out
}

/// The parts of a DestinationRule the sidecars and gateways do not act on (for WARD0102):
/// everything but `host`, `exportTo`, `subsets` (names, labels), `loadBalancer` (`simple`,
/// `consistentHash` on a header or the source IP), `tls` (docs/egress-tls.md), the
/// `connectionPool` and `outlierDetection` fields docs/routing.md lists, at the rule and subset
/// level, and a port entry's `tls`, `connectionPool` and `outlierDetection`. Listed by field
/// path; empty when all of it is acted on.
pub fn unserved_destination_rule_fields(spec: &DestinationRuleSpec) -> Vec<String> {
    let mut out = Vec::new();
    if spec.workload_selector.is_some() {
        out.push("spec.workloadSelector".to_owned());
    }
    policy_fields(spec.traffic_policy.as_ref(), "spec.trafficPolicy", &mut out);
    for (i, subset) in spec.subsets.iter().flatten().enumerate() {
        policy_fields(
            subset.traffic_policy.as_ref(),
            &format!("spec.subsets[{i}].trafficPolicy"),
            &mut out,
        );
    }
    out
}

/// The parts of a `connectionPool` the HTTP client side does not act on.
fn pool_fields(pool: Option<&ConnectionPoolSettings>, at: &str, out: &mut Vec<String>) {
    let Some(pool) = pool else { return };
    if let Some(tcp) = &pool.tcp {
        for (set, field) in [(tcp.idle_timeout.is_some(), "tcp.idleTimeout")] {
            if set {
                out.push(format!("{at}.{field}"));
            }
        }
    }
    if let Some(http) = &pool.http {
        for (set, field) in [
            // What Ward does: the port's protocol on the wire, never upgraded (Istio's
            // default); only the other choice is unserved.
            (
                http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade),
                "http.h2UpgradePolicy UPGRADE",
            ),
            (
                http.use_client_protocol == Some(true),
                "http.useClientProtocol true",
            ),
            (
                http.max_concurrent_streams.is_some(),
                "http.maxConcurrentStreams",
            ),
            (
                http.http2_keep_alive.as_ref().is_some_and(|k| {
                    let set = |d: Option<crate::istio::proto::Duration>| {
                        d.is_some_and(|d| !d.get().is_zero())
                    };
                    !(set(k.interval) && set(k.timeout))
                }),
                "http.http2KeepAlive (without both interval and timeout)",
            ),
        ] {
            if set {
                out.push(format!("{at}.{field}"));
            }
        }
    }
}

/// The parts of an `outlierDetection` that are not acted on.
fn outlier_fields(outlier: Option<&OutlierDetection>, at: &str, out: &mut Vec<String>) {
    let Some(o) = outlier else { return };
    if o.outlier_detection_http_error_codes.is_some() {
        out.push(format!("{at}.outlierDetectionHttpErrorCodes"));
    }
}

fn policy_fields(policy: Option<&TrafficPolicy>, at: &str, out: &mut Vec<String>) {
    let Some(p) = policy else { return };
    pool_fields(
        p.connection_pool.as_ref(),
        &format!("{at}.connectionPool"),
        out,
    );
    outlier_fields(
        p.outlier_detection.as_ref(),
        &format!("{at}.outlierDetection"),
        out,
    );
    // `tls` is served (crate::origination), at every level; so are a port entry's
    // `connectionPool` and `outlierDetection` (as far as they are above).
    for (i, level) in p.port_level_settings.iter().flatten().enumerate() {
        if level.load_balancer.is_some() {
            out.push(format!("{at}.portLevelSettings[{i}].loadBalancer"));
        }
        pool_fields(
            level.connection_pool.as_ref(),
            &format!("{at}.portLevelSettings[{i}].connectionPool"),
            out,
        );
        outlier_fields(
            level.outlier_detection.as_ref(),
            &format!("{at}.portLevelSettings[{i}].outlierDetection"),
            out,
        );
    }
    let mut not = |set: bool, field: &str| {
        if set {
            out.push(format!("{at}.{field}"));
        }
    };
    not(p.tunnel.is_some(), "tunnel");
    not(p.proxy_protocol.is_some(), "proxyProtocol");
    not(p.retry_budget.is_some(), "retryBudget");
    if let Some(lb) = &p.load_balancer {
        not(
            lb.locality_lb_setting.is_some(),
            "loadBalancer.localityLbSetting",
        );
        not(
            lb.zone_aware_lb_setting.is_some(),
            "loadBalancer.zoneAwareLbSetting",
        );
        not(
            lb.warmup.is_some() || lb.warmup_duration_secs.is_some(),
            "loadBalancer.warmup",
        );
        not(
            lb.simple == Some(SimpleLb::Passthrough),
            "loadBalancer.simple PASSTHROUGH",
        );
        if let Some(h) = &lb.consistent_hash {
            not(
                h.http_cookie.is_some(),
                "loadBalancer.consistentHash.httpCookie",
            );
            not(
                h.http_query_parameter_name.is_some(),
                "loadBalancer.consistentHash.httpQueryParameterName",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Transport;

    fn ep(addr: &str) -> Endpoint {
        Endpoint {
            address: addr.parse().unwrap(),
            workload: None,
            identity: None,
            transport: Transport::Hbone,
        }
    }

    #[test]
    fn load_balancers_order_endpoints() {
        let all = [ep("10.0.0.1:80"), ep("10.0.0.2:80"), ep("10.0.0.3:80")];
        let refs: Vec<&Endpoint> = all.iter().collect();
        let first = |lb: &LoadBalancer, pick: Pick, busy: &[(&str, u64)]| {
            let busy: Vec<(SocketAddr, u64)> =
                busy.iter().map(|(a, n)| (a.parse().unwrap(), *n)).collect();
            let got = order(&refs, lb, pick, |a| {
                busy.iter().find(|(b, _)| *b == a).map_or(0, |(_, n)| *n)
            });
            assert_eq!(got.len(), 3, "every endpoint stays as a fallback");
            got[0].address.to_string()
        };
        let p = |turn, a, b, hash| Pick {
            turn,
            rolls: (a, b),
            hash,
        };
        /// (balancer, its inputs, requests in flight per endpoint, the endpoint it picks).
        type Case<'a> = (LoadBalancer, Pick, Vec<(&'a str, u64)>, &'a str);
        let cases: Vec<Case<'_>> = vec![
            (
                LoadBalancer::RoundRobin,
                p(0, 9, 9, None),
                vec![],
                "10.0.0.1:80",
            ),
            (
                LoadBalancer::RoundRobin,
                p(4, 9, 9, None),
                vec![],
                "10.0.0.2:80",
            ),
            (
                LoadBalancer::Random,
                p(0, 2, 0, None),
                vec![],
                "10.0.0.3:80",
            ),
            // Two choices: the less busy one wins; a tie keeps the first.
            (
                LoadBalancer::LeastRequest,
                p(0, 0, 1, None),
                vec![("10.0.0.1:80", 5)],
                "10.0.0.2:80",
            ),
            (
                LoadBalancer::LeastRequest,
                p(0, 0, 1, None),
                vec![],
                "10.0.0.1:80",
            ),
            (
                LoadBalancer::HeaderHash("x-user".into()),
                p(0, 0, 0, Some(5)),
                vec![],
                "10.0.0.3:80",
            ),
            (
                LoadBalancer::SourceIpHash,
                p(0, 1, 0, None),
                vec![],
                "10.0.0.2:80",
            ),
        ];
        for (lb, pick, busy, want) in cases {
            assert_eq!(first(&lb, pick, &busy), want, "{lb:?} {pick:?}");
        }
        assert!(order(&[], &LoadBalancer::Random, Pick::default(), |_| 0).is_empty());
    }

    #[test]
    fn pools_and_outlier_detection_follow_istios_precedence() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: b}
spec:
  host: db
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 2s, tcpKeepalive: {time: 10s}}
      http: {http1MaxPendingRequests: 0, http2MaxRequests: 50, maxRequestsPerConnection: 1, idleTimeout: 30s, maxRetries: 3}
    outlierDetection: {consecutive5xxErrors: 3}
    portLevelSettings:
    - port: {number: 81}
      connectionPool: {http: {http2MaxRequests: 7}}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      outlierDetection: {consecutiveErrors: 2, interval: 1s, baseEjectionTime: 5s, maxEjectionPercent: 50, minHealthPercent: 10}
      portLevelSettings:
      - port: {number: 82}
        outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 4}
"#;
        let set = crate::load_str("dr.yaml", yaml).unwrap();
        let service = MeshService {
            namespace: "b".into(),
            hostnames: vec![],
            addresses: vec![],
            auto_allocated: false,
            resolution: Default::default(),
            ports: vec![],
        };
        let services = BTreeMap::from([("db.b.svc.cluster.local".to_owned(), service)]);
        let got = destination_policies(&set, "b", "istio-system", &services, |_| None);
        let db = got.get("db.b.svc.cluster.local");
        assert!(db.is_some_and(DestinationPolicy::limits_requests));
        let at = |subset: Option<&str>, port| DestinationPolicy::resilience(db, subset, port);
        // The rule's pool, Envoy's defaults where unset (0 is unset).
        let pool = at(None, 80).pool.unwrap();
        assert_eq!(
            pool,
            ConnectionPool {
                max_connections: Some(10),
                connect_timeout: Some(Duration::from_secs(2)),
                max_pending_requests: None,
                max_requests: Some(50),
                max_requests_per_connection: Some(1),
                idle_timeout: Some(Duration::from_secs(30)),
                tcp_keepalive: Some(Keepalive {
                    time: Some(Duration::from_secs(10)),
                    interval: None,
                    probes: None,
                }),
                max_connection_duration: None,
                max_retries: Some(3),
                http2_keep_alive: None,
            }
        );
        let outlier = at(None, 80).outlier.unwrap();
        assert_eq!(
            outlier,
            Outlier {
                consecutive_5xx: Some(3),
                ..Outlier::default()
            }
        );
        // A port entry's pool replaces the rule's whole.
        assert_eq!(
            at(None, 81).pool,
            Some(ConnectionPool {
                max_requests: Some(7),
                ..ConnectionPool::default()
            })
        );
        // The subset's outlier detection (the deprecated count is the gateway one), the rule's
        // pool.
        let v2 = at(Some("v2"), 80);
        assert_eq!(v2.pool, Some(pool));
        assert_eq!(
            v2.outlier,
            Some(Outlier {
                consecutive_5xx: None,
                consecutive_gateway: Some(2),
                interval: Duration::from_secs(1),
                base_ejection_time: Duration::from_secs(5),
                max_ejection_percent: 50,
                split_local_origin: false,
                consecutive_local_origin: 5,
                min_health_percent: 10,
            })
        );
        // The subset's port entry first.
        let v2_82 = at(Some("v2"), 82).outlier.unwrap();
        assert_eq!(
            (v2_82.consecutive_5xx, v2_82.consecutive_gateway),
            (None, Some(4))
        );
        assert_eq!(at(None, 80), at(Some("unknown"), 80));
        assert_eq!(
            DestinationPolicy::resilience(None, None, 80),
            Resilience::default()
        );
        // What is not enforced is still named.
        let unserved = unserved_destination_rule_fields(&set.destination_rules[0].spec);
        assert!(unserved.is_empty(), "{unserved:?}");
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(hash_key(b"alice"), hash_key(b"alice"));
        assert_ne!(hash_key(b"alice"), hash_key(b"bob"));
    }

    #[test]
    fn subsets_filter_endpoints_and_override_the_rules_balancer() {
        let all = [ep("10.0.0.1:80"), ep("10.0.0.2:80")];
        let policy = DestinationPolicy {
            rule: "app/r".into(),
            load_balancer: Some(LoadBalancer::Random),
            resilience: Layered::default(),
            subsets: BTreeMap::from([
                (
                    "v2".to_owned(),
                    SubsetPolicy {
                        members: BTreeSet::from(["10.0.0.2".parse().unwrap()]),
                        load_balancer: Some(LoadBalancer::RoundRobin),
                        tls: BTreeMap::new(),
                        resilience: Layered::default(),
                    },
                ),
                ("v1".to_owned(), SubsetPolicy::default()),
            ]),
        };
        let got = |subset: Option<&str>, p: Option<&DestinationPolicy>| {
            DestinationPolicy::endpoints(p, "h", subset, &all).map(|(e, lb)| {
                (
                    e.iter().map(|e| e.address.to_string()).collect::<Vec<_>>(),
                    lb,
                )
            })
        };
        assert_eq!(
            got(Some("v2"), Some(&policy)),
            Ok((vec!["10.0.0.2:80".to_owned()], LoadBalancer::RoundRobin))
        );
        assert_eq!(
            got(Some("v1"), Some(&policy)),
            Ok((vec![], LoadBalancer::Random))
        );
        assert_eq!(got(None, Some(&policy)).unwrap().0.len(), 2);
        assert_eq!(got(None, None).unwrap().1, LoadBalancer::LeastRequest);
        assert!(matches!(
            got(Some("v3"), Some(&policy)),
            Err(SubsetError::Unknown { .. })
        ));
        assert!(got(Some("v1"), None).is_err());
    }

    #[test]
    fn rules_are_found_by_host_namespace_and_export() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: root, namespace: istio-system}
spec:
  host: "*.b.svc.cluster.local"
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: own, namespace: b}
spec:
  host: db
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: X-User}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hidden, namespace: c}
spec:
  host: db.b.svc.cluster.local
  exportTo: ["."]
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
"#;
        let set = crate::load_str("dr.yaml", yaml).unwrap();
        let mut db_ep = ep("10.0.0.2:80");
        db_ep.workload = Some("b/db-v2".into());
        let service = |ns: &str, eps: Vec<Endpoint>| MeshService {
            namespace: ns.into(),
            hostnames: vec![],
            addresses: vec![],
            auto_allocated: false,
            resolution: Default::default(),
            ports: vec![crate::snapshot::MeshServicePort {
                number: 80,
                protocol: crate::snapshot::Protocol::Http,
                target_port: None,
                endpoints: eps,
                tls: None,
            }],
        };
        let services = BTreeMap::from([
            (
                "db.b.svc.cluster.local".to_owned(),
                service("b", vec![ep("10.0.0.1:80"), db_ep]),
            ),
            ("web.b.svc.cluster.local".to_owned(), service("b", vec![])),
            ("api.example.com".to_owned(), service("x", vec![])),
        ]);
        let labels = |key: &str| {
            (key == "b/db-v2").then(|| BTreeMap::from([("version".into(), "v2".into())]))
        };
        let got = destination_policies(&set, "a", "istio-system", &services, labels);
        let db = &got["db.b.svc.cluster.local"];
        assert_eq!(
            db.rule, "b/own",
            "the service's namespace before the root's"
        );
        assert_eq!(db.load_balancer, Some(LoadBalancer::RoundRobin));
        assert_eq!(
            db.subsets["v2"].members,
            BTreeSet::from(["10.0.0.2".parse().unwrap()])
        );
        assert_eq!(
            db.subsets["v2"].load_balancer,
            Some(LoadBalancer::HeaderHash("x-user".into()))
        );
        assert_eq!(got["web.b.svc.cluster.local"].rule, "istio-system/root");
        assert!(!got.contains_key("api.example.com"));
        // From namespace c its own rule wins, exported to itself.
        let got = destination_policies(&set, "c", "istio-system", &services, labels);
        assert_eq!(got["db.b.svc.cluster.local"].rule, "c/hidden");
    }
}
