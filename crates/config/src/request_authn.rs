//! RequestAuthentication: the checks at each stage (load, translate, analyze) in one place.
//!
//! The spec type and the JWT rules themselves belong to `ward_authn`; this module decides
//! which objects apply to which workload, locates `ward_authn`'s refusals on the YAML field
//! they concern, and finds the configurations that look safe but are not (a RequestAuthentication
//! alone lets requests without a token through).

use std::collections::BTreeMap;

use ward_authn::jwks_uri::{self, JwksUriError};
use ward_authn::spec::{JwtRule, RequestAuthenticationSpec};
use ward_authn::{Authenticator, AuthnConfigError, JwtRuleSet};
use ward_policy::spec::Action;
use ward_policy::{AuthzPolicy, AuthzRule, ConditionMatch, SourceMatch};

use crate::diag::{code, Diagnostic, Finding, Severity};
use crate::load::Resource;
use crate::meta::check_labels;
use crate::snapshot::ProxyConfig;
use crate::translate::{Context, Workload};
use crate::yaml::{push_index, push_key};

/// A loaded RequestAuthentication.
pub(crate) type RequestAuthn = Resource<RequestAuthenticationSpec>;

/// Load-time checks of one RequestAuthentication: its selector, its attachment, and every
/// `jwtRules` entry compiled by [`Authenticator::new`] (the proxy compiles the same rules, so
/// what loads also runs).
pub(crate) fn validate(r: &RequestAuthn) -> Vec<Finding> {
    let spec = &r.spec;
    let mut findings = Vec::new();
    if let Some(selector) = &spec.selector {
        findings.extend(check_labels(
            &selector.match_labels,
            "spec.selector.matchLabels",
        ));
    }
    findings.extend(attachment_findings(spec));
    // Rule by rule, so that every bad rule is reported, not only the first.
    let mut all_compile = true;
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        if let Err(err) = Authenticator::new(vec![rule.clone()]) {
            all_compile = false;
            findings.push(compile_finding(i, rule, &err));
        }
    }
    if all_compile {
        if let Err(err) = Authenticator::new(spec.jwt_rules.clone()) {
            let i = rule_index(&err);
            let rule = spec.jwt_rules.get(i).cloned().unwrap_or_default();
            findings.push(compile_finding(i, &rule, &err));
        }
    }
    let mut issuers: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        if rule.issuer.is_empty() {
            continue;
        }
        if let Some(first) = issuers.insert(&rule.issuer, i) {
            findings.push(Finding::error(
                code::JWT_RULE_INVALID,
                rule_field(i, "issuer"),
                format!(
                    "issuer `{}` is already configured by jwtRules[{first}]: Ward cannot tell \
                     which rule's keys and settings to use for its tokens; keep one rule per \
                     issuer",
                    rule.issuer
                ),
            ));
        }
    }
    findings
}

/// `targetRef`/`targetRefs`: Istio's CRD rules, and Ward's warning that they bind to nothing.
fn attachment_findings(spec: &RequestAuthenticationSpec) -> Vec<Finding> {
    let mut findings = Vec::new();
    let has_targets = spec.target_ref.is_some() || !spec.target_refs.is_empty();
    // istio/api security/v1/request_authentication CRD validation: "only one of targetRefs or
    // targetRef can be set" and "only one of targetRefs or selector can be set".
    if spec.target_ref.is_some() && !spec.target_refs.is_empty() {
        findings.push(Finding::error(
            code::INVALID,
            "spec.targetRefs",
            "only one of targetRef and targetRefs can be set",
        ));
    }
    if has_targets && spec.selector.is_some() {
        findings.push(Finding::error(
            code::INVALID,
            "spec.selector",
            "only one of selector and targetRef(s) can be set",
        ));
    }
    if has_targets {
        let field = if spec.target_ref.is_some() {
            "spec.targetRef"
        } else {
            "spec.targetRefs"
        };
        findings.push(Finding::not_enforced(
            field,
            "targetRef(s) bind the rules to gateways or waypoints, which Ward does not run: \
             this RequestAuthentication applies to no workload (use a selector)",
        ));
    }
    findings
}

fn rule_field(rule: usize, field: &str) -> String {
    push_key(&push_index("spec.jwtRules", rule), field)
}

fn rule_index(err: &AuthnConfigError) -> usize {
    match err {
        AuthnConfigError::MissingIssuer { rule }
        | AuthnConfigError::JwksUri { rule, .. }
        | AuthnConfigError::InlineJwks { rule, .. }
        | AuthnConfigError::HeaderName { rule, .. }
        | AuthnConfigError::EmptyName { rule, .. }
        | AuthnConfigError::Timeout { rule, .. } => *rule,
    }
}

