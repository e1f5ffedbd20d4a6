//! Deciding one HTTP request (L7) against the policies of one workload.
//!
//! Same order as at L4 (the shared `Tally`: CUSTOM, then DENY, then ALLOW, AUDIT and dry-run
//! reported), but every field is evaluated: nothing is dropped as at L4. The connection fields
//! (`principals`, `ipBlocks`, `ports`, `source.*`, `destination.*`, `connection.sni` ...) are
//! matched exactly as by `evaluate_l4`, with the same fail-closed rule for a missing peer.
//!
//! HTTP fields (istio/api `security/v1beta1/authorization_policy.proto`):
//! - `methods`: exact, case-sensitive. `paths`: the normalized path ([`crate::path`]), Istio
//!   string match or `{*}`/`{**}` template ([`PathMatch::matches`]).
//! - `hosts`: "The match is case-insensitive", against the host as received. ALLOW rules follow
//!   Istio exactly: `a.com` does not match `a.com:80` (list `a.com:*` too). DENY, AUDIT and
//!   CUSTOM rules are DELIBERATELY STRICTER (ISTIO-SECURITY-2021-008): a positive value also
//!   matches the host without its port, and a `notHosts` value excludes only the host as
//!   received, so `DENY hosts: [a.com]` also denies `Host: a.com:80`. A host that is empty, or
//!   carries a trailing dot or whitespace or a control character (CVE-2019-18802) is not
//!   trusted: it never matches an ALLOW rule and always matches a DENY rule, `notHosts`
//!   included (the same rule as a missing peer).
//! - `request.headers[name]`: EVERY value of a repeated header is matched on its own: `values`
//!   needs one value matching, `notValues` needs no value matching. Never the last value only
//!   (CVE-2021-32777), never the values joined (CVE-2026-26308). An absent header has no value:
//!   `values` fails, `notValues` holds. A line is also a list (RFC 9110 §5.3: `x: a, b` is the
//!   same list as the lines `x: a` and `x: b`), so its comma-separated elements, trimmed of
//!   spaces and tabs, are candidates too WHERE THAT IS STRICTER: for `values` in DENY, AUDIT and
//!   CUSTOM rules (`DENY x-role: admin` denies `x-role: user, admin`) and for `notValues` in
//!   ALLOW rules. ALLOW `values` and DENY-like `notValues` compare whole lines only, so that
//!   `x-role: guest,admin` never passes as `admin` and never excuses a DENY. Istio compares the
//!   joined line as a whole; Ward is DELIBERATELY STRICTER ([`header_candidates`]).
//! - `request.auth.*` and `requestPrincipals` with NO valid token: the positive form never
//!   matches; the `not` form matches only in DENY/AUDIT/CUSTOM (so `DENY notRequestPrincipals:
//!   ["*"]` denies token-less requests), never in ALLOW (Istio would let `notRequestPrincipals`
//!   allow a token-less request; Ward fails closed, as for `notPrincipals` without mTLS). The
//!   positive form does not match in DENY either: no token is a known state (authentication
//!   passed with no principal: docs/istio-semantics.md, "No token"), not an unknown one, and
//!   denying every anonymous request because a DENY names one bad issuer would be wrong.
//! - Claims: `request.auth.claims[a][b]` walks nested objects. A list claim matches if any
//!   element matches (`notValues`: if none does); strings, numbers and booleans are compared in
//!   their JSON text form (`42`, `true`); objects and `null` have no value. The top-level
//!   `scope` and `permission` claims are split on spaces (Envoy jwt_authn
//!   `space_delimited_claims`, which Istio always sets for these two). With a valid token, a
//!   missing claim, presenter or audience list has no value (like an absent header).

use serde::{Deserialize, Serialize};

use crate::authz::{
    AuthzPolicy, AuthzRule, ConditionMatch, OperationMatch, SourceMatch, WorkloadPolicies,
};
use crate::decision::Decision;
use crate::index::Keys;
use crate::l4::{L4Attributes, Unknown};
use crate::matcher::{StringMatch, ValueMatch};

/// What is known about one HTTP request (plus its connection).
#[derive(Clone, Copy, Debug)]
pub struct HttpAttributes<'a> {
    /// The connection the request came on.
    pub l4: L4Attributes<'a>,
    /// The method, e.g. `GET` (gRPC: always `POST`).
    pub method: &'a str,
    /// `:authority` / `Host` as received (may include `:port`).
    pub host: &'a str,
    /// ALREADY normalized, without query ([`crate::path::NormalizedPath::path`]).
    pub path: &'a str,
    /// Every header line, lower-case names, repeated names repeated.
    pub headers: &'a [(String, String)],
    /// `None` = no valid token presented.
    pub auth: Option<&'a RequestAuth>,
}

/// The verified end-user identity from a JWT.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuth {
    /// `iss/sub` (docs/istio-semantics.md, "Request principal").
    pub principal: String,
    /// The token's `aud` values.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The `azp` claim.
    #[serde(default)]
    pub presenter: Option<String>,
    /// The payload object.
    #[serde(default)]
    pub claims: serde_json::Value,
}

