//! `ward access-matrix`: who can reach what, decided by the proxies' own functions.
//!
//! Rows are classes of clients ([`SourceRow`]): each WorkloadEntry (its identity and address),
//! each identity the policies name exactly (`principals`, `serviceAccounts`, `source.principal`,
//! `source.serviceAccount`) that no workload runs as, "another service account" of each
//! namespace the config shows (`td/ns/NS/sa/*`), "an identity in a namespace no policy names"
//! (`td/ns/*/sa/*`), and a plaintext client with no identity (address unknown, `0.0.0.0`).
//! No Kubernetes name contains `*`, so `sa/*` and `ns/*` match only the policies' `*` patterns:
//! they stand for the clients no policy names. Columns are every ServiceEntry `host:port` with
//! a workload of the mesh behind it, and every inbound port of every workload (`ns/name:port`).
//!
//! Every cell is decided by [`crate::check`]'s `decide`, the query `ward check` runs: the
//! port, the PeerAuthentication mode, then the compiled AuthorizationPolicies through
//! `ward_policy::WorkloadPolicies::explain_l4` / `explain_http`. A TCP port has one connection
//! to decide. An HTTP port is decided for a set of probe requests (`Vocabulary`) built from
//! every value the policies of the workloads behind it name (methods, paths, request
//! principals, claims, headers, each pattern instantiated), plus a method, a path and a token
//! no policy names: the cell is
//! `allowed` when every probe is, `denied` when none is, `conditional` otherwise, and the
//! condition is the rules that decided: the ALLOW rules that allowed a probe, the DENY rules
//! that refused one (their HTTP fields, as written). A service is allowed for a probe when
//! every workload behind it allows it, as `ward check` reports it.
//!
//! The probes are a finite sample: a cell is exact for the requests tried, and the condition
//! lists the rules that decide the rest. docs/access.md says what is and is not covered.
//!
//! Pure: no I/O.

pub mod diff;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;
use ward_policy::matcher::{PathMatch, StringMatch, ValueMatch};
use ward_policy::spec::Action;
use ward_policy::{
    AllowedBy, AuthzRule, ConditionMatch, Decision, DeniedBy, MtlsMode, Peer, PolicyRef,
};

use crate::check::{decide, RequestQuery, Source, Target, TargetRef};
use crate::istio::Location;
use crate::load::ConfigSet;
use crate::snapshot::{MeshSnapshot, Protocol};
use crate::translate::{service_endpoints, workload_mtls};

/// The service account (and namespace) name that stands for "one no policy names".
pub const UNNAMED: &str = "*";

/// How many values of each kind the probes take at most, so a large config stays fast.
const MAX_METHODS: usize = 12;
const MAX_PATHS: usize = 24;
const MAX_AUTHS: usize = 16;

/// The whole answer.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Matrix {
    /// The rows.
    pub sources: Vec<SourceRow>,
    /// The columns.
    pub destinations: Vec<Column>,
    /// One cell per source and destination, row by row.
    pub cells: Vec<Cell>,
    /// Every inbound port of every workload, with its PeerAuthentication.
    pub ports: Vec<PortMtls>,
    /// Per workload, the external services it may call.
    pub egress: Vec<WorkloadEgress>,
}

impl Matrix {
    /// The cell of `from` (a row's key) to `to` (a column's key).
    pub fn cell(&self, from: &str, to: &str) -> Option<&Cell> {
        self.cells.iter().find(|c| c.from == from && c.to == to)
    }

    /// The cell of row `row` and column `column`, by index (cells are stored row by row).
    pub fn cell_at(&self, row: usize, column: usize) -> Option<&Cell> {
        if column >= self.destinations.len() {
            return None;
        }
        self.cells.get(
            row.checked_mul(self.destinations.len())?
                .checked_add(column)?,
        )
    }
}

/// One row: a class of clients.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceRow {
    /// The row's key, and how `ward check --from` names it.
    pub from: String,
    /// `workload`, `identity`, `namespace`, `mesh` or `plaintext`.
    pub kind: &'static str,
    /// What the row stands for.
    pub description: String,
    #[serde(skip)]
    pub(crate) source: Source,
}

/// One column: a service port or a workload port.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Column {
    /// The column's key, and how `ward check --to` names it: `host:port` or `ns/name:port`.
    pub to: String,
    /// `service` or `workload`.
    pub kind: &'static str,
    /// The port's protocol (of the first workload behind a service).
    pub protocol: Option<Protocol>,
    /// The workloads that decide, `ns/name:port`.
    pub workloads: Vec<String>,
    #[serde(skip)]
    pub(crate) targets: Vec<TargetRef>,
    /// The probe requests tried on an HTTP port, by index: built from the values the policies
    /// of the workloads behind it name.
    #[serde(skip)]
    pub(crate) probes: Vec<Probe>,
}

/// The answer for one source and destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Access {
    /// Every probe is refused.
    Denied,
    /// Some probes are allowed, some refused: see the condition.
    Conditional,
    /// Every probe is allowed.
    Allowed,
}

impl Access {
    /// `allowed`, `conditional` or `denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Allowed => "allowed",
            Access::Conditional => "conditional",
            Access::Denied => "denied",
        }
    }
}

/// One cell.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cell {
    /// The row's key.
    pub from: String,
    /// The column's key.
    pub to: String,
    /// The answer.
    pub access: Access,
    /// `mTLS` or `plaintext`: what reaches the (first) destination workload.
    pub transport: &'static str,
    /// Denied at a stage before the policies, for every request: `port`,
    /// `peerAuthentication STRICT`, `peerAuthentication DISABLE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<String>,
    /// The condition, for people: `any request`, the allowing rules' fields, `unless` the
    /// refusing DENY rules.
    pub condition: String,
    /// The ALLOW rules that allowed some probe.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_by: Vec<RuleSummary>,
    /// Some probe was allowed because no ALLOW policy applies to the workload.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_allow_policy: bool,
    /// The DENY (or CUSTOM) rules that refused some probe.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denied_by: Vec<RuleSummary>,
    /// Every allowed probe carried a token (a JWT is required); false when none is allowed.
    pub requires_token: bool,
    /// The policies that decided, `ns/name`, ALLOW then DENY.
    pub policies: Vec<String>,
    /// A request that is allowed (HTTP ports), to try with `ward check`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example_allowed: Option<ProbeRequest>,
    /// A request that is refused (HTTP ports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example_denied: Option<ProbeRequest>,
    /// The workloads behind a service did not all decide a probe the same way (each one's
    /// column says how).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub workloads_differ: bool,
    /// Per probe index, whether it was allowed (TCP: one entry).
    #[serde(skip)]
    pub(crate) allowed: Vec<bool>,
    /// Per probe index, whether it carried a token.
    #[serde(skip)]
    pub(crate) with_token: Vec<bool>,
}

