//! `ward check`: what-if queries against a configuration, offline. "Would this source reach this
//! destination, and why?"
//!
//! A [`Query`] names a source (a workload, an identity, a namespace, or a plaintext client
//! address), a destination (a ServiceEntry host and port, or a workload and port) and, for HTTP
//! ports, a request. [`check`] resolves them against the [`MeshSnapshot`] `translate` built and decides
//! with what the destination's proxy decides with: the port's mTLS mode from its
//! [`ProxyConfig`], the `jwtRules` it holds, [`ward_policy::normalize`] for the path, and the
//! compiled [`ward_policy::WorkloadPolicies`] through [`ward_policy::WorkloadPolicies::explain_l4`] /
//! [`ward_policy::WorkloadPolicies::explain_http`], whose decisions are those of `evaluate_l4` /
//! `evaluate_http`. The [`Report`] carries the decision and the trace.
//!
//! A what-if checks no token signature: `--claims` stands for a token that verified. A real
//! request needs a valid token; the claims still go through what the proxy checks before the
//! signature (the issuer must be one of the destination's `jwtRules`, the audience one of the
//! rule's), with the proxy's answer when they fail (docs/check.md).
//!
//! Pure: no I/O.

pub mod cases;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;
use ward_authn::JwtError;
use ward_policy::{
    Explanation, HttpAttributes, L4Attributes, MtlsMode, Peer, PolicyRef, RequestAuth,
};

use crate::load::ConfigSet;
use crate::snapshot::{MeshSnapshot, Protocol, ProxyConfig, Transport};
use crate::translate::{mesh_transport, service_endpoints, workload_mtls};

/// A what-if query, as the flags give it.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// `--from`: `ns/name` (a WorkloadEntry), `spiffe://td/ns/NS/sa/SA` or `td/ns/NS/sa/SA` (an
    /// identity), `ns/NAMESPACE` or `ns:NAMESPACE` (every identity of a namespace:
    /// [`check_namespace`]), or `plaintext:IP` (a client outside the mesh).
    pub from: String,
    /// `--to`: `host:port` (a ServiceEntry host) or `ns/name:port` (a WorkloadEntry).
    pub to: String,
    /// `--method`; `GET` when unset.
    pub method: Option<String>,
    /// `--path`; `/` when unset.
    pub path: Option<String>,
    /// `--header name:value`, repeatable.
    pub headers: Vec<String>,
    /// `--claims`: the JSON payload of a token taken as verified.
    pub claims: Option<String>,
}

/// A flag value that names nothing, or is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--{flag} {value:?}: {message}")]
pub struct QueryError {
    /// The flag, without dashes.
    pub flag: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong, with close matches when there are some.
    pub message: String,
}

fn query_error(flag: &'static str, value: &str, message: impl Into<String>) -> QueryError {
    QueryError {
        flag,
        value: value.to_owned(),
        message: message.into(),
    }
}

/// The resolved source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// `workload`, `identity` or `plaintext`.
    pub kind: &'static str,
    /// The WorkloadEntry, `ns/name`, when the source is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// `spiffe://…`; `None` for a plaintext client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The source address the destination sees; `None` when unknown (an identity with no
    /// WorkloadEntry: `0.0.0.0` is matched, which no `ipBlocks` value Ward accepts covers but
    /// `0.0.0.0/0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    #[serde(skip)]
    pub(crate) peer: Option<Peer>,
}

/// The whole answer: one [`Target`] per destination workload.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Who connects.
    pub source: Source,
    /// `--to` as given.
    pub destination: String,
    /// Every workload behind the destination.
    pub targets: Vec<Target>,
    /// Endpoints of the service outside the mesh: no Ward proxy decides for them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outside_mesh: Vec<SocketAddr>,
}

impl Report {
    /// Whether every target allows: `ward check` exits 0 then, 1 otherwise.
    pub fn allowed(&self) -> bool {
        !self.targets.is_empty() && self.targets.iter().all(|t| t.allowed)
    }
}

