//! The names the DNS proxy answers itself, and what it answers for each: pure, built once per
//! config and swapped whole.
//!
//! The rules are those of Istio's DNS proxy (istio/istio `pkg/dns/client/dns.go`,
//! `BuildAlternateHosts`, `generateAltHosts`, `buildDNSAnswers`, `lookupHost`), summed up in
//! docs/dns.md:
//! - every mesh host is answered under its name with the trailing dot (queries always carry it);
//! - a host `<name>.<ns>.svc.<domain>` (a Kubernetes service name) is also answered as
//!   `<name>.<ns>`, `<name>.<ns>.svc` and, when `<ns>` is the workload's own namespace, `<name>`;
//! - each of those names followed by the first `search` domain of the workload's resolver (the
//!   name the resolver tries first, e.g. `db.clinic.clinic.svc.cluster.local`) is answered with a
//!   CNAME to the name itself, then its addresses, so the resolver stops searching;
//! - a wildcard host `*.example.com` answers every name under `example.com` (not `example.com`
//!   itself); the longest wildcard wins;
//! - names compare case-insensitively;
//! - a known name without an address of the asked family is answered NOERROR with no records,
//!   never NXDOMAIN (a client asking A and AAAA in parallel would take NXDOMAIN for both);
//! - questions other than A and AAAA, and unknown names, are forwarded upstream.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The TTL of every record the proxy answers itself: Istio's (`defaultTTLInSeconds`), short so
/// that a client that caches still sees a changed address soon.
pub const TTL: u32 = 30;

/// Where the table is used: the workload's namespace, the mesh's service domain and the
/// resolver's search list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// The workload's namespace: `<name>` alone is answered only for its services.
    pub namespace: String,
    /// The suffix of Kubernetes-style service hosts, `svc.cluster.local` by default; its first
    /// label (`svc`) makes the `<name>.<ns>.svc` form.
    pub service_domain: String,
    /// The resolver's `search` domains (resolv.conf); only the first is used, as Istio does.
    pub search: Vec<String>,
}

impl Scope {
    /// A scope for `namespace` in a mesh whose service hosts end in `service_domain`, with the
    /// search list a Kubernetes pod gets (`<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`).
    pub fn kubernetes(namespace: &str, service_domain: &str) -> Scope {
        let domain = service_domain
            .split_once('.')
            .map_or(service_domain, |(_, rest)| rest);
        Scope {
            namespace: namespace.to_owned(),
            service_domain: service_domain.to_owned(),
            search: vec![
                format!("{namespace}.{service_domain}"),
                service_domain.to_owned(),
                domain.to_owned(),
            ],
        }
    }
}

/// A host's addresses, by family, in the order given (duplicates removed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    /// IPv4 addresses (A records).
    pub v4: Vec<Ipv4Addr>,
    /// IPv6 addresses (AAAA records).
    pub v6: Vec<Ipv6Addr>,
}

impl Addresses {
    fn add(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) if !self.v4.contains(&v4) => self.v4.push(v4),
            IpAddr::V6(v6) if !self.v6.contains(&v6) => self.v6.push(v6),
            _ => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// What one name of the table stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// A name of a host (its FQDN or a short form): its addresses.
    Host(Addresses),
    /// A name of a host followed by the first search domain: a CNAME to that name, whose key
    /// in the table is `target`.
    Expanded {
        /// The table key of the name the CNAME points to.
        target: String,
    },
}

/// What the table says about one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<'t> {
    /// Not a mesh name: ask upstream.
    Unknown,
    /// A mesh name, answered with these addresses (possibly none of the asked family).
    Host(&'t Addresses),
    /// A search-domain expansion of a mesh name: a CNAME to the question without its last
    /// `search_labels` labels, then that name's addresses.
    Expanded {
        /// The addresses of the CNAME's target.
        addresses: &'t Addresses,
        /// How many labels the search domain adds.
        search_labels: usize,
    },
}

/// The mesh names one workload's DNS proxy answers. Immutable; build a new one per config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsTable {
    /// Lower-case names with the trailing dot (wildcards as `*.example.com.`).
    names: HashMap<String, Entry>,
    /// Labels of the first search domain (0 without one).
    search_labels: usize,
}