/// One rule that decided some probe, with its request fields as written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSummary {
    /// `ns/name` of the policy.
    pub policy: String,
    /// The rule's index in `spec.rules`.
    pub rule: usize,
    /// `ALLOW`, `DENY` or `CUSTOM`.
    pub action: &'static str,
    /// Its request fields: `methods GET, POST`, `paths /fhir/*`, `requestPrincipals ...`,
    /// `request.auth.claims[roles] in Medic`, `ports 5432`; empty: any request.
    pub conditions: Vec<String>,
}

impl RuleSummary {
    /// `ns/name rule[i]` with its conditions.
    pub fn text(&self) -> String {
        if self.conditions.is_empty() {
            format!("{} rule[{}] (any request)", self.policy, self.rule)
        } else {
            format!(
                "{} rule[{}] ({})",
                self.policy,
                self.rule,
                self.conditions.join("; ")
            )
        }
    }
}

/// A concrete HTTP request, as `ward check` flags give it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeRequest {
    /// `--method`.
    pub method: String,
    /// `--path`.
    pub path: String,
    /// `--header name:value`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// `--claims`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<serde_json::Value>,
}

/// The PeerAuthentication of one workload port.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMtls {
    /// `ns/name:port`.
    pub port: String,
    /// The port's protocol.
    pub protocol: Protocol,
    /// The mode the proxy enforces.
    pub mode: MtlsMode,
    /// The PeerAuthentication that set it, `ns/name`; `None`: Ward's default (STRICT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// `mesh`, `namespace`, `workload`, `port-level` or `default`.
    pub level: String,
    /// Whether plaintext connections are accepted (PERMISSIVE, DISABLE).
    pub plaintext_accepted: bool,
    /// What a plaintext client gets past the policies too: the plaintext row's cell.
    pub plaintext_access: Access,
}

/// What one workload may call outside the mesh.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEgress {
    /// `ns/name`.
    pub workload: String,
    /// The MESH_EXTERNAL ServiceEntries visible to its namespace (`exportTo`).
    pub external_hosts: Vec<ExternalHost>,
    /// The Sidecar's (or mesh's) `outboundTrafficPolicy` mode.
    pub outbound_traffic_policy: String,
    /// Whether Ward refuses the hosts outside this list (`REGISTRY_ONLY`) on the paths it
    /// proxies; which traffic it proxies is a deployment fact (see `note`).
    pub enforced: bool,
    /// What that means.
    pub note: String,
}

/// An external service a workload may call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalHost {
    /// The ServiceEntry host.
    pub host: String,
    /// Its ports.
    pub ports: Vec<u16>,
    /// The ServiceEntry, `ns/name`.
    pub service_entry: String,
    /// The workload's egress listeners for it (`bind`), from its Sidecar's egress hosts; empty:
    /// visible, but no listener of its sidecar serves it.
    pub listeners: Vec<String>,
}

/// Build the matrix of a translated config.
pub fn access_matrix(set: &ConfigSet, snapshot: &MeshSnapshot) -> Matrix {
    let vocabulary = |column: &Column| Vocabulary::of_column(snapshot, column);
    build(set, snapshot, &source_rows(snapshot), &vocabulary)
}

/// The matrix for given rows, with the probe values of each column from `vocabulary` (the diff
/// decides two configs with the same ones).
pub(crate) fn build(
    set: &ConfigSet,
    snapshot: &MeshSnapshot,
    rows: &[SourceRow],
    vocabulary: &dyn Fn(&Column) -> Vocabulary,
) -> Matrix {
    let mut destinations = columns(set, snapshot);
    for column in &mut destinations {
        if column.protocol.is_some_and(Protocol::is_http) {
            column.probes = vocabulary(column).probes();
        }
    }
    let mut cells = Vec::with_capacity(rows.len() * destinations.len());
    for row in rows {
        for column in &destinations {
            cells.push(decide_cell(set, snapshot, row, column, &column.probes));
        }
    }
    let ports = port_mtls(set, snapshot, &cells);
    Matrix {
        sources: rows.to_vec(),
        destinations,
        cells,
        ports,
        egress: egress(set, snapshot),
    }
}

// ---------------------------------------------------------------------------------------------
// Rows

/// The rows of a config, in order: workloads, named identities, namespaces, the rest of the
/// mesh, plaintext.
pub(crate) fn source_rows(snapshot: &MeshSnapshot) -> Vec<SourceRow> {
    let td = snapshot.trust_domain.as_str();
    let mut rows: Vec<SourceRow> = snapshot
        .proxies
        .iter()
        .map(|(key, p)| workload_row(snapshot, key, p))
        .collect();
    let names = NamedIdentities::of(snapshot);
    let workload_ids: BTreeSet<&str> = snapshot
        .proxies
        .values()
        .map(|p| p.workload.identity.as_str())
        .collect();
    for (ptd, ns, sa) in &names.identities {
        let principal = format!("{ptd}/ns/{ns}/sa/{sa}");
        if workload_ids.contains(format!("spiffe://{principal}").as_str()) {
            continue;
        }
        rows.push(identity_row(
            "identity",
            Peer::new(ptd.as_str(), ns.as_str(), sa.as_str()),
            format!("identity {principal}, named by a policy; no WorkloadEntry runs as it"),
        ));
    }
    let mut namespaces = names.namespaces.clone();
    namespaces.extend(
        snapshot
            .proxies
            .values()
            .map(|p| p.workload.namespace.clone()),
    );
    namespaces.extend(names.identities.iter().map(|(_, ns, _)| ns.clone()));
    for ns in namespaces.iter().filter(|ns| ns.as_str() != UNNAMED) {
        rows.push(identity_row(
            "namespace",
            Peer::new(td, ns.as_str(), UNNAMED),
            format!("another service account of namespace {ns} (one no policy names)"),
        ));
    }
    rows.push(identity_row(
        "mesh",
        Peer::new(td, UNNAMED, UNNAMED),
        "an identity of the mesh in a namespace no policy names".to_owned(),
    ));
    rows.push(SourceRow {
        from: "plaintext:0.0.0.0".to_owned(),
        kind: "plaintext",
        description: "a client with no identity (no mTLS), address unknown".to_owned(),
        source: Source {
            kind: "plaintext",
            workload: None,
            identity: None,
            address: Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            peer: None,
        },
    });
    rows
}

