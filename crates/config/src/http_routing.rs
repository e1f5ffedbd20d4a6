//! VirtualService HTTP routing, compiled once and decided per request (pure): which `http[]`
//! route of which VirtualService a request takes, and what that route does with it. The same
//! table serves a gateway (`gateways: [ns/name]`) and the sidecars' outbound side (`mesh`).
//!
//! The rules reproduce Envoy's route selection as Istio configures it (docs/routing.md):
//! - a request is matched against the virtual host its authority names: an exact host first,
//!   then the longest `*.suffix` wildcard, then `*`; the port of the authority is ignored;
//! - within the host, routes are tried in order: the VirtualServices in creation order (then by
//!   namespace and name), each one's `http[]` in order; the first route with a matching `match`
//!   entry (or none) wins; no route is a 404 (`NR`);
//! - the `match` entries of a route are OR-ed, the fields of one entry AND-ed; string matches
//!   are exact, prefix, or a regex matched against the whole value (RE2 semantics, the `regex`
//!   crate, size-limited); an empty match on a header or query parameter means "present";
//! - a weighted route picks a destination by the request's `pick` in `[0, total weight)`.
//!
//! Randomness comes in as numbers ([`Rolls`]), so every decision is reproducible in tests.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use regex::{Regex, RegexBuilder};

use crate::istio::{
    Destination, HeaderOperations, HttpMatchRequest, HttpRoute, RedirectPortSelection, StringMatch,
    VirtualServiceSpec,
};
use crate::load::Resource;

/// Largest compiled regex, bytes (Ward's limit; Envoy's default program size limit is similar).
const REGEX_SIZE_LIMIT: usize = 1 << 16;
/// The cluster-local suffix short hosts are completed with.
const CLUSTER_SUFFIX: &str = "svc.cluster.local";

/// Why a table could not be compiled (a regex past the size limit: load checks the rest).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("VirtualService {object}: {field}: {reason}")]
pub struct RouteError {
    /// `namespace/name`.
    pub object: String,
    /// The field path.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// Which VirtualService route decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRef {
    /// `namespace/name` of the VirtualService.
    pub virtual_service: String,
    /// The index in its `http[]`.
    pub index: usize,
    /// The route's `name`, if any.
    pub name: Option<String>,
}

/// A string match, compiled.
#[derive(Clone, Debug)]
enum Matcher {
    /// Matches any value that is present.
    Present,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Matcher {
    fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            Matcher::Present => true,
            Matcher::Exact(e) if ignore_case => e.eq_ignore_ascii_case(value),
            Matcher::Exact(e) => e == value,
            Matcher::Prefix(p) if ignore_case => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            Matcher::Prefix(p) => value.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}

/// One `match` entry, compiled. Every field present must match.
#[derive(Clone, Debug, Default)]
struct Match {
    uri: Option<Matcher>,
    ignore_uri_case: bool,
    scheme: Option<Matcher>,
    method: Option<Matcher>,
    authority: Option<Matcher>,
    headers: Vec<(String, Matcher)>,
    without_headers: Vec<(String, Matcher)>,
    query_params: Vec<(String, Matcher)>,
    port: Option<u16>,
    source_labels: BTreeMap<String, String>,
    gateways: Vec<String>,
    source_namespace: Option<String>,
}

/// A destination with its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedDestination {
    /// The service host (completed: a short name is in the VirtualService's namespace).
    pub host: String,
    /// The DestinationRule subset.
    pub subset: Option<String>,
    /// The service port, when the destination names one.
    pub port: Option<u16>,
    /// Its weight; destinations of one route without weights share evenly.
    pub weight: u32,
    /// Header changes for requests to this destination and their responses.
    pub headers: HeaderChanges,
}

/// Header changes of one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOps {
    /// Replace (or add) these headers.
    pub set: Vec<(String, String)>,
    /// Add these values beside any present.
    pub add: Vec<(String, String)>,
    /// Remove these headers.
    pub remove: Vec<String>,
}

/// Header changes for the request and for the response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderChanges {
    /// On the request sent upstream.
    pub request: HeaderOps,
    /// On the response sent back.
    pub response: HeaderOps,
}