/// A field over request attributes that may have no value at all (no token, for
/// `requestPrincipals` and `request.auth.*`). `values` = every value the attribute has.
/// See the module doc: absent → positive form fails, `not` form holds only when `unknown` is
/// [`Unknown::Match`].
fn auth_field<'v>(
    field: &ValueMatch<StringMatch>,
    values: Option<impl Iterator<Item = &'v str> + Clone>,
    unknown: Unknown,
) -> bool {
    match values {
        _ if field.is_empty() => true,
        Some(values) => multi_valued(field, values),
        None => field.values.is_empty() && unknown == Unknown::Match,
    }
}

/// A field over a multi-valued attribute: one value must match some `values` pattern, and no
/// value may match any `notValues` pattern. No value: `values` fails, `notValues` holds.
fn multi_valued<'v>(
    field: &ValueMatch<StringMatch>,
    values: impl Iterator<Item = &'v str> + Clone,
) -> bool {
    let mut forbidden = values.clone();
    let mut values = values;
    (field.values.is_empty() || values.any(|value| field.values.iter().any(|m| m.matches(value))))
        && !forbidden.any(|value| field.not_values.iter().any(|m| m.matches(value)))
}

/// The host as received and without `:port`, or `None` for a host Ward does not trust.
fn host_forms(host: &str) -> Option<(&str, &str)> {
    let without_port = match host.rsplit_once(':') {
        // `[v6]:port` or `name:port`; a bare IPv6 address has more than one ':'.
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (name.starts_with('[') || !name.contains(':')) =>
        {
            name
        }
        _ => host,
    };
    let untrusted = without_port.is_empty()
        || without_port.ends_with('.')
        || host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
    (!untrusted).then_some((host, without_port))
}

/// `hosts`/`notHosts`; see the module doc. ALLOW: Istio's exact comparison; DENY-like: a
/// positive value may also match the port-less host, a `not` value excludes only the host as
/// received, so the doubt always lands on "deny".
fn hosts_match(field: &ValueMatch<StringMatch>, host: &str, unknown: Unknown) -> bool {
    if field.is_empty() {
        return true;
    }
    let Some((as_received, without_port)) = host_forms(host) else {
        return unknown.field(field);
    };
    let (positive, exclusion): (&[&str], &[&str]) = match unknown {
        Unknown::NoMatch => (&[as_received], &[as_received, without_port]),
        Unknown::Match => (&[as_received, without_port], &[as_received]),
    };
    let any = |patterns: &[StringMatch], candidates: &[&str]| {
        patterns
            .iter()
            .any(|m| candidates.iter().any(|c| m.matches_ignore_ascii_case(c)))
    };
    (field.values.is_empty() || any(&field.values, positive)) && !any(&field.not_values, exclusion)
}

/// `request.headers[name]`: `lines` are the header's lines; see the module doc for which side
/// also sees the elements of a comma-separated line.
fn header_matches<'v>(
    field: &ValueMatch<StringMatch>,
    lines: impl Iterator<Item = &'v str> + Clone,
    unknown: Unknown,
) -> bool {
    // (split for `values`, split for `notValues`): split only where it makes the rule deny more.
    let (split_values, split_not_values) = match unknown {
        Unknown::Match => (true, false),
        Unknown::NoMatch => (false, true),
    };
    let any = |patterns: &[StringMatch], split: bool| {
        lines.clone().any(|line| {
            header_candidates(line, split).any(|c| patterns.iter().any(|m| m.matches(c)))
        })
    };
    (field.values.is_empty() || any(&field.values, split_values))
        && !any(&field.not_values, split_not_values)
}

/// The strings a header line is matched as: the line itself, then, when `split` and the line
/// holds a comma, each comma-separated element trimmed of optional whitespace (RFC 9110 §5.6.1
/// `#element`, OWS = SP / HTAB). Quoted strings are not parsed: a comma inside quotes splits too,
/// which only ever adds candidates on the side that denies.
pub(crate) fn header_candidates(line: &str, split: bool) -> impl Iterator<Item = &str> + Clone {
    let elements =
        (split && line.contains(',')).then(|| line.split(',').map(|e| e.trim_matches([' ', '\t'])));
    std::iter::once(line).chain(elements.into_iter().flatten())
}

