//! VirtualService (istio/api `networking/v1alpha3/virtual_service.proto`; v1 and v1beta1 share
//! the schema): HTTP, TLS and TCP routing rules for a set of hosts. Ward accepts it without
//! enforcing it (WARD0102); the spec is decoded field for field and checked with the rules of
//! Istio's validation that are cheap to apply (istio/istio `pkg/config/validation`,
//! `ValidateVirtualService` and `virtualservice.go`).
//!
//! This file also holds the messages other kinds share: [`Destination`], [`PortSelector`],
//! [`StringMatch`] and [`Percent`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::checks::{self, at, invalid};
use super::proto::Duration;
use crate::diag::Finding;
use crate::meta::{check_label_name, check_labels};
use crate::yaml::{push_index, push_key};

/// The gateway name that stands for every sidecar in the mesh (istio/api virtual_service.proto
/// `gateways`: "The reserved word `mesh` is used to imply all the sidecars in the mesh").
pub const MESH_GATEWAY: &str = "mesh";

/// `spec` of a VirtualService.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// The hosts traffic is sent to (DNS names, wildcard prefixes, IPs). None: a delegate,
    /// which only a root VirtualService's `delegate` pulls in.
    pub hosts: Option<Vec<String>>,
    /// Gateways and sidecars that apply the routes (`namespace/name`, or `mesh`); all sidecars
    /// when absent.
    pub gateways: Option<Vec<String>>,
    /// Ordered HTTP routing rules; the first match wins.
    pub http: Option<Vec<HttpRoute>>,
    /// Ordered rules for unterminated TLS and HTTPS traffic, matched by SNI.
    pub tls: Option<Vec<TlsRoute>>,
    /// Ordered rules for opaque TCP traffic.
    pub tcp: Option<Vec<TcpRoute>>,
    /// Namespaces that see the rules; all when absent.
    pub export_to: Option<Vec<String>>,
}

/// A destination service (also Sidecar `egressProxy`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// The service host, from the service registry.
    pub host: String,
    /// A subset of a DestinationRule for this host.
    pub subset: Option<String>,
    /// The port; needed when the service has several.
    pub port: Option<PortSelector>,
}

/// A port by number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// The port number.
    pub number: Option<u32>,
}

/// One HTTP routing rule: matches, then a route, a redirect, a direct response or a delegate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// The rule's name, for access logs and debugging.
    pub name: Option<String>,
    /// Conditions, ORed; each one's fields are ANDed.
    pub r#match: Option<Vec<HttpMatchRequest>>,
    /// Weighted destinations.
    pub route: Option<Vec<HttpRouteDestination>>,
    /// Answer with a redirect.
    pub redirect: Option<HttpRedirect>,
    /// Answer with a fixed response.
    pub direct_response: Option<HttpDirectResponse>,
    /// Hand the request to the rules of another (delegate) VirtualService.
    pub delegate: Option<Delegate>,
    /// Rewrite the path or authority before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Request timeout.
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    pub fault: Option<HttpFaultInjection>,
    /// Mirror requests to this destination (one of `mirror` or `mirrors`).
    pub mirror: Option<Destination>,
    /// Mirror requests to several destinations.
    pub mirrors: Option<Vec<HttpMirrorPolicy>>,
    /// Deprecated: the share of requests mirrored, 0-100; use `mirrorPercentage`.
    pub mirror_percent: Option<u32>,
    /// The share of requests mirrored.
    pub mirror_percentage: Option<Percent>,
    /// CORS policy.
    pub cors_policy: Option<CorsPolicy>,
    /// Header changes.
    pub headers: Option<Headers>,
}

/// The VirtualService a root route delegates to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    /// Its name.
    pub name: Option<String>,
    /// Its namespace; the root's when absent.
    pub namespace: Option<String>,
}

/// Request and response header changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Changes to the request.
    pub request: Option<HeaderOperations>,
    /// Changes to the response.
    pub response: Option<HeaderOperations>,
}

/// `Headers.HeaderOperations`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite these headers.
    pub set: Option<BTreeMap<String, String>>,
    /// Append these headers.
    pub add: Option<BTreeMap<String, String>>,
    /// Remove these headers.
    pub remove: Option<Vec<String>>,
}

/// One TLS routing rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    /// Conditions (required), ORed.
    pub r#match: Option<Vec<TlsMatchAttributes>>,
    /// Weighted destinations.
    pub route: Option<Vec<RouteDestination>>,
}

/// One TCP routing rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// Conditions, ORed.
    pub r#match: Option<Vec<L4MatchAttributes>>,
    /// Weighted destinations.
    pub route: Option<Vec<RouteDestination>>,
}