fn workload_row(snapshot: &MeshSnapshot, key: &str, p: &crate::ProxyConfig) -> SourceRow {
    let w = &p.workload;
    SourceRow {
        from: key.to_owned(),
        kind: "workload",
        description: format!("workload {key} ({}) at {}", w.identity, w.address),
        source: Source {
            kind: "workload",
            workload: Some(key.to_owned()),
            identity: Some(w.identity.clone()),
            address: Some(w.address),
            peer: Some(Peer::new(
                snapshot.trust_domain.clone(),
                w.namespace.clone(),
                w.service_account.clone(),
            )),
        },
    }
}

fn identity_row(kind: &'static str, peer: Peer, description: String) -> SourceRow {
    SourceRow {
        from: peer.principal.clone(),
        kind,
        description,
        source: Source {
            kind: "identity",
            workload: None,
            identity: Some(format!("spiffe://{}", peer.principal)),
            address: None,
            peer: Some(peer),
        },
    }
}

/// The members of a namespace source: every workload of the namespace, every identity of it the
/// policies name exactly, then another service account (`sa/*`). For `ward check --from
/// ns/NAME`.
pub(crate) fn namespace_sources(snapshot: &MeshSnapshot, namespace: &str) -> Vec<Source> {
    let mut rows: Vec<SourceRow> = snapshot
        .proxies
        .iter()
        .filter(|(_, p)| p.workload.namespace == namespace)
        .map(|(key, p)| workload_row(snapshot, key, p))
        .collect();
    let names = NamedIdentities::of(snapshot);
    for (td, ns, sa) in names.identities.iter().filter(|(_, ns, _)| ns == namespace) {
        let peer = Peer::new(td.as_str(), ns.as_str(), sa.as_str());
        let identity = format!("spiffe://{}", peer.principal);
        if rows
            .iter()
            .any(|r| r.source.identity.as_deref() == Some(identity.as_str()))
        {
            continue;
        }
        rows.push(identity_row("identity", peer, String::new()));
    }
    let other = Peer::new(snapshot.trust_domain.as_str(), namespace, UNNAMED);
    rows.push(identity_row("identity", other, String::new()));
    rows.into_iter().map(|r| r.source).collect()
}

/// The identities and namespaces the compiled policies name exactly.
#[derive(Default)]
struct NamedIdentities {
    /// `(trust domain, namespace, service account)`.
    identities: BTreeSet<(String, String, String)>,
    namespaces: BTreeSet<String>,
}

impl NamedIdentities {
    fn of(snapshot: &MeshSnapshot) -> NamedIdentities {
        let mut out = NamedIdentities::default();
        for proxy in snapshot.proxies.values() {
            for policy in proxy.authz.policies() {
                for rule in &policy.rules {
                    out.add_rule(snapshot, rule);
                }
            }
        }
        out
    }

    fn add_rule(&mut self, snapshot: &MeshSnapshot, rule: &AuthzRule) {
        for source in &rule.from {
            self.add_principals(&source.principals);
            self.add_namespaces(&source.namespaces);
            self.add_service_accounts(snapshot, &source.service_accounts);
        }
        for condition in &rule.when {
            match condition {
                ConditionMatch::SourcePrincipal(values) => self.add_principals(values),
                ConditionMatch::SourceNamespace(values) => self.add_namespaces(values),
                ConditionMatch::SourceServiceAccount(values) => {
                    self.add_service_accounts(snapshot, values);
                }
                _ => {}
            }
        }
    }

    fn add_principals(&mut self, values: &ValueMatch<StringMatch>) {
        for value in values.values.iter().chain(&values.not_values) {
            let StringMatch::Exact(principal) = value else {
                continue;
            };
            if let [td, "ns", ns, "sa", sa] = principal.split('/').collect::<Vec<_>>().as_slice() {
                if ![td, ns, sa].iter().any(|p| p.is_empty()) {
                    self.identities
                        .insert(((*td).to_owned(), (*ns).to_owned(), (*sa).to_owned()));
                }
            }
        }
    }

    fn add_namespaces(&mut self, values: &ValueMatch<StringMatch>) {
        for value in values.values.iter().chain(&values.not_values) {
            if let StringMatch::Exact(ns) = value {
                self.namespaces.insert(ns.clone());
            }
        }
    }

