//! Routing by authority: which virtual host, and so which service, an HTTP request is for. Pure;
//! built once per config and looked up per request.
//!
//! The model is Envoy's route configuration (`config.route.v3.VirtualHost`,
//! <https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto>):
//! a listener has a table of virtual hosts, each selected by domain patterns matched against
//! the request's `Host` / `:authority`, ASCII case-insensitively, in this order:
//! 1. exact names (`www.foo.com`);
//! 2. suffix wildcards (`*.foo.com`, `*-bar.foo.com`), the longest first;
//! 3. prefix wildcards (`foo.*`, `foo-*`), the longest first;
//! 4. `*`, any host.
//!
//! A wildcard never matches the empty string (`*.foo.com` does not match `.foo.com`).
//!
//! An egress listener that several HTTP services share has one virtual host per service
//! ([`EgressRoutes`]), with the names Istio's sidecar gives it ([`service_domains`]).
//! Istio's ingress (Gateway + VirtualService `hosts`) uses the same table with other virtual
//! hosts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use crate::snapshot::ProxyConfig;

/// The DNS domain of the cluster: a Kubernetes service is `<name>.<namespace>.svc.cluster.local`
/// (the Kubernetes and Istio default).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// One domain pattern of a virtual host, lower-cased, without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Domain {
    /// `www.foo.com`: exactly this host.
    Exact(String),
    /// `*.foo.com` or `*-bar.foo.com`, kept as what follows the `*`.
    Suffix(String),
    /// `foo.*` or `foo-*`, kept as what precedes the `*`.
    Prefix(String),
    /// `*`: any host.
    Any,
}

impl Domain {
    /// Parses a pattern: one `*` at the start or the end, or `*` alone. `None` for an empty
    /// pattern or a `*` elsewhere (Envoy refuses those).
    pub fn parse(pattern: &str) -> Option<Domain> {
        let lower = pattern.to_ascii_lowercase();
        let p = lower.strip_suffix('.').unwrap_or(&lower);
        if p == "*" {
            return Some(Domain::Any);
        }
        let domain = if let Some(rest) = p.strip_prefix('*') {
            Domain::Suffix(rest.to_owned())
        } else if let Some(rest) = p.strip_suffix('*') {
            Domain::Prefix(rest.to_owned())
        } else {
            Domain::Exact(p.to_owned())
        };
        match &domain {
            Domain::Exact(s) | Domain::Suffix(s) | Domain::Prefix(s)
                if s.is_empty() || s.contains('*') =>
            {
                None
            }
            _ => Some(domain),
        }
    }
}

/// A virtual host: the names that select it and where it routes.
#[derive(Clone, Debug, PartialEq)]
pub struct VirtualHost<T> {
    /// Its name, for logs (the service host, for an egress listener).
    pub name: String,
    /// Its own names.
    pub domains: Vec<Domain>,
    /// Shorter names that select it only where no virtual host has them as its own (Kubernetes
    /// short names of a service). A request for an absolute name (with a trailing dot) is
    /// never routed by an alias: `foo.` is the top-level name `foo`, not a short name.
    pub aliases: Vec<Domain>,
    /// Where requests for it go.
    pub target: T,
}

/// Which virtual host claimed a domain, and whether as an alias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Claim {
    host: usize,
    alias: bool,
}

/// The virtual hosts of one listener, indexed for lookup.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteTable<T> {
    hosts: Vec<VirtualHost<T>>,
    /// The ports an authority may name (`host:port`); an authority without a port matches on
    /// its host alone.
    ports: Vec<u16>,
    exact: HashMap<String, Claim>,
    /// Longest first; on equal length, the first claim first.
    suffix: Vec<(String, Claim)>,
    /// Longest first; on equal length, the first claim first.
    prefix: Vec<(String, Claim)>,
    any: Option<Claim>,
}

impl<T> RouteTable<T> {
    /// Indexes `hosts` for a listener whose requests may name one of `ports`. A domain two
    /// virtual hosts list goes to the first that lists it as its own name, else to the first
    /// that lists it as an alias (Envoy refuses duplicates; Istio keeps the first).
    pub fn new(hosts: Vec<VirtualHost<T>>, ports: Vec<u16>) -> RouteTable<T> {
        let mut table = RouteTable {
            hosts: Vec::new(),
            ports,
            exact: HashMap::new(),
            suffix: Vec::new(),
            prefix: Vec::new(),
            any: None,
        };
        for alias in [false, true] {
            for (i, host) in hosts.iter().enumerate() {
                let domains = if alias { &host.aliases } else { &host.domains };
                for domain in domains {
                    table.claim(domain, Claim { host: i, alias });
                }
            }
        }
        // A stable sort keeps the first claim of two equal lengths first.
        table
            .suffix
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        table
            .prefix
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        table.hosts = hosts;
        table
    }

