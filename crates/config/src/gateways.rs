//! What a gateway workload serves (docs/ingress.md): the Gateways whose `selector` matches the
//! workload's labels, each server as a listener plan ([`EdgeServer`]: port, protocol, hosts,
//! TLS with its key material), and the VirtualServices bound to those Gateways, compiled into
//! one HTTP routing table per server ([`crate::http_routing`], the same code as the `mesh`
//! gateway) plus their `tcp[]` and `tls[]` routes. Pure: the proxy binds the ports, reads the
//! certificate files and carries the decisions out (`crates/proxy/src/gateway.rs`).
//!
//! Istio rules this follows (istio/api `networking/v1alpha3/gateway.proto`):
//! - "The Gateway will be applied to the set of pods that have labels matching `selector`";
//!   Ward selects WorkloadEntries across namespaces, as Istio does by default. An empty
//!   selector selects nothing in Ward (every Ward workload has a sidecar; see docs/security.md).
//! - Server `hosts` are `namespace/dnsName`: "`*` selects VirtualServices from any namespace,
//!   `.` from the Gateway's namespace"; a bare `dnsName` is `*/dnsName`.
//! - A VirtualService is bound to a Gateway by `gateways: [ns/name]` (a bare name is in the
//!   VirtualService's namespace), and applies to a server when one of its hosts intersects one
//!   of the server's hosts from a namespace the server allows.
//! - `credentialName` names a Secret in the gateway workload's namespace, with `tls.crt`,
//!   `tls.key` and `ca.crt` (or `cert`, `key`, `cacert`); for MUTUAL the CA may be in a second
//!   Secret `<name>-cacert`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::http_routing::{HttpRoutes, RouteError, RouteSource, WeightedDestination};
use crate::istio::{GatewaySpec, Server, ServerTlsMode, TlsProtocol};
use crate::load::{ConfigSet, Resource};
use crate::mesh_routing::RoutedService;
use crate::origination::Material;
use crate::snapshot::Protocol;

/// How a server's connections are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EdgeProtocol {
    /// Plaintext HTTP/1.1 (and h2c).
    Http,
    /// TLS terminated, then HTTP/1.1 or h2 (ALPN).
    Https,
    /// Plaintext HTTP/2 (also GRPC).
    Http2,
    /// TLS: PASSTHROUGH routed by SNI (`tls[]`), or terminated and routed by `tcp[]`.
    Tls,
    /// Opaque TCP, routed by `tcp[]`.
    Tcp,
}

/// One host of a server: the namespaces it takes VirtualServices from and the DNS name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerHost {
    /// `None`: any namespace (`*`); else this namespace (`.` resolved).
    pub namespace: Option<String>,
    /// Lowercase: an exact name, `*.suffix` or `*`.
    pub dns: String,
}

/// A server's TLS (istio/api `ServerTLSSettings`), with its key material located.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeTls {
    /// The mode.
    pub mode: ServerTlsMode,
    /// The certificate chain (terminating modes).
    pub certificate: Option<Material>,
    /// The private key (terminating modes).
    pub private_key: Option<Material>,
    /// The CA that verifies client certificates (MUTUAL, OPTIONAL_MUTUAL).
    pub ca: Option<Material>,
    /// `minProtocolVersion`.
    pub min_version: Option<TlsProtocol>,
    /// `maxProtocolVersion`.
    pub max_version: Option<TlsProtocol>,
    /// `cipherSuites` (OpenSSL names).
    pub cipher_suites: Vec<String>,
    /// `subjectAltNames`: a client certificate must hold one of these.
    pub subject_alt_names: Vec<String>,
    /// Why the credential cannot be used (a Secret missing or lacking a key): the server stays
    /// off, the other servers run.
    pub broken: Option<String>,
}

/// One Gateway server as a gateway workload serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeServer {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    /// The server's path in the Gateway, e.g. `spec.servers[0]`.
    pub field: String,
    /// `port.name`.
    pub port_name: String,
    /// `port.number`.
    pub port: u16,
    /// `port.protocol`.
    pub protocol: EdgeProtocol,
    /// `hosts`.
    pub hosts: Vec<ServerHost>,
    /// `tls`.
    pub tls: Option<EdgeTls>,
    /// `tls.httpsRedirect`: plaintext HTTP requests get a 301 to `https`.
    pub https_redirect: bool,
}