/// Conditions on an HTTP request, ANDed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// The match's name, appended to the route's.
    pub name: Option<String>,
    /// The path.
    pub uri: Option<StringMatch>,
    /// The scheme.
    pub scheme: Option<StringMatch>,
    /// The method.
    pub method: Option<StringMatch>,
    /// The authority (`Host`).
    pub authority: Option<StringMatch>,
    /// Headers, by lowercase name.
    pub headers: Option<BTreeMap<String, StringMatch>>,
    /// The destination port.
    pub port: Option<u32>,
    /// Labels of the calling workload.
    pub source_labels: Option<BTreeMap<String, String>>,
    /// Gateways the match applies to (overrides the VirtualService's).
    pub gateways: Option<Vec<String>>,
    /// Query parameters.
    pub query_params: Option<BTreeMap<String, StringMatch>>,
    /// Match `uri` ignoring case.
    pub ignore_uri_case: Option<bool>,
    /// Headers that must not match.
    pub without_headers: Option<BTreeMap<String, StringMatch>>,
    /// The calling workload's namespace.
    pub source_namespace: Option<String>,
    /// Prefix of the route's statistics.
    pub stat_prefix: Option<String>,
}

/// A weighted HTTP destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where to send the request (required).
    pub destination: Option<Destination>,
    /// Relative share of the traffic.
    pub weight: Option<i32>,
    /// Header changes for this destination.
    pub headers: Option<Headers>,
}

/// A weighted TLS or TCP destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Where to send the connection (required).
    pub destination: Option<Destination>,
    /// Relative share of the traffic.
    pub weight: Option<i32>,
}

/// Conditions on a TCP connection, ANDed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    /// Destination IPs or CIDR blocks.
    pub destination_subnets: Option<Vec<String>>,
    /// The destination port.
    pub port: Option<u32>,
    /// Source IP or CIDR block (gateways only).
    pub source_subnet: Option<String>,
    /// Labels of the calling workload.
    pub source_labels: Option<BTreeMap<String, String>>,
    /// Gateways the match applies to.
    pub gateways: Option<Vec<String>>,
    /// The calling workload's namespace.
    pub source_namespace: Option<String>,
}

/// Conditions on a TLS connection, ANDed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    /// SNI values (required), wildcard prefixes allowed.
    pub sni_hosts: Option<Vec<String>>,
    /// Destination IPs or CIDR blocks.
    pub destination_subnets: Option<Vec<String>>,
    /// The destination port.
    pub port: Option<u32>,
    /// Labels of the calling workload.
    pub source_labels: Option<BTreeMap<String, String>>,
    /// Gateways the match applies to.
    pub gateways: Option<Vec<String>>,
    /// The calling workload's namespace.
    pub source_namespace: Option<String>,
}

/// An HTTP redirect. `port` and `derivePort` are a oneof.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replace the whole path.
    pub uri: Option<String>,
    /// Replace the authority.
    pub authority: Option<String>,
    /// Redirect to this port.
    pub port: Option<u32>,
    /// Derive the port from the protocol or the request.
    pub derive_port: Option<RedirectPortSelection>,
    /// Replace the scheme (`http` or `https`).
    pub scheme: Option<String>,
    /// The status code; 301 when absent.
    pub redirect_code: Option<u32>,
    /// Replace the matched prefix of the path.
    pub prefix_rewrite: Option<String>,
}

/// `HTTPRedirect.RedirectPortSelection`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// 80 for http, 443 for https.
    FromProtocolDefault,
    /// The port of the request.
    FromRequestPort,
}

/// A fixed response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    /// The status code (required).
    pub status: Option<u32>,
    /// The body.
    pub body: Option<HttpBody>,
}

/// A response body. `string` and `bytes` are a oneof.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    /// The body as text.
    pub string: Option<String>,
    /// The body as base64.
    pub bytes: Option<String>,
}

/// Rewrites before forwarding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replace the matched path prefix (or the whole path).
    pub uri: Option<String>,
    /// Replace the authority.
    pub authority: Option<String>,
    /// Rewrite the path with a regex.
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// A regex rewrite of the path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    /// The regex (RE2).
    pub r#match: Option<String>,
    /// The replacement; `\1` refers to a capture group.
    pub rewrite: Option<String>,
}

/// How a string matches. `exact`, `prefix` and `regex` are a oneof.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    /// Equal to this.
    pub exact: Option<String>,
    /// Starts with this.
    pub prefix: Option<String>,
    /// Matches this regex in full (RE2).
    pub regex: Option<String>,
}

/// A retry policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Number of retries; 0 disables retries.
    pub attempts: Option<i32>,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Conditions to retry on, comma-separated (Envoy `x-envoy-retry-on` values).
    pub retry_on: Option<String>,
    /// Whether to retry in other localities.
    pub retry_remote_localities: Option<bool>,
    /// Whether to avoid hosts already tried.
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval between retries.
    pub backoff: Option<Duration>,
}

/// Cross-origin resource sharing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Deprecated: exact origins; use `allowOrigins`.
    pub allow_origin: Option<Vec<String>>,
    /// Allowed origins.
    pub allow_origins: Option<Vec<StringMatch>>,
    /// `Access-Control-Allow-Methods`.
    pub allow_methods: Option<Vec<String>>,
    /// `Access-Control-Allow-Headers`.
    pub allow_headers: Option<Vec<String>>,
    /// `Access-Control-Expose-Headers`.
    pub expose_headers: Option<Vec<String>>,
    /// `Access-Control-Max-Age`.
    pub max_age: Option<Duration>,
    /// `Access-Control-Allow-Credentials`.
    pub allow_credentials: Option<bool>,
    /// What to do with preflight requests from origins that are not allowed.
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// `CorsPolicy.UnmatchedPreflights`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Istio's default (`FORWARD`).
    Unspecified,
    /// Forward them to the upstream.
    Forward,
    /// Answer them without CORS headers.
    Ignore,
}

