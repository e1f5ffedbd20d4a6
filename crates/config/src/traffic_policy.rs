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

use serde::{Deserialize, Serialize};

use crate::istio::{DestinationRuleSpec, LoadBalancerSettings, SimpleLb, TrafficPolicy};
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
                },
            );
        }
        out.insert(
            host.clone(),
            DestinationPolicy {
                rule: rule.key(),
                load_balancer: policy_lb(rule.spec.traffic_policy.as_ref()),
                subsets,
            },
        );
    }
    out
}

/// The parts of a DestinationRule the sidecars do not act on (for WARD0102): everything but
/// `host`, `exportTo`, `subsets` (names, labels), `loadBalancer` (`simple`, `consistentHash`
/// on a header or the source IP) and `tls` (docs/egress-tls.md), at the rule and subset level,
/// and a port entry's `tls`. Listed by
/// field path; empty when all of it is acted on.
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

fn policy_fields(policy: Option<&TrafficPolicy>, at: &str, out: &mut Vec<String>) {
    let Some(p) = policy else { return };
    let mut not = |set: bool, field: &str| {
        if set {
            out.push(format!("{at}.{field}"));
        }
    };
    not(p.connection_pool.is_some(), "connectionPool");
    not(p.outlier_detection.is_some(), "outlierDetection");
    // `tls` is served (crate::origination), at every level; of a port's entry, only `tls`.
    for (i, level) in p.port_level_settings.iter().flatten().enumerate() {
        not(
            level.load_balancer.is_some(),
            &format!("portLevelSettings[{i}].loadBalancer"),
        );
        not(
            level.connection_pool.is_some(),
            &format!("portLevelSettings[{i}].connectionPool"),
        );
        not(
            level.outlier_detection.is_some(),
            &format!("portLevelSettings[{i}].outlierDetection"),
        );
    }
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
            subsets: BTreeMap::from([
                (
                    "v2".to_owned(),
                    SubsetPolicy {
                        members: BTreeSet::from(["10.0.0.2".parse().unwrap()]),
                        load_balancer: Some(LoadBalancer::RoundRobin),
                        tls: BTreeMap::new(),
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
