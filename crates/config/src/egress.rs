//! Egress decisions: which registered service a host an app asks for is, and what to do with
//! a host that is none (docs/egress.md). Pure: the proxy's forward-proxy listener and its
//! captured-connection path carry the plans out.
//!
//! Host matching follows Istio's ServiceEntry hosts: an exact name, or a wildcard
//! `*.example.com` that matches any name ending in `.example.com` (istio.io ServiceEntry
//! reference, `hosts`: "wildcard prefix"). An exact host wins over a wildcard, a longer
//! wildcard over a shorter one. Names compare without case and without a trailing dot.

use crate::snapshot::{Endpoint, ForwardProxy, MeshService, MeshServicePort, ProxyConfig};

/// How a host an app asked for is reached.
#[derive(Clone, Debug, PartialEq)]
pub enum EgressPlan {
    /// A registered service: its endpoints, or, when it has none, the requested name resolved
    /// (`resolution: DNS` / `NONE`) and dialed at `port`.
    Service {
        /// The ServiceEntry host that matched (a wildcard stays one).
        service: String,
        /// The endpoints of the matched port (empty: resolve `resolve_host`).
        endpoints: Vec<Endpoint>,
        /// The name to resolve when there are no endpoints.
        resolve_host: String,
        /// The port to dial a resolved address at: `targetPort`, else the requested port.
        port: u16,
    },
    /// ALLOW_ANY: the requested name resolved and dialed as asked (Istio's
    /// `PassthroughCluster`).
    Passthrough {
        /// The requested name.
        host: String,
        /// The requested port.
        port: u16,
    },
    /// REGISTRY_ONLY and no registered service: refused (Istio's `BlackHoleCluster`).
    BlackHole,
}

/// A host name as compared: lower case, no trailing dot.
pub fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether ServiceEntry host `pattern` matches requested `host` (both normalized), and how
/// specific the match is (larger wins): exact matches beat every wildcard.
fn match_rank(pattern: &str, host: &str) -> Option<usize> {
    if pattern == host {
        return Some(usize::MAX);
    }
    let suffix = pattern.strip_prefix('*')?;
    // `*.example.com` matches `a.example.com` and `a.b.example.com`, never `example.com`;
    // a lone `*` matches every name.
    if suffix.is_empty() || (host.len() > suffix.len() && host.ends_with(suffix)) {
        Some(suffix.len())
    } else {
        None
    }
}