/// What a route does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteAction {
    /// Forward to one of these destinations.
    Forward(Vec<WeightedDestination>),
    /// Answer with a redirect.
    Redirect(RedirectSpec),
    /// Answer with this status and body.
    Respond {
        /// The status.
        status: u16,
        /// The body.
        body: Vec<u8>,
    },
}

/// A compiled `redirect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectSpec {
    uri: Option<String>,
    prefix_rewrite: Option<String>,
    authority: Option<String>,
    scheme: Option<String>,
    port: Option<PortChoice>,
    status: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortChoice {
    Fixed(u16),
    ProtocolDefault,
    RequestPort,
}

/// A compiled `rewrite`.
#[derive(Clone, Debug)]
struct Rewrite {
    uri: Option<String>,
    authority: Option<String>,
    regex: Option<(Regex, String)>,
}

/// A compiled `fault`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// Delay this share of requests (percent) by this long.
    pub delay: Option<(f64, Duration)>,
    /// Answer this share of requests (percent) with this status.
    pub abort: Option<(f64, u16)>,
}

/// A compiled `retries`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retries {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Each attempt's timeout.
    pub per_try_timeout: Option<Duration>,
    /// Envoy's retry conditions (`5xx`, `gateway-error`, `connect-failure`, `retriable-4xx`,
    /// `refused-stream`, `reset`, `retriable-status-codes`, ...).
    pub retry_on: Vec<String>,
    /// The status codes `retriable-status-codes` retries: the numbers of `retryOn` (Istio
    /// turns them into Envoy's `retriable_status_codes`); Istio's default policy has 503.
    pub retriable_status_codes: Vec<u16>,
    /// The base interval between attempts (`backoff`); `None`: Envoy's 25 ms.
    pub backoff: Option<Duration>,
}

/// One compiled route.
#[derive(Clone, Debug)]
pub struct Route {
    /// Where it was written.
    pub source: RouteRef,
    matches: Vec<Match>,
    /// What it does.
    pub action: RouteAction,
    rewrite: Option<Rewrite>,
    /// Route-level header changes.
    pub headers: HeaderChanges,
    /// `timeout`; `None`: Istio's default, none.
    pub timeout: Option<Duration>,
    /// `retries`; Istio's default when absent is 2 attempts on
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`.
    pub retries: Retries,
    /// `fault`.
    pub fault: Option<Fault>,
    /// `mirror`/`mirrors`: where to copy requests, with the share (percent).
    pub mirrors: Vec<(WeightedDestination, f64)>,
    /// `corsPolicy`.
    pub cors: Option<Cors>,
}

/// The routes for one host set.
#[derive(Clone, Debug)]
struct VirtualHost {
    /// Lowercase: exact names, `*.suffix` or `*`.
    domains: Vec<String>,
    routes: Vec<Route>,
}

/// Every VirtualService route one gateway (or `mesh`) serves.
#[derive(Clone, Debug, Default)]
pub struct HttpRoutes {
    hosts: Vec<VirtualHost>,
}

/// A request as routing sees it.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:scheme` (`http` or `https`).
    pub scheme: &'a str,
    /// `:authority` / `Host`, possibly with a port.
    pub authority: &'a str,
    /// The path with its query string.
    pub path_and_query: &'a str,
    /// Request headers, names lowercase.
    pub headers: &'a [(String, String)],
    /// The port the request arrived on (the gateway's server port, or the service port).
    pub port: u16,
    /// The gateway deciding (`ns/name`), or `mesh`.
    pub gateway: &'a str,
    /// The calling workload's labels (mesh routing), empty at a gateway.
    pub source_labels: &'a BTreeMap<String, String>,
    /// The calling workload's namespace (mesh routing).
    pub source_namespace: Option<&'a str>,
}

/// The random numbers one decision uses, each uniform: `weight` picks the destination,
/// `delay`, `abort` and `mirror` in `[0, 100)` decide the fault and mirror shares.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rolls {
    /// Any number; reduced modulo the route's total weight.
    pub weight: u32,
    /// In `[0, 100)`.
    pub delay: f64,
    /// In `[0, 100)`.
    pub abort: f64,
    /// In `[0, 100)`.
    pub mirror: f64,
}