/// Faults to inject.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay requests.
    pub delay: Option<FaultDelay>,
    /// Abort requests.
    pub abort: Option<FaultAbort>,
}

/// `HTTPFaultInjection.Delay`. `fixedDelay` and `exponentialDelay` are a oneof.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// Deprecated: the share of requests delayed, 0-100; use `percentage`.
    pub percent: Option<i32>,
    /// A fixed delay.
    pub fixed_delay: Option<Duration>,
    /// An exponential delay (not supported by Istio yet).
    pub exponential_delay: Option<Duration>,
    /// The share of requests delayed.
    pub percentage: Option<Percent>,
}

/// `HTTPFaultInjection.Abort`. `httpStatus`, `grpcStatus` and `http2Error` are a oneof.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// The HTTP status to answer with.
    pub http_status: Option<i32>,
    /// The gRPC status to answer with, e.g. `UNAVAILABLE`.
    pub grpc_status: Option<String>,
    /// An HTTP/2 error (not supported by Istio yet).
    pub http2_error: Option<String>,
    /// The share of requests aborted.
    pub percentage: Option<Percent>,
}

/// One mirror destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Where to mirror (required).
    pub destination: Option<Destination>,
    /// The share of requests mirrored.
    pub percentage: Option<Percent>,
}

/// A percentage, 0-100 (fractions allowed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    /// The percentage.
    pub value: Option<f64>,
}

impl Percent {
    pub(crate) fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        if let Some(value) = self.value {
            checks::percentage(out, &at(path, "value"), value);
        }
    }
}

impl VirtualServiceSpec {
    /// Problems Istio's validation would reject.
    pub(crate) fn validate(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        let hosts = self.hosts.as_deref().unwrap_or_default();
        let gateways = self.gateways.as_deref().unwrap_or_default();
        let http = self.http.as_deref().unwrap_or_default();
        let tls = self.tls.as_deref().unwrap_or_default();
        let tcp = self.tcp.as_deref().unwrap_or_default();
        let delegate = hosts.is_empty();
        if delegate {
            // istio/istio ValidateVirtualService: a VirtualService without hosts is a
            // delegate; it may not name gateways, nor have TLS or TCP routes.
            for (set, field) in [
                (!gateways.is_empty(), "gateways"),
                (!tls.is_empty(), "tls"),
                (!tcp.is_empty(), "tcp"),
            ] {
                if set {
                    invalid(
                        &mut out,
                        &at("spec", field),
                        format!(
                            "a VirtualService without `hosts` is a delegate, and a delegate \
                             cannot have `{field}`"
                        ),
                    );
                }
            }
        }
        let bound_to_mesh = gateways.is_empty() || gateways.iter().any(|g| g == MESH_GATEWAY);
        for (i, host) in hosts.iter().enumerate() {
            if host == "*" && bound_to_mesh {
                invalid(
                    &mut out,
                    &push_index("spec.hosts", i),
                    "the wildcard host `*` is not allowed for a VirtualService bound to the mesh \
                     (no `gateways`, or `mesh` among them)",
                );
            }
        }
        if http.is_empty() && tls.is_empty() && tcp.is_empty() {
            invalid(
                &mut out,
                "spec",
                "a VirtualService needs `http`, `tls` or `tcp` routes",
            );
        }
        for (i, route) in http.iter().enumerate() {
            route.validate(&push_index("spec.http", i), delegate, &mut out);
        }
        for (i, route) in tls.iter().enumerate() {
            route.validate(&push_index("spec.tls", i), &mut out);
        }
        for (i, route) in tcp.iter().enumerate() {
            route.validate(&push_index("spec.tcp", i), &mut out);
        }
        out.extend(super::check_export_to(
            self.export_to.as_deref(),
            "spec.exportTo",
        ));
        out
    }
}