/// The decision for one destination workload and port, and how it was reached.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// The WorkloadEntry, `ns/name`.
    pub workload: String,
    /// Its address and the workload port.
    pub address: SocketAddr,
    /// The port's protocol; `None` when the workload does not serve the port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The port's PeerAuthentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_authentication: Option<MtlsTrace>,
    /// `mTLS` (HBONE, the source's identity) or `plaintext` (no identity).
    pub transport: &'static str,
    /// The request, on an HTTP port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestTrace>,
    /// The AuthorizationPolicies, when they were reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Explanation>,
    /// The outcome.
    pub allowed: bool,
    /// What stopped it: `port`, `peerAuthentication`, `admission`, `requestAuthentication` or
    /// `authorizationPolicy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<&'static str>,
    /// What the client sees, e.g. `connection reset`, `HTTP 403 RBAC: access denied`.
    pub outcome: String,
}

/// The effective PeerAuthentication of a port.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MtlsTrace {
    /// The mode the proxy enforces.
    pub mode: MtlsMode,
    /// The PeerAuthentication that set it; `None`: none applies, Ward's default (STRICT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    /// `mesh`, `namespace`, `workload`, `port-level` or `default`.
    pub level: String,
    /// Whether the connection's transport is accepted.
    pub accepted: bool,
}

/// The request as the destination's proxy decides on it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestTrace {
    /// The method.
    pub method: String,
    /// The authority.
    pub host: String,
    /// The path as given.
    pub path: String,
    /// The normalized path policies match (`None` when normalization refused it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized_path: Option<String>,
    /// `iss/sub` of the claims when the destination authenticates them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_principal: Option<String>,
    /// What end-user authentication did with the claims.
    pub authentication: String,
}

/// The parsed request flags.
#[derive(Clone, Debug)]
pub(crate) struct RequestQuery {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) claims: Option<serde_json::Value>,
}

/// Run a query. Errors name the flag and the value, with close matches. A namespace source
/// has one answer per identity: [`check_namespace`].
pub fn check(
    set: &ConfigSet,
    snapshot: &MeshSnapshot,
    query: &Query,
) -> Result<Report, QueryError> {
    let request = parse_request(query)?;
    if let Some(namespace) = namespace_of_source(snapshot, &query.from) {
        return Err(query_error(
            "from",
            &query.from,
            format!(
                "namespace {namespace} is many identities, with one answer each; this query                  takes a workload or an identity"
            ),
        ));
    }
    let source = parse_from(snapshot, &query.from)?;
    check_source(set, snapshot, source, &request, &query.to)
}

fn check_source(
    set: &ConfigSet,
    snapshot: &MeshSnapshot,
    source: Source,
    request: &RequestQuery,
    to: &str,
) -> Result<Report, QueryError> {
    let (targets, outside_mesh) = parse_to(set, snapshot, to)?;
    let targets = targets
        .into_iter()
        .map(|t| decide(set, snapshot, &source, &t, to, request))
        .collect();
    Ok(Report {
        source,
        destination: to.to_owned(),
        targets,
        outside_mesh,
    })
}

/// The answer for a namespace source: one [`Report`] per identity of the namespace the config
/// knows (its workloads, the identities policies name in it), then one for another service
/// account of it (`sa/*`, one no policy names).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceReport {
    /// The namespace.
    pub namespace: String,
    /// One report per member.
    pub members: Vec<Report>,
}

impl NamespaceReport {
    /// Whether every member is allowed: `ward check` exits 0 then, 1 otherwise.
    pub fn allowed(&self) -> bool {
        !self.members.is_empty() && self.members.iter().all(Report::allowed)
    }

    /// `any identity in ns X`, `some identities in ns X` or `no identity in ns X`.
    pub fn verdict(&self) -> String {
        let allowed = self.members.iter().filter(|m| m.allowed()).count();
        let ns = &self.namespace;
        match allowed {
            0 => format!("no identity in ns {ns}"),
            n if n == self.members.len() => format!("any identity in ns {ns}"),
            _ => format!("some identities in ns {ns}"),
        }
    }
}