impl DnsTable {
    /// The table of `hosts` (ServiceEntry hosts, or `*.domain` wildcards, with their service
    /// addresses) as seen from `scope`. A host listed twice gets the addresses of both entries;
    /// a host without addresses, or whose name is not a DNS name, is left out (its queries are
    /// forwarded).
    pub fn new<I>(hosts: I, scope: &Scope) -> DnsTable
    where
        I: IntoIterator<Item = (String, Vec<IpAddr>)>,
    {
        let mut merged: HashMap<String, Addresses> = HashMap::new();
        for (host, ips) in hosts {
            let Some(host) = normalize(&host) else {
                continue;
            };
            let entry = merged.entry(host).or_default();
            for ip in ips {
                entry.add(ip);
            }
        }
        let search = scope.search.first().and_then(|s| normalize(s));
        let search_labels = search.as_deref().map_or(0, label_count);
        let service_domain = normalize(&scope.service_domain);
        let namespace = scope.namespace.to_ascii_lowercase();

        let mut names = HashMap::new();
        let mut expansions = Vec::new();
        for (host, addresses) in merged {
            if addresses.is_empty() {
                continue;
            }
            let alt = alt_names(&host, service_domain.as_deref(), &namespace);
            if let Some(search) = &search {
                // An expansion that spells a real name (`<name>.` + `<ns>.svc.<domain>.` is the
                // FQDN) is left to that name below.
                for name in &alt {
                    expansions.push((format!("{name}{search}"), name.clone()));
                }
            }
            for name in alt {
                insert_host(&mut names, name, &addresses);
            }
        }
        // A real name wins over a guessed expansion that happens to spell it.
        for (expanded, target) in expansions {
            names.entry(expanded).or_insert(Entry::Expanded { target });
        }
        DnsTable {
            names,
            search_labels,
        }
    }

    /// How many names the table answers (short forms and expansions included).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the table answers no name at all.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// What the table holds for `name` (any case, with or without the trailing dot): the exact
    /// name first, then the longest wildcard that covers it.
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        let Some(name) = normalize(name) else {
            return Lookup::Unknown;
        };
        let entry = self
            .names
            .get(&name)
            .or_else(|| wildcards(&name).find_map(|w| self.names.get(&w)));
        match entry {
            None => Lookup::Unknown,
            Some(Entry::Host(addresses)) => Lookup::Host(addresses),
            Some(Entry::Expanded { target }) => match self.names.get(target) {
                Some(Entry::Host(addresses)) => Lookup::Expanded {
                    addresses,
                    search_labels: self.search_labels,
                },
                // Built only towards host entries; anything else is not a mesh name.
                _ => Lookup::Unknown,
            },
        }
    }
}

/// Merges `addresses` into the name's entry (two hosts may share a short form only in theory:
/// `<name>.<ns>` is unique per service; the first host entry keeps it otherwise).
fn insert_host(names: &mut HashMap<String, Entry>, name: String, addresses: &Addresses) {
    match names.get_mut(&name) {
        Some(Entry::Host(existing)) => {
            for ip in addresses.v4.iter().map(|v| IpAddr::V4(*v)) {
                existing.add(ip);
            }
            for ip in addresses.v6.iter().map(|v| IpAddr::V6(*v)) {
                existing.add(ip);
            }
        }
        _ => {
            names.insert(name, Entry::Host(addresses.clone()));
        }
    }
}

/// The names a host is answered under (Istio `generateAltHosts`): its FQDN, and for a
/// `<name>.<ns>.<service-domain>` host `<name>.<ns>`, `<name>.<ns>.<first label>` and, in the
/// workload's own namespace, `<name>`.
fn alt_names(host: &str, service_domain: Option<&str>, namespace: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::from([host.to_owned()]);
    let Some(domain) = service_domain else {
        return out;
    };
    let Some(prefix) = host.strip_suffix(domain).and_then(|p| p.strip_suffix('.')) else {
        return out;
    };
    let Some((name, ns)) = prefix.split_once('.') else {
        return out;
    };
    if name == "*" || ns.contains('.') {
        return out;
    }
    let first_label = domain.split('.').next().unwrap_or_default();
    out.insert(format!("{name}.{ns}."));
    out.insert(format!("{name}.{ns}.{first_label}."));
    if ns == namespace {
        out.insert(format!("{name}."));
    }
    out
}

/// Lower case with exactly one trailing dot; `None` for an empty name, an empty label or a
/// name longer than DNS allows (253 characters without the dot).
fn normalize(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 || name.split('.').any(str::is_empty) {
        return None;
    }
    Some(format!("{}.", name.to_ascii_lowercase()))
}

fn label_count(name: &str) -> usize {
    name.trim_end_matches('.').split('.').count()
}