impl HttpRoute {
    /// `in_delegate`: the route belongs to a delegate VirtualService.
    fn validate(&self, path: &str, in_delegate: bool, out: &mut Vec<Finding>) {
        self.validate_actions(path, in_delegate, out);
        let matches = self.r#match.as_deref().unwrap_or_default();
        for (i, m) in matches.iter().enumerate() {
            m.validate(&push_index(&at(path, "match"), i), out);
        }
        for (i, route) in self.route.iter().flatten().enumerate() {
            let route_path = push_index(&at(path, "route"), i);
            checks::require(out, &route_path, "destination", route.destination.as_ref());
            if let Some(destination) = &route.destination {
                destination.validate(&at(&route_path, "destination"), out);
            }
            check_weight(out, &route_path, route.weight);
        }
        let weights: Vec<_> = self.route.iter().flatten().map(|r| r.weight).collect();
        check_total_weight(out, &at(path, "route"), &weights);
        if let Some(redirect) = &self.redirect {
            redirect.validate(&at(path, "redirect"), matches, out);
        }
        if let Some(response) = &self.direct_response {
            response.validate(&at(path, "directResponse"), out);
        }
        if let Some(rewrite) = &self.rewrite {
            rewrite.validate(&at(path, "rewrite"), out);
        }
        if let Some(retries) = &self.retries {
            retries.validate(&at(path, "retries"), out);
        }
        if let Some(fault) = &self.fault {
            fault.validate(&at(path, "fault"), out);
        }
        if let Some(mirror) = &self.mirror {
            mirror.validate(&at(path, "mirror"), out);
        }
        for (i, mirror) in self.mirrors.iter().flatten().enumerate() {
            let mirror_path = push_index(&at(path, "mirrors"), i);
            checks::require(
                out,
                &mirror_path,
                "destination",
                mirror.destination.as_ref(),
            );
            if let Some(destination) = &mirror.destination {
                destination.validate(&at(&mirror_path, "destination"), out);
            }
            if let Some(percentage) = &mirror.percentage {
                percentage.validate(&at(&mirror_path, "percentage"), out);
            }
        }
        if let Some(percent) = self.mirror_percent {
            checks::percentage(out, &at(path, "mirrorPercent"), f64::from(percent));
        }
        if let Some(percentage) = &self.mirror_percentage {
            percentage.validate(&at(path, "mirrorPercentage"), out);
        }
        if let Some(cors) = &self.cors_policy {
            cors.validate(&at(path, "corsPolicy"), out);
        }
    }

    /// What the route does: istio/istio `validateHTTPRouteConflict`.
    fn validate_actions(&self, path: &str, in_delegate: bool, out: &mut Vec<Finding>) {
        let has_route = self.route.as_ref().is_some_and(|r| !r.is_empty());
        if self.delegate.is_some() {
            if in_delegate {
                invalid(
                    out,
                    &at(path, "delegate"),
                    "a route of a delegate VirtualService cannot delegate again",
                );
            } else {
                // A root route only delegates.
                for (set, field) in [(self.redirect.is_some(), "redirect"), (has_route, "route")] {
                    if set {
                        invalid(
                            out,
                            path,
                            format!("a route with `delegate` cannot also have `{field}`"),
                        );
                    }
                }
                return;
            }
        }
        let exclusive = [
            ("route", has_route),
            ("redirect", self.redirect.is_some()),
            ("directResponse", self.direct_response.is_some()),
        ];
        checks::one_of(out, path, &exclusive);
        if self.redirect.is_some() || self.direct_response.is_some() {
            let action = if self.redirect.is_some() {
                "redirect"
            } else {
                "directResponse"
            };
            for (set, field) in [
                (self.fault.is_some(), "fault"),
                (self.rewrite.is_some(), "rewrite"),
            ] {
                checks::not_both(out, path, (action, true), (field, set));
            }
        } else if !has_route {
            invalid(
                out,
                path,
                "a route needs `route`, `redirect` or `directResponse`",
            );
        }
        checks::not_both(
            out,
            path,
            ("mirror", self.mirror.is_some()),
            ("mirrors", self.mirrors.is_some()),
        );
    }
}

impl HttpMatchRequest {
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        // istio/istio validateHTTPRouteMatchRequest: only `uri` may have an empty prefix.
        if let Some(uri) = &self.uri {
            uri.validate(&at(path, "uri"), EmptyPrefix::Allowed, out);
        }
        for (field, value) in [
            ("scheme", &self.scheme),
            ("method", &self.method),
            ("authority", &self.authority),
        ] {
            if let Some(value) = value {
                value.validate(&at(path, field), EmptyPrefix::Refused, out);
            }
        }
        for (field, map) in [
            ("headers", &self.headers),
            ("queryParams", &self.query_params),
        ] {
            for (key, value) in map.iter().flatten() {
                value.validate(&push_key(&at(path, field), key), EmptyPrefix::Refused, out);
            }
        }
        for (key, value) in self.without_headers.iter().flatten() {
            // `regex: "*"` is not a regex here: it means the header is present.
            if value.regex.as_deref() != Some("*") {
                let field = push_key(&at(path, "withoutHeaders"), key);
                value.validate(&field, EmptyPrefix::Refused, out);
            }
        }
        checks::port_if_set(out, &at(path, "port"), self.port);
        check_source(
            out,
            path,
            self.source_labels.as_ref(),
            self.source_namespace.as_deref(),
        );
    }
}

/// `sourceLabels` and `sourceNamespace` of a match.
fn check_source(
    out: &mut Vec<Finding>,
    path: &str,
    labels: Option<&BTreeMap<String, String>>,
    namespace: Option<&str>,
) {
    if let Some(labels) = labels {
        out.extend(check_labels(labels, &at(path, "sourceLabels")));
    }
    if let Some(namespace) = namespace.filter(|n| !n.is_empty()) {
        if let Err(why) = check_label_name(namespace) {
            invalid(out, &at(path, "sourceNamespace"), why);
        }
    }
}

