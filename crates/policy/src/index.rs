//! Which rules can match a connection or request: an index, built once per workload
//! configuration ([`crate::WorkloadPolicies::new`]), so that decision time stays about flat as
//! policies and rules are added.
//!
//! A rule is filed under KEYS only when it cannot match a connection or request that has none of
//! them (a necessary condition, never a sufficient one):
//! - peer principals, when `from` is non-empty and every source lists `principals` made only of
//!   exact values (trust-domain aliases already expanded by the compiler). Without a peer, an
//!   identity field counts as matched in DENY, AUDIT and CUSTOM policies (the deliberate
//!   strictness of `l4`), so those rules are ALSO filed in a "no peer" list;
//! - destination ports, when `to` is non-empty and every operation lists `ports`;
//! - (HTTP only) header lines `name: value`, when a `when` condition `request.headers[name]`
//!   lists only exact `values` (conditions are AND-ed, so one such condition is enough). A
//!   request's line is looked up whole and, when it holds a comma, element by element too: a
//!   DENY-like rule's `values` also match the elements of a comma-separated line (`http`), so
//!   `x: user, admin` must find the rule filed under `x: admin`. For an ALLOW rule this only
//!   adds a candidate that the full matcher then refuses.
//!
//! `not` forms (`notPrincipals`, `notPorts`, `notValues`) and patterns (`*`, `abc*`, `*abc`) never
//! make a rule indexable. A rule that qualifies in several ways is filed one way only: under the
//! keys that the fewest rules share (principals first on a tie). Every other rule is "always"
//! tried. At L4, the ALLOW rules that use HTTP attributes are left out: they never match there.
//!
//! The index only chooses which rules to TRY. Each candidate is still matched by the full rule
//! matcher of `l4` or `http`, candidates are tried in (policy, rule) order and a policy's first
//! matching rule ends its candidates, so the first matching rule of every policy, and the
//! [`Decision`], are exactly those of the linear walk (`evaluate_l4_linear`,
//! `evaluate_http_linear`). A policy with no candidate that matches is not visited at all: what
//! it would add to the decision does not depend on the request and is precomputed here
//! (`Tally::record_unmatched`).

use std::collections::HashMap;

use crate::authz::{AuthzPolicy, AuthzRule, ConditionMatch, WorkloadPolicies};
use crate::decision::{Decision, PolicyRef, Tally};
use crate::http::header_candidates;
use crate::l4::Unknown;
use crate::matcher::StringMatch;
use crate::spec::Action;

/// A rule: (index of the policy, index of the rule in it). Orders as the linear walk visits.
type RuleId = (usize, usize);

/// The indexes of one workload's policies, and what their unmatched policies contribute.
#[derive(Clone, Default)]
pub(crate) struct PolicyIndex {
    /// For `evaluate_l4`.
    pub(crate) l4: RuleIndex,
    /// For `evaluate_http`.
    pub(crate) http: RuleIndex,
    /// An enforced ALLOW policy exists (so no ALLOW match denies).
    has_allow_policies: bool,
    /// The dry-run ALLOW policies, in order (reported when none of them matches).
    dry_run_allow: Vec<PolicyRef>,
}

impl PolicyIndex {
    /// Indexes `policies`, in order.
    pub(crate) fn build(policies: &[AuthzPolicy]) -> PolicyIndex {
        PolicyIndex {
            l4: RuleIndex::build(policies, Mode::L4),
            http: RuleIndex::build(policies, Mode::Http),
            has_allow_policies: policies
                .iter()
                .any(|p| p.action == Action::Allow && !p.dry_run),
            dry_run_allow: policies
                .iter()
                .filter(|p| p.action == Action::Allow && p.dry_run)
                .map(|p| p.policy.clone())
                .collect(),
        }
    }
}

/// Which evaluator an index serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    L4,
    Http,
}