/// What to do with a request.
#[derive(Debug, PartialEq)]
pub enum Decision<'a> {
    /// No route: 404 with `response_flags` `NR`.
    NoRoute,
    /// Answer with a redirect.
    Redirect {
        /// The deciding route.
        route: &'a RouteRef,
        /// The status (301 by default).
        status: u16,
        /// The `Location`.
        location: String,
    },
    /// Answer directly (a `directResponse`, or a fault abort).
    Respond {
        /// The deciding route.
        route: &'a RouteRef,
        /// A fault abort (`response_flags` `FI`), not a `directResponse`.
        abort: bool,
        /// The status.
        status: u16,
        /// The body.
        body: Vec<u8>,
    },
    /// Forward upstream.
    Forward(Box<Forward<'a>>),
}

/// A request to forward, as the route wants it.
#[derive(Debug, PartialEq)]
pub struct Forward<'a> {
    /// The deciding route.
    pub route: &'a Route,
    /// The picked destination.
    pub destination: &'a WeightedDestination,
    /// The path and query to send (after `rewrite`).
    pub path_and_query: String,
    /// The authority to send (after `rewrite`).
    pub authority: String,
    /// Delay before forwarding (fault injection).
    pub delay: Option<Duration>,
    /// Mirrors this request goes to too.
    pub mirrors: Vec<&'a WeightedDestination>,
}

impl PartialEq for Route {
    fn eq(&self, other: &Route) -> bool {
        self.source == other.source
    }
}

impl HttpRoutes {
    /// Compiles the `http` routes of `services` that apply to `gateway` (`ns/name` of a
    /// Gateway, or `mesh`), in the order given (callers sort by creation time, then namespace
    /// and name).
    pub fn compile(
        services: &[&Resource<VirtualServiceSpec>],
        gateway: &str,
    ) -> Result<HttpRoutes, RouteError> {
        let sources: Vec<RouteSource<'_>> = services
            .iter()
            .map(|vs| RouteSource {
                namespace: &vs.meta.namespace,
                name: &vs.meta.name,
                spec: &vs.spec,
            })
            .collect();
        HttpRoutes::compile_sources(&sources, gateway)
    }

    /// [`HttpRoutes::compile`] from the specs alone (a proxy rebuilds its table from the specs
    /// its config carries).
    pub fn compile_sources(
        services: &[RouteSource<'_>],
        gateway: &str,
    ) -> Result<HttpRoutes, RouteError> {
        let mut hosts: Vec<VirtualHost> = Vec::new();
        for vs in services {
            let namespace = vs.namespace;
            if !binds(&vs.spec.gateways, namespace, gateway) {
                continue;
            }
            let mut routes = Vec::new();
            for (i, http) in vs.spec.http.iter().flatten().enumerate() {
                routes.push(compile_route(vs, i, http)?);
            }
            let domains: Vec<String> = vs
                .spec
                .hosts
                .iter()
                .flatten()
                .map(|h| complete_host(h, namespace, gateway))
                .collect();
            for domain in domains {
                match hosts.iter_mut().find(|h| h.domains == [domain.clone()]) {
                    Some(host) => host.routes.extend(routes.iter().cloned()),
                    None => hosts.push(VirtualHost {
                        domains: vec![domain],
                        routes: routes.clone(),
                    }),
                }
            }
        }
        Ok(HttpRoutes { hosts })
    }

    /// Whether some VirtualService covers `host` (a service host, lowercase, no port).
    pub fn covers(&self, host: &str) -> bool {
        self.virtual_host_named(host).is_some()
    }

    /// Routes one request for the service `host`: the virtual host is chosen by the service
    /// (as Istio attaches a VirtualService to the service's virtual host on a sidecar), the
    /// routes match the request as it came (its own authority included).
    pub fn decide_for<'a>(
        &'a self,
        host: &str,
        request: &RequestFacts<'_>,
        rolls: Rolls,
    ) -> Decision<'a> {
        match self.virtual_host_named(host) {
            Some(vh) => vh.decide(request, rolls),
            None => Decision::NoRoute,
        }
    }

    /// Whether no route is configured.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Routes one request.
    pub fn decide<'a>(&'a self, request: &RequestFacts<'_>, rolls: Rolls) -> Decision<'a> {
        match self.virtual_host_named(strip_port(request.authority)) {
            Some(vh) => vh.decide(request, rolls),
            None => Decision::NoRoute,
        }
    }

    /// The virtual host a host name selects: exact, then the longest wildcard suffix, then `*`.
    fn virtual_host_named(&self, host: &str) -> Option<&VirtualHost> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let mut best: Option<(&VirtualHost, usize)> = None;
        for vh in &self.hosts {
            for domain in &vh.domains {
                let score = if *domain == host {
                    usize::MAX
                } else if domain == "*" {
                    0
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    if host.ends_with(suffix) && host.len() > suffix.len() {
                        suffix.len() + 1
                    } else {
                        continue;
                    }
                } else {
                    continue;
                };
                if best.is_none_or(|(_, s)| score > s) {
                    best = Some((vh, score));
                }
            }
        }
        best.map(|(vh, _)| vh)
    }
}