/// Whether a `prefix` match may be empty.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmptyPrefix {
    /// The path: an empty prefix matches every path.
    Allowed,
    /// Elsewhere (Envoy's string matcher refuses an empty prefix).
    Refused,
}

impl StringMatch {
    pub(crate) fn validate(&self, path: &str, empty_prefix: EmptyPrefix, out: &mut Vec<Finding>) {
        checks::one_of(
            out,
            path,
            &[
                ("exact", self.exact.is_some()),
                ("prefix", self.prefix.is_some()),
                ("regex", self.regex.is_some()),
            ],
        );
        if self.prefix.as_deref() == Some("") && empty_prefix == EmptyPrefix::Refused {
            invalid(out, &at(path, "prefix"), "a prefix match must not be empty");
        }
        if let Some(re) = &self.regex {
            checks::regex(out, &at(path, "regex"), re);
        }
    }

    /// Whether a value is set (the oneof is not empty).
    fn is_set(&self) -> bool {
        self.exact.is_some() || self.prefix.is_some() || self.regex.is_some()
    }
}

impl Destination {
    pub(crate) fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        // istio/istio validateDestination.
        if self.host.is_empty() {
            invalid(out, &at(path, "host"), "missing required field `host`");
        } else if self.host == "*" {
            invalid(
                out,
                &at(path, "host"),
                "`*` is not a destination host: name the service",
            );
        }
        if let Some(subset) = &self.subset {
            if let Err(why) = check_label_name(subset) {
                invalid(
                    out,
                    &at(path, "subset"),
                    why.replace("namespace", "subset name"),
                );
            }
        }
        if let Some(port) = &self.port {
            port.validate(&at(path, "port"), out);
        }
    }
}

impl PortSelector {
    pub(crate) fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        checks::port(out, &at(path, "number"), self.number.unwrap_or(0));
    }
}

/// istio/istio validateWeight: a weight is not negative.
fn check_weight(out: &mut Vec<Finding>, path: &str, weight: Option<i32>) {
    checks::non_negative(out, &at(path, "weight"), weight);
}

/// istio/istio validateHTTPRouteDestinations: several destinations need a non-zero total
/// weight.
fn check_total_weight(out: &mut Vec<Finding>, path: &str, weights: &[Option<i32>]) {
    let total: i64 = weights.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
    if weights.len() > 1 && total == 0 {
        invalid(
            out,
            path,
            "the destinations' weights add up to 0: give at least one a weight",
        );
    }
}

impl HttpRedirect {
    /// istio/istio validateHTTPRedirect.
    fn validate(&self, path: &str, matches: &[HttpMatchRequest], out: &mut Vec<Finding>) {
        checks::one_of(
            out,
            path,
            &[
                ("port", self.port.is_some()),
                ("derivePort", self.derive_port.is_some()),
            ],
        );
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        checks::not_both(
            out,
            path,
            ("uri", set(&self.uri)),
            ("prefixRewrite", set(&self.prefix_rewrite)),
        );
        if set(&self.prefix_rewrite)
            && matches
                .iter()
                .filter_map(|m| m.uri.as_ref())
                .any(|uri| uri.is_set() && uri.prefix.is_none())
        {
            invalid(
                out,
                &at(path, "prefixRewrite"),
                "`prefixRewrite` needs every `uri` match of the route to be a `prefix` match",
            );
        }
        let any_target = set(&self.uri)
            || set(&self.prefix_rewrite)
            || set(&self.authority)
            || set(&self.scheme)
            || self.port.is_some()
            || self.derive_port.is_some();
        if !any_target {
            invalid(
                out,
                path,
                "a redirect needs `uri`, `prefixRewrite`, `authority`, `scheme`, `port` or \
                 `derivePort`",
            );
        }
        if let Some(code) = self.redirect_code.filter(|c| *c != 0) {
            if !(300..=399).contains(&code) {
                invalid(
                    out,
                    &at(path, "redirectCode"),
                    format!("{code} is not a redirect status (3xx)"),
                );
            }
        }
        if let Some(scheme) = self.scheme.as_deref().filter(|s| !s.is_empty()) {
            if scheme != "http" && scheme != "https" {
                invalid(
                    out,
                    &at(path, "scheme"),
                    format!("`{scheme}` is not `http` or `https`"),
                );
            }
        }
        checks::port_if_set(out, &at(path, "port"), self.port);
    }
}

impl HttpDirectResponse {
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        match self.status {
            None => invalid(out, path, "missing required field `status`"),
            Some(status) => check_http_status(out, &at(path, "status"), i64::from(status)),
        }
        if let Some(body) = &self.body {
            checks::one_of(
                out,
                &at(path, "body"),
                &[
                    ("string", body.string.is_some()),
                    ("bytes", body.bytes.is_some()),
                ],
            );
        }
    }
}

/// istio/istio validateHTTPStatus: 200 to 600.
fn check_http_status(out: &mut Vec<Finding>, path: &str, status: i64) {
    if !(200..=600).contains(&status) {
        invalid(
            out,
            path,
            format!("HTTP status {status} is out of range 200-600"),
        );
    }
}