    fn add_service_accounts(
        &mut self,
        snapshot: &MeshSnapshot,
        values: &ValueMatch<ward_policy::matcher::ServiceAccountMatch>,
    ) {
        for sa in values.values.iter().chain(&values.not_values) {
            self.identities.insert((
                snapshot.trust_domain.clone(),
                sa.namespace.clone(),
                sa.name.clone(),
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Columns

pub(crate) fn columns(set: &ConfigSet, snapshot: &MeshSnapshot) -> Vec<Column> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for se in &set.service_entries {
        for host in se.spec.hosts() {
            for port in se.spec.ports() {
                let Ok(number) = u16::try_from(port.number) else {
                    continue;
                };
                let to = format!("{host}:{number}");
                if !seen.insert(to.clone()) {
                    continue;
                }
                let Some(endpoints) = service_endpoints(set, host, number) else {
                    continue;
                };
                let targets: Vec<TargetRef> = endpoints
                    .into_iter()
                    .filter_map(|e| {
                        let workload = e.workload.filter(|w| snapshot.proxies.contains_key(w))?;
                        Some(TargetRef {
                            workload,
                            port: e.address.port(),
                            transport: Some(e.transport),
                        })
                    })
                    .collect();
                if targets.is_empty() {
                    continue;
                }
                out.push(column(snapshot, to, "service", targets));
            }
        }
    }
    for (key, proxy) in &snapshot.proxies {
        for port in &proxy.inbound {
            let target = TargetRef {
                workload: key.clone(),
                port: port.port,
                transport: None,
            };
            out.push(column(
                snapshot,
                format!("{key}:{}", port.port),
                "workload",
                vec![target],
            ));
        }
    }
    out
}

fn column(
    snapshot: &MeshSnapshot,
    to: String,
    kind: &'static str,
    targets: Vec<TargetRef>,
) -> Column {
    let protocol = targets.first().and_then(|t| {
        snapshot
            .proxies
            .get(&t.workload)?
            .inbound
            .iter()
            .find(|p| p.port == t.port)
            .map(|p| p.protocol)
    });
    Column {
        to,
        kind,
        protocol,
        workloads: targets
            .iter()
            .map(|t| format!("{}:{}", t.workload, t.port))
            .collect(),
        targets,
        probes: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Probes

/// The request values the probes combine: every value the policies of a column's workloads
/// name, instantiated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Vocabulary {
    methods: BTreeSet<String>,
    paths: BTreeSet<String>,
    auths: BTreeSet<AuthVariant>,
}

/// The credentials and headers of a probe.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct AuthVariant {
    /// `None`: no token.
    token: Option<TokenSketch>,
    headers: Vec<(String, String)>,
}

/// A token's claims, before the destination's issuer and audience fill the gaps.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct TokenSketch {
    iss: Option<String>,
    sub: String,
    aud: Option<String>,
    azp: Option<String>,
    /// `(claim path, value)`.
    claims: Vec<(Vec<String>, String)>,
}

/// One probe: indices into the vocabulary's lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    method: String,
    path: String,
    auth: AuthVariant,
}

const PROBE_SUBJECT: &str = "ward-probe";

impl Vocabulary {
    /// The values of the policies of the workloads behind `column`, and the defaults.
    pub(crate) fn of_column(snapshot: &MeshSnapshot, column: &Column) -> Vocabulary {
        let proxies = column
            .targets
            .iter()
            .filter_map(|t| snapshot.proxies.get(&t.workload));
        Vocabulary::of_proxies(proxies)
    }

    /// The values of the policies of `proxies`, and the defaults.
    fn of_proxies<'a>(proxies: impl Iterator<Item = &'a crate::ProxyConfig>) -> Vocabulary {
        let mut v = Vocabulary::default();
        v.methods.insert("GET".to_owned());
        v.paths.insert("/".to_owned());
        v.paths.insert(format!("/{PROBE_SUBJECT}"));
        v.auths.insert(AuthVariant::default());
        v.auths.insert(AuthVariant {
            token: Some(TokenSketch {
                sub: PROBE_SUBJECT.to_owned(),
                ..TokenSketch::default()
            }),
            headers: Vec::new(),
        });
        for proxy in proxies {
            for policy in proxy.authz.policies() {
                for rule in &policy.rules {
                    v.add_rule(rule);
                }
            }
        }
        v.add_unnamed_method();
        v
    }

    /// Both vocabularies' values.
    pub(crate) fn union(&self, other: &Vocabulary) -> Vocabulary {
        let mut out = self.clone();
        out.methods.extend(other.methods.iter().cloned());
        out.paths.extend(other.paths.iter().cloned());
        out.auths.extend(other.auths.iter().cloned());
        out
    }

    /// A method no policy names, so "any method" can be told from the named ones.
    fn add_unnamed_method(&mut self) {
        let unnamed = ["PATCH", "DELETE", "PUT", "POST", "OPTIONS", "HEAD"]
            .into_iter()
            .find(|m| !self.methods.contains(*m))
            .unwrap_or("PROPFIND");
        self.methods.insert(unnamed.to_owned());
    }

    fn add_rule(&mut self, rule: &AuthzRule) {
        for op in &rule.to {
            for m in op.methods.values.iter().chain(&op.methods.not_values) {
                self.methods.insert(instance_of(m, "GET"));
            }
            for p in op.paths.values.iter().chain(&op.paths.not_values) {
                self.paths.insert(path_instance(p));
            }
        }
        let base = AuthVariant::of_conditions(&rule.when);
        let principals: Vec<&StringMatch> = rule
            .from
            .iter()
            .filter_map(|s| s.request_principals.values.first())
            .collect();
        if principals.is_empty() {
            if base != AuthVariant::default() {
                self.auths.insert(base);
            }
            return;
        }
        for principal in principals {
            let mut variant = base.clone();
            let token = variant.token.get_or_insert_with(TokenSketch::default);
            token.set_principal(principal);
            self.auths.insert(variant);
        }
    }

    /// Every combination, capped per dimension.
    pub(crate) fn probes(&self) -> Vec<Probe> {
        let mut out = Vec::new();
        for auth in self.auths.iter().take(MAX_AUTHS) {
            for method in self.methods.iter().take(MAX_METHODS) {
                for path in self.paths.iter().take(MAX_PATHS) {
                    out.push(Probe {
                        method: method.clone(),
                        path: path.clone(),
                        auth: auth.clone(),
                    });
                }
            }
        }
        out
    }
}

impl AuthVariant {
    /// The token claims and headers the `when` conditions ask for (their first values).
    fn of_conditions(when: &[ConditionMatch]) -> AuthVariant {
        let mut variant = AuthVariant::default();
        for condition in when {
            match condition {
                ConditionMatch::RequestHeader { name, values } => {
                    let value = values.values.first().map_or_else(
                        || PROBE_SUBJECT.to_owned(),
                        |v| instance_of(v, PROBE_SUBJECT),
                    );
                    variant.headers.push((name.clone(), value));
                }
                ConditionMatch::RequestAuthPrincipal(values) => {
                    let token = variant.token.get_or_insert_with(TokenSketch::default);
                    if let Some(v) = values.values.first() {
                        token.set_principal(v);
                    }
                }
                ConditionMatch::RequestAuthAudiences(values) => {
                    let token = variant.token.get_or_insert_with(TokenSketch::default);
                    token.aud = values.values.first().map(|v| instance_of(v, "aud"));
                }
                ConditionMatch::RequestAuthPresenter(values) => {
                    let token = variant.token.get_or_insert_with(TokenSketch::default);
                    token.azp = values.values.first().map(|v| instance_of(v, "azp"));
                }
                ConditionMatch::RequestAuthClaim { claim, values } => {
                    let token = variant.token.get_or_insert_with(TokenSketch::default);
                    if let Some(v) = values.values.first() {
                        token
                            .claims
                            .push((claim.clone(), instance_of(v, PROBE_SUBJECT)));
                    }
                }
                _ => {}
            }
        }
        if let Some(token) = &mut variant.token {
            if token.sub.is_empty() {
                token.sub = PROBE_SUBJECT.to_owned();
            }
        }
        variant
    }
}

impl TokenSketch {
    /// `iss/sub` from a `requestPrincipals` value: the issuer is everything before the last `/`.
    fn set_principal(&mut self, principal: &StringMatch) {
        let (iss, sub) = match principal {
            StringMatch::Exact(p) => match p.rsplit_once('/') {
                Some((iss, sub)) => (Some(iss.to_owned()), sub.to_owned()),
                None => (None, p.clone()),
            },
            StringMatch::Prefix(p) => match p.rsplit_once('/') {
                Some((iss, rest)) => (Some(iss.to_owned()), format!("{rest}{PROBE_SUBJECT}")),
                None => (None, format!("{p}{PROBE_SUBJECT}")),
            },
            StringMatch::Suffix(s) => match s.rsplit_once('/') {
                Some((_, sub)) => (None, sub.to_owned()),
                None => (None, format!("{PROBE_SUBJECT}{s}")),
            },
            StringMatch::Presence => (None, PROBE_SUBJECT.to_owned()),
        };
        if iss.is_some() {
            self.iss = iss;
        }
        self.sub = if sub.is_empty() {
            PROBE_SUBJECT.to_owned()
        } else {
            sub
        };
    }
}

/// A value that `m` matches (`*` gives `presence`).
fn instance_of(m: &StringMatch, presence: &str) -> String {
    match m {
        StringMatch::Exact(v) | StringMatch::Prefix(v) | StringMatch::Suffix(v) => v.clone(),
        StringMatch::Presence => presence.to_owned(),
    }
}

/// A path that `p` matches.
fn path_instance(p: &PathMatch) -> String {
    let path = match p {
        PathMatch::String(StringMatch::Exact(v)) => v.clone(),
        PathMatch::String(StringMatch::Prefix(v)) if v.ends_with('/') => format!("{v}x"),
        PathMatch::String(StringMatch::Prefix(v)) => v.clone(),
        PathMatch::String(StringMatch::Suffix(v)) if v.starts_with('/') => v.clone(),
        PathMatch::String(StringMatch::Suffix(v)) => format!("/x{v}"),
        PathMatch::String(StringMatch::Presence) => "/x".to_owned(),
        PathMatch::Template(t) => t.replace("{**}", "x").replace("{*}", "x"),
    };
    if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    }
}

