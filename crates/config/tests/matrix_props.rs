//! Property tests of `ward access-matrix` and `ward diff` against `ward check`, on generated
//! small configs (a few workloads on HTTP or TCP ports, a service each, PeerAuthentications,
//! RequestAuthentications, ALLOW and DENY policies with principals, namespaces, methods, paths,
//! request principals and a `roles` claim):
//! - a cell that is allowed or conditional has an example request that `check` allows; a
//!   conditional cell has one that `check` refuses; an allowed cell is allowed by `check` for
//!   every probe this test tries, a denied cell refused for every one;
//! - the diff of a config with itself is empty;
//! - the pairs `diff` reports opened are exactly the cells denied before and reachable after,
//!   and those it reports closed the reverse (both configs decided with the same rows and
//!   probes, as the diff decides them); and, for the cells both configs' own matrices have,
//!   opened exactly when the own matrices say denied before and reachable after.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fmt::Write as _;

use proptest::prelude::*;
use ward_config::check::{check, Query};
use ward_config::matrix::diff::{diff, matrices, Side};
use ward_config::matrix::{access_matrix, Access, Cell};
use ward_config::{load_str, translate, ConfigSet, MeshSnapshot};

const NAMESPACES: [&str; 2] = ["a", "b"];
const ACCOUNTS: [&str; 2] = ["s1", "s2"];
const METHODS: [&str; 3] = ["GET", "POST", "DELETE"];
const PATHS: [&str; 3] = ["/api", "/api/*", "/admin"];
const MODES: [&str; 3] = ["STRICT", "PERMISSIVE", "DISABLE"];

const ISSUER: &str = "https://idp.test";
const REQUEST_PRINCIPALS: [&str; 2] = ["*", "https://idp.test/alice"];
const ROLES: [&str; 2] = ["admin", "user"];

/// The methods, paths and tokens this test probes with (some named by no policy).
const PROBE_METHODS: [&str; 4] = ["GET", "POST", "DELETE", "PATCH"];
const PROBE_PATHS: [&str; 5] = ["/", "/api", "/api/x", "/admin", "/other"];
const PROBE_TOKENS: [Option<(&str, &str)>; 3] =
    [None, Some(("alice", "admin")), Some(("bob", "user"))];

#[derive(Clone, Debug)]
struct Workload {
    ns: usize,
    sa: usize,
    http: bool,
}

#[derive(Clone, Debug)]
struct Rule {
    principal: Option<(usize, usize)>,
    namespace: Option<usize>,
    methods: Vec<usize>,
    not_methods: Vec<usize>,
    paths: Vec<usize>,
    request_principal: Option<usize>,
    role: Option<usize>,
}

#[derive(Clone, Debug)]
struct Policy {
    ns: usize,
    selector: Option<usize>,
    deny: bool,
    rules: Vec<Rule>,
}

#[derive(Clone, Debug)]
struct Security {
    /// `(scope, mode)`: scope 0 the mesh, 1.. a namespace.
    peer_authn: Vec<(usize, usize)>,
    /// The namespaces with a RequestAuthentication (issuer [`ISSUER`]).
    jwt: Vec<usize>,
    policies: Vec<Policy>,
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        proptest::option::of((0..2usize, 0..2usize)),
        proptest::option::of(0..2usize),
        proptest::collection::vec(0..3usize, 0..=2),
        proptest::collection::vec(0..3usize, 0..=1),
        proptest::collection::vec(0..3usize, 0..=2),
        proptest::option::of(0..2usize),
        proptest::option::of(0..2usize),
    )
        .prop_map(
            |(principal, namespace, methods, not_methods, paths, request_principal, role)| Rule {
                principal,
                namespace,
                methods,
                not_methods,
                paths,
                request_principal,
                role,
            },
        )
}

fn policy(workloads: usize) -> impl Strategy<Value = Policy> {
    (
        0..2usize,
        proptest::option::of(0..workloads),
        any::<bool>(),
        proptest::collection::vec(rule(), 0..=2),
    )
        .prop_map(|(ns, selector, deny, rules)| Policy {
            ns,
            selector,
            deny,
            rules,
        })
}

fn security(workloads: usize) -> impl Strategy<Value = Security> {
    (
        proptest::collection::btree_map(0..3usize, 0..3usize, 0..=2),
        proptest::collection::vec(policy(workloads), 0..=3),
        proptest::collection::btree_set(0..2usize, 0..=2),
    )
        .prop_map(|(pa, policies, jwt)| Security {
            peer_authn: pa.into_iter().collect(),
            policies,
            jwt: jwt.into_iter().collect(),
        })
}