/// The wildcards that cover `name` (lower case, trailing dot), most specific first:
/// `a.b.example.com.` → `*.b.example.com.`, `*.example.com.`, `*.com.`.
fn wildcards(name: &str) -> impl Iterator<Item = String> + '_ {
    let trimmed = name.trim_end_matches('.');
    trimmed
        .match_indices('.')
        .map(move |(i, _)| format!("*{}.", &trimmed[i..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn scope() -> Scope {
        Scope::kubernetes("ns1", "svc.cluster.local")
    }

    fn table() -> DnsTable {
        DnsTable::new(
            [
                (
                    "productpage.ns1.svc.cluster.local".to_owned(),
                    vec![ip("9.9.9.9")],
                ),
                (
                    "example.ns2.svc.cluster.local".to_owned(),
                    vec![ip("10.10.10.10")],
                ),
                (
                    "details.ns2.svc.cluster.remote".to_owned(),
                    vec![ip("11.11.11.11")],
                ),
                ("www.google.com".to_owned(), vec![ip("1.1.1.1")]),
                ("*.wildcard".to_owned(), vec![ip("10.10.10.10")]),
                ("*.b.wildcard".to_owned(), vec![ip("11.11.11.11")]),
                ("ipv6.localhost".to_owned(), vec![ip("2001:db8::1")]),
                ("empty.example".to_owned(), vec![]),
            ],
            &scope(),
        )
    }

    fn v4(lookup: Lookup<'_>) -> Vec<String> {
        match lookup {
            Lookup::Host(a) => a.v4.iter().map(ToString::to_string).collect(),
            other => panic!("expected a host, got {other:?}"),
        }
    }

    #[test]
    fn fqdn_answers_with_and_without_trailing_dot_in_any_case() {
        let t = table();
        assert_eq!(
            v4(t.lookup("productpage.ns1.svc.cluster.local.")),
            ["9.9.9.9"]
        );
        assert_eq!(
            v4(t.lookup("productpage.ns1.svc.cluster.local")),
            ["9.9.9.9"]
        );
        assert_eq!(
            v4(t.lookup("ProductPage.NS1.svc.Cluster.Local.")),
            ["9.9.9.9"]
        );
        assert_eq!(v4(t.lookup("WWW.google.COM.")), ["1.1.1.1"]);
    }

    #[test]
    fn kubernetes_short_names_for_service_domain_hosts() {
        let t = table();
        assert_eq!(v4(t.lookup("productpage.")), ["9.9.9.9"]);
        assert_eq!(v4(t.lookup("productpage.ns1.")), ["9.9.9.9"]);
        assert_eq!(v4(t.lookup("productpage.ns1.svc.")), ["9.9.9.9"]);
        assert_eq!(v4(t.lookup("example.ns2.")), ["10.10.10.10"]);
        assert_eq!(v4(t.lookup("example.ns2.svc.")), ["10.10.10.10"]);
        // `<name>` alone only in the workload's own namespace.
        assert_eq!(t.lookup("example."), Lookup::Unknown);
        // Not under the service domain: no short names.
        assert_eq!(
            v4(t.lookup("details.ns2.svc.cluster.remote.")),
            ["11.11.11.11"]
        );
        assert_eq!(t.lookup("details.ns2."), Lookup::Unknown);
        assert_eq!(t.lookup("www."), Lookup::Unknown);
        // `.svc.cluster` is not generated (Istio generates one more label only).
        assert_eq!(t.lookup("example.ns2.svc.cluster."), Lookup::Unknown);
    }

    #[test]
    fn short_names_need_exactly_name_and_namespace() {
        let t = DnsTable::new(
            [
                ("a.b.ns1.svc.cluster.local".to_owned(), vec![ip("1.2.3.4")]),
                ("xsvc.cluster.local".to_owned(), vec![ip("1.2.3.5")]),
            ],
            &scope(),
        );
        assert_eq!(t.lookup("a.b."), Lookup::Unknown);
        assert_eq!(t.lookup("a.b.ns1."), Lookup::Unknown);
        assert_eq!(t.lookup("a.b.ns1.svc."), Lookup::Unknown);
        assert_eq!(t.lookup("a."), Lookup::Unknown);
        assert_eq!(t.lookup("xsvc."), Lookup::Unknown);
        assert_eq!(v4(t.lookup("a.b.ns1.svc.cluster.local.")), ["1.2.3.4"]);
    }

    #[test]
    fn first_search_domain_expansion_is_a_cname_to_the_name() {
        let t = table();
        for q in [
            "productpage.ns1.svc.cluster.local.ns1.svc.cluster.local.",
            "productpage.ns1.ns1.svc.cluster.local.",
            "www.google.com.ns1.svc.cluster.local.",
            "example.ns2.ns1.svc.cluster.local.",
        ] {
            match t.lookup(q) {
                Lookup::Expanded {
                    addresses,
                    search_labels,
                } => {
                    assert_eq!(search_labels, 4, "{q}");
                    assert_eq!(addresses.v4.len(), 1, "{q}");
                }
                other => panic!("{q}: {other:?}"),
            }
        }
        // `productpage.` + the search domain is the FQDN itself: a plain answer, no CNAME.
        assert_eq!(
            v4(t.lookup("productpage.ns1.svc.cluster.local.")),
            ["9.9.9.9"]
        );
        // Only the first search domain: the others are forwarded (upstream says NXDOMAIN).
        assert_eq!(
            t.lookup("productpage.ns1.svc.cluster.local.svc.cluster.local."),
            Lookup::Unknown
        );
        assert_eq!(
            t.lookup("productpage.ns1.svc.cluster.local.cluster.local."),
            Lookup::Unknown
        );
    }

    #[test]
    fn no_search_domain_no_expansion() {
        let mut s = scope();
        s.search.clear();
        let t = DnsTable::new([("www.google.com".to_owned(), vec![ip("1.1.1.1")])], &s);
        assert_eq!(
            t.lookup("www.google.com.ns1.svc.cluster.local."),
            Lookup::Unknown
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn wildcards_cover_subdomains_most_specific_first() {
        let t = table();
        assert_eq!(v4(t.lookup("foo.wildcard.")), ["10.10.10.10"]);
        assert_eq!(v4(t.lookup("a.b.wildcard.")), ["11.11.11.11"]);
        assert_eq!(v4(t.lookup("x.a.b.wildcard.")), ["11.11.11.11"]);
        assert_eq!(v4(t.lookup("b.wildcard.")), ["10.10.10.10"]);
        assert_eq!(v4(t.lookup("FOO.Wildcard.")), ["10.10.10.10"]);
        // The wildcard does not cover the bare domain.
        assert_eq!(t.lookup("wildcard."), Lookup::Unknown);
    }

    #[test]
    fn a_wildcard_under_the_service_domain_gets_no_short_names() {
        let t = DnsTable::new(
            [("*.ns1.svc.cluster.local".to_owned(), vec![ip("1.2.3.4")])],
            &scope(),
        );
        assert_eq!(v4(t.lookup("x.ns1.svc.cluster.local.")), ["1.2.3.4"]);
        assert_eq!(t.lookup("x.ns1."), Lookup::Unknown);
        assert_eq!(t.lookup("x."), Lookup::Unknown);
    }

    #[test]
    fn wildcard_search_expansion_is_answered() {
        let t = table();
        assert!(matches!(
            t.lookup("foo.wildcard.ns1.svc.cluster.local."),
            Lookup::Expanded { .. }
        ));
    }

    #[test]
    fn hosts_without_addresses_or_with_bad_names_are_left_out() {
        let t = table();
        assert_eq!(t.lookup("empty.example."), Lookup::Unknown);
        let t = DnsTable::new(
            [
                ("".to_owned(), vec![ip("1.1.1.1")]),
                ("a..b".to_owned(), vec![ip("1.1.1.1")]),
                (".".to_owned(), vec![ip("1.1.1.1")]),
            ],
            &scope(),
        );
        assert!(t.is_empty());
        assert_eq!(t.lookup(""), Lookup::Unknown);
        assert_eq!(t.lookup("."), Lookup::Unknown);
    }

    #[test]
    fn a_host_listed_twice_gets_both_addresses_once() {
        let t = DnsTable::new(
            [
                (
                    "db.example".to_owned(),
                    vec![ip("10.0.0.1"), ip("2001:db8::1")],
                ),
                (
                    "DB.example.".to_owned(),
                    vec![ip("10.0.0.2"), ip("10.0.0.1")],
                ),
            ],
            &scope(),
        );
        match t.lookup("db.example.") {
            Lookup::Host(a) => {
                assert_eq!(a.v4.len(), 2);
                assert_eq!(a.v6.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_real_name_wins_over_an_expansion_that_spells_it() {
        // `x.` expanded with `ns1.svc.cluster.local` spells `x.ns1.svc.cluster.local.`, which is
        // also a host of its own.
        let s = scope();
        let t = DnsTable::new(
            [
                ("x".to_owned(), vec![ip("1.1.1.1")]),
                ("x.ns1.svc.cluster.local".to_owned(), vec![ip("2.2.2.2")]),
            ],
            &s,
        );
        assert_eq!(v4(t.lookup("x.ns1.svc.cluster.local.")), ["2.2.2.2"]);
    }

    #[test]
    fn wildcard_candidates() {
        assert_eq!(
            wildcards("a.b.example.com.").collect::<Vec<_>>(),
            ["*.b.example.com.", "*.example.com.", "*.com."]
        );
        assert_eq!(wildcards("com.").count(), 0);
    }
}