impl Probe {
    /// The request for a destination: the token's issuer and audience default to the
    /// destination's first `jwtRules` entry.
    fn request(&self, proxy: Option<&crate::ProxyConfig>) -> RequestQuery {
        let claims = self.auth.token.as_ref().map(|t| token_claims(t, proxy));
        RequestQuery {
            method: self.method.clone(),
            path: self.path.clone(),
            headers: self.auth.headers.clone(),
            claims,
        }
    }

    /// The request as `ward check` flags.
    fn example(&self, proxy: Option<&crate::ProxyConfig>) -> ProbeRequest {
        let r = self.request(proxy);
        ProbeRequest {
            method: r.method,
            path: r.path,
            headers: r.headers.iter().map(|(n, v)| format!("{n}:{v}")).collect(),
            claims: r.claims,
        }
    }
}

fn token_claims(t: &TokenSketch, proxy: Option<&crate::ProxyConfig>) -> serde_json::Value {
    let rules = proxy.map(|p| p.jwt_rules.rules()).unwrap_or_default();
    let iss = t
        .iss
        .clone()
        .or_else(|| rules.first().map(|r| r.issuer.clone()))
        .unwrap_or_else(|| "https://issuer.invalid".to_owned());
    let aud = t.aud.clone().or_else(|| {
        rules
            .iter()
            .find(|r| r.issuer == iss)
            .and_then(|r| r.audiences.first().cloned())
    });
    let mut claims = serde_json::Map::new();
    for (path, value) in &t.claims {
        insert_claim(&mut claims, path, value);
    }
    claims.insert("iss".to_owned(), iss.into());
    claims.insert("sub".to_owned(), t.sub.clone().into());
    if let Some(aud) = aud {
        claims.insert("aud".to_owned(), aud.into());
    }
    if let Some(azp) = &t.azp {
        claims.insert("azp".to_owned(), azp.clone().into());
    }
    serde_json::Value::Object(claims)
}

/// Set `path` to a list holding `value` (appended when the list exists).
fn insert_claim(
    claims: &mut serde_json::Map<String, serde_json::Value>,
    path: &[String],
    value: &str,
) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = claims;
    for key in parents {
        let entry = node
            .entry(key.clone())
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        if !entry.is_object() {
            *entry = serde_json::Value::Object(serde_json::Map::new());
        }
        let serde_json::Value::Object(child) = entry else {
            return;
        };
        node = child;
    }
    let list = node
        .entry(last.clone())
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    match list {
        serde_json::Value::Array(items) => items.push(value.into()),
        other => *other = serde_json::Value::Array(vec![value.into()]),
    }
}

// ---------------------------------------------------------------------------------------------
// Cells

/// What the probes of one cell found.
#[derive(Default)]
struct Tallies {
    allowed: Vec<bool>,
    with_token: Vec<bool>,
    /// `(workload, policy, rule index)`.
    allow_rules: BTreeSet<(String, PolicyRef, usize)>,
    deny_rules: BTreeSet<(String, PolicyRef, usize)>,
    no_allow_policy: bool,
    differ: bool,
    first_allowed: Option<usize>,
    first_denied: Option<usize>,
}