fn workloads() -> impl Strategy<Value = Vec<Workload>> {
    proptest::collection::vec(
        (0..2usize, 0..2usize, any::<bool>()).prop_map(|(ns, sa, http)| Workload { ns, sa, http }),
        1..=3,
    )
}

fn port(w: &Workload) -> u16 {
    if w.http {
        8080
    } else {
        9000
    }
}

fn yaml(workloads: &[Workload], security: &Security) -> String {
    let mut out = String::new();
    for (i, w) in workloads.iter().enumerate() {
        let ns = NAMESPACES[w.ns];
        let (proto, name) = if w.http {
            ("HTTP", "http-api")
        } else {
            ("TCP", "tcp-api")
        };
        let port = port(w);
        let _ = write!(
            out,
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: w{i}, namespace: {ns}}}\n\
             spec: {{address: 127.0.20.{}, serviceAccount: {}, labels: {{app: w{i}}}}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: w{i}, namespace: {ns}}}\n\
             spec:\n  workloadSelector: {{labels: {{app: w{i}}}}}\n  ingress:\n  - port: {{number: {port}, protocol: {proto}, name: {name}}}\n    defaultEndpoint: 127.0.0.1:{}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: w{i}, namespace: {ns}}}\n\
             spec:\n  hosts: [w{i}.{ns}.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: {port}, name: {name}, protocol: {proto}}}]\n  workloadSelector: {{labels: {{app: w{i}}}}}\n---\n",
            i + 1,
            ACCOUNTS[w.sa],
            19000 + i,
        );
    }
    for (scope, mode) in &security.peer_authn {
        let ns = match scope {
            0 => "istio-system",
            n => NAMESPACES[(n - 1) % 2],
        };
        let _ = write!(
            out,
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {ns}}}\n\
             spec: {{mtls: {{mode: {}}}}}\n---\n",
            MODES[*mode]
        );
    }
    for ns in &security.jwt {
        let _ = write!(
            out,
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: {}}}\n\
             spec:\n  jwtRules: [{{issuer: \"{ISSUER}\", jwksUri: \"{ISSUER}/jwks\"}}]\n---\n",
            NAMESPACES[*ns]
        );
    }
    for (j, p) in security.policies.iter().enumerate() {
        let ns = NAMESPACES[p.ns];
        let _ = write!(
            out,
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{j}, namespace: {ns}}}\nspec:\n  action: {}\n",
            if p.deny { "DENY" } else { "ALLOW" }
        );
        if let Some(w) = p.selector {
            let _ = writeln!(out, "  selector: {{matchLabels: {{app: w{w}}}}}");
        }
        if p.rules.is_empty() {
            out.push_str("  rules: []\n");
        } else {
            out.push_str("  rules:\n");
        }
        for r in &p.rules {
            let _ = writeln!(out, "  - {}", rule_yaml(r));
        }
        out.push_str("---\n");
    }
    out
}