/// The namespace a `--from` value names: `ns:NAME`, or `ns/NAME` when no WorkloadEntry is
/// `ns/NAME` (a WorkloadEntry of a namespace called `ns` keeps its name).
pub fn namespace_of_source<'a>(snapshot: &MeshSnapshot, from: &'a str) -> Option<&'a str> {
    let name = from.strip_prefix("ns:").or_else(|| {
        from.strip_prefix("ns/")
            .filter(|_| !snapshot.proxies.contains_key(from))
    })?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// Run a query whose source is a namespace (`--from ns/NAME`): every member of it, each
/// decided as [`check`] decides a workload or an identity.
pub fn check_namespace(
    set: &ConfigSet,
    snapshot: &MeshSnapshot,
    query: &Query,
) -> Result<NamespaceReport, QueryError> {
    let request = parse_request(query)?;
    let Some(namespace) = namespace_of_source(snapshot, &query.from) else {
        return Err(query_error(
            "from",
            &query.from,
            "expected a namespace source, ns/<namespace> or ns:<namespace>",
        ));
    };
    let members = crate::matrix::namespace_sources(snapshot, namespace)
        .into_iter()
        .map(|source| check_source(set, snapshot, source, &request, &query.to))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NamespaceReport {
        namespace: namespace.to_owned(),
        members,
    })
}

fn parse_request(query: &Query) -> Result<RequestQuery, QueryError> {
    let mut headers = Vec::new();
    for h in &query.headers {
        let Some((name, value)) = h.split_once(':') else {
            return Err(query_error("header", h, "expected name:value"));
        };
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() {
            return Err(query_error("header", h, "the header name is empty"));
        }
        headers.push((name, value.trim().to_owned()));
    }
    let claims = match &query.claims {
        None => None,
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v @ serde_json::Value::Object(_)) => Some(v),
            Ok(_) => return Err(query_error("claims", text, "expected a JSON object")),
            Err(e) => return Err(query_error("claims", text, format!("not JSON: {e}"))),
        },
    };
    Ok(RequestQuery {
        method: query.method.clone().unwrap_or_else(|| "GET".to_owned()),
        path: query.path.clone().unwrap_or_else(|| "/".to_owned()),
        headers,
        claims,
    })
}

/// `--from`: a workload, an identity, or `plaintext:IP`.
fn parse_from(snapshot: &MeshSnapshot, value: &str) -> Result<Source, QueryError> {
    if let Some(ip) = value.strip_prefix("plaintext:") {
        let address: IpAddr = ip.parse().map_err(|_| {
            query_error(
                "from",
                value,
                "expected plaintext:<IP address>, e.g. plaintext:10.0.0.9",
            )
        })?;
        return Ok(Source {
            kind: "plaintext",
            workload: None,
            identity: None,
            address: Some(address),
            peer: None,
        });
    }
    let principal = value.strip_prefix("spiffe://").unwrap_or(value);
    if principal.contains("/ns/") {
        let parts: Vec<&str> = principal.split('/').collect();
        let [td, "ns", ns, "sa", sa] = parts.as_slice() else {
            return Err(query_error(
                "from",
                value,
                "expected an identity spiffe://<trust domain>/ns/<namespace>/sa/<service account>",
            ));
        };
        if [td, ns, sa].iter().any(|p| p.is_empty()) {
            return Err(query_error("from", value, "an identity part is empty"));
        }
        let identity = format!("spiffe://{principal}");
        let workload = snapshot
            .proxies
            .iter()
            .find(|(_, p)| p.workload.identity == identity);
        return Ok(Source {
            kind: "identity",
            workload: workload.map(|(key, _)| key.clone()),
            address: workload.map(|(_, p)| p.workload.address),
            identity: Some(identity),
            peer: Some(Peer::new(*td, *ns, *sa)),
        });
    }
    match snapshot.proxies.get(value) {
        Some(proxy) => {
            let w = &proxy.workload;
            Ok(Source {
                kind: "workload",
                workload: Some(value.to_owned()),
                identity: Some(w.identity.clone()),
                address: Some(w.address),
                peer: Some(Peer::new(
                    snapshot.trust_domain.clone(),
                    w.namespace.clone(),
                    w.service_account.clone(),
                )),
            })
        }
        None => Err(query_error(
            "from",
            value,
            format!(
                "no WorkloadEntry `{value}`; a source is ns/name of a WorkloadEntry, \
                 spiffe://<td>/ns/<ns>/sa/<sa>, or plaintext:<IP>{}",
                close_matches(value, snapshot.proxies.keys().map(String::as_str))
            ),
        )),
    }
}