impl HttpRewrite {
    /// istio/istio validateHTTPRewrite.
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        let uri = self.uri.as_deref().is_some_and(|u| !u.is_empty());
        let authority = self.authority.as_deref().is_some_and(|a| !a.is_empty());
        let regex = self.uri_regex_rewrite.is_some();
        checks::not_both(out, path, ("uri", uri), ("uriRegexRewrite", regex));
        if !uri && !authority && !regex {
            invalid(
                out,
                path,
                "a rewrite needs `uri`, `uriRegexRewrite` or `authority`",
            );
        }
        if let Some(rewrite) = &self.uri_regex_rewrite {
            let rewrite_path = at(path, "uriRegexRewrite");
            checks::require_text(out, &rewrite_path, "match", rewrite.r#match.as_deref());
            checks::require_text(out, &rewrite_path, "rewrite", rewrite.rewrite.as_deref());
            if let Some(re) = rewrite.r#match.as_deref().filter(|r| !r.is_empty()) {
                checks::regex(out, &at(&rewrite_path, "match"), re);
            }
        }
    }
}

impl HttpRetry {
    /// istio/istio `agent.ValidateHTTPRetry`.
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        let attempts = self.attempts.unwrap_or(0);
        checks::non_negative(out, &at(path, "attempts"), self.attempts);
        let configured = self.per_try_timeout.is_some()
            || self.retry_on.as_deref().is_some_and(|r| !r.is_empty())
            || self.retry_remote_localities.is_some();
        if attempts == 0 && configured {
            invalid(
                out,
                path,
                "retries are configured but `attempts` is 0 (retries disabled): set `attempts`",
            );
        }
    }
}

impl HttpFaultInjection {
    /// istio/istio validateHTTPFaultInjection.
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        if self.delay.is_none() && self.abort.is_none() {
            invalid(out, path, "a fault needs `delay` or `abort`");
        }
        if let Some(delay) = &self.delay {
            let delay_path = at(path, "delay");
            checks::one_of(
                out,
                &delay_path,
                &[
                    ("fixedDelay", delay.fixed_delay.is_some()),
                    ("exponentialDelay", delay.exponential_delay.is_some()),
                ],
            );
            if let Some(percent) = delay.percent {
                checks::percentage(out, &at(&delay_path, "percent"), f64::from(percent));
            }
            if let Some(percentage) = &delay.percentage {
                percentage.validate(&at(&delay_path, "percentage"), out);
            }
        }
        if let Some(abort) = &self.abort {
            let abort_path = at(path, "abort");
            checks::one_of(
                out,
                &abort_path,
                &[
                    ("httpStatus", abort.http_status.is_some()),
                    ("grpcStatus", abort.grpc_status.is_some()),
                    ("http2Error", abort.http2_error.is_some()),
                ],
            );
            if let Some(status) = abort.http_status {
                check_http_status(out, &at(&abort_path, "httpStatus"), i64::from(status));
            }
            if let Some(percentage) = &abort.percentage {
                percentage.validate(&at(&abort_path, "percentage"), out);
            }
        }
    }
}

impl CorsPolicy {
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        for (i, origin) in self.allow_origins.iter().flatten().enumerate() {
            let origin_path = push_index(&at(path, "allowOrigins"), i);
            // istio/istio validateAllowOrigins: a match with an empty value is refused.
            let value = [&origin.exact, &origin.prefix, &origin.regex]
                .into_iter()
                .find_map(Option::as_deref);
            if value.is_none_or(str::is_empty) {
                invalid(out, &origin_path, "an origin match needs a non-empty value");
            } else {
                origin.validate(&origin_path, EmptyPrefix::Refused, out);
            }
        }
    }
}

impl TlsRoute {
    /// istio/istio validateTLSRoute.
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        checks::require_items(out, path, "match", self.r#match.as_deref());
        for (i, m) in self.r#match.iter().flatten().enumerate() {
            let match_path = push_index(&at(path, "match"), i);
            checks::require_items(out, &match_path, "sniHosts", m.sni_hosts.as_deref());
            check_subnets(out, &match_path, m.destination_subnets.as_deref());
            checks::port_if_set(out, &at(&match_path, "port"), m.port);
            check_source(
                out,
                &match_path,
                m.source_labels.as_ref(),
                m.source_namespace.as_deref(),
            );
        }
        validate_route_destinations(path, self.route.as_deref(), out);
    }
}

impl TcpRoute {
    /// istio/istio validateTCPRoute.
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        for (i, m) in self.r#match.iter().flatten().enumerate() {
            let match_path = push_index(&at(path, "match"), i);
            check_subnets(out, &match_path, m.destination_subnets.as_deref());
            checks::port_if_set(out, &at(&match_path, "port"), m.port);
            check_source(
                out,
                &match_path,
                m.source_labels.as_ref(),
                m.source_namespace.as_deref(),
            );
        }
        validate_route_destinations(path, self.route.as_deref(), out);
    }
}

fn check_subnets(out: &mut Vec<Finding>, path: &str, subnets: Option<&[String]>) {
    for (i, subnet) in subnets.unwrap_or_default().iter().enumerate() {
        checks::ip_or_cidr(out, &push_index(&at(path, "destinationSubnets"), i), subnet);
    }
}