impl VirtualHost {
    fn decide<'a>(&'a self, request: &RequestFacts<'_>, rolls: Rolls) -> Decision<'a> {
        let (path, query) = split_query(request.path_and_query);
        for route in &self.routes {
            let Some(matched) = route.matching(request, path, query) else {
                continue;
            };
            return route.decision(request, matched, rolls);
        }
        Decision::NoRoute
    }
}

/// A VirtualService as routing compiles it: where it lives and its spec.
#[derive(Clone, Copy, Debug)]
pub struct RouteSource<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a VirtualServiceSpec,
}

/// Whether a VirtualService with `gateways` (in `namespace`) applies to `gateway`. Absent
/// means `mesh` only.
fn binds(gateways: &Option<Vec<String>>, namespace: &str, gateway: &str) -> bool {
    match gateways.as_ref().filter(|g| !g.is_empty()) {
        None => gateway == "mesh",
        Some(list) => list
            .iter()
            .any(|g| qualify_gateway(g, namespace) == gateway),
    }
}

/// A gateway reference as `ns/name`; `mesh` stays `mesh`; `name` is in `namespace`.
fn qualify_gateway(reference: &str, namespace: &str) -> String {
    if reference == "mesh" || reference.contains('/') {
        reference.to_owned()
    } else {
        format!("{namespace}/{reference}")
    }
}

/// A VirtualService host as matched: lowercase; for the mesh a short name (no dot, not `*`) is
/// completed in the VirtualService's namespace.
fn complete_host(host: &str, namespace: &str, gateway: &str) -> String {
    let host = host.to_ascii_lowercase();
    if gateway == "mesh" && !host.contains('.') && host != "*" {
        format!("{host}.{namespace}.{CLUSTER_SUFFIX}")
    } else {
        host
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // [v6]:port
        return authority
            .split_once(']')
            .map_or(authority, |(h, _)| h.trim_start_matches('['));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn split_query(path_and_query: &str) -> (&str, &str) {
    path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""))
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Match {
    /// Whether the request matches; returns the matched URI prefix, if matched by prefix.
    fn matches(&self, r: &RequestFacts<'_>, path: &str, query: &str) -> Option<Option<usize>> {
        let mut prefix_len = None;
        if let Some(uri) = &self.uri {
            if !uri.matches(path, self.ignore_uri_case) {
                return None;
            }
            if let Matcher::Prefix(p) = uri {
                prefix_len = Some(p.len());
            }
        }
        let all = self
            .scheme
            .as_ref()
            .is_none_or(|m| m.matches(r.scheme, false))
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.matches(r.method, false))
            && self
                .authority
                .as_ref()
                .is_none_or(|m| m.matches(r.authority, false))
            && self
                .headers
                .iter()
                .all(|(n, m)| header(r.headers, n).is_some_and(|v| m.matches(v, false)))
            && self
                .without_headers
                .iter()
                .all(|(n, m)| !header(r.headers, n).is_some_and(|v| m.matches(v, false)))
            && self
                .query_params
                .iter()
                .all(|(n, m)| query_param(query, n).is_some_and(|v| m.matches(v, false)))
            && self.port.is_none_or(|p| p == r.port)
            && self
                .source_labels
                .iter()
                .all(|(k, v)| r.source_labels.get(k) == Some(v))
            && (self.gateways.is_empty() || self.gateways.iter().any(|g| g == r.gateway))
            && self
                .source_namespace
                .as_deref()
                .is_none_or(|ns| r.source_namespace == Some(ns));
        all.then_some(prefix_len)
    }
}