fn list(values: &[usize], names: &[&str]) -> String {
    let set: BTreeSet<&str> = values.iter().map(|i| names[*i]).collect();
    let quoted: Vec<String> = set.iter().map(|v| format!("\"{v}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn rule_yaml(r: &Rule) -> String {
    let mut source = Vec::new();
    if let Some((ns, sa)) = r.principal {
        source.push(format!(
            "principals: [\"cluster.local/ns/{}/sa/{}\"]",
            NAMESPACES[ns], ACCOUNTS[sa]
        ));
    }
    if let Some(ns) = r.namespace {
        source.push(format!("namespaces: [{}]", NAMESPACES[ns]));
    }
    if let Some(rp) = r.request_principal {
        source.push(format!(
            "requestPrincipals: [\"{}\"]",
            REQUEST_PRINCIPALS[rp]
        ));
    }
    let mut operation = Vec::new();
    if !r.methods.is_empty() {
        operation.push(format!("methods: {}", list(&r.methods, &METHODS)));
    }
    if !r.not_methods.is_empty() {
        operation.push(format!("notMethods: {}", list(&r.not_methods, &METHODS)));
    }
    if !r.paths.is_empty() {
        operation.push(format!("paths: {}", list(&r.paths, &PATHS)));
    }
    let mut parts = Vec::new();
    if !source.is_empty() {
        parts.push(format!("from: [{{source: {{{}}}}}]", source.join(", ")));
    }
    if !operation.is_empty() {
        parts.push(format!("to: [{{operation: {{{}}}}}]", operation.join(", ")));
    }
    if let Some(role) = r.role {
        parts.push(format!(
            "when: [{{key: \"request.auth.claims[roles]\", values: [{}]}}]",
            ROLES[role]
        ));
    }
    format!("{{{}}}", parts.join(", "))
}

fn load(text: &str) -> (ConfigSet, MeshSnapshot) {
    let set = load_str("generated.yaml", text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let snapshot = translate(&set).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (set, snapshot)
}

fn query(
    cell: &Cell,
    method: &str,
    path: &str,
    headers: &[String],
    claims: Option<&serde_json::Value>,
) -> Query {
    Query {
        from: cell.from.clone(),
        to: cell.to.clone(),
        method: Some(method.to_owned()),
        path: Some(path.to_owned()),
        headers: headers.to_vec(),
        claims: claims.map(ToString::to_string),
    }
}

/// A token of [`ISSUER`] for `sub` with `roles: [role]`.
fn token(sub: &str, role: &str) -> serde_json::Value {
    serde_json::json!({"iss": ISSUER, "sub": sub, "roles": [role]})
}

fn allowed(set: &ConfigSet, snapshot: &MeshSnapshot, q: &Query) -> bool {
    check(set, snapshot, q)
        .unwrap_or_else(|e| panic!("{e}"))
        .allowed()
}

fn agrees_with_check(set: &ConfigSet, snapshot: &MeshSnapshot, cell: &Cell, text: &str) {
    let http = cell.example_allowed.is_some() || cell.example_denied.is_some();
    match cell.access {
        Access::Allowed | Access::Conditional => {
            let q = match &cell.example_allowed {
                Some(e) => query(cell, &e.method, &e.path, &e.headers, e.claims.as_ref()),
                None => query(cell, "GET", "/", &[], None),
            };
            assert!(
                allowed(set, snapshot, &q),
                "{cell:#?}: check refuses the example\n{text}"
            );
        }
        Access::Denied => {}
    }
    if cell.access == Access::Conditional {
        let e = cell.example_denied.as_ref().unwrap();
        let q = query(cell, &e.method, &e.path, &e.headers, e.claims.as_ref());
        assert!(
            !allowed(set, snapshot, &q),
            "{cell:#?}: check allows the refused example\n{text}"
        );
    }
    if http && cell.access != Access::Denied && cell.denied_by.is_empty() {
        for rule in &cell.allowed_by {
            let (method, path, claims) = request_satisfying(&rule.conditions);
            let q = query(cell, &method, &path, &[], claims.as_ref());
            assert!(
                allowed(set, snapshot, &q),
                "{cell:#?}: check refuses {method} {path}, which satisfies {}\n{text}",
                rule.text()
            );
        }
    }
    if cell.access == Access::Conditional || (!http && cell.access == Access::Allowed) {
        return;
    }
    let want = cell.access == Access::Allowed;
    for method in PROBE_METHODS {
        for path in PROBE_PATHS {
            for t in PROBE_TOKENS {
                let claims = t.map(|(sub, role)| token(sub, role));
                let q = query(cell, method, path, &[], claims.as_ref());
                assert_eq!(
                    allowed(set, snapshot, &q),
                    want,
                    "{cell:#?}: {method} {path} {claims:?}\n{text}"
                );
            }
        }
    }
}

/// A method, a path and a token that satisfy a rule's summary (`methods A | B`, `not methods
/// C`, `paths /x | /y/*`, `requestPrincipals P`, `request.auth.claims[roles] in R`; this
/// generator writes one source and one operation per rule).
fn request_satisfying(conditions: &[String]) -> (String, String, Option<serde_json::Value>) {
    let mut methods = Vec::new();
    let mut not_methods = Vec::new();
    let mut paths = Vec::new();
    let mut claims: Option<serde_json::Value> = None;
    for part in conditions.iter().flat_map(|c| c.split(", ")) {
        if let Some(principal) = part.strip_prefix("requestPrincipals ") {
            let sub = principal.rsplit_once('/').map_or("carol", |(_, sub)| sub);
            let t = claims.get_or_insert_with(|| token(sub, "none"));
            t["sub"] = sub.into();
            continue;
        }
        if let Some(role) = part.strip_prefix("request.auth.claims[roles] in ") {
            let t = claims.get_or_insert_with(|| token("carol", role));
            t["roles"] = serde_json::json!([role]);
            continue;
        }
        let (negated, part) = match part.strip_prefix("not ") {
            Some(rest) => (true, rest),
            None => (false, part),
        };
        let Some((field, values)) = part.split_once(' ') else {
            continue;
        };
        let values: Vec<String> = values.split(" | ").map(str::to_owned).collect();
        match (field, negated) {
            ("methods", false) => methods = values,
            ("methods", true) => not_methods = values,
            ("paths", false) => paths = values,
            other => panic!("unexpected condition {other:?} in {conditions:?}"),
        }
    }
    let method = methods
        .iter()
        .find(|m| !not_methods.contains(m))
        .cloned()
        .or_else(|| {
            PROBE_METHODS
                .iter()
                .find(|m| !not_methods.iter().any(|n| n == *m))
                .map(|m| (*m).to_owned())
        })
        .unwrap();
    let path = paths
        .first()
        .map_or_else(|| "/other".to_owned(), |p| p.replace('*', "x"));
    (method, path, claims)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn every_cell_agrees_with_check(
        (ws, sec) in workloads().prop_flat_map(|ws| { let n = ws.len(); (Just(ws), security(n)) })
    ) {
        let text = yaml(&ws, &sec);
        let (set, snapshot) = load(&text);
        let m = access_matrix(&set, &snapshot);
        prop_assert_eq!(m.cells.len(), m.sources.len() * m.destinations.len());
        for cell in &m.cells {
            agrees_with_check(&set, &snapshot, cell, &text);
        }
    }

    #[test]
    fn diff_of_a_config_with_itself_is_empty(
        (ws, sec) in workloads().prop_flat_map(|ws| { let n = ws.len(); (Just(ws), security(n)) })
    ) {
        let text = yaml(&ws, &sec);
        let (set, snapshot) = load(&text);
        let side = Side { set: &set, snapshot: &snapshot };
        let d = diff(side, side);
        prop_assert!(d.is_empty(), "{:#?}\n{}", d, text);
    }

    #[test]
    fn opened_pairs_are_the_cells_denied_before_and_reachable_after(
        (ws, a, b) in workloads().prop_flat_map(|ws| {
            let n = ws.len();
            (Just(ws), security(n), security(n))
        })
    ) {
        let (text_a, text_b) = (yaml(&ws, &a), yaml(&ws, &b));
        let (set_a, snap_a) = load(&text_a);
        let (set_b, snap_b) = load(&text_b);
        let old = Side { set: &set_a, snapshot: &snap_a };
        let new = Side { set: &set_b, snapshot: &snap_b };
        let d = diff(old, new);
        let (ma, mb) = matrices(old, new);
        let mut opened = BTreeSet::new();
        let mut closed = BTreeSet::new();
        for ca in &ma.cells {
            let cb = mb.cell(&ca.from, &ca.to).unwrap();
            let key = (ca.from.clone(), ca.to.clone());
            match (ca.access == Access::Denied, cb.access == Access::Denied) {
                (true, false) => { opened.insert(key); }
                (false, true) => { closed.insert(key); }
                _ => {}
            }
        }
        let got_opened: BTreeSet<(String, String)> =
            d.opened.iter().map(|c| (c.from.clone(), c.to.clone())).collect();
        let got_closed: BTreeSet<(String, String)> =
            d.closed.iter().map(|c| (c.from.clone(), c.to.clone())).collect();
        prop_assert_eq!(&got_opened, &opened);
        prop_assert_eq!(got_closed, closed);
        // The same pairs from each config's own matrix, where both have the cell.
        let (own_a, own_b) = (access_matrix(&set_a, &snap_a), access_matrix(&set_b, &snap_b));
        for ca in &own_a.cells {
            let Some(cb) = own_b.cell(&ca.from, &ca.to) else { continue };
            let key = (ca.from.clone(), ca.to.clone());
            let own_opened = ca.access == Access::Denied && cb.access != Access::Denied;
            prop_assert_eq!(
                own_opened,
                got_opened.contains(&key),
                "{:?}: {:?} -> {:?}\n{}\n{}", key, ca.access, cb.access, text_a, text_b
            );
        }
    }
}