/// The `route` of a TLS or TCP rule: required, each with a destination.
fn validate_route_destinations(
    path: &str,
    routes: Option<&[RouteDestination]>,
    out: &mut Vec<Finding>,
) {
    checks::require_items(out, path, "route", routes);
    let routes = routes.unwrap_or_default();
    for (i, route) in routes.iter().enumerate() {
        let route_path = push_index(&at(path, "route"), i);
        checks::require(out, &route_path, "destination", route.destination.as_ref());
        if let Some(destination) = &route.destination {
            destination.validate(&at(&route_path, "destination"), out);
        }
        check_weight(out, &route_path, route.weight);
    }
    let weights: Vec<_> = routes.iter().map(|r| r.weight).collect();
    check_total_weight(out, &at(path, "route"), &weights);
}

#[cfg(test)]
mod tests {
    use super::super::tests::findings_of;
    use super::*;
    use crate::diag::code;

    const ROUTE: &str = "route: [{destination: {host: a}}]";

    #[test]
    fn virtual_service_validation() {
        let cases: Vec<(String, Vec<&str>)> = vec![
            (format!("hosts: [a]\nhttp:\n- {ROUTE}\n"), vec![]),
            ("hosts: [a]\n".into(), vec!["spec"]),
            // A delegate: no hosts; it may have no gateways, TLS or TCP routes.
            (format!("http:\n- {ROUTE}\n"), vec![]),
            (
                format!("gateways: [gw]\ntcp:\n- {ROUTE}\ntls:\n- match: [{{sniHosts: [a]}}]\n  {ROUTE}\n"),
                vec!["spec.gateways", "spec.tls", "spec.tcp"],
            ),
            (format!("hosts: [\"*\"]\nhttp:\n- {ROUTE}\n"), vec!["spec.hosts[0]"]),
            (format!("hosts: [\"*\"]\ngateways: [mesh]\nhttp:\n- {ROUTE}\n"), vec!["spec.hosts[0]"]),
            (format!("hosts: [\"*\"]\ngateways: [ns/gw]\nhttp:\n- {ROUTE}\n"), vec![]),
            (format!("hosts: [a]\nexportTo: [Bad]\nhttp:\n- {ROUTE}\n"), vec!["spec.exportTo[0]"]),
            // Route actions.
            ("hosts: [a]\nhttp:\n- name: r\n".into(), vec!["spec.http[0]"]),
            (
                format!("hosts: [a]\nhttp:\n- {ROUTE}\n  redirect: {{uri: /x}}\n  directResponse: {{status: 503}}\n"),
                vec!["spec.http[0]"],
            ),
            (
                "hosts: [a]\nhttp:\n- redirect: {uri: /x}\n  fault: {abort: {httpStatus: 500}}\n  rewrite: {uri: /y}\n".into(),
                vec!["spec.http[0]", "spec.http[0]"],
            ),
            (
                format!("hosts: [a]\nhttp:\n- delegate: {{name: d}}\n  {ROUTE}\n"),
                vec!["spec.http[0]"],
            ),
            ("hosts: [a]\nhttp:\n- delegate: {name: d, namespace: n}\n".into(), vec![]),
            (format!("http:\n- delegate: {{name: d}}\n  {ROUTE}\n"), vec!["spec.http[0].delegate"]),
            (
                format!("hosts: [a]\nhttp:\n- {ROUTE}\n  mirror: {{host: m}}\n  mirrors: [{{destination: {{host: m}}}}]\n"),
                vec!["spec.http[0]"],
            ),
            // Destinations.
            (
                "hosts: [a]\nhttp:\n- route:\n  - destination: {host: \"*\", subset: V1, port: {}}\n    weight: -1\n  - {}\n".into(),
                vec![
                    "spec.http[0].route[0].destination.host",
                    "spec.http[0].route[0].destination.subset",
                    "spec.http[0].route[0].destination.port.number",
                    "spec.http[0].route[0].weight",
                    "spec.http[0].route[1]",
                ],
            ),
            (
                "hosts: [a]\nhttp:\n- route:\n  - destination: {host: a, port: {number: 70000}}\n  - destination: {host: b}\n".into(),
                vec!["spec.http[0].route[0].destination.port.number", "spec.http[0].route"],
            ),
            // Matches: regexes, oneofs, ports, sources.
            (
                format!("hosts: [a]\nhttp:\n- match:\n  - uri: {{regex: \"/api/(v1\"}}\n    method: {{exact: GET, prefix: G}}\n    headers: {{x-user: {{prefix: \"\"}}}}\n    queryParams: {{q: {{regex: \"[a-\"}}}}\n    withoutHeaders: {{x-debug: {{regex: \"*\"}}}}\n    port: 70000\n    sourceLabels: {{\"app/\": x}}\n    sourceNamespace: Prod\n  - uri: {{prefix: \"\"}}\n  {ROUTE}\n"),
                vec![
                    "spec.http[0].match[0].uri.regex",
                    "spec.http[0].match[0].method",
                    "spec.http[0].match[0].headers.x-user.prefix",
                    "spec.http[0].match[0].queryParams.q.regex",
                    "spec.http[0].match[0].port",
                    "spec.http[0].match[0].sourceLabels[\"app/\"]",
                    "spec.http[0].match[0].sourceNamespace",
                ],
            ),
            // Redirects, direct responses, rewrites.
            (
                "hosts: [a]\nhttp:\n- match: [{uri: {exact: /a}}]\n  redirect: {uri: /b, prefixRewrite: /c, port: 8080, derivePort: FROM_REQUEST_PORT, redirectCode: 200, scheme: ftp}\n".into(),
                vec![
                    "spec.http[0].redirect",
                    "spec.http[0].redirect",
                    "spec.http[0].redirect.prefixRewrite",
                    "spec.http[0].redirect.redirectCode",
                    "spec.http[0].redirect.scheme",
                ],
            ),
            ("hosts: [a]\nhttp:\n- redirect: {redirectCode: 302}\n".into(), vec!["spec.http[0].redirect"]),
            (
                "hosts: [a]\nhttp:\n- directResponse: {body: {string: x, bytes: eA==}}\n- directResponse: {status: 700}\n".into(),
                vec!["spec.http[0].directResponse", "spec.http[0].directResponse.body", "spec.http[1].directResponse.status"],
            ),
            (
                format!("hosts: [a]\nhttp:\n- rewrite: {{}}\n  {ROUTE}\n- rewrite: {{uri: /x, uriRegexRewrite: {{match: \"(\", rewrite: \"\"}}}}\n  {ROUTE}\n"),
                vec![
                    "spec.http[0].rewrite",
                    "spec.http[1].rewrite",
                    "spec.http[1].rewrite.uriRegexRewrite",
                    "spec.http[1].rewrite.uriRegexRewrite.match",
                ],
            ),
            // Retries, faults, mirrors, CORS.
            (
                format!("hosts: [a]\nhttp:\n- {ROUTE}\n  retries: {{retryOn: 5xx}}\n- {ROUTE}\n  retries: {{attempts: -1}}\n- {ROUTE}\n  retries: {{attempts: 3, perTryTimeout: 2s, retryOn: \"5xx,connect-failure\"}}\n"),
                vec!["spec.http[0].retries", "spec.http[1].retries.attempts"],
            ),
            (
                format!("hosts: [a]\nhttp:\n- {ROUTE}\n  fault: {{}}\n- {ROUTE}\n  fault:\n    delay: {{fixedDelay: 5s, exponentialDelay: 1s, percent: 101, percentage: {{value: -1}}}}\n    abort: {{httpStatus: 99, grpcStatus: UNAVAILABLE, percentage: {{value: 100.5}}}}\n"),
                vec![
                    "spec.http[0].fault",
                    "spec.http[1].fault.delay",
                    "spec.http[1].fault.delay.percent",
                    "spec.http[1].fault.delay.percentage.value",
                    "spec.http[1].fault.abort",
                    "spec.http[1].fault.abort.httpStatus",
                    "spec.http[1].fault.abort.percentage.value",
                ],
            ),
            (
                format!("hosts: [a]\nhttp:\n- {ROUTE}\n  mirrorPercent: 150\n  mirrorPercentage: {{value: 200}}\n  mirrors: [{{percentage: {{value: 50}}}}]\n  corsPolicy: {{allowOrigins: [{{exact: \"\"}}, {{regex: \"(\"}}, {{prefix: https://}}]}}\n"),
                vec![
                    "spec.http[0].mirrors[0]",
                    "spec.http[0].mirrorPercent",
                    "spec.http[0].mirrorPercentage.value",
                    "spec.http[0].corsPolicy.allowOrigins[0]",
                    "spec.http[0].corsPolicy.allowOrigins[1].regex",
                ],
            ),
            // TLS and TCP routes.
            (
                "hosts: [a]\ngateways: [ns/gw]\ntls:\n- route: []\n- match: [{destinationSubnets: [10.0.0.0/33], port: 0}]\n  route: [{destination: {host: b}}]\n".into(),
                vec!["spec.tls[0]", "spec.tls[0]", "spec.tls[1].match[0]", "spec.tls[1].match[0].destinationSubnets[0]"],
            ),
            (
                "hosts: [a]\ntcp:\n- match: [{port: 99999, sourceLabels: {app: x}, destinationSubnets: [10.1.0.0/16, fe80::1]}]\n".into(),
                vec!["spec.tcp[0]", "spec.tcp[0].match[0].port"],
            ),
        ];
        for (yaml, want) in cases {
            let got = findings_of(&yaml, VirtualServiceSpec::validate);
            let mut got: Vec<String> = got
                .into_iter()
                .inspect(|(_, c)| assert_eq!(*c, code::INVALID, "{yaml}"))
                .map(|(f, _)| f)
                .collect();
            got.sort();
            let mut want: Vec<String> = want.into_iter().map(str::to_owned).collect();
            want.sort();
            assert_eq!(got, want, "{yaml}");
        }
    }
}