fn decide_cell(
    set: &ConfigSet,
    snapshot: &MeshSnapshot,
    row: &SourceRow,
    column: &Column,
    probes: &[Probe],
) -> Cell {
    let http = column.protocol.is_some_and(Protocol::is_http);
    let host = column.to.as_str();
    let default_probe = Probe {
        method: "GET".to_owned(),
        path: "/".to_owned(),
        auth: AuthVariant::default(),
    };
    let proxy_of = |t: &TargetRef| snapshot.proxies.get(&t.workload);
    // The port and the PeerAuthentication do not depend on the request.
    let first: Vec<Target> = column
        .targets
        .iter()
        .map(|t| {
            let request = default_probe.request(proxy_of(t));
            decide(set, snapshot, &row.source, t, host, &request)
        })
        .collect();
    let transport = first.first().map_or("plaintext", |t| t.transport);
    let early = first.iter().find_map(|t| match t.refused_by {
        Some("port") => Some("port".to_owned()),
        Some("peerAuthentication") => Some(format!(
            "peerAuthentication {}",
            t.peer_authentication
                .as_ref()
                .map_or_else(String::new, |p| p.mode.to_string())
        )),
        _ => None,
    });
    let mut cell = Cell {
        from: row.from.clone(),
        to: column.to.clone(),
        access: Access::Denied,
        transport,
        refused_by: None,
        condition: String::new(),
        allowed_by: Vec::new(),
        no_allow_policy: false,
        denied_by: Vec::new(),
        requires_token: false,
        policies: Vec::new(),
        example_allowed: None,
        example_denied: None,
        workloads_differ: false,
        allowed: Vec::new(),
        with_token: Vec::new(),
    };
    if let Some(stage) = early {
        let n = if http { probes.len() } else { 1 };
        cell.allowed = vec![false; n];
        cell.with_token = if http {
            probes.iter().map(|p| p.auth.token.is_some()).collect()
        } else {
            vec![false]
        };
        cell.condition = format!("refused by {stage}");
        cell.refused_by = Some(stage);
        return cell;
    }
    let mut tallies = Tallies::default();
    if http {
        for (i, probe) in probes.iter().enumerate() {
            let targets: Vec<Target> = column
                .targets
                .iter()
                .map(|t| {
                    let request = probe.request(proxy_of(t));
                    decide(set, snapshot, &row.source, t, host, &request)
                })
                .collect();
            tallies.record(i, probe.auth.token.is_some(), &targets);
        }
    } else {
        tallies.record(0, false, &first);
    }
    finish_cell(&mut cell, tallies, snapshot, column, probes, http);
    cell
}

impl Tallies {
    fn record(&mut self, index: usize, token: bool, targets: &[Target]) {
        let allowed = !targets.is_empty() && targets.iter().all(|t| t.allowed);
        if targets.iter().any(|t| t.allowed != allowed) {
            self.differ = true;
        }
        self.allowed.push(allowed);
        self.with_token.push(token);
        if allowed {
            self.first_allowed.get_or_insert(index);
        } else {
            self.first_denied.get_or_insert(index);
        }
        for t in targets {
            let Some(e) = &t.authorization else { continue };
            match &e.decision {
                Decision::Allow {
                    by: AllowedBy::Rule(rule),
                    ..
                } if allowed => {
                    self.allow_rules
                        .insert((t.workload.clone(), rule.policy.clone(), rule.rule));
                }
                Decision::Allow {
                    by: AllowedBy::NoAllowPolicies,
                    ..
                } if allowed => self.no_allow_policy = true,
                Decision::Deny {
                    by: DeniedBy::DenyRule(rule),
                    ..
                } => {
                    self.deny_rules
                        .insert((t.workload.clone(), rule.policy.clone(), rule.rule));
                }
                _ => {}
            }
        }
    }
}

fn finish_cell(
    cell: &mut Cell,
    tallies: Tallies,
    snapshot: &MeshSnapshot,
    column: &Column,
    probes: &[Probe],
    http: bool,
) {
    let any = tallies.allowed.iter().any(|a| *a);
    let all = !tallies.allowed.is_empty() && tallies.allowed.iter().all(|a| *a);
    cell.access = match (any, all) {
        (_, true) => Access::Allowed,
        (true, false) => Access::Conditional,
        (false, _) => Access::Denied,
    };
    cell.requires_token = any
        && tallies
            .allowed
            .iter()
            .zip(&tallies.with_token)
            .all(|(allowed, token)| !allowed || *token);
    cell.allowed_by = summaries(snapshot, &tallies.allow_rules);
    cell.denied_by = summaries(snapshot, &tallies.deny_rules);
    cell.no_allow_policy = tallies.no_allow_policy;
    cell.workloads_differ = tallies.differ;
    let mut policies: Vec<String> = Vec::new();
    for s in cell.allowed_by.iter().chain(&cell.denied_by) {
        if !policies.contains(&s.policy) {
            policies.push(s.policy.clone());
        }
    }
    cell.policies = policies;
    let proxy = column
        .targets
        .first()
        .and_then(|t| snapshot.proxies.get(&t.workload));
    if http {
        cell.example_allowed = tallies
            .first_allowed
            .and_then(|i| probes.get(i))
            .map(|p| p.example(proxy));
        cell.example_denied = tallies
            .first_denied
            .and_then(|i| probes.get(i))
            .map(|p| p.example(proxy));
    }
    cell.condition = condition_text(cell);
    cell.allowed = tallies.allowed;
    cell.with_token = tallies.with_token;
}

fn condition_text(cell: &Cell) -> String {
    let allow: Vec<String> = cell.allowed_by.iter().map(RuleSummary::text).collect();
    let deny: Vec<String> = cell.denied_by.iter().map(RuleSummary::text).collect();
    let unless = if deny.is_empty() {
        String::new()
    } else {
        format!(" unless {}", deny.join(" or "))
    };
    match cell.access {
        Access::Allowed if allow.is_empty() => "any request (no ALLOW policy applies)".to_owned(),
        Access::Allowed => format!("any request, by {}", allow.join(" or ")),
        Access::Conditional => {
            let mut when = allow;
            if cell.no_allow_policy {
                when.push("any request (no ALLOW policy applies)".to_owned());
            }
            let token = if cell.requires_token {
                " [a valid JWT is required]"
            } else {
                ""
            };
            format!("when {}{unless}{token}", when.join(" or "))
        }
        Access::Denied if deny.is_empty() => "no ALLOW rule matches".to_owned(),
        Access::Denied => format!("denied by {}", deny.join(" or ")),
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Custom => "CUSTOM",
        Action::Audit => "AUDIT",
    }
}

fn summaries(
    snapshot: &MeshSnapshot,
    rules: &BTreeSet<(String, PolicyRef, usize)>,
) -> Vec<RuleSummary> {
    let mut out: Vec<RuleSummary> = Vec::new();
    for (workload, policy_ref, index) in rules {
        let Some(proxy) = snapshot.proxies.get(workload) else {
            continue;
        };
        let Some(policy) = proxy
            .authz
            .policies()
            .iter()
            .find(|p| &p.policy == policy_ref)
        else {
            continue;
        };
        let Some(rule) = policy.rules.get(*index) else {
            continue;
        };
        let summary = RuleSummary {
            policy: policy_ref.to_string(),
            rule: *index,
            action: action_name(policy.action),
            conditions: rule_conditions(rule),
        };
        if !out.contains(&summary) {
            out.push(summary);
        }
    }
    out.sort();
    out
}