impl Route {
    /// The first matching entry's prefix length (`Some(None)`: matched, not by prefix).
    fn matching(&self, r: &RequestFacts<'_>, path: &str, query: &str) -> Option<Option<usize>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().find_map(|m| m.matches(r, path, query))
    }

    fn decision<'a>(
        &'a self,
        r: &RequestFacts<'_>,
        prefix_len: Option<usize>,
        rolls: Rolls,
    ) -> Decision<'a> {
        if let Some((share, status)) = self.fault.as_ref().and_then(|f| f.abort) {
            if rolls.abort < share {
                return Decision::Respond {
                    route: &self.source,
                    abort: true,
                    status,
                    body: b"fault filter abort".to_vec(),
                };
            }
        }
        let (path, query) = split_query(r.path_and_query);
        match &self.action {
            RouteAction::Respond { status, body } => Decision::Respond {
                route: &self.source,
                abort: false,
                status: *status,
                body: body.clone(),
            },
            RouteAction::Redirect(redirect) => Decision::Redirect {
                route: &self.source,
                status: redirect.status,
                location: redirect.location(r, path, query, prefix_len),
            },
            RouteAction::Forward(destinations) => {
                let Some(destination) = pick(destinations, rolls.weight) else {
                    return Decision::NoRoute;
                };
                let (new_path, authority) = match &self.rewrite {
                    Some(rw) => rw.apply(path, r.authority, prefix_len),
                    None => (path.to_owned(), r.authority.to_owned()),
                };
                let path_and_query = if query.is_empty() {
                    new_path
                } else {
                    format!("{new_path}?{query}")
                };
                let delay = self
                    .fault
                    .as_ref()
                    .and_then(|f| f.delay)
                    .filter(|(share, _)| rolls.delay < *share)
                    .map(|(_, d)| d);
                let mirrors = self
                    .mirrors
                    .iter()
                    .filter(|(_, share)| rolls.mirror < *share)
                    .map(|(d, _)| d)
                    .collect();
                Decision::Forward(Box::new(Forward {
                    route: self,
                    destination,
                    path_and_query,
                    authority,
                    delay,
                    mirrors,
                }))
            }
        }
    }
}

/// The destination `roll` picks, by weight (also the gateways' `tcp[]` and `tls[]` routes).
pub(crate) fn pick_weighted(
    destinations: &[WeightedDestination],
    roll: u32,
) -> Option<&WeightedDestination> {
    pick(destinations, roll)
}

/// The destination `roll` picks, by weight.
fn pick(destinations: &[WeightedDestination], roll: u32) -> Option<&WeightedDestination> {
    let total: u64 = destinations.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return destinations.first();
    }
    let mut at = u64::from(roll) % total;
    for d in destinations {
        if at < u64::from(d.weight) {
            return Some(d);
        }
        at -= u64::from(d.weight);
    }
    destinations.last()
}

impl Rewrite {
    /// The path and authority after the rewrite. `uri` replaces the matched prefix, or the
    /// whole path when the route did not match by prefix; `uriRegexRewrite` replaces every
    /// match of its regex (`\N` is capture group N).
    fn apply(&self, path: &str, authority: &str, prefix_len: Option<usize>) -> (String, String) {
        let mut new_path = path.to_owned();
        if let Some(uri) = &self.uri {
            new_path = match prefix_len {
                Some(n) => format!("{uri}{}", path.get(n..).unwrap_or_default()),
                None => uri.clone(),
            };
        } else if let Some((regex, replacement)) = &self.regex {
            new_path = regex.replace_all(path, replacement.as_str()).into_owned();
        }
        let authority = self
            .authority
            .clone()
            .unwrap_or_else(|| authority.to_owned());
        (new_path, authority)
    }
}