/// One destination workload and port, and how the source's proxy reaches it.
#[derive(Clone, Debug)]
pub(crate) struct TargetRef {
    pub(crate) workload: String,
    pub(crate) port: u16,
    /// The endpoint's transport when reached through a service (`None`: called directly, the
    /// same rule applies).
    pub(crate) transport: Option<Transport>,
}

/// `--to`: `host:port` of a ServiceEntry, or `ns/name:port` of a WorkloadEntry.
pub(crate) fn parse_to(
    set: &ConfigSet,
    snapshot: &MeshSnapshot,
    value: &str,
) -> Result<(Vec<TargetRef>, Vec<SocketAddr>), QueryError> {
    let Some((name, port)) = value.rsplit_once(':') else {
        return Err(query_error(
            "to",
            value,
            "expected <host>:<port> or <namespace>/<name>:<port>",
        ));
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| query_error("to", value, format!("`{port}` is not a port number")))?;
    if snapshot.proxies.contains_key(name) {
        let target = TargetRef {
            workload: name.to_owned(),
            port,
            transport: None,
        };
        return Ok((vec![target], Vec::new()));
    }
    let hosts: Vec<&str> = set
        .service_entries
        .iter()
        .flat_map(|se| se.spec.hosts().iter().map(String::as_str))
        .collect();
    if !hosts.contains(&name) {
        let candidates = hosts
            .iter()
            .copied()
            .chain(snapshot.proxies.keys().map(String::as_str));
        return Err(query_error(
            "to",
            value,
            format!(
                "`{name}` is neither a ServiceEntry host nor a WorkloadEntry (ns/name){}",
                close_matches(name, candidates)
            ),
        ));
    }
    let Some(endpoints) = service_endpoints(set, name, port) else {
        let ports: Vec<String> = set
            .service_entries
            .iter()
            .filter(|se| se.spec.hosts().iter().any(|h| h == name))
            .flat_map(|se| se.spec.ports().iter().map(|p| p.number.to_string()))
            .collect();
        return Err(query_error(
            "to",
            value,
            format!(
                "`{name}` has no port {port}; its ports: {}",
                ports.join(", ")
            ),
        ));
    };
    let mut targets = Vec::new();
    let mut outside = Vec::new();
    for endpoint in endpoints {
        match endpoint.workload {
            Some(workload) if snapshot.proxies.contains_key(&workload) => targets.push(TargetRef {
                workload,
                port: endpoint.address.port(),
                transport: Some(endpoint.transport),
            }),
            _ => outside.push(endpoint.address),
        }
    }
    if targets.is_empty() {
        let outside: Vec<String> = outside.iter().map(ToString::to_string).collect();
        return Err(query_error(
            "to",
            value,
            format!(
                "no workload of the mesh is behind it, so no Ward proxy decides (endpoints: {})",
                if outside.is_empty() {
                    "none".to_owned()
                } else {
                    outside.join(", ")
                }
            ),
        ));
    }
    Ok((targets, outside))
}

/// Candidates that contain `value`, or that `value` contains, or within a small edit distance.
fn close_matches<'a>(value: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let lower = value.to_ascii_lowercase();
    let mut close: Vec<&str> = candidates
        .filter(|c| {
            let c = c.to_ascii_lowercase();
            (!lower.is_empty() && (c.contains(&lower) || lower.contains(&c)))
                || edit_distance(&c, &lower) <= 3
        })
        .collect();
    close.sort_unstable();
    close.dedup();
    close.truncate(5);
    if close.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", close.join(", "))
    }
}