/// `ward_authn`'s refusal of rule `i`, placed on the field it concerns.
fn compile_finding(i: usize, rule: &JwtRule, err: &AuthnConfigError) -> Finding {
    let (field, message) = match err {
        AuthnConfigError::MissingIssuer { .. } => (
            rule_field(i, "issuer"),
            "issuer is required: it is the `iss` a token must carry to be checked by this rule"
                .to_owned(),
        ),
        AuthnConfigError::JwksUri { uri, source, .. } => (
            rule_field(i, "jwksUri"),
            format!("jwksUri `{uri}` is refused: {source}"),
        ),
        AuthnConfigError::InlineJwks { source, .. } => (
            rule_field(i, "jwks"),
            format!("the inline jwks is refused: {source}"),
        ),
        AuthnConfigError::HeaderName { name, .. } => (
            header_field(i, rule, name),
            format!("`{name}` is not a valid HTTP header name"),
        ),
        AuthnConfigError::EmptyName { .. } => (
            empty_name_field(i, rule),
            "a parameter, cookie or claim name is empty".to_owned(),
        ),
        AuthnConfigError::Timeout { value, .. } => (
            rule_field(i, "timeout"),
            format!("`{value}` is not a duration; use e.g. `5s`, `500ms` or `1m30s`"),
        ),
    };
    Finding::error(code::JWT_RULE_INVALID, field, message)
}

/// The field holding the refused header `name`.
fn header_field(i: usize, rule: &JwtRule, name: &str) -> String {
    if let Some(k) = rule.from_headers.iter().position(|h| h.name == name) {
        return push_key(&push_index(&rule_field(i, "fromHeaders"), k), "name");
    }
    if rule.output_payload_to_header.as_deref() == Some(name) {
        return rule_field(i, "outputPayloadToHeader");
    }
    if let Some(k) = rule
        .output_claim_to_headers
        .iter()
        .position(|c| c.header == name)
    {
        return push_key(
            &push_index(&rule_field(i, "outputClaimToHeaders"), k),
            "header",
        );
    }
    push_index("spec.jwtRules", i)
}

/// The first empty parameter, cookie or claim name of a rule.
fn empty_name_field(i: usize, rule: &JwtRule) -> String {
    if let Some(k) = rule.from_params.iter().position(String::is_empty) {
        return push_index(&rule_field(i, "fromParams"), k);
    }
    if let Some(k) = rule.from_cookies.iter().position(String::is_empty) {
        return push_index(&rule_field(i, "fromCookies"), k);
    }
    if let Some(k) = rule
        .output_claim_to_headers
        .iter()
        .position(|c| c.claim.is_empty())
    {
        return push_key(
            &push_index(&rule_field(i, "outputClaimToHeaders"), k),
            "claim",
        );
    }
    push_index("spec.jwtRules", i)
}

/// Whether a RequestAuthentication applies to a workload.
///
/// istio/api security/v1beta1/request_authentication.proto, `selector`: "The selector will
/// match with workloads in the same namespace as the request authentication policy. If the
/// request authentication policy is in the root namespace, the selector will additionally
/// match with workloads in all namespaces. If not set, the selector will match all workloads."
/// This is the scope of `ward_policy::AuthzPolicy::applies_to`. An empty `matchLabels` selects
/// every workload in scope, as for AuthorizationPolicy. `targetRef(s)` bind to gateways or
/// waypoints, which Ward does not run: such an object applies to no workload.
pub(crate) fn applies_to(
    r: &RequestAuthn,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    root_namespace: &str,
) -> bool {
    let spec = &r.spec;
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        return false;
    }
    let ns = r.meta.namespace.as_str();
    (ns == root_namespace || ns == namespace)
        && spec.selector.as_ref().is_none_or(|selector| {
            selector
                .match_labels
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
        })
}