/// The candidate rules of one evaluator, by key. Every list is sorted and without duplicates,
/// and a rule is in the lists of one kind of key only (or in `always`).
#[derive(Clone, Default)]
pub(crate) struct RuleIndex {
    /// Rules that need the peer to have one of some exact principals.
    by_principal: HashMap<String, Vec<RuleId>>,
    /// The rules of `by_principal` that also match a connection without a peer (DENY, AUDIT,
    /// CUSTOM).
    no_peer: Vec<RuleId>,
    /// Rules that need one of some destination ports.
    by_port: HashMap<u16, Vec<RuleId>>,
    /// Rules that need a header line `name: value`: name, then value.
    by_header: HashMap<String, HashMap<String, Vec<RuleId>>>,
    /// Rules with no key: always tried.
    always: Vec<RuleId>,
    /// Few header names are indexed: find a request's lines for each name by comparing names
    /// rather than hashing every line.
    scan_header_names: bool,
}

/// Up to this many indexed header names (usually one or two), a request's header lines are
/// found by comparing names; beyond it, each line is looked up.
const FEW_HEADER_NAMES: usize = 4;

/// A key a rule can be filed under.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key<'a> {
    Principal(&'a str),
    Port(u16),
    Header(&'a str, &'a str),
}

/// The exact values of a positive pattern list, or `None` if it is empty or has a pattern.
fn exact_values(patterns: &[StringMatch]) -> Option<Vec<&str>> {
    if patterns.is_empty() {
        return None;
    }
    patterns
        .iter()
        .map(|m| match m {
            StringMatch::Exact(value) => Some(value.as_str()),
            StringMatch::Prefix(_) | StringMatch::Suffix(_) | StringMatch::Presence => None,
        })
        .collect()
}

/// Each way to file `rule`: a set of keys one of which every request it matches has.
fn key_sets(rule: &AuthzRule, mode: Mode) -> Vec<Vec<Key<'_>>> {
    let mut sets = Vec::new();
    // `from` sources are OR-ed: each must require a principal for the rule to.
    if !rule.from.is_empty() {
        let principals: Option<Vec<Key<'_>>> = rule
            .from
            .iter()
            .map(|source| exact_values(&source.principals.values))
            .try_fold(Vec::new(), |mut keys, values| {
                keys.extend(values?.into_iter().map(Key::Principal));
                Some(keys)
            });
        sets.extend(principals);
    }
    if !rule.to.is_empty() && rule.to.iter().all(|op| !op.ports.values.is_empty()) {
        sets.push(
            rule.to
                .iter()
                .flat_map(|op| op.ports.values.iter().copied().map(Key::Port))
                .collect(),
        );
    }
    // At L4 a header condition is not evaluated (it is dropped or counts as matched).
    if mode == Mode::Http {
        for condition in &rule.when {
            if let ConditionMatch::RequestHeader { name, values } = condition {
                if let Some(values) = exact_values(&values.values) {
                    sets.push(
                        values
                            .into_iter()
                            .map(|value| Key::Header(name, value))
                            .collect(),
                    );
                }
            }
        }
    }
    for keys in &mut sets {
        keys.sort_unstable();
        keys.dedup();
    }
    sets
}