/// Levenshtein distance, for close matches.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row.first().copied().unwrap_or(0);
        if let Some(first) = row.first_mut() {
            *first = i + 1;
        }
        for (j, cb) in b.iter().enumerate() {
            let Some(&above) = row.get(j + 1) else { break };
            let left = row.get(j).copied().unwrap_or(0);
            let next = (above + 1).min(left + 1).min(prev + usize::from(ca != *cb));
            prev = above;
            if let Some(cell) = row.get_mut(j + 1) {
                *cell = next;
            }
        }
    }
    row.last().copied().unwrap_or(0)
}

/// Decide one target as its proxy does: port, PeerAuthentication, then per connection
/// (TCP ports) or per request (HTTP ports: admission, authentication, authorization).
pub(crate) fn decide(
    set: &ConfigSet,
    snapshot: &MeshSnapshot,
    source: &Source,
    target: &TargetRef,
    host: &str,
    request: &RequestQuery,
) -> Target {
    let mut out = Target {
        workload: target.workload.clone(),
        address: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), target.port),
        protocol: None,
        peer_authentication: None,
        transport: "plaintext",
        request: None,
        authorization: None,
        allowed: false,
        refused_by: None,
        outcome: String::new(),
    };
    let Some(cfg) = snapshot.proxies.get(&target.workload) else {
        out.refused_by = Some("port");
        out.outcome = "no such workload".to_owned();
        return out;
    };
    out.address = SocketAddr::new(cfg.workload.address, target.port);
    let served = cfg.inbound.iter().find(|p| p.port == target.port);
    // The source's proxy picks the transport as for a service endpoint (auto-mTLS); a
    // plaintext client has no proxy and no identity.
    let transport = target
        .transport
        .unwrap_or_else(|| mesh_transport(set, served.map_or(MtlsMode::Strict, |p| p.mtls)));
    let peer = match transport {
        Transport::Plaintext => None,
        Transport::Hbone => source.peer.as_ref(),
    };
    out.transport = if peer.is_some() { "mTLS" } else { "plaintext" };
    if served.is_none() && peer.is_some() && !cfg.gateway.on_port(target.port).is_empty() {
        decide_at_gateway(cfg, source, peer, target.port, host, request, &mut out);
        return out;
    }
    let Some(port) = served else {
        out.refused_by = Some("port");
        out.outcome = if peer.is_some() {
            "HTTP 400 on the HBONE CONNECT: the workload does not serve this port (connection \
             closed)"
                .to_owned()
        } else {
            "connection refused: the workload does not serve this port".to_owned()
        };
        return out;
    };
    out.protocol = Some(port.protocol);
    let effective = workload_mtls(
        set,
        &cfg.workload.namespace,
        &cfg.workload.labels,
        port.port,
    );
    let level = match (&effective.level, effective.port_level) {
        (_, true) => "port-level".to_owned(),
        (Some(level), false) => level.to_string(),
        (None, false) => "default".to_owned(),
    };
    // The proxy's own rule (crates/proxy/src/inbound.rs, `authorize`).
    let accepted = port.mtls.refusal(peer.is_some()).is_none();
    out.peer_authentication = Some(MtlsTrace {
        mode: port.mtls,
        policy: port.mtls_policy.clone(),
        level,
        accepted,
    });
    if !accepted {
        out.refused_by = Some("peerAuthentication");
        out.outcome = match port.mtls {
            MtlsMode::Disable => "HTTP 401 on the HBONE CONNECT: DISABLE refuses mTLS \
                                  (connection closed)"
                .to_owned(),
            _ => "connection reset: STRICT refuses plaintext".to_owned(),
        };
        return out;
    }
    let conn = L4Attributes {
        peer,
        source_ip: source.address.unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
        remote_ip: source.address.unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
        destination_ip: cfg.workload.address,
        destination_port: port.port,
        sni: None,
    };
    if port.protocol.is_http() {
        decide_request(cfg, &conn, host, request, &mut out);
    } else {
        let explanation = cfg.authz.explain_l4(&conn);
        finish_authz(&mut out, explanation, peer.is_some(), false);
    }
    out
}