    fn claim(&mut self, domain: &Domain, claim: Claim) {
        match domain {
            Domain::Exact(name) => {
                self.exact.entry(name.clone()).or_insert(claim);
            }
            Domain::Suffix(s) => {
                if !self.suffix.iter().any(|(t, _)| t == s) {
                    self.suffix.push((s.clone(), claim));
                }
            }
            Domain::Prefix(p) => {
                if !self.prefix.iter().any(|(t, _)| t == p) {
                    self.prefix.push((p.clone(), claim));
                }
            }
            Domain::Any => {
                self.any.get_or_insert(claim);
            }
        }
    }

    /// The virtual host a request for `authority` (`host` or `host:port`, as in `Host`) is
    /// routed to: Envoy's order, exact names first. `None` when nothing matches, when the
    /// authority names a port the listener does not serve, or when it is malformed.
    pub fn lookup(&self, authority: &str) -> Option<&VirtualHost<T>> {
        let (host, port) = split_authority(authority)?;
        if port.is_some_and(|p| !self.ports.contains(&p)) {
            return None;
        }
        let lower = host.to_ascii_lowercase();
        let (name, absolute) = match lower.strip_suffix('.') {
            Some(name) => (name, true),
            None => (lower.as_str(), false),
        };
        if name.is_empty() {
            return None;
        }
        let usable = |c: &Claim| !(absolute && c.alias);
        let claim = self
            .exact
            .get(name)
            .filter(|c| usable(c))
            .or_else(|| {
                self.suffix
                    .iter()
                    .find(|(s, c)| usable(c) && name.len() > s.len() && name.ends_with(s.as_str()))
                    .map(|(_, c)| c)
            })
            .or_else(|| {
                self.prefix
                    .iter()
                    .find(|(p, c)| {
                        usable(c) && name.len() > p.len() && name.starts_with(p.as_str())
                    })
                    .map(|(_, c)| c)
            })
            .or(self.any.as_ref().filter(|c| usable(c)))?;
        self.hosts.get(claim.host)
    }

    /// The virtual hosts, in the order given.
    pub fn hosts(&self) -> &[VirtualHost<T>] {
        &self.hosts
    }
}

/// `host` and the port of an authority; `None` for a port that is not a number or a host with
/// a stray `:`. An IPv6 literal keeps its brackets (`[::1]`); an empty port (`host:`) is no
/// port (RFC 3986 §3.2.3).
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if rest.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// The names under which an app in `client_namespace` may ask for `service` (a ServiceEntry
/// host), as Istio's sidecar routes them (istio/istio `pilot/pkg/networking/core/httproute.go`,
/// `generateVirtualHostDomains` and `GenerateAltVirtualHosts`): its own names (the host) and its
/// aliases. A Kubernetes service `name.ns.svc.cluster.local` also answers to `name.ns.svc` and
/// `name.ns`, and to `name` from its own namespace only; other hosts have no aliases.
pub fn service_domains(service: &str, client_namespace: &str) -> (Vec<Domain>, Vec<Domain>) {
    let own: Vec<Domain> = Domain::parse(service).into_iter().collect();
    let lower = service.to_ascii_lowercase();
    let suffix = format!(".svc.{CLUSTER_DOMAIN}");
    let Some(short) = lower.strip_suffix(&suffix) else {
        return (own, Vec::new());
    };
    let Some((name, ns)) = short.split_once('.') else {
        return (own, Vec::new());
    };
    let label = |s: &str| !s.is_empty() && !s.contains('.') && !s.contains('*');
    if !label(name) || !label(ns) {
        return (own, Vec::new());
    }
    let mut aliases = Vec::new();
    if ns.eq_ignore_ascii_case(client_namespace) {
        aliases.push(name.to_owned());
    }
    aliases.push(format!("{name}.{ns}.svc"));
    aliases.push(format!("{name}.{ns}"));
    (own, aliases.into_iter().map(Domain::Exact).collect())
}