/// The serialized form of [`GatewayRoutes`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRoutesSpec {
    /// Every server of every Gateway selecting the workload, in Gateway order.
    #[serde(default)]
    pub servers: Vec<EdgeServer>,
    /// The VirtualServices bound to those Gateways, in routing order.
    #[serde(default)]
    pub virtual_services: Vec<RoutedService>,
}

/// A gateway workload's servers and their routes, compiled (one HTTP table per server).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(try_from = "GatewayRoutesSpec", into = "GatewayRoutesSpec")]
pub struct GatewayRoutes {
    spec: GatewayRoutesSpec,
    /// By index in `spec.servers`.
    tables: Vec<HttpRoutes>,
}

impl PartialEq for GatewayRoutes {
    fn eq(&self, other: &GatewayRoutes) -> bool {
        self.spec == other.spec
    }
}

impl From<GatewayRoutes> for GatewayRoutesSpec {
    fn from(r: GatewayRoutes) -> GatewayRoutesSpec {
        r.spec
    }
}

impl TryFrom<GatewayRoutesSpec> for GatewayRoutes {
    type Error = RouteError;

    fn try_from(spec: GatewayRoutesSpec) -> Result<GatewayRoutes, RouteError> {
        let mut tables = Vec::with_capacity(spec.servers.len());
        for server in &spec.servers {
            let sources: Vec<RouteSource<'_>> = spec
                .virtual_services
                .iter()
                .filter(|v| server.takes(v))
                .map(|v| RouteSource {
                    namespace: &v.namespace,
                    name: &v.name,
                    spec: &v.spec,
                })
                .collect();
            tables.push(HttpRoutes::compile_sources(&sources, &server.gateway)?);
        }
        Ok(GatewayRoutes { spec, tables })
    }
}

/// Where an L4 route (`tcp[]` or `tls[]`) sends a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4Decision {
    /// `namespace/name` of the VirtualService.
    pub virtual_service: String,
    /// The picked destination.
    pub destination: WeightedDestination,
}

impl GatewayRoutes {
    /// Whether the workload runs no Gateway server.
    pub fn is_empty(&self) -> bool {
        self.spec.servers.is_empty()
    }

    /// The servers.
    pub fn servers(&self) -> &[EdgeServer] {
        &self.spec.servers
    }

    /// The specs.
    pub fn spec(&self) -> &GatewayRoutesSpec {
        &self.spec
    }

    /// The HTTP routes of server `index`.
    pub fn table(&self, index: usize) -> Option<&HttpRoutes> {
        self.tables.get(index)
    }

    /// The indexes of the servers on `port`, in order.
    pub fn on_port(&self, port: u16) -> Vec<usize> {
        (0..self.spec.servers.len())
            .filter(|i| self.spec.servers[*i].port == port)
            .collect()
    }

