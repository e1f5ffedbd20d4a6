//! Whether a PERMISSIVE port would let some plaintext client in, as the proxy decides it.
//!
//! WARD0208 (docs/analyze.md) offers a PeerAuthentication that makes a port PERMISSIVE when
//! the config has none: that helps only if a plaintext client (no peer identity) can then pass
//! the port's AuthorizationPolicies. The question is answered by the policy engine the proxy
//! uses (`ward_policy`, L4 evaluation with no peer, as `crates/proxy/src/inbound.rs` builds it
//! for a plaintext connection), over the policies rewritten so that what the analyzer cannot
//! know about the client never makes it look denied:
//! - the client's address (`ipBlocks`, `remoteIpBlocks`, `source.ip`, `remote.ip`) is unknown;
//! - on an HTTP port, the request (`hosts`, `methods`, `paths`, headers) is unknown, and so is
//!   its JWT (`requestPrincipals`, `request.auth.*`): a plaintext client can send one.
//!
//! An ALLOW rule has those fields removed (it then matches at least every client it could
//! match); a DENY or CUSTOM rule gives up every source, operation or rule that depends on them
//! (it then denies at most the clients it surely denies). Identity fields (`principals`,
//! `namespaces`, `serviceAccounts`, `trustDomains` and their `source.*` conditions) stay: the
//! engine decides them for a peer-less connection as the proxy does.

use std::net::{IpAddr, Ipv4Addr};

use ward_policy::spec::Action;
use ward_policy::{
    AuthzPolicy, AuthzRule, ConditionMatch, L4Attributes, OperationMatch, SourceMatch,
    WorkloadPolicies,
};

/// Whether some plaintext connection to `port` of the workload at `address` could be allowed
/// by `policies` (the workload's, in evaluation order) once the port accepts plaintext.
/// `http`: the port's protocol is HTTP (decided per request).
pub(crate) fn may_allow_plaintext(
    policies: &WorkloadPolicies,
    address: IpAddr,
    port: u16,
    http: bool,
) -> bool {
    let widened: Vec<AuthzPolicy> = policies
        .policies()
        .iter()
        .map(|p| for_unknown_client(p, http))
        .collect();
    // Any source address: no rule left depends on it.
    let unknown = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let connection = L4Attributes {
        peer: None,
        source_ip: unknown,
        remote_ip: unknown,
        destination_ip: address,
        destination_port: port,
        sni: None,
    };
    WorkloadPolicies::new(widened)
        .evaluate_l4(&connection)
        .is_allowed()
}

/// `policy` with what depends on the unknown client widened (ALLOW) or given up (DENY,
/// CUSTOM); AUDIT policies decide nothing and stay as they are.
fn for_unknown_client(policy: &AuthzPolicy, http: bool) -> AuthzPolicy {
    let rules = match policy.action {
        Action::Allow => policy
            .rules
            .iter()
            .map(|r| allow_rule_for_unknown_client(r, http))
            .collect(),
        Action::Deny | Action::Custom => policy
            .rules
            .iter()
            .filter_map(|r| deny_rule_for_unknown_client(r, http))
            .collect(),
        Action::Audit => policy.rules.clone(),
    };
    AuthzPolicy {
        rules,
        ..policy.clone()
    }
}

/// An ALLOW rule without the fields the analyzer cannot know: it matches a superset.
fn allow_rule_for_unknown_client(rule: &AuthzRule, http: bool) -> AuthzRule {
    let from = rule
        .from
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.ip_blocks = Default::default();
            s.remote_ip_blocks = Default::default();
            if http {
                s.request_principals = Default::default();
            }
            s
        })
        .collect();
    let to = rule
        .to
        .iter()
        .map(|o| {
            let mut o = o.clone();
            if http {
                o.hosts = Default::default();
                o.methods = Default::default();
                o.paths = Default::default();
            }
            o
        })
        .collect();
    let when = rule
        .when
        .iter()
        .filter(|c| !depends_on_client(c, http))
        .cloned()
        .collect();
    AuthzRule { from, to, when }
}

/// A DENY (or CUSTOM) rule reduced to the sources and operations that do not depend on the
/// unknown client; `None` when nothing is left that surely matches (it then denies nobody for
/// sure).
fn deny_rule_for_unknown_client(rule: &AuthzRule, http: bool) -> Option<AuthzRule> {
    if rule.when.iter().any(|c| depends_on_client(c, http)) {
        return None;
    }
    let from: Vec<SourceMatch> = rule
        .from
        .iter()
        .filter(|s| !source_depends_on_client(s, http))
        .cloned()
        .collect();
    let to: Vec<OperationMatch> = rule
        .to
        .iter()
        .filter(|o| !(http && operation_depends_on_request(o)))
        .cloned()
        .collect();
    // An emptied list would match anything: the rule is given up instead.
    if from.is_empty() != rule.from.is_empty() || to.is_empty() != rule.to.is_empty() {
        return None;
    }
    Some(AuthzRule {
        from,
        to,
        when: rule.when.clone(),
    })
}

/// Whether a condition's attribute is unknown for a plaintext client: its address, or (on an
/// HTTP port) its request. On a TCP port the engine resolves HTTP-only conditions itself.
fn depends_on_client(condition: &ConditionMatch, http: bool) -> bool {
    matches!(
        condition,
        ConditionMatch::SourceIp(_) | ConditionMatch::RemoteIp(_)
    ) || (http && condition.is_http_only())
}

/// Whether a source's match depends on the client's address or (HTTP) its JWT.
fn source_depends_on_client(source: &SourceMatch, http: bool) -> bool {
    !source.ip_blocks.is_empty()
        || !source.remote_ip_blocks.is_empty()
        || (http && !source.request_principals.is_empty())
}

/// Whether an operation's match depends on the request (host, method, path).
fn operation_depends_on_request(operation: &OperationMatch) -> bool {
    !operation.hosts.is_empty() || !operation.methods.is_empty() || !operation.paths.is_empty()
}