/// The routing of one proxy's egress listeners: a [`RouteTable`] for each bind whose services
/// are all HTTP, its targets indexes into [`ProxyConfig::outbound`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EgressRoutes {
    tables: BTreeMap<SocketAddr, RouteTable<usize>>,
}

impl EgressRoutes {
    /// Builds the tables of `config`: one virtual host per outbound listener, in config order,
    /// named by [`service_domains`] for the proxy's namespace. A request may name the bind's
    /// port or the service's port.
    pub fn new(config: &ProxyConfig) -> EgressRoutes {
        let mut by_bind: BTreeMap<SocketAddr, Vec<usize>> = BTreeMap::new();
        for (i, listener) in config.outbound.iter().enumerate() {
            by_bind.entry(listener.bind).or_default().push(i);
        }
        let namespace = &config.workload.namespace;
        let mut tables = BTreeMap::new();
        for (bind, indexes) in by_bind {
            let listeners: Vec<_> = indexes
                .iter()
                .filter_map(|&i| config.outbound.get(i).map(|l| (i, l)))
                .collect();
            if !listeners.iter().all(|(_, l)| l.protocol.is_http()) {
                continue;
            }
            let mut ports = vec![bind.port()];
            let mut hosts = Vec::new();
            for (i, listener) in listeners {
                if !ports.contains(&listener.service_port) {
                    ports.push(listener.service_port);
                }
                let (domains, aliases) = service_domains(&listener.service, namespace);
                hosts.push(VirtualHost {
                    name: listener.service.clone(),
                    domains,
                    aliases,
                    target: i,
                });
            }
            tables.insert(bind, RouteTable::new(hosts, ports));
        }
        EgressRoutes { tables }
    }

    /// The table of the HTTP listener at `bind`; `None` when no listener is there, or it is
    /// not HTTP.
    pub fn table(&self, bind: SocketAddr) -> Option<&RouteTable<usize>> {
        self.tables.get(&bind)
    }