/// A mesh workload's HBONE connection to a Gateway server port of a gateway workload (an egress
/// gateway's clients): decided by the gateway's AuthorizationPolicies as the gateway does
/// (crates/proxy/src/gateway.rs, `serve_tunnel`): per request on an HTTP server (an `HTTPS`
/// server with `ISTIO_MUTUAL` included), the request's `Host` header (else the destination
/// named) as its host; per connection otherwise.
fn decide_at_gateway(
    cfg: &ProxyConfig,
    source: &Source,
    peer: Option<&Peer>,
    port: u16,
    host: &str,
    request: &RequestQuery,
    out: &mut Target,
) {
    use crate::gateways::EdgeProtocol;
    let conn = L4Attributes {
        peer,
        source_ip: source.address.unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
        remote_ip: source.address.unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
        destination_ip: cfg.workload.address,
        destination_port: port,
        sni: None,
    };
    let server = cfg
        .gateway
        .on_port(port)
        .first()
        .and_then(|i| cfg.gateway.servers().get(*i));
    let http = server.is_some_and(|s| {
        matches!(s.protocol, EdgeProtocol::Http | EdgeProtocol::Http2)
            || (s.protocol == EdgeProtocol::Https && s.mesh_only())
    });
    if http {
        out.protocol = Some(Protocol::Http);
        let named = request
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map_or(host, |(_, v)| v.as_str());
        decide_request(cfg, &conn, named, request, out);
    } else {
        let explanation = cfg.authz.explain_l4(&conn);
        finish_authz(out, explanation, peer.is_some(), false);
    }
}

/// An HTTP port: normalize the path, authenticate the claims, authorize the request.
fn decide_request(
    cfg: &ProxyConfig,
    conn: &L4Attributes<'_>,
    host: &str,
    request: &RequestQuery,
    out: &mut Target,
) {
    let normalized = ward_policy::normalize(&request.path);
    let mut trace = RequestTrace {
        method: request.method.clone(),
        host: host.to_owned(),
        path: request.path.clone(),
        normalized_path: normalized.as_ref().ok().map(|n| n.path.clone()),
        request_principal: None,
        authentication: String::new(),
    };
    let target = match normalized {
        Ok(target) => target,
        Err(e) => {
            trace.authentication = "not reached".to_owned();
            out.request = Some(trace);
            out.refused_by = Some("admission");
            out.outcome = format!("HTTP 400: path refused ({e})");
            return;
        }
    };
    let auth = match authenticate(cfg, request.claims.as_ref()) {
        Ok((auth, note)) => {
            trace.authentication = note;
            auth
        }
        Err((status, message, note)) => {
            trace.authentication = note;
            out.request = Some(trace);
            out.refused_by = Some("requestAuthentication");
            out.outcome = format!("HTTP {status} {message}");
            return;
        }
    };
    trace.request_principal = auth.as_ref().map(|a| a.principal.clone());
    out.request = Some(trace);
    let req = HttpAttributes {
        l4: *conn,
        method: &request.method,
        host,
        path: &target.path,
        headers: &request.headers,
        auth: auth.as_ref(),
    };
    let explanation = cfg.authz.explain_http(&req);
    finish_authz(out, explanation, true, true);
}