    /// The distinct ports, in order.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.spec.servers.iter().map(|s| s.port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The ports the gateway listens on at its address: those with a server that is not
    /// `ISTIO_MUTUAL`. An `ISTIO_MUTUAL` server is reached over HBONE only (the mesh's mTLS, the
    /// client's SPIFFE id verified), never in plaintext (docs/egress.md, "Egress gateway").
    pub fn bound_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .spec
            .servers
            .iter()
            .filter(|s| !s.mesh_only())
            .map(|s| s.port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The server on `port` that a request for `host` (no port) reaches: the first whose hosts
    /// match it.
    pub fn server_for_host(&self, port: u16, host: &str) -> Option<usize> {
        self.on_port(port)
            .into_iter()
            .find(|i| self.spec.servers[*i].matches_host(host))
    }

    /// The server on `port` that a TLS client naming `sni` reaches: the first whose hosts
    /// match it (none: `None`); without SNI, the first server with `*`, else the first server.
    pub fn server_for_sni(&self, port: u16, sni: Option<&str>) -> Option<usize> {
        let on_port = self.on_port(port);
        if let Some(sni) = sni {
            if let Some(i) = on_port
                .iter()
                .find(|i| self.spec.servers[**i].matches_host(sni))
            {
                return Some(*i);
            }
            return None;
        }
        on_port
            .iter()
            .copied()
            .find(|i| self.spec.servers[*i].hosts.iter().any(|h| h.dns == "*"))
            .or_else(|| on_port.first().copied())
    }

    /// The `tls[]` route for a connection to server `index` naming `sni`: the first route of
    /// the VirtualServices the server takes whose `match` names the SNI (`sniHosts`, with
    /// wildcards) and the port; `roll` picks among weighted destinations.
    pub fn decide_tls(&self, index: usize, sni: &str, roll: u32) -> Option<L4Decision> {
        let server = self.spec.servers.get(index)?;
        let sni = sni.to_ascii_lowercase();
        for vs in self
            .spec
            .virtual_services
            .iter()
            .filter(|v| server.takes(v))
        {
            for route in vs.spec.tls.iter().flatten() {
                let matched = route.r#match.iter().flatten().any(|m| {
                    let gateways_ok = gateways_match(m.gateways.as_deref(), vs, &server.gateway);
                    let port_ok = m.port.is_none_or(|p| p == u32::from(server.port));
                    let sni_ok = m
                        .sni_hosts
                        .iter()
                        .flatten()
                        .any(|h| dns_matches(&h.to_ascii_lowercase(), &sni));
                    gateways_ok && port_ok && sni_ok
                });
                if matched {
                    return l4_pick(vs, route.route.as_deref(), roll);
                }
            }
        }
        None
    }

    /// The `tcp[]` route for a connection to server `index`.
    pub fn decide_tcp(&self, index: usize, roll: u32) -> Option<L4Decision> {
        let server = self.spec.servers.get(index)?;
        for vs in self
            .spec
            .virtual_services
            .iter()
            .filter(|v| server.takes(v))
        {
            for route in vs.spec.tcp.iter().flatten() {
                let matches = route.r#match.as_deref().unwrap_or_default();
                let matched = matches.is_empty()
                    || matches.iter().any(|m| {
                        gateways_match(m.gateways.as_deref(), vs, &server.gateway)
                            && m.port.is_none_or(|p| p == u32::from(server.port))
                    });
                if matched {
                    return l4_pick(vs, route.route.as_deref(), roll);
                }
            }
        }
        None
    }
}

/// A match's `gateways` (absent: the VirtualService's own) names `gateway`.
fn gateways_match(list: Option<&[String]>, vs: &RoutedService, gateway: &str) -> bool {
    match list.filter(|l| !l.is_empty()) {
        None => true,
        Some(list) => list.iter().any(|g| qualify(g, &vs.namespace) == gateway),
    }
}

fn l4_pick(
    vs: &RoutedService,
    route: Option<&[crate::istio::RouteDestination]>,
    roll: u32,
) -> Option<L4Decision> {
    let destinations: Vec<WeightedDestination> = route
        .unwrap_or_default()
        .iter()
        .filter_map(|d| {
            let dest = d.destination.as_ref()?;
            let weight = u32::try_from(d.weight.unwrap_or(0)).unwrap_or(0);
            Some(crate::http_routing::destination_of(
                dest,
                &vs.namespace,
                weight,
            ))
        })
        .collect();
    let picked = crate::http_routing::pick_weighted(&destinations, roll)?;
    Some(L4Decision {
        virtual_service: format!("{}/{}", vs.namespace, vs.name),
        destination: picked.clone(),
    })
}

impl EdgeServer {
    /// Whether the server is `tls.mode: ISTIO_MUTUAL`: served to mesh workloads over HBONE
    /// only, where the mesh's mTLS is the TLS Istio's sidecar would originate to it.
    pub fn mesh_only(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.mode == ServerTlsMode::IstioMutual)
    }

    /// Whether a request or SNI for `host` (no port) is for this server.
    pub fn matches_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|h| dns_matches(&h.dns, &host))
    }

    /// Whether the server takes routes from this VirtualService: bound to the Gateway, from a
    /// namespace one of its hosts allows, with a host that intersects that one's.
    fn takes(&self, vs: &RoutedService) -> bool {
        let bound = vs
            .spec
            .gateways
            .iter()
            .flatten()
            .any(|g| qualify(g, &vs.namespace) == self.gateway);
        bound
            && self.hosts.iter().any(|sh| {
                sh.namespace.as_ref().is_none_or(|ns| *ns == vs.namespace)
                    && vs
                        .spec
                        .hosts
                        .iter()
                        .flatten()
                        .any(|h| intersects(&sh.dns, &h.to_ascii_lowercase()))
            })
    }
}