/// The request fields of a rule, as written: what a client must send (identity fields are the
/// row's, and are left out).
fn rule_conditions(rule: &AuthzRule) -> Vec<String> {
    let mut out = Vec::new();
    let alternatives = |parts: Vec<Vec<String>>, out: &mut Vec<String>| {
        let parts: Vec<String> = parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| p.join(", "))
            .collect();
        match parts.len() {
            0 => {}
            1 => out.extend(parts),
            _ => out.push(format!("one of [{}]", parts.join("] or ["))),
        }
    };
    let sources: Vec<Vec<String>> = rule
        .from
        .iter()
        .map(|s| field("requestPrincipals", &s.request_principals, string_of))
        .collect();
    alternatives(sources, &mut out);
    let operations: Vec<Vec<String>> = rule
        .to
        .iter()
        .map(|o| {
            let mut parts = field("hosts", &o.hosts, string_of);
            parts.extend(field("ports", &o.ports, u16::to_string));
            parts.extend(field("methods", &o.methods, string_of));
            parts.extend(field("paths", &o.paths, |p| String::from(p.clone())));
            parts
        })
        .collect();
    alternatives(operations, &mut out);
    for condition in &rule.when {
        if let Some(text) = condition_summary(condition) {
            out.push(text);
        }
    }
    out
}

fn string_of(m: &StringMatch) -> String {
    String::from(m.clone())
}

fn field<T>(name: &str, values: &ValueMatch<T>, show: impl Fn(&T) -> String) -> Vec<String> {
    let mut out = Vec::new();
    if !values.values.is_empty() {
        let list: Vec<String> = values.values.iter().map(&show).collect();
        out.push(format!("{name} {}", list.join(" | ")));
    }
    if !values.not_values.is_empty() {
        let list: Vec<String> = values.not_values.iter().map(&show).collect();
        out.push(format!("not {name} {}", list.join(" | ")));
    }
    out
}