impl RedirectSpec {
    fn location(
        &self,
        r: &RequestFacts<'_>,
        path: &str,
        query: &str,
        prefix_len: Option<usize>,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(r.scheme);
        let host = self
            .authority
            .clone()
            .unwrap_or_else(|| strip_port(r.authority).to_owned());
        let request_port = r
            .authority
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok());
        let port = match self.port {
            Some(PortChoice::Fixed(p)) => Some(p),
            Some(PortChoice::RequestPort) => Some(request_port.unwrap_or(r.port)),
            Some(PortChoice::ProtocolDefault) => None,
            // A new scheme or authority without a port setting takes the scheme's default.
            None => None,
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let authority = if self.scheme.is_none() && self.authority.is_none() && self.port.is_none()
        {
            // Only the path changes: the authority stays exactly as the client sent it.
            r.authority.to_owned()
        } else {
            match port {
                Some(p) if p != default_port => format!("{host}:{p}"),
                _ => host,
            }
        };
        let new_path = match (&self.uri, &self.prefix_rewrite, prefix_len) {
            (Some(uri), _, _) => uri.clone(),
            (None, Some(prefix), Some(n)) => {
                format!("{prefix}{}", path.get(n..).unwrap_or_default())
            }
            (None, Some(prefix), None) => prefix.clone(),
            (None, None, _) => path.to_owned(),
        };
        if query.is_empty() {
            format!("{scheme}://{authority}{new_path}")
        } else {
            format!("{scheme}://{authority}{new_path}?{query}")
        }
    }
}