    /// Whether the listener at `bind` routes each request by its authority: it serves more
    /// than one service, all HTTP. A listener for one service forwards its connections whole.
    pub fn is_shared(&self, bind: SocketAddr) -> bool {
        self.table(bind).is_some_and(|t| {
            let names: BTreeSet<&str> = t.hosts().iter().map(|h| h.name.as_str()).collect();
            names.len() > 1
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{OutboundListener, Protocol, WorkloadInfo};

    fn exact(names: &[&str]) -> Vec<Domain> {
        names
            .iter()
            .map(|n| Domain::Exact((*n).to_owned()))
            .collect()
    }

    fn host(name: &str, domains: &[&str]) -> VirtualHost<&'static str> {
        VirtualHost {
            name: name.to_owned(),
            domains: domains.iter().filter_map(|d| Domain::parse(d)).collect(),
            aliases: Vec::new(),
            target: "",
        }
    }

    fn routed<'a>(table: &'a RouteTable<&'static str>, authority: &str) -> Option<&'a str> {
        table.lookup(authority).map(|h| h.name.as_str())
    }

    #[test]
    fn domains_parse_as_envoy_writes_them() {
        let cases = [
            ("WWW.Foo.com", Some(Domain::Exact("www.foo.com".into()))),
            ("foo.com.", Some(Domain::Exact("foo.com".into()))),
            ("*.foo.com", Some(Domain::Suffix(".foo.com".into()))),
            ("*-bar.foo.com", Some(Domain::Suffix("-bar.foo.com".into()))),
            ("foo.*", Some(Domain::Prefix("foo.".into()))),
            ("foo-*", Some(Domain::Prefix("foo-".into()))),
            ("*", Some(Domain::Any)),
            ("", None),
            (".", None),
            ("**", None),
            ("a.*.com", None),
            ("*.foo.*", None),
        ];
        for (pattern, want) in cases {
            assert_eq!(Domain::parse(pattern), want, "{pattern:?}");
        }
    }

    #[test]
    fn lookup_follows_envoys_domain_order() {
        let table = RouteTable::new(
            vec![
                host("any", &["*"]),
                host("prefix-short", &["api.*"]),
                host("prefix-long", &["api.internal.*"]),
                host("suffix-short", &["*.com"]),
                host("suffix-long", &["*.example.com"]),
                host("dash", &["*-bar.example.com"]),
                host("exact", &["www.example.com"]),
            ],
            vec![80],
        );
        let cases = [
            // Exact beats every wildcard.
            ("www.example.com", "exact"),
            ("WWW.Example.COM", "exact"),
            // The longest suffix wins, whatever the order given.
            ("shop.example.com", "suffix-long"),
            ("baz-bar.example.com", "dash"),
            ("other.com", "suffix-short"),
            // A wildcard never matches the empty string.
            ("-bar.example.com", "suffix-long"),
            (".com", "any"),
            // Suffixes before prefixes, then the longest prefix.
            ("api.example.com", "suffix-long"),
            ("api.internal.net", "prefix-long"),
            ("api.net", "prefix-short"),
            ("api.", "any"),
            ("unknown.net", "any"),
        ];
        for (authority, want) in cases {
            assert_eq!(routed(&table, authority), Some(want), "{authority}");
        }
    }

    #[test]
    fn ports_and_trailing_dots() {
        let table = RouteTable::new(vec![host("a", &["a.example.com"])], vec![8080, 80]);
        let cases = [
            ("a.example.com", Some("a")),
            ("a.example.com:8080", Some("a")),
            ("a.example.com:80", Some("a")),
            ("a.example.com.", Some("a")),
            ("a.example.com.:8080", Some("a")),
            ("a.example.com:", Some("a")),
            // Another port names another listener.
            ("a.example.com:9090", None),
            ("a.example.com:08080x", None),
            ("a.example.com:99999", None),
            ("a.example.com:80:80", None),
            ("a.example.com..", None),
            (".", None),
            ("", None),
            ("[::1]:8080", None),
            ("[::1", None),
            ("[::1]x", None),
            ("b.example.com", None),
        ];
        for (authority, want) in cases {
            assert_eq!(routed(&table, authority), want, "{authority:?}");
        }
        let v6 = RouteTable::new(vec![host("v6", &["[::1]"])], vec![8080]);
        assert_eq!(routed(&v6, "[::1]:8080"), Some("v6"));
        assert_eq!(routed(&v6, "[::1]"), Some("v6"));
    }

    #[test]
    fn kubernetes_services_answer_to_their_short_names() {
        let (own, aliases) = service_domains("reviews.shop.svc.cluster.local", "shop");
        assert_eq!(own, exact(&["reviews.shop.svc.cluster.local"]));
        assert_eq!(
            aliases,
            exact(&["reviews", "reviews.shop.svc", "reviews.shop"])
        );
        // From another namespace, not by the bare name.
        let (_, aliases) = service_domains("reviews.shop.svc.cluster.local", "web");
        assert_eq!(aliases, exact(&["reviews.shop.svc", "reviews.shop"]));
        // Other hosts have no aliases.
        for host in [
            "api.example.com",
            "reviews.shop.svc.other.local",
            "a.b.shop.svc.cluster.local",
            ".shop.svc.cluster.local",
            "svc.cluster.local",
        ] {
            assert_eq!(service_domains(host, "shop").1, vec![], "{host}");
        }
        assert_eq!(
            service_domains("*.example.com", "shop"),
            (vec![Domain::Suffix(".example.com".into())], vec![])
        );
    }

    fn listener(bind: &str, service: &str, protocol: Protocol) -> OutboundListener {
        OutboundListener {
            bind: bind.parse().unwrap(),
            service: service.to_owned(),
            service_port: 8080,
            protocol,
            endpoints: vec![],
            tls: None,
        }
    }

    fn proxy(namespace: &str, outbound: Vec<OutboundListener>) -> ProxyConfig {
        ProxyConfig {
            workload: WorkloadInfo {
                name: "cli".into(),
                namespace: namespace.into(),
                service_account: "cli".into(),
                address: "10.0.0.1".parse().unwrap(),
                labels: Default::default(),
                identity: format!("spiffe://cluster.local/ns/{namespace}/sa/cli"),
                demo_app: None,
                keep_override_headers: false,
                audit_fail_closed: false,
                num_trusted_proxies: 0,
            },
            inbound: vec![],
            outbound,
            authz: Default::default(),
            jwt_rules: Default::default(),
            directory: Default::default(),
            mesh_routes: Default::default(),
            gateway: Default::default(),
            tracing: Default::default(),
            access_logging: Default::default(),
            metrics: Default::default(),
            outbound_traffic_policy: "ALLOW_ANY".into(),
            services: Default::default(),
            service_inbound: Vec::new(),
            egress: Default::default(),
        }
    }

    #[test]
    fn egress_tables_route_each_name_to_its_service() {
        let bind: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let cfg = proxy(
            "shop",
            vec![
                listener(
                    "127.0.0.1:8080",
                    "reviews.shop.svc.cluster.local",
                    Protocol::Http,
                ),
                listener(
                    "127.0.0.1:8080",
                    "ratings.other.svc.cluster.local",
                    Protocol::Http2,
                ),
                listener("127.0.0.1:8080", "api.example.com", Protocol::Grpc),
                listener("127.0.0.1:8080", "*.example.com", Protocol::Http),
                listener("127.0.0.1:5432", "db.shop.svc.cluster.local", Protocol::Tcp),
            ],
        );
        let routes = EgressRoutes::new(&cfg);
        assert!(routes.is_shared(bind));
        let table = routes.table(bind).unwrap();
        let target = |authority: &str| table.lookup(authority).map(|h| h.target);
        let cases = [
            ("reviews.shop.svc.cluster.local", Some(0)),
            ("Reviews.Shop.Svc.Cluster.Local.:8080", Some(0)),
            ("reviews", Some(0)),
            ("reviews:8080", Some(0)),
            ("reviews.shop", Some(0)),
            ("reviews.shop.svc", Some(0)),
            // A short name is not an absolute name.
            ("reviews.", None),
            ("ratings.other.svc.cluster.local", Some(1)),
            ("ratings.other", Some(1)),
            ("ratings.other.svc", Some(1)),
            // Not from another namespace by the bare name.
            ("ratings", None),
            // The exact host beats the wildcard service.
            ("api.example.com", Some(2)),
            ("www.example.com", Some(3)),
            ("reviews:9090", None),
            ("127.0.0.1:8080", None),
        ];
        for (authority, want) in cases {
            assert_eq!(target(authority), want, "{authority}");
        }
        // A TCP bind has no table: its one service gets whole connections.
        let tcp: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        assert!(routes.table(tcp).is_none() && !routes.is_shared(tcp));
    }

    #[test]
    fn own_names_beat_other_services_aliases() {
        // `reviews.shop` is an alias of the Kubernetes service and the own host of a
        // ServiceEntry: the ServiceEntry gets it, wherever it is listed.
        let cfg = proxy(
            "shop",
            vec![
                listener(
                    "127.0.0.1:8080",
                    "reviews.shop.svc.cluster.local",
                    Protocol::Http,
                ),
                listener("127.0.0.1:8080", "reviews.shop", Protocol::Http),
            ],
        );
        let routes = EgressRoutes::new(&cfg);
        let table = routes.table("127.0.0.1:8080".parse().unwrap()).unwrap();
        assert_eq!(table.lookup("reviews.shop").map(|h| h.target), Some(1));
        assert_eq!(table.lookup("reviews").map(|h| h.target), Some(0));
    }

    #[test]
    fn one_service_per_bind_is_not_shared() {
        let bind: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let one = proxy(
            "shop",
            vec![listener(
                "127.0.0.1:8080",
                "a.shop.svc.cluster.local",
                Protocol::Http,
            )],
        );
        let routes = EgressRoutes::new(&one);
        assert!(routes.table(bind).is_some());
        assert!(!routes.is_shared(bind));
        // Two ServiceEntries with one host are one service.
        let twice = proxy(
            "shop",
            vec![
                listener("127.0.0.1:8080", "a.shop.svc.cluster.local", Protocol::Http),
                listener("127.0.0.1:8080", "a.shop.svc.cluster.local", Protocol::Http),
            ],
        );
        assert!(!EgressRoutes::new(&twice).is_shared(bind));
        // Mixed protocols are never routed by Host (translation refuses them).
        let mixed = proxy(
            "shop",
            vec![
                listener("127.0.0.1:8080", "a.shop.svc.cluster.local", Protocol::Http),
                listener("127.0.0.1:8080", "b.shop.svc.cluster.local", Protocol::Tcp),
            ],
        );
        assert!(!EgressRoutes::new(&mixed).is_shared(bind));
    }
}