impl RuleIndex {
    fn build(policies: &[AuthzPolicy], mode: Mode) -> RuleIndex {
        // (rule, matches without a peer, ways to file it), in evaluation order.
        let mut rules = Vec::new();
        for (p, policy) in policies.iter().enumerate() {
            let no_peer = Unknown::for_action(policy.action) == Unknown::Match;
            for (r, rule) in policy.rules.iter().enumerate() {
                if mode == Mode::L4 && policy.drops_at_l4(rule) {
                    continue;
                }
                rules.push(((p, r), no_peer, key_sets(rule, mode)));
            }
        }
        let mut sharing: HashMap<Key<'_>, usize> = HashMap::new();
        for (_, _, sets) in &rules {
            for key in sets.iter().flatten() {
                *sharing.entry(*key).or_default() += 1;
            }
        }
        let crowd = |keys: &Vec<Key<'_>>| {
            keys.iter()
                .map(|key| sharing.get(key).copied().unwrap_or(0))
                .max()
                .unwrap_or(0)
        };
        let mut index = RuleIndex::default();
        for (id, no_peer, sets) in rules {
            let Some(keys) = sets.iter().min_by_key(|keys| crowd(keys)) else {
                index.always.push(id);
                continue;
            };
            for key in keys {
                let list = match *key {
                    Key::Principal(principal) => {
                        index.by_principal.entry(principal.into()).or_default()
                    }
                    Key::Port(port) => index.by_port.entry(port).or_default(),
                    Key::Header(name, value) => index
                        .by_header
                        .entry(name.into())
                        .or_default()
                        .entry(value.into())
                        .or_default(),
                };
                list.push(id);
            }
            if no_peer && matches!(keys.first(), Some(Key::Principal(_))) {
                index.no_peer.push(id);
            }
        }
        index.scan_header_names = index.by_header.len() <= FEW_HEADER_NAMES;
        index
    }

    /// Calls `visit` with every candidate rule for `keys`, in (policy, rule) order, once each.
    fn for_each_candidate<'s>(&'s self, keys: &Keys<'_>, mut visit: impl FnMut(RuleId)) {
        let mut gathered = Gather::default();
        match keys.principal {
            Some(principal) => gathered.add(self.by_principal.get(principal)),
            None => gathered.add(Some(&self.no_peer)),
        }
        gathered.add(self.by_port.get(&keys.port));
        let mut add_line = |values: &'s HashMap<String, Vec<RuleId>>, line: &str| {
            for candidate in header_candidates(line, true) {
                gathered.add(values.get(candidate));
            }
        };
        if self.scan_header_names {
            for (name, values) in &self.by_header {
                for (_, line) in keys.headers.iter().filter(|(n, _)| n == name) {
                    add_line(values, line);
                }
            }
        } else {
            for (name, line) in keys.headers {
                if let Some(values) = self.by_header.get(name.as_str()) {
                    add_line(values, line);
                }
            }
        }
        // Merge the keyed candidates with `always` (disjoint, both sorted).
        let (mut keyed, mut always) = (gathered.sorted().iter().peekable(), self.always.iter());
        let mut next_always = always.next();
        loop {
            match (keyed.peek(), next_always) {
                (Some(&&k), Some(&a)) if k < a => {
                    visit(k);
                    keyed.next();
                }
                (_, Some(&a)) => {
                    visit(a);
                    next_always = always.next();
                }
                (Some(&&k), None) => {
                    visit(k);
                    keyed.next();
                }
                (None, None) => break,
            }
        }
    }
}

/// The posting lists a request hits, merged without allocating in the common case of one.
#[derive(Default)]
struct Gather<'a> {
    first: &'a [RuleId],
    more: Vec<RuleId>,
}

impl<'a> Gather<'a> {
    fn add(&mut self, list: Option<&'a Vec<RuleId>>) {
        let Some(list) = list.filter(|list| !list.is_empty()) else {
            return;
        };
        if self.first.is_empty() {
            self.first = list;
        } else {
            if self.more.is_empty() {
                self.more.extend_from_slice(self.first);
            }
            self.more.extend_from_slice(list);
        }
    }

    /// Every rule gathered, sorted, once each.
    fn sorted(&mut self) -> &[RuleId] {
        if self.more.is_empty() {
            return self.first;
        }
        self.more.sort_unstable();
        self.more.dedup();
        &self.more
    }
}

/// The indexed attributes of a connection or request.
pub(crate) struct Keys<'a> {
    /// The peer's principal; `None` = plaintext.
    pub(crate) principal: Option<&'a str>,
    /// The destination (workload) port.
    pub(crate) port: u16,
    /// Header lines (empty at L4).
    pub(crate) headers: &'a [(String, String)],
}