/// The RequestAuthentications that apply to a workload, with their index in the config set,
/// in a fixed order: the root namespace's first, then by namespace and name (so the order
/// does not depend on file names).
pub(crate) fn selected<'a>(
    context: &Context<'a>,
    workload: &Workload<'_>,
) -> Vec<(usize, &'a RequestAuthn)> {
    let root = context.set.mesh.root_namespace.as_str();
    let mut found: Vec<(usize, &'a RequestAuthn)> = context
        .set
        .request_authentications
        .iter()
        .enumerate()
        .filter(|(_, r)| applies_to(r, workload.namespace(), &workload.labels, root))
        .collect();
    found.sort_by(|(_, a), (_, b)| {
        let rank = |r: &RequestAuthn| (r.meta.namespace != root, r.meta.namespace.clone());
        (rank(a), &a.meta.name).cmp(&(rank(b), &b.meta.name))
    });
    found
}

/// The `jwtRules` a workload's proxy enforces, in [`selected`] order, compiled once for every
/// request it will serve. Loading compiled each object's rules already ([`validate`]), so this
/// fails only for a `ConfigSet` built some other way; the error is then placed on the rule's
/// own object and field, like a load error.
pub(crate) fn jwt_rule_set(
    context: &Context<'_>,
    workload: &Workload<'_>,
) -> Result<JwtRuleSet, Box<Diagnostic>> {
    let selected = selected(context, workload);
    let rules = selected
        .iter()
        .flat_map(|(_, r)| r.spec.jwt_rules.iter().cloned())
        .collect();
    JwtRuleSet::new(rules).map_err(|err| {
        // The error's index counts the rules of every selected object, in order.
        let owner = selected
            .iter()
            .flat_map(|(_, r)| {
                let rules = r.spec.jwt_rules.iter().enumerate();
                rules.map(move |(j, rule)| (*r, j, rule))
            })
            .nth(rule_index(&err));
        Box::new(match owner {
            Some((r, j, rule)) => r.finding(compile_finding(j, rule, &err)),
            None => workload.resource.diagnostic(
                Severity::Error,
                code::JWT_RULE_INVALID,
                "metadata.name",
                format!("the jwtRules that apply to this workload do not compile: {err}"),
            ),
        })
    })
}

/// WARD0114: two rules with one issuer apply to one workload. The proxy picks the rule by the
/// token's `iss`, so it could not tell which keys, audiences and outputs to use. One error per
/// pair of rules, listing the workloads concerned.
pub(crate) fn issuer_conflicts(context: &Context<'_>) -> Vec<Diagnostic> {
    // (first object, second object, rule of the second) → workloads.
    let mut conflicts: BTreeMap<(usize, usize, usize), Vec<String>> = BTreeMap::new();
    for workload in &context.workloads {
        let mut issuers: BTreeMap<&str, usize> = BTreeMap::new();
        for (index, r) in selected(context, workload) {
            for (j, rule) in r.spec.jwt_rules.iter().enumerate() {
                match issuers.get(rule.issuer.as_str()) {
                    Some(&first) if first != index => conflicts
                        .entry((first, index, j))
                        .or_default()
                        .push(workload.resource.key()),
                    // The same object twice is a load error (WARD0109).
                    Some(_) => {}
                    None => {
                        issuers.insert(&rule.issuer, index);
                    }
                }
            }
        }
    }
    let all = &context.set.request_authentications;
    conflicts
        .into_iter()
        .filter_map(|((first, second, j), workloads)| {
            let (first, second) = (all.get(first)?, all.get(second)?);
            let issuer = &second.spec.jwt_rules.get(j)?.issuer;
            Some(second.diagnostic(
                Severity::Error,
                code::JWT_ISSUER_CONFLICT,
                &rule_field(j, "issuer"),
                format!(
                    "issuer `{issuer}` is also configured by {}, and both apply to {}: Ward \
                     cannot tell which rule's keys and settings to use for its tokens; keep \
                     one rule per issuer for each workload",
                    first.object(),
                    workloads.join(", ")
                ),
            ))
        })
        .collect()
}

/// WARD0109 (at translation): a `jwksUri` at one of Ward's own listeners, in any workload of
/// the config: its HBONE port, an inbound port, an egress listener. Known statically when the
/// host is an IP address or a `localhost` name ([`jwks_uri::literal_addrs`]); a DNS name is
/// checked by the fetcher once resolved, and so is the `--admin` address, which only the
/// running process knows. An IdP never lives on these sockets; a `jwksUri` there would make a
/// sidecar send requests to Ward itself, with a workload's identity on the egress path.
pub(crate) fn jwks_at_own_listeners(
    context: &Context<'_>,
    proxies: &BTreeMap<String, ProxyConfig>,
) -> Vec<Diagnostic> {
    let own: Vec<_> = proxies.values().flat_map(ProxyConfig::listeners).collect();
    let mut out = Vec::new();
    for r in &context.set.request_authentications {
        for (i, rule) in r.spec.jwt_rules.iter().enumerate() {
            // An inline `jwks` wins: the `jwksUri` is not fetched (and not checked at load).
            let (Some(uri), None) = (&rule.jwks_uri, &rule.jwks) else {
                continue;
            };
            let Ok(checked) = jwks_uri::parse(uri) else {
                continue;
            };
            let hit = jwks_uri::literal_addrs(&checked)
                .into_iter()
                .find_map(|addr| Some((addr, jwks_uri::own_listener(addr, &own, false)?)));
            if let Some((addr, listener)) = hit {
                out.push(r.diagnostic(
                    Severity::Error,
                    code::JWT_RULE_INVALID,
                    &rule_field(i, "jwksUri"),
                    format!(
                        "jwksUri `{uri}` is refused: {addr} is {}, a socket of Ward's own; \
                         point it at the identity provider",
                        listener.what
                    ),
                ));
            }
        }
    }
    out
}

/// WARD0201: a RequestAuthentication selector that matches no WorkloadEntry in scope.
pub(crate) fn selectors_matching_nothing(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let root = &context.set.mesh.root_namespace;
    for r in &context.set.request_authentications {
        if r.spec.selector.is_none()
            || r.spec.target_ref.is_some()
            || !r.spec.target_refs.is_empty()
        {
            continue;
        }
        let matches_some = context
            .workloads
            .iter()
            .any(|w| applies_to(r, w.namespace(), &w.labels, root));
        if !matches_some {
            out.push(r.diagnostic(
                Severity::Warning,
                code::SELECTOR_MATCHES_NOTHING,
                "spec.selector",
                "this selector matches no WorkloadEntry in scope: the JWT rules apply to nothing",
            ));
        }
    }
}

/// WARD0217: JWT rules on a workload, but no AuthorizationPolicy makes a token required.
///
/// istio/api request_authentication.proto: "A request that does not contain any
/// authentication credentials will be accepted but will not have any authenticated identity.
/// To restrict access to authenticated requests only, this should be accompanied by an
/// authorization rule." A workload counts as covered when an enforced (not dry-run) policy
/// that applies to it has an ALLOW rule that needs a token (`requestPrincipals`, their `not`
/// form, or a `request.auth.*` condition: without a token none of these match an ALLOW rule)
/// or a DENY rule that matches token-less requests (`notRequestPrincipals`, or a
/// `request.auth.*` condition with `notValues`).
pub(crate) fn token_not_required(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let root = context.set.mesh.root_namespace.as_str();
    for r in &context.set.request_authentications {
        if r.spec.jwt_rules.is_empty() {
            continue;
        }
        let open: Vec<String> = context
            .workloads
            .iter()
            .filter(|w| applies_to(r, w.namespace(), &w.labels, root))
            .filter(|w| {
                !context.policies.iter().any(|p| {
                    !p.dry_run && p.applies_to(w.namespace(), &w.labels, root) && requires_token(p)
                })
            })
            .map(|w| w.resource.key())
            .collect();
        if open.is_empty() {
            continue;
        }
        out.push(r.diagnostic(
            Severity::Warning,
            code::JWT_NOT_REQUIRED,
            "spec.jwtRules",
            format!(
                "requests WITHOUT a token are let through to {}: a RequestAuthentication only \
                 rejects invalid tokens, and no AuthorizationPolicy on these workloads requires \
                 a request principal. Add one, e.g. an AuthorizationPolicy with `action: DENY` \
                 and `rules: [{{from: [{{source: {{notRequestPrincipals: [\"*\"]}}}}]}}]`, or \
                 ALLOW rules with `requestPrincipals`",
                open.join(", ")
            ),
        ));
    }
}

/// Whether a policy turns a request without a token into a denial somewhere.
fn requires_token(policy: &AuthzPolicy) -> bool {
    match policy.action {
        Action::Allow => policy.rules.iter().any(allow_rule_needs_token),
        Action::Deny => policy.rules.iter().any(deny_rule_matches_no_token),
        Action::Audit | Action::Custom => false,
    }
}

/// An ALLOW rule never matches a token-less request when its every source names request
/// principals, or one of its (AND-ed) conditions is on `request.auth.*`.
fn allow_rule_needs_token(rule: &AuthzRule) -> bool {
    let sources_need = !rule.from.is_empty()
        && rule
            .from
            .iter()
            .all(|s: &SourceMatch| !s.request_principals.is_empty());
    sources_need || rule.when.iter().any(|c| request_auth_values(c).is_some())
}

/// A DENY rule names token-less requests with `notRequestPrincipals` or a `request.auth.*`
/// `notValues`.
fn deny_rule_matches_no_token(rule: &AuthzRule) -> bool {
    rule.from
        .iter()
        .any(|s| !s.request_principals.not_values.is_empty())
        || rule
            .when
            .iter()
            .filter_map(request_auth_values)
            .any(|has_not| has_not)
}

/// For a `request.auth.*` condition: whether it has `notValues`. `None` for other keys.
fn request_auth_values(condition: &ConditionMatch) -> Option<bool> {
    match condition {
        ConditionMatch::RequestAuthPrincipal(m)
        | ConditionMatch::RequestAuthAudiences(m)
        | ConditionMatch::RequestAuthPresenter(m)
        | ConditionMatch::RequestAuthClaim { values: m, .. } => Some(!m.not_values.is_empty()),
        _ => None,
    }
}

/// WARD0218: JWT keys fetched in plaintext from a host that is not loopback, where an
/// attacker on the path can substitute their own keys and mint accepted tokens.
///
/// Load refuses such a `jwksUri` (WARD0109); what remains is reachable two ways: a rule with
/// neither `jwksUri` nor `jwks` whose `http://` issuer is where the keys are discovered
/// (OpenID Connect Discovery, `<issuer>/.well-known/openid-configuration`), and a `jwksUri`
/// that an inline `jwks` overrides today but that is used as soon as `jwks` is removed.
pub(crate) fn plain_http_jwks(context: &Context<'_>, out: &mut Vec<Diagnostic>) {
    let plain = |uri: &str| matches!(jwks_uri::parse(uri), Err(JwksUriError::PlainHttp));
    for r in &context.set.request_authentications {
        for (i, rule) in r.spec.jwt_rules.iter().enumerate() {
            let (field, message) = match (&rule.jwks_uri, &rule.jwks) {
                (Some(uri), _) if plain(uri) => (
                    rule_field(i, "jwksUri"),
                    format!(
                        "jwksUri `{uri}` is plain http to a host that is not loopback: anyone \
                         on the path can replace the keys and forge tokens; use https"
                    ),
                ),
                (None, None) if plain(&rule.issuer) => (
                    rule_field(i, "issuer"),
                    format!(
                        "no jwksUri: the keys are discovered from the issuer `{}` over plain \
                         http to a host that is not loopback, so anyone on the path can \
                         replace them and forge tokens; set an https jwksUri",
                        rule.issuer
                    ),
                ),
                _ => continue,
            };
            out.push(r.diagnostic(Severity::Warning, code::JWKS_PLAIN_HTTP, &field, message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::analyze;
    use crate::load::load_str;
    use crate::translate::translate;

    fn we(ns: &str, name: &str, address: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{address: \"{address}\", labels: {{app: {name}}}}}\n"
        )
    }

    fn doc(kind: &str, ns: &str, name: &str, spec: &str) -> String {
        format!("---\napiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
    }

    fn ra(ns: &str, name: &str, spec: &str) -> String {
        doc("RequestAuthentication", ns, name, spec)
    }

    /// A one-rule spec with this issuer, keys from an https jwksUri, and `extra` fields.
    fn rule_spec(issuer: &str, extra: &str) -> String {
        format!("{{{extra}jwtRules: [{{issuer: \"{issuer}\", jwksUri: \"https://idp.example.com/jwks\"}}]}}")
    }

    /// (line, code, field) of every load diagnostic.
    fn load_diags(yaml: &str) -> Vec<(Option<usize>, &'static str, Option<String>)> {
        let all = match load_str("t.yaml", yaml) {
            Ok(set) => set.warnings,
            Err(diags) => diags.0,
        };
        all.into_iter().map(|d| (d.line, d.code, d.field)).collect()
    }

    fn at(
        line: usize,
        code: &'static str,
        field: &str,
    ) -> (Option<usize>, &'static str, Option<String>) {
        (Some(line), code, Some(field.to_owned()))
    }

    const HEAD: &str = "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: a}\nspec:\n  jwtRules:\n  - issuer: https://idp.example.com\n";

    #[test]
    fn request_authentications_load_with_located_diagnostics() {
        let cases: Vec<(String, Vec<_>)> = vec![
            (format!("{HEAD}    jwksUri: https://idp.example.com/jwks\n    audiences: [api]\n"), vec![]),
            (format!("{HEAD}    jwksUri: https://idp.example.com/jwks\n    jwtHeaders: [x]\n"), vec![at(8, code::UNKNOWN_FIELD, "spec.jwtRules[0]")]),
            (format!("{HEAD}  - issuer: \"\"\n    jwksUri: https://idp.example.com/jwks\n"), vec![at(7, code::JWT_RULE_INVALID, "spec.jwtRules[1].issuer")]),
            (format!("{HEAD}    jwksUri: http://idp.example.com/jwks\n"), vec![at(7, code::JWT_RULE_INVALID, "spec.jwtRules[0].jwksUri")]),
            (format!("{HEAD}    jwksUri: https://169.254.169.254/keys\n"), vec![at(7, code::JWT_RULE_INVALID, "spec.jwtRules[0].jwksUri")]),
            (format!("{HEAD}    jwks: '{{\"no\": 1}}'\n"), vec![at(7, code::JWT_RULE_INVALID, "spec.jwtRules[0].jwks")]),
            (format!("{HEAD}    fromHeaders:\n    - name: ok\n    - name: \"bad header\"\n"), vec![at(9, code::JWT_RULE_INVALID, "spec.jwtRules[0].fromHeaders[1].name")]),
            (format!("{HEAD}    outputClaimToHeaders:\n    - {{header: x-sub, claim: \"\"}}\n"), vec![at(8, code::JWT_RULE_INVALID, "spec.jwtRules[0].outputClaimToHeaders[0].claim")]),
            (format!("{HEAD}    timeout: soon\n"), vec![at(7, code::JWT_RULE_INVALID, "spec.jwtRules[0].timeout")]),
            (format!("{HEAD}  - issuer: https://idp.example.com\n"), vec![at(7, code::JWT_RULE_INVALID, "spec.jwtRules[1].issuer")]),
            (format!("{HEAD}  selector: {{matchLabels: {{app: x}}}}\n  targetRefs: [{{kind: Gateway, name: gw}}]\n"), vec![
                at(7, code::INVALID, "spec.selector"),
                at(8, code::FIELD_NOT_ENFORCED, "spec.targetRefs"),
            ]),
            (format!("{HEAD}  targetRef: {{kind: Gateway, name: gw}}\n  targetRefs: [{{kind: Gateway, name: gw}}]\n"), vec![
                at(7, code::FIELD_NOT_ENFORCED, "spec.targetRef"),
                at(8, code::INVALID, "spec.targetRefs"),
            ]),
        ];
        for (yaml, want) in cases {
            assert_eq!(load_diags(&yaml), want, "{yaml}");
        }
    }

    #[test]
    fn a_loaded_request_authentication_keeps_its_rules() {
        let yaml =
            format!("{HEAD}    jwksUri: https://idp.example.com/jwks\n    audiences: [api]\n");
        let set = load_str("t.yaml", &yaml).unwrap();
        assert_eq!(set.warnings, vec![]);
        let r = &set.request_authentications[0];
        assert_eq!(
            (r.kind, r.key().as_str()),
            ("RequestAuthentication", "a/jwt")
        );
        assert_eq!(r.spec.jwt_rules[0].issuer, "https://idp.example.com");
        assert_eq!(r.spec.jwt_rules[0].audiences, ["api"]);
        let message = load_str(
            "t.yaml",
            &format!("{HEAD}    jwksUri: http://idp.example.com/k\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("plain http is only allowed to a loopback host"),
            "{message}"
        );
    }

    /// The issuers each proxy enforces.
    fn issuers(yaml: &str) -> BTreeMap<String, Vec<String>> {
        let set = load_str("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
        let snapshot = translate(&set).unwrap_or_else(|e| panic!("{e}"));
        snapshot
            .proxies
            .into_iter()
            .map(|(key, p)| {
                (
                    key,
                    p.jwt_rules
                        .rules()
                        .iter()
                        .map(|r| r.issuer.clone())
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn jwt_rules_follow_istio_scope() {
        let workloads = [
            we("a", "x", "10.0.0.1"),
            we("a", "y", "10.0.0.2"),
            we("b", "x", "10.0.0.3"),
        ]
        .concat();
        let cases: Vec<(&str, String, [&[&str]; 3])> = vec![
            (
                "mesh-wide",
                ra("istio-system", "m", &rule_spec("mesh", "")),
                [&["mesh"], &["mesh"], &["mesh"]],
            ),
            (
                "namespace",
                ra("a", "n", &rule_spec("ns", "")),
                [&["ns"], &["ns"], &[]],
            ),
            (
                "selector",
                ra(
                    "a",
                    "s",
                    &rule_spec("sel", "selector: {matchLabels: {app: x}}, "),
                ),
                [&["sel"], &[], &[]],
            ),
            (
                "empty selector",
                ra("a", "s", &rule_spec("sel", "selector: {}, ")),
                [&["sel"], &["sel"], &[]],
            ),
            (
                "root selector",
                ra(
                    "istio-system",
                    "r",
                    &rule_spec("root", "selector: {matchLabels: {app: x}}, "),
                ),
                [&["root"], &[], &["root"]],
            ),
            (
                "targetRef ignored",
                ra(
                    "a",
                    "t",
                    &rule_spec("gw", "targetRefs: [{kind: Gateway, name: gw}], "),
                ),
                [&[], &[], &[]],
            ),
            (
                "root first, then by name",
                [
                    ra("a", "b-second", &rule_spec("ns-b", "")),
                    ra("a", "a-first", &rule_spec("ns-a", "")),
                    ra("istio-system", "z", &rule_spec("mesh", "")),
                ]
                .concat(),
                [
                    &["mesh", "ns-a", "ns-b"],
                    &["mesh", "ns-a", "ns-b"],
                    &["mesh"],
                ],
            ),
        ];
        for (name, objects, [ax, ay, bx]) in cases {
            let got = issuers(&format!("{workloads}{objects}"));
            let want: BTreeMap<String, Vec<String>> = [("a/x", ax), ("a/y", ay), ("b/x", bx)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn one_issuer_twice_on_a_workload_is_an_error_naming_both() {
        let yaml = [
            we("a", "x", "10.0.0.1"),
            we("a", "y", "10.0.0.2"),
            ra("istio-system", "mesh", &rule_spec("same", "")),
            ra(
                "a",
                "only-x",
                &rule_spec("same", "selector: {matchLabels: {app: x}}, "),
            ),
            ra("a", "other", &rule_spec("other", "")),
        ]
        .concat();
        let set = load_str("t.yaml", &yaml).unwrap();
        let err = translate(&set).unwrap_err();
        let got: Vec<_> = err
            .0
            .iter()
            .map(|d| (d.line, d.code, d.object.clone(), d.field.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(
                Some(20),
                code::JWT_ISSUER_CONFLICT,
                Some("RequestAuthentication a/only-x".to_owned()),
                Some("spec.jwtRules[0].issuer".to_owned())
            )]
        );
        let message = &err.0[0].message;
        assert!(
            message.contains("RequestAuthentication istio-system/mesh") && message.contains("a/x"),
            "{message}"
        );
        assert!(!message.contains("a/y"), "{message}");
    }

    /// A rule that did not pass through loading (a `ConfigSet` changed in memory) is still
    /// refused by translation, on its own object and field: the compiled rules are built there.
    #[test]
    fn a_rule_that_does_not_compile_at_translation_is_an_error_on_its_field() {
        let yaml = [
            we("a", "x", "10.0.0.1"),
            ra("istio-system", "mesh", &rule_spec("mesh", "")),
            ra(
                "a",
                "two",
                "{jwtRules: [{issuer: one, jwksUri: \"https://idp.example.com/1\"}, {issuer: two, jwksUri: \"https://idp.example.com/2\"}]}",
            ),
        ]
        .concat();
        let mut set = load_str("t.yaml", &yaml).unwrap();
        assert!(translate(&set).is_ok());
        let two = &mut set.request_authentications[1];
        assert_eq!(two.meta.name, "two");
        two.spec.jwt_rules[1].jwks_uri = Some("http://idp.example.com/2".to_owned());
        let err = translate(&set).unwrap_err();
        let got: Vec<_> = err
            .0
            .iter()
            .map(|d| (d.file.as_str(), d.code, d.object.clone(), d.field.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(
                "t.yaml",
                code::JWT_RULE_INVALID,
                Some("RequestAuthentication a/two".to_owned()),
                Some("spec.jwtRules[1].jwksUri".to_owned())
            )]
        );
    }

    #[test]
    fn a_jwks_uri_at_a_ward_listener_is_an_error_on_the_field() {
        let mesh = [
            we("a", "x", "127.0.0.5"),
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc, namespace: a}\nspec: {hosts: [svc.example.com], location: MESH_EXTERNAL, resolution: STATIC, ports: [{number: 7000, name: tcp, protocol: TCP}, {number: 7001, name: tcp2, protocol: TCP}], endpoints: [{address: 192.0.2.1}]}\n".to_owned(),
            "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: x, namespace: a}\nspec:\n  workloadSelector: {labels: {app: x}}\n  ingress: [{port: {number: 9000, protocol: HTTP, name: http}, defaultEndpoint: \"127.0.0.1:8080\"}]\n  egress:\n  - {port: {number: 7000, protocol: TCP, name: tcp}, bind: 127.0.0.5, hosts: [a/svc.example.com]}\n  - {port: {number: 7001, protocol: TCP, name: tcp2}, hosts: [a/svc.example.com]}\n".to_owned(),
        ]
        .concat();
        let rule = |uri: &str, extra: &str| {
            ra(
                "a",
                "jwt",
                &format!("{{jwtRules: [{{issuer: i, jwksUri: \"{uri}\"{extra}}}]}}"),
            )
        };
        let jwks = r#"{"keys": []}"#;
        let cases: Vec<(String, Option<&str>)> = vec![
            (
                rule("http://127.0.0.5:15008/k", ""),
                Some("the HBONE listener of workload a/x"),
            ),
            (
                rule("https://127.0.0.5:9000/k", ""),
                Some("inbound port 9000 of workload a/x"),
            ),
            (
                rule("http://127.0.0.5:7000/k", ""),
                Some("the egress listener of workload a/x"),
            ),
            (
                rule("http://127.0.0.1:7001/k", ""),
                Some("the egress listener of workload a/x"),
            ),
            // `localhost` names the same sockets as 127.0.0.1 and ::1.
            (
                rule("http://localhost:7001/k", ""),
                Some("the egress listener of workload a/x"),
            ),
            (
                rule("https://LocalHost.:7001/k", ""),
                Some("the egress listener of workload a/x"),
            ),
            // The app's own endpoint, another loopback address or port: not Ward's.
            (rule("http://127.0.0.1:8080/k", ""), None),
            (rule("http://127.0.0.6:15008/k", ""), None),
            (rule("http://127.0.0.5:15009/k", ""), None),
            (rule("https://idp.example.com:15008/k", ""), None),
            // An inline jwks wins: the jwksUri is never fetched.
            (
                rule("http://127.0.0.5:15008/k", &format!(", jwks: '{jwks}'")),
                None,
            ),
        ];
        for (ra_doc, want) in cases {
            let set =
                load_str("t.yaml", &format!("{mesh}{ra_doc}")).unwrap_or_else(|e| panic!("{e}"));
            let got = translate(&set).err().map(|e| e.0).unwrap_or_default();
            match want {
                None => assert!(got.is_empty(), "{ra_doc}: {got:?}"),
                Some(what) => {
                    let [d] = got.as_slice() else {
                        panic!("{ra_doc}: {got:?}");
                    };
                    assert_eq!(
                        (
                            d.code,
                            d.object.as_deref(),
                            d.field.as_deref(),
                            d.file.as_str()
                        ),
                        (
                            code::JWT_RULE_INVALID,
                            Some("RequestAuthentication a/jwt"),
                            Some("spec.jwtRules[0].jwksUri"),
                            "t.yaml"
                        ),
                        "{ra_doc}"
                    );
                    assert!(
                        d.line.is_some() && d.message.contains(what),
                        "{ra_doc}: {}",
                        d.message
                    );
                }
            }
        }
    }

    /// (code, field) of an analyze finding.
    type Found = (&'static str, Option<String>);

    /// The analyze codes this module adds, with their fields.
    fn authn_findings(yaml: &str) -> Vec<Found> {
        let set = load_str("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
        analyze(&set)
            .into_iter()
            .filter(|d| {
                [
                    code::JWT_NOT_REQUIRED,
                    code::JWKS_PLAIN_HTTP,
                    code::SELECTOR_MATCHES_NOTHING,
                ]
                .contains(&d.code)
            })
            .map(|d| (d.code, d.field))
            .collect()
    }

    #[test]
    fn requests_without_a_token_are_reported_unless_a_policy_requires_one() {
        let base = [
            we("a", "x", "10.0.0.1"),
            ra("a", "jwt", &rule_spec("https://idp.example.com", "")),
        ]
        .concat();
        let open = vec![(code::JWT_NOT_REQUIRED, Some("spec.jwtRules".to_owned()))];
        let ap = |ns: &str, spec: &str| doc("AuthorizationPolicy", ns, "p", spec);
        let cases: Vec<(&str, String, Vec<Found>)> = vec![
            ("no policy", String::new(), open.clone()),
            ("ALLOW requestPrincipals", ap("a", "{rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]}"), vec![]),
            ("ALLOW request.auth claim", ap("a", "{rules: [{when: [{key: \"request.auth.claims[role]\", values: [admin]}]}]}"), vec![]),
            ("mesh-wide DENY notRequestPrincipals", ap("istio-system", "{action: DENY, rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]}"), vec![]),
            ("DENY request.auth.principal notValues", ap("a", "{action: DENY, rules: [{when: [{key: request.auth.principal, notValues: [\"*\"]}]}]}"), vec![]),
            ("ALLOW on peer principals only", ap("a", "{rules: [{from: [{source: {principals: [\"cluster.local/ns/a/sa/default\"]}}]}]}"), open.clone()),
            ("ALLOW with one source lacking requestPrincipals", ap("a", "{rules: [{from: [{source: {requestPrincipals: [\"*\"]}}, {source: {namespaces: [a]}}]}]}"), open.clone()),
            ("DENY requestPrincipals (tokens only)", ap("a", "{action: DENY, rules: [{from: [{source: {requestPrincipals: [\"bad/*\"]}}]}]}"), open.clone()),
            ("policy on another workload", ap("a", "{selector: {matchLabels: {app: other}}, action: DENY, rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]}"), open.clone()),
            (
                "dry-run DENY",
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: a\n  annotations: {istio.io/dry-run: \"true\"}\nspec: {action: DENY, rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]}\n".to_owned(),
                open.clone(),
            ),
        ];
        for (name, policy, want) in cases {
            let got: Vec<_> = authn_findings(&format!("{base}{policy}"))
                .into_iter()
                .filter(|(c, _)| *c == code::JWT_NOT_REQUIRED)
                .collect();
            assert_eq!(got, want, "{name}");
        }
        let set = load_str("t.yaml", &base).unwrap();
        let finding = analyze(&set)
            .into_iter()
            .find(|d| d.code == code::JWT_NOT_REQUIRED)
            .unwrap();
        assert_eq!(
            (finding.severity, finding.line),
            (Severity::Warning, Some(10))
        );
        assert!(
            finding.message.contains("WITHOUT a token")
                && finding.message.contains("a/x")
                && finding.message.contains("notRequestPrincipals"),
            "{}",
            finding.message
        );
    }

    #[test]
    fn plain_http_key_fetches_are_reported() {
        let require = doc(
            "AuthorizationPolicy",
            "a",
            "p",
            "{action: DENY, rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]}",
        );
        let base = [we("a", "x", "10.0.0.1"), require].concat();
        let jwks = r#"'{"keys": []}'"#;
        let cases: Vec<(&str, String, Vec<Found>)> = vec![
            ("https jwksUri", "{jwtRules: [{issuer: \"http://idp.example.com\", jwksUri: \"https://idp.example.com/k\"}]}".to_owned(), vec![]),
            ("loopback http jwksUri", "{jwtRules: [{issuer: \"http://127.0.0.1:8180/r\", jwksUri: \"http://127.0.0.1:8180/k\"}]}".to_owned(), vec![]),
            ("discovery from an http issuer", "{jwtRules: [{issuer: \"http://idp.example.com\"}]}".to_owned(), vec![(code::JWKS_PLAIN_HTTP, Some("spec.jwtRules[0].issuer".to_owned()))]),
            ("discovery from an https issuer", "{jwtRules: [{issuer: \"https://idp.example.com\"}]}".to_owned(), vec![]),
            ("issuer that is not a URL", "{jwtRules: [{issuer: \"team@example.com\"}]}".to_owned(), vec![]),
            ("inline jwks, http jwksUri in waiting", format!("{{jwtRules: [{{issuer: i, jwks: {jwks}, jwksUri: \"http://idp.example.com/k\"}}]}}"), vec![(code::JWKS_PLAIN_HTTP, Some("spec.jwtRules[0].jwksUri".to_owned()))]),
            ("inline jwks alone", format!("{{jwtRules: [{{issuer: \"http://idp.example.com\", jwks: {jwks}}}]}}"), vec![]),
        ];
        for (name, spec, want) in cases {
            let got = authn_findings(&format!("{base}{}", ra("a", "jwt", &spec)));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_selector_that_matches_nothing_is_reported() {
        let yaml = [
            we("a", "x", "10.0.0.1"),
            ra(
                "a",
                "jwt",
                &rule_spec("i", "selector: {matchLabels: {app: nope}}, "),
            ),
        ]
        .concat();
        assert_eq!(
            authn_findings(&yaml),
            vec![(
                code::SELECTOR_MATCHES_NOTHING,
                Some("spec.selector".to_owned())
            )]
        );
    }
}