fn compile_route(
    vs: &RouteSource<'_>,
    index: usize,
    http: &HttpRoute,
) -> Result<Route, RouteError> {
    let object = format!("{}/{}", vs.namespace, vs.name);
    let namespace = vs.namespace;
    let at = |field: &str| format!("spec.http[{index}].{field}");
    let error = |field: String, reason: String| RouteError {
        object: object.clone(),
        field,
        reason,
    };
    let mut matches = Vec::new();
    for (m, spec) in http.r#match.iter().flatten().enumerate() {
        matches.push(
            compile_match(spec, namespace)
                .map_err(|(field, reason)| error(at(&format!("match[{m}].{field}")), reason))?,
        );
    }
    let action = if let Some(response) = &http.direct_response {
        let body = match &response.body {
            Some(b) => match (&b.string, &b.bytes) {
                (Some(s), _) => s.clone().into_bytes(),
                (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| error(at("directResponse.body.bytes"), e.to_string()))?,
                (None, None) => Vec::new(),
            },
            None => Vec::new(),
        };
        RouteAction::Respond {
            status: status_code(response.status, 200),
            body,
        }
    } else if let Some(redirect) = &http.redirect {
        RouteAction::Redirect(RedirectSpec {
            uri: redirect.uri.clone(),
            prefix_rewrite: redirect.prefix_rewrite.clone(),
            authority: redirect.authority.clone(),
            scheme: redirect.scheme.clone(),
            port: match (redirect.port, redirect.derive_port) {
                (Some(p), _) => u16::try_from(p).ok().map(PortChoice::Fixed),
                (None, Some(RedirectPortSelection::FromProtocolDefault)) => {
                    Some(PortChoice::ProtocolDefault)
                }
                (None, Some(RedirectPortSelection::FromRequestPort)) => {
                    Some(PortChoice::RequestPort)
                }
                (None, None) => None,
            },
            status: status_code(redirect.redirect_code, 301),
        })
    } else {
        let routes = http.route.as_deref().unwrap_or_default();
        let weighted = routes.iter().any(|r| r.weight.is_some_and(|w| w > 0));
        let destinations = routes
            .iter()
            .filter_map(|r| {
                let d = r.destination.as_ref()?;
                let weight = if weighted {
                    u32::try_from(r.weight.unwrap_or(0)).unwrap_or(0)
                } else {
                    1
                };
                Some(destination(d, namespace, weight, r.headers.as_ref()))
            })
            .collect();
        RouteAction::Forward(destinations)
    };
    let rewrite = match &http.rewrite {
        None => None,
        Some(rw) => {
            let regex = match &rw.uri_regex_rewrite {
                Some(rr) => {
                    let pattern = rr.r#match.as_deref().unwrap_or_default();
                    let regex = regex(pattern, false)
                        .map_err(|reason| error(at("rewrite.uriRegexRewrite.match"), reason))?;
                    Some((
                        regex,
                        envoy_replacement(rr.rewrite.as_deref().unwrap_or_default()),
                    ))
                }
                None => None,
            };
            Some(Rewrite {
                uri: rw.uri.clone(),
                authority: rw.authority.clone(),
                regex,
            })
        }
    };
    let retries = match &http.retries {
        None => Retries {
            attempts: 2,
            per_try_timeout: None,
            retry_on: [
                "connect-failure",
                "refused-stream",
                "unavailable",
                "cancelled",
                "retriable-status-codes",
            ]
            .map(str::to_owned)
            .to_vec(),
            retriable_status_codes: vec![503],
            backoff: None,
        },
        Some(r) => {
            let entries: Vec<&str> = r
                .retry_on
                .as_deref()
                .unwrap_or(
                    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                )
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            let codes: Vec<u16> = entries.iter().filter_map(|e| e.parse().ok()).collect();
            let mut retry_on: Vec<String> = entries
                .iter()
                .filter(|e| e.parse::<u16>().is_err())
                .map(|e| (*e).to_owned())
                .collect();
            if !codes.is_empty() && !retry_on.iter().any(|c| c == "retriable-status-codes") {
                retry_on.push("retriable-status-codes".to_owned());
            }
            Retries {
                attempts: u32::try_from(r.attempts.unwrap_or(0)).unwrap_or(0),
                per_try_timeout: r.per_try_timeout.map(|d| d.get()),
                retry_on,
                retriable_status_codes: codes,
                backoff: r.backoff.map(|d| d.get()),
            }
        }
    };
    let fault = http.fault.as_ref().map(|f| Fault {
        delay: f.delay.as_ref().and_then(|d| {
            let share = d
                .percentage
                .as_ref()
                .and_then(|p| p.value)
                .or(d.percent.map(f64::from))
                .unwrap_or(100.0);
            d.fixed_delay.map(|t| (share, t.get()))
        }),
        abort: f.abort.as_ref().and_then(|a| {
            let share = a.percentage.as_ref().and_then(|p| p.value).unwrap_or(100.0);
            let status = u16::try_from(a.http_status?).ok()?;
            Some((share, status))
        }),
    });
    let cors = http
        .cors_policy
        .as_ref()
        .map(Cors::compile)
        .transpose()
        .map_err(|(field, reason)| error(at(&format!("corsPolicy.{field}")), reason))?;
    let mut mirrors = Vec::new();
    if let Some(m) = &http.mirror {
        let share = http
            .mirror_percentage
            .as_ref()
            .and_then(|p| p.value)
            .or(http.mirror_percent.map(f64::from))
            .unwrap_or(100.0);
        mirrors.push((destination(m, namespace, 1, None), share));
    }
    for m in http.mirrors.iter().flatten() {
        if let Some(d) = &m.destination {
            let share = m.percentage.as_ref().and_then(|p| p.value).unwrap_or(100.0);
            mirrors.push((destination(d, namespace, 1, None), share));
        }
    }
    Ok(Route {
        source: RouteRef {
            virtual_service: object.clone(),
            index,
            name: http.name.clone(),
        },
        matches,
        action,
        rewrite,
        headers: header_changes(http.headers.as_ref()),
        timeout: http.timeout.map(|d| d.get()),
        retries,
        fault,
        mirrors,
        cors,
    })
}

fn status_code(value: Option<u32>, default: u16) -> u16 {
    value
        .and_then(|v| u16::try_from(v).ok())
        .filter(|v| (100..=599).contains(v))
        .unwrap_or(default)
}