/// `ns/name`; a bare name is in `namespace`.
fn qualify(reference: &str, namespace: &str) -> String {
    if reference.contains('/') {
        reference.to_owned()
    } else {
        format!("{namespace}/{reference}")
    }
}

/// Whether the pattern (`*`, `*.suffix` or exact) matches the name.
pub fn dns_matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        None => pattern == name,
    }
}

/// Whether two host patterns share a name.
fn intersects(a: &str, b: &str) -> bool {
    dns_matches(a, b) || dns_matches(b, a) || {
        match (a.strip_prefix('*'), b.strip_prefix('*')) {
            (Some(x), Some(y)) => x.ends_with(y) || y.ends_with(x),
            _ => false,
        }
    }
}

/// Whether a Gateway selects a workload with these labels (an empty selector selects none).
pub fn selects(gateway: &GatewaySpec, labels: &BTreeMap<String, String>) -> bool {
    match &gateway.selector {
        Some(sel) if !sel.is_empty() => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}

/// The Gateways selecting a workload in `namespace` with `labels`, as servers, with the
/// VirtualServices bound to them; `None` when no Gateway selects it.
pub fn gateway_routes(
    set: &ConfigSet,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Option<GatewayRoutes>, RouteError> {
    let selected: Vec<&Resource<GatewaySpec>> = set
        .gateways
        .iter()
        .filter(|g| selects(&g.spec, labels))
        .collect();
    if selected.is_empty() {
        return Ok(None);
    }
    let mut servers = Vec::new();
    for gw in &selected {
        let key = gw.key();
        for (i, server) in gw.spec.servers.iter().flatten().enumerate() {
            if let Some(s) = edge_server(set, &key, &gw.meta.namespace, namespace, i, server) {
                servers.push(s);
            }
        }
    }
    let names: Vec<String> = selected.iter().map(|g| g.key()).collect();
    let all = crate::mesh_routing::ordered_services(&set.virtual_services);
    let virtual_services = all
        .into_iter()
        .filter(|v| {
            v.spec
                .gateways
                .iter()
                .flatten()
                .any(|g| names.contains(&qualify(g, &v.namespace)))
        })
        .collect();
    GatewayRoutes::try_from(GatewayRoutesSpec {
        servers,
        virtual_services,
    })
    .map(Some)
}

/// One server as served; `None` for what Ward does not serve (a Unix socket `bind`, a
/// protocol other than HTTP, HTTPS, HTTP2, GRPC, TLS, TCP): those are warned about at load.
fn edge_server(
    set: &ConfigSet,
    gateway: &str,
    gateway_namespace: &str,
    workload_namespace: &str,
    index: usize,
    server: &Server,
) -> Option<EdgeServer> {
    let field = format!("spec.servers[{index}]");
    let port = server.port.as_ref()?;
    let number = u16::try_from(port.number?).ok().filter(|n| *n > 0)?;
    let protocol = match Protocol::parse(port.protocol.as_deref()?).ok()? {
        Protocol::Http => EdgeProtocol::Http,
        Protocol::Https => EdgeProtocol::Https,
        Protocol::Http2 | Protocol::Grpc => EdgeProtocol::Http2,
        Protocol::Tls => EdgeProtocol::Tls,
        Protocol::Tcp => EdgeProtocol::Tcp,
        _ => return None,
    };
    let hosts = server
        .hosts
        .iter()
        .flatten()
        .map(|h| {
            let (ns, dns) = h.split_once('/').unwrap_or(("*", h));
            ServerHost {
                namespace: match ns {
                    "*" => None,
                    "." => Some(gateway_namespace.to_owned()),
                    other => Some(other.to_owned()),
                },
                dns: dns.to_ascii_lowercase(),
            }
        })
        .collect();
    let https_redirect = server
        .tls
        .as_ref()
        .and_then(|t| t.https_redirect)
        .unwrap_or(false);
    let tls = match (&server.tls, protocol) {
        (Some(t), EdgeProtocol::Https | EdgeProtocol::Tls) => {
            Some(edge_tls(set, gateway, &field, workload_namespace, t))
        }
        _ => None,
    };
    Some(EdgeServer {
        gateway: gateway.to_owned(),
        field,
        port_name: port.name.clone().unwrap_or_default(),
        port: number,
        protocol,
        hosts,
        tls,
        https_redirect,
    })
}

fn edge_tls(
    set: &ConfigSet,
    gateway: &str,
    field: &str,
    namespace: &str,
    t: &crate::istio::ServerTlsSettings,
) -> EdgeTls {
    let nonempty = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let mode = t.mode.unwrap_or(ServerTlsMode::Passthrough);
    let mut out = EdgeTls {
        mode,
        certificate: nonempty(&t.server_certificate).map(Material::File),
        private_key: nonempty(&t.private_key).map(Material::File),
        ca: nonempty(&t.ca_certificates).map(Material::File),
        min_version: t.min_protocol_version,
        max_version: t.max_protocol_version,
        cipher_suites: t.cipher_suites.clone().unwrap_or_default(),
        subject_alt_names: t.subject_alt_names.clone().unwrap_or_default(),
        broken: None,
    };
    let mutual = matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual);
    if let Some(name) = nonempty(&t.credential_name) {
        let at = format!("Gateway {gateway}: {field}.tls.credentialName");
        let key = format!("{namespace}/{name}");
        let Some(secret) = set.secrets.get(&key) else {
            out.broken = Some(format!("{at}: Secret {key} is not in the configuration"));
            return out;
        };
        let pick = |secret: &crate::origination::SecretObject, from: &str, keys: &[&str]| {
            keys.iter().find_map(|k| {
                secret.data.get(*k).map(|pem| Material::Secret {
                    from: format!("Secret {from} key {k}"),
                    pem: pem.clone(),
                })
            })
        };
        out.certificate = pick(secret, &key, &["tls.crt", "cert"]);
        out.private_key = pick(secret, &key, &["tls.key", "key"]);
        out.ca = pick(secret, &key, &["ca.crt", "cacert"]);
        if out.ca.is_none() && mutual {
            let ca_key = format!("{key}-cacert");
            if let Some(ca) = set.secrets.get(&ca_key) {
                out.ca = pick(ca, &ca_key, &["ca.crt", "cacert", "tls.crt"]);
            }
        }
        if out.certificate.is_none() || out.private_key.is_none() {
            out.broken = Some(format!(
                "{at}: Secret {key} has no certificate and key (`tls.crt` and `tls.key`, or \
                 `cert` and `key`)"
            ));
        } else if mutual && out.ca.is_none() {
            out.broken = Some(format!(
                "{at}: Secret {key} has no CA (`ca.crt` or `cacert`), and there is no Secret \
                 {key}-cacert"
            ));
        }
    }
    out
}

/// The parts of a Gateway Ward does not serve (for WARD0102). Empty: all of it is served.
pub fn unserved_gateway_fields(spec: &GatewaySpec) -> Vec<String> {
    let mut out = Vec::new();
    if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
        out.push("an empty spec.selector (selects no workload in Ward)".to_owned());
    }
    for (i, s) in spec.servers.iter().flatten().enumerate() {
        let at = format!("spec.servers[{i}]");
        if s.bind.as_deref().is_some_and(|b| !b.is_empty()) {
            out.push(format!("{at}.bind"));
        }
        if s.default_endpoint.is_some() {
            out.push(format!("{at}.defaultEndpoint"));
        }
        let protocol = s
            .port
            .as_ref()
            .and_then(|p| p.protocol.as_deref())
            .and_then(|p| Protocol::parse(p).ok());
        if matches!(
            protocol,
            Some(Protocol::Mongo | Protocol::Mysql | Protocol::Redis | Protocol::Unknown)
        ) {
            out.push(format!("{at}.port.protocol"));
        }
        let Some(t) = &s.tls else { continue };
        let tls = format!("{at}.tls");
        for (present, name) in [
            (t.ca_crl.is_some(), "caCrl"),
            (t.credential_names.is_some(), "credentialNames"),
            (t.ca_cert_credential_name.is_some(), "caCertCredentialName"),
            (t.tls_certificates.is_some(), "tlsCertificates"),
            (t.verify_certificate_spki.is_some(), "verifyCertificateSpki"),
            (t.verify_certificate_hash.is_some(), "verifyCertificateHash"),
            (t.insecure_skip_verify.is_some(), "insecureSkipVerify"),
            (t.subject_alt_names.is_some(), "subjectAltNames"),
        ] {
            if present {
                out.push(format!("{tls}.{name}"));
            }
        }
        if matches!(t.mode, Some(ServerTlsMode::AutoPassthrough)) {
            out.push(format!("{tls}.mode"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
    tls: {httpsRedirect: true}
  - port: {number: 8443, name: https-a, protocol: HTTPS}
    hosts: [app/a.example.com]
    tls: {mode: SIMPLE, credentialName: a-cert}
  - port: {number: 8443, name: https-b, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: MUTUAL, credentialName: b-cert}
  - port: {number: 9443, name: tls, protocol: TLS}
    hosts: ["*.pass.example.com"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: v1
kind: Secret
metadata: {name: a-cert, namespace: istio-system}
type: kubernetes.io/tls
stringData: {tls.crt: CERT, tls.key: KEY}
---
apiVersion: v1
kind: Secret
metadata: {name: b-cert, namespace: istio-system}
stringData: {tls.crt: CERT, tls.key: KEY}
---
apiVersion: v1
kind: Secret
metadata: {name: b-cert-cacert, namespace: istio-system}
stringData: {ca.crt: CA}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: app}
spec:
  hosts: [a.example.com]
  gateways: [istio-system/edge]
  http: [{route: [{destination: {host: web}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-elsewhere, namespace: other}
spec:
  hosts: [a.example.com]
  gateways: [istio-system/edge]
  http: [{route: [{destination: {host: evil}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pass, namespace: app}
spec:
  hosts: ["*.pass.example.com"]
  gateways: [istio-system/edge]
  tls:
  - match: [{sniHosts: [one.pass.example.com]}]
    route: [{destination: {host: one, port: {number: 8443}}}]
"#;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selected_servers_their_credentials_and_routes() {
        let set = crate::load_str("gw.yaml", YAML).unwrap();
        let none = gateway_routes(&set, "istio-system", &labels(&[("app", "web")])).unwrap();
        assert!(none.is_none());
        let gw = gateway_routes(
            &set,
            "istio-system",
            &labels(&[("istio", "ingressgateway")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(gw.ports(), [8080, 8443, 9443]);
        let servers = gw.servers();
        assert!(servers[0].https_redirect);
        assert_eq!(servers[1].tls.as_ref().unwrap().broken, None);
        let b = servers[2].tls.as_ref().unwrap();
        assert_eq!(b.broken, None);
        assert!(
            matches!(&b.ca, Some(Material::Secret { from, .. }) if from.contains("b-cert-cacert"))
        );
        // SNI picks the server, and so the certificate.
        assert_eq!(gw.server_for_sni(8443, Some("b.example.com")), Some(2));
        assert_eq!(gw.server_for_sni(8443, Some("a.example.com")), Some(1));
        assert_eq!(gw.server_for_sni(8443, Some("c.example.com")), None);
        // `app/a.example.com` takes app's VirtualService, not other's.
        let facts = crate::http_routing::RequestFacts {
            method: "GET",
            scheme: "https",
            authority: "a.example.com:8443",
            path_and_query: "/",
            headers: &[],
            port: 8443,
            gateway: "istio-system/edge",
            source_labels: &BTreeMap::new(),
            source_namespace: None,
        };
        match gw.table(1).unwrap().decide(&facts, Default::default()) {
            crate::http_routing::Decision::Forward(f) => {
                assert_eq!(f.destination.host, "web.app.svc.cluster.local")
            }
            other => panic!("{other:?}"),
        }
        // PASSTHROUGH: by SNI.
        let d = gw.decide_tls(3, "one.pass.example.com", 0).unwrap();
        assert_eq!(d.destination.host, "one.app.svc.cluster.local");
        assert_eq!(d.destination.port, Some(8443));
        assert!(gw.decide_tls(3, "two.pass.example.com", 0).is_none());
        // A proxy on another host reads it back.
        let json = serde_json::to_string(&gw).unwrap();
        let back: GatewayRoutes = serde_json::from_str(&json).unwrap();
        assert_eq!(back, gw);
        assert!(back.table(1).is_some());
        // `/config_dump` never shows a server's private key.
        let mut dump = serde_json::to_value(&gw).unwrap();
        crate::origination::redact_keys(&mut dump);
        let dump = dump.to_string();
        assert!(dump.contains("CERT") && !dump.contains("KEY"), "{dump}");
    }

    #[test]
    fn a_missing_secret_breaks_only_its_server() {
        let yaml = YAML.replace("credentialName: a-cert", "credentialName: gone");
        let set = crate::load_str("gw.yaml", &yaml).unwrap();
        let gw = gateway_routes(
            &set,
            "istio-system",
            &labels(&[("istio", "ingressgateway")]),
        )
        .unwrap()
        .unwrap();
        let broken = gw.servers()[1]
            .tls
            .as_ref()
            .unwrap()
            .broken
            .clone()
            .unwrap();
        assert!(
            broken.contains("Gateway istio-system/edge: spec.servers[1].tls.credentialName")
                && broken.contains("istio-system/gone"),
            "{broken}"
        );
        assert_eq!(gw.servers()[2].tls.as_ref().unwrap().broken, None);
    }

    #[test]
    fn unserved_fields_are_named() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: g, namespace: n}
spec:
  servers:
  - port: {number: 443, name: a, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: c, subjectAltNames: [x]}
  - port: {number: 15443, name: b, protocol: TLS}
    hosts: ["*"]
    tls: {mode: AUTO_PASSTHROUGH}
"#;
        let set = crate::load_str("gw.yaml", yaml).unwrap();
        assert_eq!(
            unserved_gateway_fields(&set.gateways[0].spec),
            [
                "an empty spec.selector (selects no workload in Ward)",
                "spec.servers[0].tls.subjectAltNames",
                "spec.servers[1].tls.mode"
            ]
        );
        let served = crate::load_str("gw.yaml", YAML).unwrap();
        assert!(unserved_gateway_fields(&served.gateways[0].spec).is_empty());
    }

    #[test]
    fn istio_mutual_servers_are_served_over_hbone_only() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: https-port-for-tls-origination, protocol: HTTPS}
    hosts: [api.example.com]
    tls: {mode: ISTIO_MUTUAL}
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [plain.example.com]
"#;
        let set = crate::load_str("gw.yaml", yaml).unwrap();
        assert!(unserved_gateway_fields(&set.gateways[0].spec).is_empty());
        let gw = gateway_routes(&set, "istio-system", &labels(&[("istio", "egressgateway")]))
            .unwrap()
            .unwrap();
        assert!(gw.servers()[0].mesh_only());
        assert_eq!(gw.servers()[0].tls.as_ref().unwrap().broken, None);
        assert!(!gw.servers()[1].mesh_only());
        assert_eq!(gw.ports(), [80, 8080]);
        assert_eq!(gw.bound_ports(), [8080]);
        assert_eq!(gw.server_for_host(80, "api.example.com"), Some(0));
        assert_eq!(gw.server_for_host(80, "other.example.com"), None);
    }

    #[test]
    fn host_patterns() {
        assert!(dns_matches("*", "a.b"));
        assert!(dns_matches("*.b.com", "a.b.com"));
        assert!(!dns_matches("*.b.com", "b.com"));
        assert!(intersects("*.example.com", "a.example.com"));
        assert!(intersects("*.a.example.com", "*.example.com"));
        assert!(!intersects("a.example.com", "b.example.com"));
    }
}