/// A request-level `when` condition (HTTP attributes, the port); `None` for the identity and
/// address conditions, which the row fixes.
fn condition_summary(condition: &ConditionMatch) -> Option<String> {
    let key = condition.key();
    let text = |values: &ValueMatch<StringMatch>| {
        let mut parts = Vec::new();
        if !values.values.is_empty() {
            let list: Vec<String> = values.values.iter().map(string_of).collect();
            parts.push(format!("{key} in {}", list.join(" | ")));
        }
        if !values.not_values.is_empty() {
            let list: Vec<String> = values.not_values.iter().map(string_of).collect();
            parts.push(format!("{key} not in {}", list.join(" | ")));
        }
        parts.join(", ")
    };
    match condition {
        ConditionMatch::RequestHeader { values, .. }
        | ConditionMatch::RequestAuthClaim { values, .. }
        | ConditionMatch::RequestAuthPrincipal(values)
        | ConditionMatch::RequestAuthAudiences(values)
        | ConditionMatch::RequestAuthPresenter(values)
        | ConditionMatch::ConnectionSni(values) => Some(text(values)),
        ConditionMatch::DestinationPort(values) => {
            Some(field(&key, values, u16::to_string).join(", "))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Ports and egress

fn port_mtls(set: &ConfigSet, snapshot: &MeshSnapshot, cells: &[Cell]) -> Vec<PortMtls> {
    let mut out = Vec::new();
    for (key, proxy) in &snapshot.proxies {
        for port in &proxy.inbound {
            let effective = workload_mtls(
                set,
                &proxy.workload.namespace,
                &proxy.workload.labels,
                port.port,
            );
            let level = match (&effective.level, effective.port_level) {
                (_, true) => "port-level".to_owned(),
                (Some(level), false) => level.to_string(),
                (None, false) => "default".to_owned(),
            };
            let to = format!("{key}:{}", port.port);
            let plaintext_access = cells
                .iter()
                .find(|c| c.to == to && c.from.starts_with("plaintext:"))
                .map_or(Access::Denied, |c| c.access);
            out.push(PortMtls {
                port: to,
                protocol: port.protocol,
                mode: port.mtls,
                policy: port.mtls_policy.as_ref().map(PolicyRef::to_string),
                level,
                plaintext_accepted: port.mtls.refusal(false).is_none(),
                plaintext_access,
            });
        }
    }
    out
}

fn egress(set: &ConfigSet, snapshot: &MeshSnapshot) -> Vec<WorkloadEgress> {
    snapshot
        .proxies
        .iter()
        .map(|(key, proxy)| {
            let ns = &proxy.workload.namespace;
            let mut hosts: Vec<ExternalHost> = Vec::new();
            for se in &set.service_entries {
                let external = se.spec.location.unwrap_or_default() == Location::MeshExternal;
                if !external || !se.spec.visible_to(&se.meta.namespace, ns) {
                    continue;
                }
                for host in se.spec.hosts() {
                    let listeners: BTreeSet<String> = proxy
                        .outbound
                        .iter()
                        .filter(|l| &l.service == host)
                        .map(|l| l.bind.to_string())
                        .collect();
                    hosts.push(ExternalHost {
                        host: host.clone(),
                        ports: se
                            .spec
                            .ports()
                            .iter()
                            .filter_map(|p| u16::try_from(p.number).ok())
                            .collect(),
                        service_entry: se.key(),
                        listeners: listeners.into_iter().collect(),
                    });
                }
            }
            WorkloadEgress {
                workload: key.clone(),
                external_hosts: hosts,
                outbound_traffic_policy: proxy.outbound_traffic_policy.clone(),
                enforced: proxy.outbound_traffic_policy == "REGISTRY_ONLY",
                note: egress_note(&proxy.outbound_traffic_policy),
            }
        })
        .collect()
}

/// What the egress row means under `mode`: where Ward refuses other hosts, and what the offline
/// matrix cannot know (docs/access.md, "Egress").
fn egress_note(mode: &str) -> String {
    let paths = "Sidecar egress listeners, the HTTP_PROXY forward proxy, captured traffic \
                 (ward up --capture) and egress gateways";
    let caveat = "which traffic reaches the sidecar is a deployment fact this offline matrix \
                  cannot know: an app whose traffic is not captured can still dial addresses \
                  directly";
    if mode == "REGISTRY_ONLY" {
        format!(
            "outboundTrafficPolicy REGISTRY_ONLY: Ward refuses and records every other host on \
             the {paths}; {caveat}"
        )
    } else {
        format!(
            "outboundTrafficPolicy {mode}: other hosts are passed through \
             (PassthroughCluster), not refused, on the {paths}; {caveat}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> (ConfigSet, MeshSnapshot) {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(name);
        let set = crate::load_paths(&[dir]).unwrap();
        let snapshot = crate::translate(&set).unwrap();
        (set, snapshot)
    }

    #[test]
    fn fhir_cells_name_the_allowing_rules_and_the_token() {
        let (set, snapshot) = example("fhir");
        let m = access_matrix(&set, &snapshot);
        let cell = m
            .cell(
                "default/client",
                "fhir-server.datamesh.svc.cluster.local:8080",
            )
            .unwrap();
        assert_eq!(cell.access, Access::Conditional, "{cell:?}");
        assert!(cell.requires_token);
        assert_eq!(
            cell.policies,
            ["datamesh/medic-post", "datamesh/patient-get"]
        );
        let medic = &cell.allowed_by[0];
        assert_eq!(
            medic.conditions,
            [
                "requestPrincipals http://127.0.0.1:8180/realms/ward-dev/*",
                "methods POST, paths /fhir/*",
                "request.auth.claims[realm_access][roles] in Medic"
            ]
        );
        let example = cell.example_allowed.as_ref().unwrap();
        assert!(example.path.starts_with("/fhir/"), "{example:?}");
        assert!(example.claims.is_some());
        let db = m
            .cell(
                "datamesh/fhir-server",
                "postgres-db.datamesh.svc.cluster.local:5432",
            )
            .unwrap();
        assert_eq!(db.access, Access::Allowed);
        for (i, row) in m.sources.iter().enumerate() {
            for (j, column) in m.destinations.iter().enumerate() {
                let at = m.cell_at(i, j).unwrap();
                assert_eq!(
                    (at.from.as_str(), at.to.as_str()),
                    (row.from.as_str(), column.to.as_str())
                );
            }
        }
        assert!(m.cell_at(0, m.destinations.len()).is_none());
        assert_eq!(db.policies, ["datamesh/db-from-fhir-only"]);
        let other = m
            .cell(
                "default/client",
                "postgres-db.datamesh.svc.cluster.local:5432",
            )
            .unwrap();
        assert_eq!(other.access, Access::Denied);
        assert_eq!(other.condition, "no ALLOW rule matches");
    }

    #[test]
    fn rows_cover_workloads_namespaces_the_mesh_and_plaintext() {
        let (set, snapshot) = example("openemr-ossm3");
        let m = access_matrix(&set, &snapshot);
        let rows: Vec<(&str, &str)> = m
            .sources
            .iter()
            .map(|r| (r.from.as_str(), r.kind))
            .collect();
        assert_eq!(
            rows,
            [
                ("openemr/mariadb", "workload"),
                ("openemr/openemr", "workload"),
                ("openemr/other", "workload"),
                ("openemr/redis", "workload"),
                ("cluster.local/ns/openemr/sa/*", "namespace"),
                ("cluster.local/ns/*/sa/*", "mesh"),
                ("plaintext:0.0.0.0", "plaintext"),
            ]
        );
        let plain = m.cell("plaintext:0.0.0.0", "openemr/mariadb:3306").unwrap();
        assert_eq!(
            plain.refused_by.as_deref(),
            Some("peerAuthentication STRICT")
        );
        let port = m
            .ports
            .iter()
            .find(|p| p.port == "openemr/mariadb:3306")
            .unwrap();
        assert!(!port.plaintext_accepted);
        // REGISTRY_ONLY (Ward's default) is enforced on the paths the proxies see.
        assert!(m
            .egress
            .iter()
            .all(|e| e.enforced == (e.outbound_traffic_policy == "REGISTRY_ONLY")));
        assert!(m.egress.iter().any(|e| e.enforced));
    }

    #[test]
    fn probe_values_instantiate_patterns() {
        let p = |s: &str| path_instance(&PathMatch::parse(s).unwrap());
        assert_eq!(p("/fhir/*"), "/fhir/x");
        assert_eq!(p("*.js"), "/x.js");
        assert_eq!(p("/api/{*}/items/{**}"), "/api/x/items/x");
        assert_eq!(p("/exact"), "/exact");
        let mut t = TokenSketch::default();
        t.set_principal(&StringMatch::parse("https://idp/realm/*").unwrap());
        assert_eq!(t.iss.as_deref(), Some("https://idp/realm"));
        assert_eq!(t.sub, PROBE_SUBJECT);
        let mut claims = serde_json::Map::new();
        insert_claim(&mut claims, &["a".into(), "roles".into()], "x");
        insert_claim(&mut claims, &["a".into(), "roles".into()], "y");
        assert_eq!(
            serde_json::Value::Object(claims),
            serde_json::json!({"a": {"roles": ["x", "y"]}})
        );
    }

    #[test]
    fn external_hosts_follow_export_to_and_say_egress_is_not_enforced() {
        let dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let mut text: Vec<String> = names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        text.push(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: demo}\n\
             spec:\n  hosts: [api.example.com]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  exportTo: [\".\"]\n  ports: [{number: 443, name: tls, protocol: TLS}]\n"
                .to_owned(),
        );
        let set = crate::load_str("mesh.yaml", &text.join("---\n")).unwrap();
        let snapshot = crate::translate(&set).unwrap();
        let m = access_matrix(&set, &snapshot);
        let hosts = |w: &str| -> Vec<String> {
            m.egress
                .iter()
                .find(|e| e.workload == w)
                .unwrap()
                .external_hosts
                .iter()
                .map(|h| format!("{} {:?} {}", h.host, h.ports, h.service_entry))
                .collect()
        };
        assert_eq!(hosts("demo/web"), ["api.example.com [443] demo/api"]);
        assert_eq!(hosts("demo/echo"), ["api.example.com [443] demo/api"]);
        assert!(hosts("jobs/batch").is_empty());
        let web = m.egress.iter().find(|e| e.workload == "demo/web").unwrap();
        assert_eq!(web.enforced, web.outbound_traffic_policy == "REGISTRY_ONLY");
        assert!(
            web.note.starts_with(&format!(
                "outboundTrafficPolicy {}",
                web.outbound_traffic_policy
            )) && web.note.contains("deployment fact"),
            "{}",
            web.note
        );
        assert!(!web.note.contains("not enforced"), "{}", web.note);
        // No workload of the mesh is behind it: not a column.
        assert!(m
            .destinations
            .iter()
            .all(|d| !d.to.starts_with("api.example.com")));
    }
}