impl WorkloadPolicies {
    /// The decision from the candidates `index` gives for `keys`, with `matches` telling
    /// whether a rule of a policy matches; see the module doc.
    pub(crate) fn decide_indexed(
        &self,
        index: &RuleIndex,
        keys: &Keys<'_>,
        matches: impl Fn(&AuthzPolicy, &AuthzRule) -> bool,
    ) -> Decision {
        let mut tally = Tally::default();
        // The last policy whose first matching rule was found: its later rules are skipped.
        let mut matched: Option<usize> = None;
        index.for_each_candidate(keys, |(p, r)| {
            if matched == Some(p) {
                return;
            }
            let Some(policy) = self.policies.get(p) else {
                return;
            };
            if policy
                .rules
                .get(r)
                .is_some_and(|rule| matches(policy, rule))
            {
                tally.record(policy, Some(r));
                matched = Some(p);
            }
        });
        tally.record_unmatched(self.index.has_allow_policies, &self.index.dry_run_allow);
        tally.decide()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::authz::MeshContext;
    use crate::http::{HttpAttributes, RequestAuth};
    use crate::l4::{L4Attributes, Peer};
    use crate::spec::{
        AuthorizationPolicySpec, Condition, ExtensionProvider, Operation, Rule, RuleFrom, RuleTo,
        Source,
    };

    fn compile(name: &str, yaml: &str) -> AuthzPolicy {
        let spec: AuthorizationPolicySpec = serde_saphyr::from_str(yaml).unwrap();
        AuthzPolicy::compile(PolicyRef::new("foo", name), &spec, false, &mesh()).unwrap()
    }

    /// `cluster.local` with the alias `td2`, so principals are expanded.
    fn mesh() -> MeshContext {
        MeshContext {
            root_namespace: "istio-system".into(),
            trust_domain: "cluster.local".into(),
            trust_domain_aliases: vec!["td2".into()],
        }
    }

    fn candidates(index: &RuleIndex, keys: &Keys<'_>) -> Vec<RuleId> {
        let mut out = Vec::new();
        index.for_each_candidate(keys, |id| out.push(id));
        out
    }

    fn keys<'a>(
        principal: Option<&'a str>,
        port: u16,
        headers: &'a [(String, String)],
    ) -> Keys<'a> {
        Keys {
            principal,
            port,
            headers,
        }
    }

    #[test]
    fn index_narrows_candidates() {
        let mut policies = vec![compile(
            "deny-ip",
            "action: DENY\nrules: [{from: [{source: {ipBlocks: [192.0.2.0/24]}}]}]",
        )];
        for i in 0..1000 {
            policies.push(compile(
                &format!("allow-{i}"),
                &format!(
                    "rules: [{{from: [{{source: {{principals: [cluster.local/ns/n{i}/sa/s{i}]}}}}], to: [{{operation: {{ports: [\"8080\"]}}}}]}}]"
                ),
            ));
        }
        policies.push(compile(
            "deny-principal",
            "action: DENY\nrules: [{from: [{source: {principals: [cluster.local/ns/bad/sa/bad]}}]}]",
        ));
        policies.push(compile(
            "tenant",
            "rules: [{to: [{operation: {methods: [GET]}}], when: [{key: \"request.headers[x-tenant]\", values: [t7, t8]}]}]",
        ));
        let index = PolicyIndex::build(&policies);
        let headers = [("x-tenant".to_string(), "t8".to_string())];
        // Principal beats the port every ALLOW shares; the alias is a key too.
        assert_eq!(
            candidates(&index.l4, &keys(Some("td2/ns/n7/sa/s7"), 8080, &[])),
            [(0, 0), (8, 0)]
        );
        // A plaintext connection: only the DENY filed by principal, and the unindexed rule.
        assert_eq!(
            candidates(&index.l4, &keys(None, 8080, &[])),
            [(0, 0), (1001, 0)]
        );
        // At L4 the header rule is an ALLOW rule with HTTP attributes: never a candidate.
        assert_eq!(
            candidates(&index.l4, &keys(Some("x"), 80, &headers)),
            [(0, 0)]
        );
        assert_eq!(
            candidates(&index.http, &keys(Some("x"), 80, &headers)),
            [(0, 0), (1002, 0)]
        );
        // A comma-joined line is also looked up element by element.
        let joined = [("x-tenant".to_string(), "t1, t8".to_string())];
        assert_eq!(
            candidates(&index.http, &keys(Some("x"), 80, &joined)),
            [(0, 0), (1002, 0)]
        );
        assert!(index.has_allow_policies);
        assert!(index.dry_run_allow.is_empty());
    }

    #[test]
    fn json_round_trip_rebuilds_the_index() {
        let workload = WorkloadPolicies::new(vec![compile(
            "a",
            "rules: [{from: [{source: {principals: [cluster.local/ns/a/sa/b]}}]}]",
        )]);
        let json = serde_json::to_value(&workload).unwrap();
        assert_eq!(json.as_object().map(|o| o.len()), Some(1), "{json}");
        assert_eq!(json["policies"][0]["policy"]["name"], "a");
        let back: WorkloadPolicies = serde_json::from_value(json).unwrap();
        assert_eq!(back, workload);
        let peer = Peer::new("cluster.local", "a", "b");
        let keys = keys(Some(&peer.principal), 80, &[]);
        assert_eq!(candidates(&back.index.l4, &keys), [(0, 0)]);
    }

    // Random policy sets and requests over small pools of values, so that rules are indexed,
    // collide on keys and match often.

    const PRINCIPALS: &[&str] = &[
        "cluster.local/ns/a/sa/x",
        "cluster.local/ns/b/sa/y",
        "td2/ns/a/sa/x",
        "other/ns/a/sa/x",
        "cluster.local/ns/a/sa/x",
        "cluster.local/ns/a/*",
        "*/sa/y",
        "*",
    ];
    const NAMESPACES: &[&str] = &["a", "b", "*"];
    const TRUST_DOMAINS: &[&str] = &["cluster.local", "td2", "other", "*", "o*"];
    const IPS: &[&str] = &["10.0.0.0/8", "192.0.2.0/24", "10.0.0.5"];
    const PORTS: &[&str] = &["80", "8080", "9090"];
    const METHODS: &[&str] = &["GET", "POST", "P*"];
    const PATHS: &[&str] = &["/a", "/a*", "/a/{*}", "*.txt"];
    const HOSTS: &[&str] = &["a.com", "*.com", "b.org"];
    const REQUEST_PRINCIPALS: &[&str] = &["iss/alice", "*"];
    /// With joined forms, which only ever match a whole line.
    const HEADER_VALUES: &[&str] = &["t1", "t2", "t1", "t2", "t*", "*", "t1,t2", "t2, t1"];
    const CLAIMS: &[&str] = &["admin", "user"];

    /// A field set with probability `p`, to one to three values of `pool`.
    fn field(pool: &'static [&'static str], p: f64) -> impl Strategy<Value = Option<Vec<String>>> {
        prop::option::weighted(
            p,
            prop::collection::vec(prop::sample::select(pool).prop_map(str::to_string), 1..3),
        )
    }

    fn source() -> impl Strategy<Value = Source> {
        (
            field(PRINCIPALS, 0.6),
            field(PRINCIPALS, 0.15),
            field(REQUEST_PRINCIPALS, 0.15),
            field(NAMESPACES, 0.2),
            field(NAMESPACES, 0.1),
            field(IPS, 0.2),
            field(IPS, 0.1),
            field(IPS, 0.1),
            field(TRUST_DOMAINS, 0.1),
            field(TRUST_DOMAINS, 0.1),
        )
            .prop_map(|(p, np, rp, ns, nns, ip, nip, rip, td, ntd)| Source {
                principals: p,
                not_principals: np,
                request_principals: rp,
                namespaces: ns,
                not_namespaces: nns,
                ip_blocks: ip,
                not_ip_blocks: nip,
                remote_ip_blocks: rip,
                trust_domains: td,
                not_trust_domains: ntd,
                ..Source::default()
            })
    }

    fn operation() -> impl Strategy<Value = Operation> {
        (
            field(HOSTS, 0.15),
            field(HOSTS, 0.1),
            field(PORTS, 0.6),
            field(PORTS, 0.2),
            field(METHODS, 0.25),
            field(METHODS, 0.1),
            field(PATHS, 0.2),
            field(PATHS, 0.1),
        )
            .prop_map(|(h, nh, p, np, m, nm, pa, npa)| Operation {
                hosts: h,
                not_hosts: nh,
                ports: p,
                not_ports: np,
                methods: m,
                not_methods: nm,
                paths: pa,
                not_paths: npa,
            })
    }

    fn condition() -> impl Strategy<Value = Condition> {
        let condition = |key: &'static str, pool: &'static [&'static str]| {
            (field(pool, 0.8), field(pool, 0.3)).prop_map(move |(values, not_values)| {
                // At least one of them must be set.
                let values = match (values, &not_values) {
                    (None, None) => Some(vec![pool[0].to_string()]),
                    (values, _) => values,
                };
                Condition {
                    key: key.into(),
                    values,
                    not_values,
                }
            })
        };
        prop_oneof![
            3 => condition("request.headers[x-t]", HEADER_VALUES),
            1 => condition("request.headers[y]", HEADER_VALUES),
            // More header names than `FEW_HEADER_NAMES`, sometimes.
            1 => prop::sample::select(vec![
                "request.headers[h1]",
                "request.headers[h2]",
                "request.headers[h3]",
                "request.headers[h4]",
            ])
            .prop_flat_map(move |key| condition(key, HEADER_VALUES)),
            1 => condition("destination.port", PORTS),
            1 => condition("source.principal", PRINCIPALS),
            1 => condition("source.namespace", NAMESPACES),
            1 => condition("request.auth.claims[g]", CLAIMS),
        ]
    }

    fn rule() -> impl Strategy<Value = Rule> {
        (
            prop::option::of(prop::collection::vec(
                source().prop_map(|source| RuleFrom { source }),
                0..3,
            )),
            prop::option::of(prop::collection::vec(
                operation().prop_map(|operation| RuleTo { operation }),
                0..3,
            )),
            prop::option::weighted(0.4, prop::collection::vec(condition(), 1..3)),
        )
            .prop_map(|(from, to, when)| Rule { from, to, when })
    }

    /// A policy spec and whether it is a dry run.
    fn policy() -> impl Strategy<Value = (AuthorizationPolicySpec, bool)> {
        (
            prop::sample::select(vec![
                Action::Allow,
                Action::Allow,
                Action::Deny,
                Action::Audit,
                Action::Custom,
            ]),
            prop::bool::weighted(0.25),
            prop::option::weighted(0.95, prop::collection::vec(rule(), 0..4)),
        )
            .prop_map(|(action, dry_run, rules)| {
                let spec = AuthorizationPolicySpec {
                    action: Some(action),
                    provider: (action == Action::Custom)
                        .then(|| ExtensionProvider { name: "ext".into() }),
                    rules,
                    ..AuthorizationPolicySpec::default()
                };
                (spec, dry_run)
            })
    }

    /// An owned HTTP request and its connection.
    #[derive(Debug)]
    struct Request {
        peer: Option<Peer>,
        port: u16,
        source_ip: &'static str,
        method: &'static str,
        host: &'static str,
        path: &'static str,
        headers: Vec<(String, String)>,
        auth: Option<RequestAuth>,
    }

    impl Request {
        fn attributes(&self) -> HttpAttributes<'_> {
            HttpAttributes {
                l4: L4Attributes {
                    peer: self.peer.as_ref(),
                    source_ip: self.source_ip.parse().unwrap(),
                    remote_ip: "192.0.2.7".parse().unwrap(),
                    destination_ip: "10.0.0.9".parse().unwrap(),
                    destination_port: self.port,
                    sni: None,
                },
                method: self.method,
                host: self.host,
                path: self.path,
                headers: &self.headers,
                auth: self.auth.as_ref(),
            }
        }
    }

    fn request() -> impl Strategy<Value = Request> {
        let peer = prop::option::weighted(
            0.75,
            prop::sample::select(vec![
                ("cluster.local", "a", "x"),
                ("td2", "a", "x"),
                ("cluster.local", "b", "y"),
                ("other", "a", "x"),
                ("cluster.local", "c", "z"),
            ])
            .prop_map(|(td, ns, sa)| Peer::new(td, ns, sa)),
        );
        // Comma-joined lines too (with and without optional whitespace, empty elements), so
        // that rules filed under an exact value are found by an element of a line.
        let header = prop::sample::select(vec![
            ("x-t", "t1"),
            ("x-t", "t2"),
            ("x-t", "t3"),
            ("x-t", "t3,t1"),
            ("x-t", "t1,t2"),
            ("x-t", "t2, t1"),
            ("x-t", "t3 ,\tt2,"),
            ("y", "t1"),
            ("y", "t3, t2"),
            ("h1", "t1"),
            ("h1", ",t1"),
            ("h3", "t2"),
            ("h3", "t3,t2"),
            ("h4", "t1"),
            ("accept", "*/*"),
            ("accept", "t1, t2"),
        ])
        .prop_map(|(n, v)| (n.to_string(), v.to_string()));
        let auth = prop::option::of(prop::sample::select(vec!["admin", "user"]).prop_map(|g| {
            RequestAuth {
                principal: "iss/alice".into(),
                claims: serde_json::json!({ "g": g }),
                ..RequestAuth::default()
            }
        }));
        (
            peer,
            prop::sample::select(vec![80u16, 8080, 9090, 443]),
            prop::sample::select(vec!["10.0.0.5", "192.0.2.7", "203.0.113.1"]),
            prop::sample::select(vec!["GET", "POST", "PUT"]),
            prop::sample::select(vec!["a.com", "b.org:80", "x.com"]),
            prop::sample::select(vec!["/a", "/a/b", "/b.txt"]),
            prop::collection::vec(header, 0..5),
            auth,
        )
            .prop_map(
                |(peer, port, source_ip, method, host, path, headers, auth)| Request {
                    peer,
                    port,
                    source_ip,
                    method,
                    host,
                    path,
                    headers,
                    auth,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The indexed `evaluate_l4` and `evaluate_http` decide exactly as the linear walk:
        /// same outcome, deciding policy and rule, audit list and dry-run notes, in order; so do
        /// `explain_l4` and `explain_http`.
        #[test]
        fn indexed_decisions_equal_the_linear_walk(
            specs in prop::collection::vec(policy(), 0..10),
            requests in prop::collection::vec(request(), 1..8),
        ) {
            let policies = specs
                .iter()
                .enumerate()
                .map(|(i, (spec, dry_run))| {
                    AuthzPolicy::compile(PolicyRef::new("foo", format!("p{i}")), spec, *dry_run, &mesh())
                        .unwrap()
                })
                .collect();
            let workload = WorkloadPolicies::new(policies);
            // Both ways of finding the request's indexed header lines.
            let mut other_scan = workload.clone();
            other_scan.index.http.scan_header_names = !workload.index.http.scan_header_names;
            for request in &requests {
                let req = request.attributes();
                prop_assert_eq!(
                    workload.evaluate_l4(&req.l4),
                    workload.evaluate_l4_linear(&req.l4),
                    "L4 {:?}", request
                );
                let linear = workload.evaluate_http_linear(&req);
                prop_assert_eq!(&workload.evaluate_http(&req), &linear, "HTTP {:?}", request);
                // The explaining walk decides as the fast path, and every rule it says failed
                // has a part that failed.
                let explained = [
                    (workload.explain_l4(&req.l4), workload.evaluate_l4(&req.l4)),
                    (workload.explain_http(&req), linear.clone()),
                ];
                for (explanation, fast) in explained {
                    prop_assert_eq!(&explanation.decision, &fast, "explain {:?}", request);
                    for rule in explanation.policies.iter().flat_map(|p| &p.rules) {
                        if let crate::explain::RuleOutcome::Failed { reason } = &rule.outcome {
                            prop_assert!(!reason.contains("did not match"), "{} {:?}", reason, request);
                        }
                    }
                }
                prop_assert_eq!(&other_scan.evaluate_http(&req), &linear, "HTTP {:?}", request);
            }
        }
    }
}