/// A route destination as compiled (a short host is in `namespace`), for L4 routes.
pub(crate) fn destination_of(d: &Destination, namespace: &str, weight: u32) -> WeightedDestination {
    destination(d, namespace, weight, None)
}

fn destination(
    d: &Destination,
    namespace: &str,
    weight: u32,
    headers: Option<&crate::istio::Headers>,
) -> WeightedDestination {
    let host = if d.host.contains('.') || d.host.contains('*') {
        d.host.to_ascii_lowercase()
    } else {
        format!(
            "{}.{namespace}.{CLUSTER_SUFFIX}",
            d.host.to_ascii_lowercase()
        )
    };
    WeightedDestination {
        host,
        subset: d.subset.clone(),
        port: d
            .port
            .as_ref()
            .and_then(|p| p.number)
            .and_then(|n| u16::try_from(n).ok()),
        weight,
        headers: header_changes(headers),
    }
}

fn header_changes(headers: Option<&crate::istio::Headers>) -> HeaderChanges {
    let ops = |o: Option<&HeaderOperations>| HeaderOps {
        set: o
            .and_then(|o| o.set.as_ref())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        add: o
            .and_then(|o| o.add.as_ref())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        remove: o
            .and_then(|o| o.remove.as_ref())
            .map(|v| v.iter().map(|k| k.to_ascii_lowercase()).collect())
            .unwrap_or_default(),
    };
    HeaderChanges {
        request: ops(headers.and_then(|h| h.request.as_ref())),
        response: ops(headers.and_then(|h| h.response.as_ref())),
    }
}

/// Envoy's `\N` capture references as the `regex` crate's `${N}`; a literal `$` is escaped.
fn envoy_replacement(rewrite: &str) -> String {
    let mut out = String::with_capacity(rewrite.len());
    let mut chars = rewrite.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut n = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    n.push(d);
                    chars.next();
                }
                out.push_str(&format!("${{{n}}}"));
            }
            c => out.push(c),
        }
    }
    out
}

/// A regex matching whole values (Envoy's `safe_regex`), size-limited.
fn regex(pattern: &str, ignore_case: bool) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .case_insensitive(ignore_case)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

fn matcher(m: &StringMatch, ignore_case: bool) -> Result<Matcher, String> {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), _, _) => Ok(Matcher::Exact(e.clone())),
        (None, Some(p), _) => Ok(Matcher::Prefix(p.clone())),
        (None, None, Some(r)) => regex(r, ignore_case).map(Matcher::Regex),
        (None, None, None) => Ok(Matcher::Present),
    }
}

fn compile_match(spec: &HttpMatchRequest, namespace: &str) -> Result<Match, (String, String)> {
    let ignore = spec.ignore_uri_case.unwrap_or(false);
    let one = |m: &Option<StringMatch>, field: &str, ic: bool| {
        m.as_ref()
            .map(|m| matcher(m, ic))
            .transpose()
            .map_err(|e| (field.to_owned(), e))
    };
    let map = |m: &Option<BTreeMap<String, StringMatch>>, field: &str| {
        m.iter()
            .flatten()
            .map(|(k, v)| {
                matcher(v, false)
                    .map(|m| (k.to_ascii_lowercase(), m))
                    .map_err(|e| (format!("{field}.{k}"), e))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Match {
        uri: one(&spec.uri, "uri", ignore)?,
        ignore_uri_case: ignore,
        scheme: one(&spec.scheme, "scheme", false)?,
        method: one(&spec.method, "method", false)?,
        authority: one(&spec.authority, "authority", false)?,
        headers: map(&spec.headers, "headers")?,
        without_headers: map(&spec.without_headers, "withoutHeaders")?,
        query_params: map(&spec.query_params, "queryParams")?,
        port: spec.port.and_then(|p| u16::try_from(p).ok()),
        source_labels: spec.source_labels.clone().unwrap_or_default(),
        gateways: spec
            .gateways
            .iter()
            .flatten()
            .map(|g| qualify_gateway(g, namespace))
            .collect(),
        source_namespace: spec.source_namespace.clone(),
    })
}

mod cors;
pub use cors::{Cors, CorsAnswer};

#[cfg(test)]
mod tests;
