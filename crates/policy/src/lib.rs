//! Ward's policy decisions: Istio `AuthorizationPolicy` and `PeerAuthentication`, compiled and
//! evaluated as pure functions.
//!
//! Role: turn Istio security specs into checked values ([`AuthzPolicy`], [`PeerAuthnPolicy`]),
//! then answer "is this connection allowed?" ([`WorkloadPolicies::evaluate_l4`] →
//! [`Decision`]), "is this HTTP request allowed?" ([`WorkloadPolicies::evaluate_http`]), "what
//! is the canonical path of this request?" ([`path::normalize`]) and "what mTLS mode does this
//! port use?" ([`effective_mtls`]). The proxy carries the answers out; `ward analyze` and the
//! conformance corpus (`corpus`) use the same functions.
//!
//! Must not: do I/O, spawn tasks, read clocks, or depend on tokio. The one exception is the test
//! runner `corpus::run_file`, which reads a corpus file and exists only with the `testing`
//! feature (enabled by this crate's tests, never by the `ward` binary). Untrusted input (policy
//! YAML, peer identities) never panics.
//!
//! Where Ward is deliberately stricter than Istio (all fail closed):
//! - A plaintext connection (no peer identity) never satisfies an identity field in an ALLOW
//!   policy, `not` forms included; in DENY/AUDIT/CUSTOM it always does, so
//!   `DENY namespaces: [foo]` denies identity-less traffic too (ISTIO-SECURITY-2021-004).
//! - No `PeerAuthentication` anywhere (or `UNSET` all the way up) means STRICT, not PERMISSIVE.
//! - Invalid rules (unknown `when` key, bad CIDR or port, `spiffe://` principals, empty values,
//!   CUSTOM without provider ...) reject the policy instead of being skipped.
//! - A matching CUSTOM policy denies: Ward has no external authorizer yet.
//! - Values are matched literally (exact, `abc*`, `*abc`, `*`), never as regexes
//!   (CVE-2026-39350).
//! - Paths with `%2F`, `%5C` or `\` are rejected, not rewritten ([`path`]).
//! - Without a valid JWT, `notRequestPrincipals` and `request.auth.*` `notValues` never match
//!   an ALLOW rule; DENY `hosts` also match the host without its port (`http`).
//! - A comma-separated header line is also matched element by element in DENY/AUDIT/CUSTOM
//!   `values` and ALLOW `notValues` (`DENY x-role: admin` denies `x-role: user, admin`); never
//!   in ALLOW `values` or DENY `notValues` (`http`).
//!
//! Layout:
//! - [`spec`]: the Istio API types, field for field.
//! - [`matcher`]: Istio string, IP, port, service account and path patterns (shared by L4 and
//!   HTTP).
//! - [`path`]: request-target normalization ([`path::normalize`]), security-critical.
//! - `authz`: compiling a policy ([`AuthzPolicy::compile`]), scope ([`AuthzPolicy::applies_to`]).
//! - `l4`: evaluating a TCP connection ([`WorkloadPolicies::evaluate_l4`]).
//! - `http`: evaluating an HTTP request ([`WorkloadPolicies::evaluate_http`],
//!   [`HttpAttributes`], [`RequestAuth`]).
//! - `index`: which rules a connection or request can match, so decision time stays about flat
//!   as policies grow (built by [`WorkloadPolicies::new`]; decisions equal the linear walk's).
//! - `decision`: [`Decision`] and the names it carries ([`PolicyRef`], [`RuleRef`]).
//! - `explain`: the same decisions with the reason of every rule
//!   ([`WorkloadPolicies::explain_l4`], [`WorkloadPolicies::explain_http`] → [`Explanation`]),
//!   for `ward check`.
//! - `peer_authn`: [`effective_mtls`] and [`lint`].
//! - `corpus` (feature `testing`): the YAML conformance corpus runner (`tests/corpus/*.yaml`).
//! - [`duration`]: the duration grammar of Istio's fields (and of `ward`'s flags).

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod authz;
#[cfg(feature = "testing")]
pub mod corpus;
mod decision;
pub mod duration;
mod explain;
mod http;
mod index;
mod l4;
pub mod matcher;
pub mod path;
mod peer_authn;
pub mod spec;

pub use authz::{
    parse_dry_run, AuthzPolicy, AuthzRule, CompileError, ConditionMatch, MeshContext,
    OperationMatch, SourceMatch, WorkloadPolicies, DRY_RUN_ANNOTATION,
};
pub use decision::{AllowedBy, Decision, DeniedBy, DryRunNote, DryRunOutcome, PolicyRef, RuleRef};
pub use explain::{Explanation, PolicyTrace, RuleOutcome, RuleTrace};
pub use http::{HttpAttributes, RequestAuth};
pub use l4::{L4Attributes, Peer};
pub use path::{normalize, NormalizedPath, PathError};
pub use peer_authn::{
    effective_mtls, lint, EffectiveMtls, MtlsMode, PeerAuthnLevel, PeerAuthnLint, PeerAuthnPolicy,
};