/// The registered service among `candidates` that `host:port` is, the most specific first.
pub fn find_service<'a, I>(
    services: I,
    host: &str,
    port: u16,
) -> Option<(&'a str, &'a MeshService, &'a MeshServicePort)>
where
    I: IntoIterator<Item = (&'a str, &'a MeshService)>,
{
    let host = normalize_host(host);
    let mut best: Option<(usize, &'a str, &'a MeshService, &'a MeshServicePort)> = None;
    for (name, service) in services {
        let Some(rank) = match_rank(&normalize_host(name), &host) else {
            continue;
        };
        let Some(p) = service.ports.iter().find(|p| p.number == port) else {
            continue;
        };
        if best.as_ref().is_none_or(|(r, ..)| rank > *r) {
            best = Some((rank, name, service, p));
        }
    }
    best.map(|(_, name, service, p)| (name, service, p))
}

/// Decide what the forward-proxy listener `proxy` does with a request for `host:port`. Pure.
///
/// Only the hosts the listener's `hosts` select are registered for it (Istio: a Sidecar egress
/// listener sees only its `hosts`); everything else follows `outboundTrafficPolicy`.
pub fn plan_forward(cfg: &ProxyConfig, proxy: &ForwardProxy, host: &str, port: u16) -> EgressPlan {
    let visible = proxy
        .hosts
        .iter()
        .filter_map(|h| cfg.services.get_key_value(h))
        .map(|(k, v)| (k.as_str(), v));
    plan(cfg, visible, host, port)
}

/// Decide a request for `host:port` among `services`. Pure.
pub fn plan<'a, I>(cfg: &ProxyConfig, services: I, host: &str, port: u16) -> EgressPlan
where
    I: IntoIterator<Item = (&'a str, &'a MeshService)>,
{
    match find_service(services, host, port) {
        Some((service, _, p)) => EgressPlan::Service {
            service: service.to_owned(),
            endpoints: p.endpoints.clone(),
            resolve_host: normalize_host(host),
            port: p.target_port.unwrap_or(port),
        },
        None if cfg.outbound_traffic_policy == "ALLOW_ANY" => EgressPlan::Passthrough {
            host: normalize_host(host),
            port,
        },
        None => EgressPlan::BlackHole,
    }
}

/// Whether a TLS SNI agrees with the host a connection was opened for (a CONNECT target or
/// the matched host): the same name, compared as [`normalize_host`] does.
pub fn sni_agrees(sni: &str, host: &str) -> bool {
    normalize_host(sni) == normalize_host(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Protocol, Transport};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn service(ports: &[(u16, Option<u16>, &[&str])]) -> MeshService {
        MeshService {
            namespace: "egress".into(),
            hostnames: vec![],
            addresses: vec![],
            auto_allocated: false,
            ports: ports
                .iter()
                .map(|(n, t, eps)| MeshServicePort {
                    number: *n,
                    protocol: Protocol::Tls,
                    target_port: *t,
                    endpoints: eps
                        .iter()
                        .map(|a| Endpoint {
                            address: a.parse().unwrap(),
                            workload: None,
                            identity: None,
                            transport: Transport::Plaintext,
                        })
                        .collect(),
                    tls: None,
                })
                .collect(),
            resolution: Default::default(),
        }
    }

    fn config(mode: &str) -> ProxyConfig {
        let mut services = BTreeMap::new();
        services.insert(
            "quay.io".to_owned(),
            service(&[(443, None, &["127.131.1.1:8443"])]),
        );
        services.insert("*.example.com".to_owned(), service(&[(443, None, &[])]));
        services.insert(
            "api.example.com".to_owned(),
            service(&[(443, Some(8443), &[])]),
        );
        services.insert("hidden.org".to_owned(), service(&[(443, None, &[])]));
        ProxyConfig {
            workload: crate::snapshot::WorkloadInfo {
                name: "cli".into(),
                namespace: "app".into(),
                service_account: "cli".into(),
                address: "10.0.0.1".parse().unwrap(),
                labels: Default::default(),
                identity: "spiffe://cluster.local/ns/app/sa/cli".into(),
                demo_app: None,
                keep_override_headers: false,
                audit_fail_closed: false,
                num_trusted_proxies: 0,
            },
            inbound: vec![],
            outbound: vec![],
            authz: Default::default(),
            jwt_rules: Default::default(),
            directory: Default::default(),
            outbound_traffic_policy: mode.into(),
            services: Arc::new(services),
            service_inbound: Vec::new(),
            egress: Default::default(),
            mesh_routes: Default::default(),
            gateway: Default::default(),
            tracing: Default::default(),
            access_logging: Default::default(),
            metrics: Default::default(),
        }
    }

    fn proxy() -> ForwardProxy {
        ForwardProxy {
            bind: "127.0.0.1:15080".parse().unwrap(),
            hosts: vec![
                "quay.io".into(),
                "*.example.com".into(),
                "api.example.com".into(),
            ],
        }
    }

    fn service_of(plan: &EgressPlan) -> Option<(&str, u16, usize)> {
        match plan {
            EgressPlan::Service {
                service,
                port,
                endpoints,
                ..
            } => Some((service.as_str(), *port, endpoints.len())),
            _ => None,
        }
    }

    #[test]
    fn hosts_match_exactly_then_by_the_longest_wildcard() {
        let cfg = config("REGISTRY_ONLY");
        let p = proxy();
        // (host, port, the service matched: its host, the port dialed, its endpoints).
        type Case<'a> = (&'a str, u16, Option<(&'a str, u16, usize)>);
        let cases: &[Case<'_>] = &[
            ("quay.io", 443, Some(("quay.io", 443, 1))),
            ("QUAY.IO.", 443, Some(("quay.io", 443, 1))),
            ("api.example.com", 443, Some(("api.example.com", 8443, 0))),
            ("a.b.example.com", 443, Some(("*.example.com", 443, 0))),
            ("example.com", 443, None),
            ("badexample.com", 443, None),
            ("quay.io", 80, None),
            // Registered, but not among this listener's hosts.
            ("hidden.org", 443, None),
            ("quay.io.evil.net", 443, None),
        ];
        for (host, port, want) in cases {
            let plan = plan_forward(&cfg, &p, host, *port);
            assert_eq!(service_of(&plan), *want, "{host}:{port}");
            if want.is_none() {
                assert_eq!(plan, EgressPlan::BlackHole, "{host}:{port}");
            }
        }
    }

    #[test]
    fn allow_any_passes_unknown_hosts_through_as_asked() {
        let cfg = config("ALLOW_ANY");
        assert_eq!(
            plan_forward(&cfg, &proxy(), "Other.NET", 8080),
            EgressPlan::Passthrough {
                host: "other.net".into(),
                port: 8080
            }
        );
    }

    #[test]
    fn sni_must_name_the_same_host() {
        assert!(sni_agrees("Quay.io.", "quay.io"));
        assert!(!sni_agrees("evil.net", "quay.io"));
    }
}