/// Every value of header `name` (already lower-case on both sides).
fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + Clone {
    headers
        .iter()
        .filter(move |(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The values of claim `path` in `claims`: see the module doc.
fn claim_values(claims: &serde_json::Value, path: &[String]) -> Vec<String> {
    let mut node = claims;
    for key in path {
        match node.get(key) {
            Some(child) => node = child,
            None => return Vec::new(),
        }
    }
    let split = matches!(path, [name] if name == "scope" || name == "permission");
    let mut out = Vec::new();
    let mut push = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) if split => {
            out.extend(s.split(' ').filter(|p| !p.is_empty()).map(str::to_string))
        }
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Number(n) => out.push(n.to_string()),
        serde_json::Value::Bool(b) => out.push(b.to_string()),
        serde_json::Value::Null | serde_json::Value::Array(_) | serde_json::Value::Object(_) => {}
    };
    match node {
        serde_json::Value::Array(items) => items.iter().for_each(&mut push),
        other => push(other),
    }
    out
}

impl SourceMatch {
    pub(crate) fn matches_http(&self, req: &HttpAttributes<'_>, unknown: Unknown) -> bool {
        self.matches_connection(&req.l4, unknown)
            && auth_field(
                &self.request_principals,
                req.auth.map(|a| std::iter::once(a.principal.as_str())),
                unknown,
            )
    }
}

impl OperationMatch {
    pub(crate) fn matches_http(&self, req: &HttpAttributes<'_>, unknown: Unknown) -> bool {
        self.ports
            .matches_with(|port| *port == req.l4.destination_port)
            && self.methods.matches_with(|m| m.matches(req.method))
            && self.paths.matches_with(|p| p.matches(req.path))
            && hosts_match(&self.hosts, req.host, unknown)
    }
}

impl ConditionMatch {
    pub(crate) fn matches_http(&self, req: &HttpAttributes<'_>, unknown: Unknown) -> bool {
        let auth = req.auth;
        match self {
            ConditionMatch::RequestHeader { name, values } => {
                header_matches(values, header_values(req.headers, name), unknown)
            }
            ConditionMatch::RequestAuthPrincipal(f) => auth_field(
                f,
                auth.map(|a| std::iter::once(a.principal.as_str())),
                unknown,
            ),
            ConditionMatch::RequestAuthAudiences(f) => auth_field(
                f,
                auth.map(|a| a.audiences.iter().map(String::as_str)),
                unknown,
            ),
            ConditionMatch::RequestAuthPresenter(f) => {
                auth_field(f, auth.map(|a| a.presenter.as_deref().into_iter()), unknown)
            }
            ConditionMatch::RequestAuthClaim { claim, values } => {
                let found = auth.map(|a| claim_values(&a.claims, claim));
                auth_field(
                    values,
                    found.as_ref().map(|v| v.iter().map(String::as_str)),
                    unknown,
                )
            }
            ConditionMatch::SourceIp(_)
            | ConditionMatch::RemoteIp(_)
            | ConditionMatch::SourceNamespace(_)
            | ConditionMatch::SourcePrincipal(_)
            | ConditionMatch::SourceServiceAccount(_)
            | ConditionMatch::SourceTrustDomain(_)
            | ConditionMatch::DestinationIp(_)
            | ConditionMatch::DestinationPort(_)
            | ConditionMatch::ConnectionSni(_) => self.matches_l4(&req.l4, unknown),
        }
    }
}

impl AuthzRule {
    pub(crate) fn matches_http(&self, req: &HttpAttributes<'_>, unknown: Unknown) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches_http(req, unknown)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches_http(req, unknown)))
            && self.when.iter().all(|c| c.matches_http(req, unknown))
    }
}

impl AuthzPolicy {
    /// The index of the first rule that matches the HTTP request, if any (every field
    /// evaluated; missing identities and tokens fail closed as the module doc says).
    pub fn matching_rule_http(&self, req: &HttpAttributes<'_>) -> Option<usize> {
        let unknown = Unknown::for_action(self.action);
        self.rules
            .iter()
            .position(|rule| rule.matches_http(req, unknown))
    }
}

impl WorkloadPolicies {
    /// Decide one HTTP request (a port whose protocol is HTTP, HTTP2 or gRPC). Only the rules
    /// the index files under the peer's principal, the destination port and the request's
    /// header lines, plus the unindexed ones, are tried (module `index`); the decision is the
    /// one the linear walk of every rule gives.
    pub fn evaluate_http(&self, req: &HttpAttributes<'_>) -> Decision {
        let keys = Keys {
            principal: req.l4.peer.map(|p| p.principal.as_str()),
            port: req.l4.destination_port,
            headers: req.headers,
        };
        self.decide_indexed(&self.index.http, &keys, |policy, rule| {
            rule.matches_http(req, Unknown::for_action(policy.action))
        })
    }

    /// [`WorkloadPolicies::evaluate_http`] without the index: every rule of every policy, in
    /// order. The reference the indexed evaluation must agree with.
    #[cfg(test)]
    pub(crate) fn evaluate_http_linear(&self, req: &HttpAttributes<'_>) -> Decision {
        let mut tally = crate::decision::Tally::default();
        for policy in &self.policies {
            tally.record(policy, policy.matching_rule_http(req));
        }
        tally.decide()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::MeshContext;
    use crate::decision::PolicyRef;
    use crate::l4::Peer;
    use crate::spec::AuthorizationPolicySpec;

    fn policy(yaml: &str) -> AuthzPolicy {
        let spec: AuthorizationPolicySpec = serde_saphyr::from_str(yaml).unwrap();
        AuthzPolicy::compile(
            PolicyRef::new("foo", "p"),
            &spec,
            false,
            &MeshContext::default(),
        )
        .unwrap()
    }

    /// A request builder over owned data, so table rows stay short.
    struct Req {
        peer: Option<Peer>,
        port: u16,
        method: &'static str,
        host: &'static str,
        path: &'static str,
        headers: Vec<(String, String)>,
        auth: Option<RequestAuth>,
    }

    impl Default for Req {
        fn default() -> Self {
            Req {
                peer: Some(Peer::new("cluster.local", "client", "curl")),
                port: 8080,
                method: "GET",
                host: "web.example.com",
                path: "/",
                headers: Vec::new(),
                auth: None,
            }
        }
    }

    impl Req {
        fn matches(&self, p: &AuthzPolicy) -> bool {
            let req = HttpAttributes {
                l4: L4Attributes {
                    peer: self.peer.as_ref(),
                    source_ip: "10.0.0.5".parse().unwrap(),
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
            };
            p.matching_rule_http(&req).is_some()
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn token() -> RequestAuth {
        RequestAuth {
            principal: "https://idp.example/alice".into(),
            audiences: vec!["fhir".into(), "web".into()],
            presenter: Some("portal".into()),
            claims: serde_json::json!({
                "iss": "https://idp.example",
                "sub": "alice",
                "groups": ["patients", "beta"],
                "realm_access": {"roles": ["Patient"], "level": 3},
                "scope": "read:fhir  write:none",
                "permission": "a b",
                "nested": {"scope": "x y"},
                "admin": false,
                "age": 42,
                "nothing": null,
            }),
        }
    }

    #[test]
    fn operation_table() {
        let op = |fields: &str| format!("rules: [{{to: [{{operation: {{{fields}}}}}]}}]");
        let deny_op = |fields: &str| format!("action: DENY\n{}", op(fields));
        // (name, policy yaml, request, matches)
        let table: Vec<(&str, String, Req, bool)> = vec![
            ("method", op("methods: [GET]"), Req::default(), true),
            ("method case", op("methods: [get]"), Req::default(), false),
            ("notMethods", op("notMethods: [GET]"), Req::default(), false),
            (
                "method prefix",
                op("methods: [\"G*\"]"),
                Req::default(),
                true,
            ),
            (
                "path exact",
                op("paths: [/a]"),
                Req {
                    path: "/a",
                    ..Req::default()
                },
                true,
            ),
            (
                "path exact other",
                op("paths: [/a]"),
                Req {
                    path: "/a/",
                    ..Req::default()
                },
                false,
            ),
            (
                "path prefix",
                op("paths: [\"/a*\"]"),
                Req {
                    path: "/a/b",
                    ..Req::default()
                },
                true,
            ),
            (
                "path suffix",
                op("paths: [\"*.txt\"]"),
                Req {
                    path: "/x.txt",
                    ..Req::default()
                },
                true,
            ),
            (
                "path template",
                op("paths: [\"/a/{*}/c\"]"),
                Req {
                    path: "/a/b/c",
                    ..Req::default()
                },
                true,
            ),
            (
                "notPaths",
                op("notPaths: [\"/admin*\"]"),
                Req {
                    path: "/admin/x",
                    ..Req::default()
                },
                false,
            ),
            ("port", op("ports: [\"8080\"]"), Req::default(), true),
            (
                "notPorts",
                op("notPorts: [\"8080\"]"),
                Req::default(),
                false,
            ),
            (
                "host case-insensitive",
                op("hosts: [WEB.example.com]"),
                Req::default(),
                true,
            ),
            (
                "host suffix",
                op("hosts: [\"*.example.com\"]"),
                Req::default(),
                true,
            ),
            (
                "ALLOW host ignores port",
                op("hosts: [web.example.com]"),
                Req {
                    host: "web.example.com:8080",
                    ..Req::default()
                },
                false,
            ),
            (
                "ALLOW host:*",
                op("hosts: [\"web.example.com:*\"]"),
                Req {
                    host: "web.example.com:8080",
                    ..Req::default()
                },
                true,
            ),
            (
                "DENY host matches with port",
                deny_op("hosts: [web.example.com]"),
                Req {
                    host: "Web.Example.com:80",
                    ..Req::default()
                },
                true,
            ),
            (
                "DENY host matches ipv6 with port",
                deny_op("hosts: [\"[::1]\"]"),
                Req {
                    host: "[::1]:80",
                    ..Req::default()
                },
                true,
            ),
            (
                "DENY notHosts excludes as received only",
                deny_op("notHosts: [web.example.com]"),
                Req {
                    host: "web.example.com:80",
                    ..Req::default()
                },
                true,
            ),
            (
                "DENY notHosts excludes exact",
                deny_op("notHosts: [web.example.com]"),
                Req::default(),
                false,
            ),
            (
                "ALLOW notHosts excludes port-less too",
                op("notHosts: [web.example.com]"),
                Req {
                    host: "web.example.com:80",
                    ..Req::default()
                },
                false,
            ),
            (
                "ALLOW trailing dot",
                op("hosts: [\"web.example.com*\"]"),
                Req {
                    host: "web.example.com.",
                    ..Req::default()
                },
                false,
            ),
            (
                "DENY trailing dot",
                deny_op("hosts: [web.example.com]"),
                Req {
                    host: "web.example.com.",
                    ..Req::default()
                },
                true,
            ),
            (
                "DENY trailing dot with port",
                deny_op("hosts: [web.example.com]"),
                Req {
                    host: "web.example.com.:80",
                    ..Req::default()
                },
                true,
            ),
            (
                "ALLOW trailing space",
                op("hosts: [\"web.example.com*\"]"),
                Req {
                    host: "web.example.com ",
                    ..Req::default()
                },
                false,
            ),
            (
                "DENY notHosts trailing space",
                deny_op("notHosts: [\"web.example.com \"]"),
                Req {
                    host: "web.example.com ",
                    ..Req::default()
                },
                true,
            ),
            (
                "ALLOW notHosts empty host",
                op("notHosts: [evil.com]"),
                Req {
                    host: "",
                    ..Req::default()
                },
                false,
            ),
            (
                "fields AND",
                op("methods: [GET], paths: [/b]"),
                Req {
                    path: "/a",
                    ..Req::default()
                },
                false,
            ),
            (
                "operations OR",
                "rules: [{to: [{operation: {methods: [PUT]}}, {operation: {paths: [/]}}]}]".into(),
                Req::default(),
                true,
            ),
        ];
        for (name, yaml, req, want) in table {
            assert_eq!(req.matches(&policy(&yaml)), want, "{name}");
        }
    }

    #[test]
    fn request_principals_table() {
        let src = |fields: &str| format!("rules: [{{from: [{{source: {{{fields}}}}}]}}]");
        let with = |action: &str, fields: &str| format!("action: {action}\n{}", src(fields));
        let authed = || Req {
            auth: Some(token()),
            ..Req::default()
        };
        // (name, policy yaml, request, matches)
        let table: Vec<(&str, String, Req, bool)> = vec![
            (
                "any token",
                src("requestPrincipals: [\"*\"]"),
                authed(),
                true,
            ),
            (
                "any token, none",
                src("requestPrincipals: [\"*\"]"),
                Req::default(),
                false,
            ),
            (
                "exact",
                src("requestPrincipals: [\"https://idp.example/alice\"]"),
                authed(),
                true,
            ),
            (
                "issuer prefix",
                src("requestPrincipals: [\"https://idp.example/*\"]"),
                authed(),
                true,
            ),
            (
                "other",
                src("requestPrincipals: [\"x/y\"]"),
                authed(),
                false,
            ),
            (
                "ALLOW not, none",
                src("notRequestPrincipals: [\"x/y\"]"),
                Req::default(),
                false,
            ),
            (
                "ALLOW not, other token",
                src("notRequestPrincipals: [\"x/y\"]"),
                authed(),
                true,
            ),
            (
                "DENY not *, none",
                with("DENY", "notRequestPrincipals: [\"*\"]"),
                Req::default(),
                true,
            ),
            (
                "DENY not *, token",
                with("DENY", "notRequestPrincipals: [\"*\"]"),
                authed(),
                false,
            ),
            (
                "AUDIT not, none",
                with("AUDIT", "notRequestPrincipals: [\"*\"]"),
                Req::default(),
                true,
            ),
            (
                "DENY positive, none",
                with("DENY", "requestPrincipals: [\"x/y\"]"),
                Req::default(),
                false,
            ),
            (
                "DENY positive+not, none",
                with(
                    "DENY",
                    "requestPrincipals: [\"x/y\"], notRequestPrincipals: [\"a/b\"]",
                ),
                Req::default(),
                false,
            ),
            (
                "peer principal too",
                src(
                    "requestPrincipals: [\"*\"], principals: [\"cluster.local/ns/client/sa/curl\"]",
                ),
                authed(),
                true,
            ),
            (
                "plaintext peer ALLOW",
                src("requestPrincipals: [\"*\"], principals: [\"*\"]"),
                Req {
                    peer: None,
                    ..authed()
                },
                false,
            ),
            (
                "plaintext peer DENY",
                with("DENY", "namespaces: [other]"),
                Req {
                    peer: None,
                    ..Req::default()
                },
                true,
            ),
        ];
        for (name, yaml, req, want) in table {
            assert_eq!(req.matches(&policy(&yaml)), want, "{name}");
        }
    }

    #[test]
    fn when_table() {
        let when =
            |key: &str, values: &str| format!("rules: [{{when: [{{key: \"{key}\", {values}}}]}}]");
        let deny_when = |key: &str, values: &str| format!("action: DENY\n{}", when(key, values));
        let authed = || Req {
            auth: Some(token()),
            ..Req::default()
        };
        let with_headers = |pairs: &[(&str, &str)]| Req {
            headers: headers(pairs),
            ..Req::default()
        };
        // (name, policy yaml, request, matches)
        let table: Vec<(&str, String, Req, bool)> = vec![
            (
                "header",
                when("request.headers[x-role]", "values: [admin]"),
                with_headers(&[("x-role", "admin")]),
                true,
            ),
            (
                "header name case",
                when("request.headers[X-Role]", "values: [admin]"),
                with_headers(&[("x-role", "admin")]),
                true,
            ),
            (
                "header value case",
                when("request.headers[x-role]", "values: [admin]"),
                with_headers(&[("x-role", "Admin")]),
                false,
            ),
            (
                "repeated header, first",
                when("request.headers[x-role]", "values: [admin]"),
                with_headers(&[("x-role", "admin"), ("x-role", "user")]),
                true,
            ),
            (
                "repeated header, last",
                when("request.headers[x-role]", "values: [admin]"),
                with_headers(&[("x-role", "user"), ("x-role", "admin")]),
                true,
            ),
            (
                "never concatenated",
                when("request.headers[x-role]", "values: [\"user,admin\"]"),
                with_headers(&[("x-role", "user"), ("x-role", "admin")]),
                false,
            ),
            (
                "prefix per value",
                when("request.headers[x-role]", "values: [\"adm*\"]"),
                with_headers(&[("x-role", "user"), ("x-role", "admin")]),
                true,
            ),
            (
                "notValues any value",
                when("request.headers[x-role]", "notValues: [admin]"),
                with_headers(&[("x-role", "user"), ("x-role", "admin")]),
                false,
            ),
            (
                "notValues none",
                when("request.headers[x-role]", "notValues: [admin]"),
                with_headers(&[("x-role", "user")]),
                true,
            ),
            (
                "notValues absent",
                when("request.headers[x-role]", "notValues: [admin]"),
                Req::default(),
                true,
            ),
            (
                "values absent",
                when("request.headers[x-role]", "values: [\"*\"]"),
                Req::default(),
                false,
            ),
            (
                "presence empty value",
                when("request.headers[x-role]", "values: [\"*\"]"),
                with_headers(&[("x-role", "")]),
                false,
            ),
            (
                "DENY repeated header",
                deny_when("request.headers[x-role]", "values: [admin]"),
                with_headers(&[("x-role", "user"), ("x-role", "admin")]),
                true,
            ),
            // Comma-separated lines: see the module doc and docs/http.md's table.
            (
                "DENY comma-joined",
                deny_when("request.headers[x-role]", "values: [admin]"),
                with_headers(&[("x-role", "user,admin")]),
                true,
            ),
            (
                "DENY comma-joined, whitespace trimmed",
                deny_when("request.headers[x-role]", "values: [admin]"),
                with_headers(&[("x-role", "user , \tadmin\t")]),
                true,
            ),
            (
                "DENY comma-joined, forbidden first",
                deny_when("request.headers[x-role]", "values: [admin]"),
                with_headers(&[("x-role", "admin, user")]),
                true,
            ),
            (
                "DENY comma-joined, prefix per element",
                deny_when("request.headers[x-role]", "values: [\"adm*\"]"),
                with_headers(&[("x-role", "user, admin")]),
                true,
            ),
            (
                "DENY comma-joined, suffix per element",
                deny_when("request.headers[x-role]", "values: [\"*min\"]"),
                with_headers(&[("x-role", "admin, user")]),
                true,
            ),
            (
                "DENY comma-joined, an element must match whole",
                deny_when("request.headers[x-role]", "values: [admin]"),
                with_headers(&[("x-role", "user, administrator")]),
                false,
            ),
            (
                "DENY comma-joined, the whole line still matches",
                deny_when("request.headers[x-role]", "values: [\"user, admin\"]"),
                with_headers(&[("x-role", "user, admin")]),
                true,
            ),
            (
                "AUDIT comma-joined",
                "action: AUDIT\nrules: [{when: [{key: \"request.headers[x-role]\", values: [admin]}]}]"
                    .to_string(),
                with_headers(&[("x-role", "user,admin")]),
                true,
            ),
            (
                "DENY notValues, comma-joined line is not the value",
                deny_when("request.headers[x-role]", "notValues: [admin]"),
                with_headers(&[("x-role", "user,admin")]),
                true,
            ),
            (
                "DENY notValues, the whole line",
                deny_when("request.headers[x-role]", "notValues: [admin]"),
                with_headers(&[("x-role", "admin")]),
                false,
            ),
            (
                "ALLOW comma-joined is not split",
                when("request.headers[x-role]", "values: [admin]"),
                with_headers(&[("x-role", "guest,admin")]),
                false,
            ),
            (
                "ALLOW comma-joined, whole line",
                when("request.headers[x-role]", "values: [\"guest,admin\"]"),
                with_headers(&[("x-role", "guest,admin")]),
                true,
            ),
            (
                "ALLOW notValues, comma-joined element",
                when("request.headers[x-user]", "notValues: [banned]"),
                with_headers(&[("x-user", "alice, banned")]),
                false,
            ),
            (
                "ALLOW notValues, comma-joined prefix element",
                when("request.headers[x-user]", "notValues: [\"evil*\"]"),
                with_headers(&[("x-user", "alice,evil-bob")]),
                false,
            ),
            (
                "ALLOW notValues, comma-joined, none excluded",
                when("request.headers[x-user]", "notValues: [banned]"),
                with_headers(&[("x-user", "alice, carol")]),
                true,
            ),
            (
                "auth.principal",
                when("request.auth.principal", "values: [\"*/alice\"]"),
                authed(),
                true,
            ),
            (
                "auth.principal none",
                when("request.auth.principal", "values: [\"*\"]"),
                Req::default(),
                false,
            ),
            (
                "auth.principal not, none, ALLOW",
                when("request.auth.principal", "notValues: [x]"),
                Req::default(),
                false,
            ),
            (
                "auth.principal not, none, DENY",
                deny_when("request.auth.principal", "notValues: [x]"),
                Req::default(),
                true,
            ),
            (
                "auth.principal positive, none, DENY",
                deny_when("request.auth.principal", "values: [x]"),
                Req::default(),
                false,
            ),
            (
                "audiences any",
                when("request.auth.audiences", "values: [web]"),
                authed(),
                true,
            ),
            (
                "audiences not any",
                when("request.auth.audiences", "notValues: [web]"),
                authed(),
                false,
            ),
            (
                "audiences miss",
                when("request.auth.audiences", "values: [api]"),
                authed(),
                false,
            ),
            (
                "presenter",
                when("request.auth.presenter", "values: [portal]"),
                authed(),
                true,
            ),
            (
                "presenter missing",
                when("request.auth.presenter", "values: [\"*\"]"),
                Req {
                    auth: Some(RequestAuth {
                        presenter: None,
                        ..token()
                    }),
                    ..Req::default()
                },
                false,
            ),
            (
                "claim string",
                when("request.auth.claims[sub]", "values: [alice]"),
                authed(),
                true,
            ),
            (
                "claim list any",
                when("request.auth.claims[groups]", "values: [beta]"),
                authed(),
                true,
            ),
            (
                "claim list notValues",
                when("request.auth.claims[groups]", "notValues: [beta]"),
                authed(),
                false,
            ),
            (
                "claim nested list",
                when(
                    "request.auth.claims[realm_access][roles]",
                    "values: [Patient]",
                ),
                authed(),
                true,
            ),
            (
                "claim nested miss",
                when(
                    "request.auth.claims[realm_access][roles]",
                    "values: [Medic]",
                ),
                authed(),
                false,
            ),
            (
                "claim nested number",
                when(
                    "request.auth.claims[realm_access][level]",
                    "values: [\"3\"]",
                ),
                authed(),
                true,
            ),
            (
                "claim number",
                when("request.auth.claims[age]", "values: [\"42\"]"),
                authed(),
                true,
            ),
            (
                "claim bool",
                when("request.auth.claims[admin]", "values: [\"false\"]"),
                authed(),
                true,
            ),
            (
                "claim null",
                when("request.auth.claims[nothing]", "values: [\"*\"]"),
                authed(),
                false,
            ),
            (
                "claim object",
                when("request.auth.claims[realm_access]", "values: [\"*\"]"),
                authed(),
                false,
            ),
            (
                "claim missing",
                when("request.auth.claims[nope]", "values: [\"*\"]"),
                authed(),
                false,
            ),
            (
                "claim missing notValues",
                when("request.auth.claims[nope]", "notValues: [x]"),
                authed(),
                true,
            ),
            (
                "claim path through a string",
                when("request.auth.claims[sub][x]", "values: [\"*\"]"),
                authed(),
                false,
            ),
            (
                "scope split",
                when("request.auth.claims[scope]", "values: [\"read:fhir\"]"),
                authed(),
                true,
            ),
            (
                "scope never whole",
                when("request.auth.claims[scope]", "values: [\"read:fhir*\"]"),
                Req {
                    auth: Some(RequestAuth {
                        claims: serde_json::json!({"scope": "x read:fhirz"}),
                        ..token()
                    }),
                    ..Req::default()
                },
                true,
            ),
            (
                "scope split, whole string gone",
                when(
                    "request.auth.claims[scope]",
                    "values: [\"read:fhir  write:none\"]",
                ),
                authed(),
                false,
            ),
            (
                "permission split",
                when("request.auth.claims[permission]", "values: [b]"),
                authed(),
                true,
            ),
            (
                "nested scope not split",
                when("request.auth.claims[nested][scope]", "values: [x]"),
                authed(),
                false,
            ),
            (
                "nested scope whole",
                when("request.auth.claims[nested][scope]", "values: [\"x y\"]"),
                authed(),
                true,
            ),
            (
                "claim, no token, DENY not",
                deny_when("request.auth.claims[groups]", "notValues: [admin]"),
                Req::default(),
                true,
            ),
            (
                "claim, no token, ALLOW not",
                when("request.auth.claims[groups]", "notValues: [admin]"),
                Req::default(),
                false,
            ),
            (
                "source.ip",
                when("source.ip", "values: [10.0.0.0/8]"),
                Req::default(),
                true,
            ),
            (
                "remote.ip",
                when("remote.ip", "values: [192.0.2.7]"),
                Req::default(),
                true,
            ),
            (
                "source.namespace",
                when("source.namespace", "values: [client]"),
                Req::default(),
                true,
            ),
            (
                "source.principal",
                when(
                    "source.principal",
                    "values: [\"cluster.local/ns/client/sa/curl\"]",
                ),
                Req::default(),
                true,
            ),
            (
                "source.namespace plaintext ALLOW",
                when("source.namespace", "notValues: [x]"),
                Req {
                    peer: None,
                    ..Req::default()
                },
                false,
            ),
            (
                "destination.ip",
                when("destination.ip", "values: [10.0.0.9]"),
                Req::default(),
                true,
            ),
            (
                "destination.port",
                when("destination.port", "notValues: [\"8080\"]"),
                Req::default(),
                false,
            ),
            (
                "connection.sni absent",
                when("connection.sni", "values: [\"*\"]"),
                Req::default(),
                false,
            ),
        ];
        for (name, yaml, req, want) in table {
            assert_eq!(req.matches(&policy(&yaml)), want, "{name}");
        }
    }

    #[test]
    fn header_candidates_table() {
        let table: &[(&str, bool, &[&str])] = &[
            ("admin", true, &["admin"]),
            ("user,admin", false, &["user,admin"]),
            ("user,admin", true, &["user,admin", "user", "admin"]),
            (
                "user , \tadmin\t",
                true,
                &["user , \tadmin\t", "user", "admin"],
            ),
            ("a,,b,", true, &["a,,b,", "a", "", "b", ""]),
            ("\"x,y\"", true, &["\"x,y\"", "\"x", "y\""]),
            ("", true, &[""]),
        ];
        for (line, split, want) in table {
            let got: Vec<&str> = header_candidates(line, *split).collect();
            assert_eq!(got, *want, "{line:?} split={split}");
        }
    }

    #[test]
    fn host_forms_table() {
        let table: &[(&str, Option<(&str, &str)>)] = &[
            ("a.com", Some(("a.com", "a.com"))),
            ("a.com:80", Some(("a.com:80", "a.com"))),
            ("a.com:", Some(("a.com:", "a.com:"))),
            ("a.com:x", Some(("a.com:x", "a.com:x"))),
            ("[::1]:80", Some(("[::1]:80", "[::1]"))),
            ("::1", Some(("::1", "::1"))),
            ("a.com.", None),
            ("a.com.:80", None),
            ("a.com ", None),
            (" a.com", None),
            ("a.com\t:80", None),
            (":80", None),
            ("", None),
        ];
        for (host, want) in table {
            assert_eq!(host_forms(host), *want, "{host:?}");
        }
    }

    #[test]
    fn evaluate_http_uses_the_shared_order() {
        let named = |name: &str, yaml: &str| {
            let spec: AuthorizationPolicySpec = serde_saphyr::from_str(yaml).unwrap();
            AuthzPolicy::compile(
                PolicyRef::new("app", name),
                &spec,
                false,
                &MeshContext::default(),
            )
            .unwrap()
        };
        let policies = WorkloadPolicies::new(vec![
            named(
                "allow-get",
                "rules: [{to: [{operation: {methods: [GET]}}]}]",
            ),
            named(
                "deny-admin",
                "action: DENY\nrules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]",
            ),
            named("audit-all", "action: AUDIT\nrules: [{}]"),
        ]);
        let decide = |method: &'static str, path: &'static str| {
            let req = Req {
                method,
                path,
                ..Req::default()
            };
            policies.evaluate_http(&HttpAttributes {
                l4: L4Attributes {
                    peer: req.peer.as_ref(),
                    source_ip: "10.0.0.5".parse().unwrap(),
                    remote_ip: "10.0.0.5".parse().unwrap(),
                    destination_ip: "10.0.0.9".parse().unwrap(),
                    destination_port: req.port,
                    sni: None,
                },
                method: req.method,
                host: req.host,
                path: req.path,
                headers: &req.headers,
                auth: None,
            })
        };
        let table = [
            ("GET", "/", "", true),
            (
                "POST",
                "/",
                "rbac_access_denied_matched_policy[none]",
                false,
            ),
            (
                "GET",
                "/admin/x",
                "rbac_access_denied_matched_policy[ns[app]-policy[deny-admin]-rule[0]]",
                false,
            ),
        ];
        for (method, path, detail, allowed) in table {
            let decision = decide(method, path);
            assert_eq!(decision.is_allowed(), allowed, "{method} {path}");
            assert_eq!(decision.response_detail(), detail, "{method} {path}");
            assert_eq!(decision.audit().len(), 1, "{method} {path}");
        }
    }
}