/// The proxy's answer to a rejected token: status, body, and a note for the trace.
type Rejected = (u16, &'static str, String);

/// The verified identity the claims stand for, with a note; or the proxy's refusal when the
/// destination's `jwtRules` would reject the token before its signature.
fn authenticate(
    cfg: &ProxyConfig,
    claims: Option<&serde_json::Value>,
) -> Result<(Option<RequestAuth>, String), Rejected> {
    let rules = cfg.jwt_rules.rules();
    let Some(claims) = claims else {
        let note = if rules.is_empty() {
            "no token; the workload has no RequestAuthentication"
        } else {
            "no token: the request passes authentication with no request principal"
        };
        return Ok((None, note.to_owned()));
    };
    if rules.is_empty() {
        return Ok((
            None,
            "the workload has no RequestAuthentication: the token is not read and the request \
             has no request principal"
                .to_owned(),
        ));
    }
    let text = |key: &str| claims.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let iss = text("iss").unwrap_or_default();
    let Some(rule) = rules.iter().find(|r| r.issuer == iss) else {
        let issuers: Vec<&str> = rules.iter().map(|r| r.issuer.as_str()).collect();
        let e = JwtError::UnknownIssuer;
        return Err((
            e.status(),
            e.message(),
            format!(
                "issuer {iss:?} is not one of the workload's jwtRules ({}): the token is \
                 rejected",
                issuers.join(", ")
            ),
        ));
    };
    let audiences: Vec<String> = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => vec![a.clone()],
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    if !rule.audiences.is_empty() && !audiences.iter().any(|a| rule.audiences.contains(a)) {
        let e = JwtError::AudienceNotAllowed;
        return Err((
            e.status(),
            e.message(),
            format!(
                "aud {audiences:?} has none of the rule's audiences {:?}: the token is rejected",
                rule.audiences
            ),
        ));
    }
    let principal = format!("{iss}/{}", text("sub").unwrap_or_default());
    let auth = RequestAuth {
        principal,
        audiences,
        presenter: text("azp"),
        claims: claims.clone(),
    };
    Ok((
        Some(auth),
        "claims taken as a verified token (a what-if checks no signature, expiry or key; a \
         real request needs a valid token)"
            .to_owned(),
    ))
}

fn finish_authz(out: &mut Target, explanation: Explanation, mtls: bool, http: bool) {
    out.allowed = explanation.decision.is_allowed();
    if !out.allowed {
        out.refused_by = Some("authorizationPolicy");
    }
    out.outcome = match (out.allowed, http, mtls) {
        (true, _, _) => "allowed".to_owned(),
        (false, true, _) => "HTTP 403 RBAC: access denied".to_owned(),
        (false, false, true) => {
            "HTTP 401 on the HBONE CONNECT (the client's connection is closed)".to_owned()
        }
        (false, false, false) => "connection reset".to_owned(),
    };
    out.authorization = Some(explanation);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        for (a, b, want) in [
            ("", "", 0),
            ("abc", "abc", 0),
            ("openemr", "openmer", 2),
            ("a", "", 1),
            ("kitten", "sitting", 3),
        ] {
            assert_eq!(edit_distance(a, b), want, "{a} {b}");
        }
    }

    #[test]
    fn close_matches_lists_near_names_only() {
        let names = ["openemr/openemr", "openemr/mariadb", "other/thing"];
        assert_eq!(
            close_matches("openemr/openmer", names.iter().copied()),
            "; did you mean openemr/openemr?"
        );
        assert_eq!(
            close_matches("mariadb", names.iter().copied()),
            "; did you mean openemr/mariadb?"
        );
        assert_eq!(close_matches("zzzzzzzzzz", names.iter().copied()), "");
    }

    #[test]
    fn namespace_source_answers_per_identity() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/openemr-ossm3");
        let set = crate::load_paths(&[dir]).unwrap();
        let snapshot = crate::translate(&set).unwrap();
        assert_eq!(
            namespace_of_source(&snapshot, "ns/openemr"),
            Some("openemr")
        );
        assert_eq!(
            namespace_of_source(&snapshot, "ns:openemr"),
            Some("openemr")
        );
        assert_eq!(namespace_of_source(&snapshot, "openemr/openemr"), None);
        let query = Query {
            from: "ns/openemr".into(),
            to: "mariadb.openemr.svc.cluster.local:3306".into(),
            ..Query::default()
        };
        let report = check_namespace(&set, &snapshot, &query).unwrap();
        let members: Vec<(String, bool)> = report
            .members
            .iter()
            .map(|m| (m.source.identity.clone().unwrap(), m.allowed()))
            .collect();
        let id = |sa: &str| format!("spiffe://cluster.local/ns/openemr/sa/{sa}");
        assert_eq!(
            members,
            [
                (id("mariadb"), false),
                (id("default"), true),
                (id("other"), false),
                (id("redis"), false),
                (id("*"), false),
            ]
        );
        assert!(!report.allowed());
        assert_eq!(report.verdict(), "some identities in ns openemr");
        let err = check(&set, &snapshot, &query).unwrap_err();
        assert_eq!(err.flag, "from");
    }
}
