//! What each proxy runs: the contract between `translate` and the proxy.
//!
//! A [`MeshSnapshot`] is an immutable value: the control plane publishes a new one when the
//! config changes and proxies swap it in whole. Every type here is plain data (Clone, Debug,
//! PartialEq, serde) so it can be dumped (`/config_dump`), compared in tests and sent over the
//! wire later. Fields may be added; none may be renamed or removed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use ward_authn::jwks_uri::OwnListener;
use ward_authn::JwtRuleSet;
use ward_policy::{MtlsMode, PolicyRef, WorkloadPolicies};

use crate::mesh_routing::MeshRoutes;
use crate::telemetry::MeshDirectory;

/// The port every proxy serves HBONE on, on its workload address (istio.io "HBONE": port
/// 15008). The same value as `ward_hbone::HBONE_PORT`, which this crate cannot depend on (it
/// is pure); the proxy crate asserts at compile time that the two agree.
pub const HBONE_PORT: u16 = 15008;

/// Everything every proxy of the mesh needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSnapshot {
    /// The mesh's trust domain (`cluster.local` by default).
    pub trust_domain: String,
    /// Other trust domains whose identities are treated as this mesh's.
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
    /// Where mesh-wide policy lives (`istio-system` by default).
    pub root_namespace: String,
    /// One proxy per WorkloadEntry, keyed by its `namespace/name`.
    pub proxies: BTreeMap<String, ProxyConfig>,
}

/// The configuration of one workload's proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// The workload the proxy fronts.
    pub workload: WorkloadInfo,
    /// Ports the proxy serves on the workload address, one per Sidecar ingress listener.
    pub inbound: Vec<InboundPort>,
    /// Local listeners for the app's outbound calls, one per (Sidecar egress listener, host);
    /// entries with the same `bind` are one socket.
    pub outbound: Vec<OutboundListener>,
    /// The AuthorizationPolicies that apply to this workload: one compiled set shared by every
    /// workload that the same policies select (`crate::translate`).
    pub authz: Arc<WorkloadPolicies>,
    /// The `jwtRules` of every RequestAuthentication that applies to this workload: the root
    /// namespace's objects first, then the workload namespace's, each by name. Issuers are
    /// distinct (translation fails otherwise). Empty: no JWT authentication. Compiled once, with
    /// the rest of the config: a request takes [`JwtRuleSet::authenticator`] as it is, without
    /// a lock or a comparison. Serialized as the list of rules.
    #[serde(default)]
    pub jwt_rules: JwtRuleSet,
    /// `REGISTRY_ONLY` or `ALLOW_ANY`, from the Sidecar or the mesh settings. Enforced for
    /// captured connections to an address that is no service and no workload
    /// (docs/capture.md, "Outbound"); explicit egress listeners always serve one service.
    pub outbound_traffic_policy: String,
    /// Every ServiceEntry host visible to the workload, by host name, with its addresses
    /// (`spec.addresses`, else one auto-allocated: [`crate::vip`]) and its ports' endpoints:
    /// what a captured outbound connection is routed by (docs/capture.md). The same for every
    /// workload of a namespace, so they share one copy.
    #[serde(default)]
    pub services: Arc<BTreeMap<String, MeshService>>,
    /// The inbound ports of the workload when its traffic is captured and no Sidecar ingress
    /// listener says otherwise: the ports of the ServiceEntries that select it and of its
    /// WorkloadEntry `ports`, each forwarded to `<workload address>:<port>`. Empty when a
    /// Sidecar has ingress listeners (those are `inbound`). Not bound as listeners: captured
    /// connections reach them through the inbound capture port.
    #[serde(default)]
    pub service_inbound: Vec<InboundPort>,
    /// Every workload's and service's metric labels, shared by all proxies of one
    /// configuration (in memory, one copy; a proxy on another host needs it with its config).
    #[serde(default)]
    pub directory: Arc<MeshDirectory>,
    /// How the app reaches hosts outside the mesh: the explicit forward-proxy listeners and
    /// the DNS servers external hosts are resolved with (docs/egress.md).
    #[serde(default)]
    pub egress: EgressSettings,
    /// VirtualService routing of the outbound HTTP side (`mesh`) and DestinationRule
    /// subsets and load balancing, compiled once per config; the same for every workload of a
    /// namespace, so they share one copy (docs/routing.md).
    #[serde(default)]
    pub mesh_routes: Arc<MeshRoutes>,
    /// The Gateway servers this workload runs, when Gateways select it by its labels, with
    /// the VirtualServices bound to them (docs/ingress.md). Empty: a plain sidecar.
    #[serde(default)]
    pub gateway: Arc<crate::gateways::GatewayRoutes>,
    /// The spans this proxy reports, per direction, from the mesh settings and the Telemetry
    /// resources that apply to it (docs/tracing.md). Default: none reported.
    #[serde(default)]
    pub tracing: Arc<crate::tracing_policy::TracingPolicy>,
    /// Which of this proxy's requests and connections are written to the access log, per
    /// direction (Telemetry `accessLogging`: docs/audit.md). Default: all.
    #[serde(default)]
    pub access_logging: Arc<crate::access_log_policy::AccessLogPolicy>,
    /// Which standard metrics this proxy records and without which labels, per reporter
    /// (Telemetry `metrics` overrides: docs/metrics.md). Default: all, with every label.
    #[serde(default)]
    pub metrics: Arc<crate::metrics_policy::MetricsPolicy>,
}

/// The egress settings of one proxy (docs/egress.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressSettings {
    /// Explicit forward-proxy listeners: Sidecar egress listeners whose `port.protocol` is
    /// `HTTP_PROXY`, serving HTTP CONNECT and absolute-form HTTP.
    #[serde(default)]
    pub forward_proxies: Vec<ForwardProxy>,
    /// The DNS servers external hosts are resolved with (`meshConfig.dnsResolvers`, a Ward
    /// extension); empty: the system's (`/etc/resolv.conf`).
    #[serde(default)]
    pub dns_resolvers: Vec<SocketAddr>,
}

/// One explicit forward-proxy listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardProxy {
    /// Egress `bind` (default 127.0.0.1) and the listener's port.
    pub bind: SocketAddr,
    /// The ServiceEntry hosts (keys of [`ProxyConfig::services`], wildcards included) that the
    /// listener's `hosts` select: the only hosts it opens a path to under REGISTRY_ONLY.
    pub hosts: Vec<String>,
}

/// A service the workload may call, as transparent capture sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshService {
    /// The ServiceEntry's namespace.
    pub namespace: String,
    /// The host and the names a client in the workload's namespace may use for it (for a
    /// `<name>.<ns>.svc.<domain>` host: `<name>.<ns>.svc`, `<name>.<ns>`, and `<name>` when
    /// `<ns>` is the workload's namespace).
    pub hostnames: Vec<String>,
    /// `spec.addresses` (single addresses and CIDRs), else the auto-allocated address.
    pub addresses: Vec<ipnet::IpNet>,
    /// True when `addresses` is the auto-allocated one.
    pub auto_allocated: bool,
    /// The ServiceEntry's ports.
    pub ports: Vec<MeshServicePort>,
    /// `resolution`: with no endpoints, a DNS entry is reached at the address its host
    /// resolves to (docs/egress.md).
    #[serde(default)]
    pub resolution: crate::istio::Resolution,
}

/// One port of a [`MeshService`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshServicePort {
    /// The port clients dial.
    pub number: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// `targetPort`, when the entry gives one.
    pub target_port: Option<u16>,
    /// Where connections go: the same endpoints an egress listener for it uses.
    pub endpoints: Vec<Endpoint>,
    /// The TLS the proxy originates toward them (a DestinationRule without a
    /// `workloadSelector`: the view is shared by the namespace's workloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Arc<crate::origination::TlsOrigination>>,
}

/// What a captured outbound connection to some address is for.
#[derive(Clone, Debug, PartialEq)]
pub enum CapturedDestination<'a> {
    /// A service address and one of its ports.
    Service {
        /// The host name.
        host: &'a str,
        /// The service's port.
        port: &'a MeshServicePort,
    },
    /// The address of a workload in the mesh: the endpoint to reach it.
    Workload(Endpoint),
    /// Neither: `outboundTrafficPolicy` decides.
    Unknown,
}

impl ProxyConfig {
    /// What a captured outbound connection to `dst` is for. Pure. A service address wins over
    /// a workload address; a service address without that port is unknown.
    pub fn captured_destination(&self, dst: SocketAddr) -> CapturedDestination<'_> {
        for (host, service) in self.services.iter() {
            if !service.addresses.iter().any(|net| net.contains(&dst.ip())) {
                continue;
            }
            if let Some(port) = service.ports.iter().find(|p| p.number == dst.port()) {
                return CapturedDestination::Service { host, port };
            }
        }
        let endpoints = self
            .services
            .values()
            .flat_map(|s| &s.ports)
            .flat_map(|p| &p.endpoints)
            .filter(|e| e.workload.is_some());
        let mut same_ip = None;
        for ep in endpoints {
            if ep.address == dst {
                return CapturedDestination::Workload(ep.clone());
            }
            if ep.address.ip() == dst.ip() && same_ip.is_none() {
                same_ip = Some(ep);
            }
        }
        match same_ip {
            // Another port of a known workload: reached the same way, at the port dialed.
            Some(ep) => CapturedDestination::Workload(Endpoint {
                address: dst,
                ..ep.clone()
            }),
            None => CapturedDestination::Unknown,
        }
    }

    /// The config a proxy serves when its traffic is captured: `inbound` plus
    /// `service_inbound`.
    pub fn with_service_inbound(&self) -> ProxyConfig {
        let mut cfg = self.clone();
        for port in &self.service_inbound {
            if !cfg.inbound.iter().any(|p| p.port == port.port) {
                cfg.inbound.push(port.clone());
            }
        }
        cfg
    }

    /// Every socket this proxy listens on: HBONE and each inbound port on the workload
    /// address, and each egress listener's bind. A `jwksUri` must reach none of them.
    pub fn listeners(&self) -> Vec<OwnListener> {
        let workload = format!("{}/{}", self.workload.namespace, self.workload.name);
        let address = self.workload.address;
        let mut out = vec![OwnListener {
            addr: SocketAddr::new(address, HBONE_PORT),
            what: format!("the HBONE listener of workload {workload}"),
        }];
        for port in &self.inbound {
            out.push(OwnListener {
                addr: SocketAddr::new(address, port.port),
                what: format!("inbound port {} of workload {workload}", port.port),
            });
        }
        for listener in &self.outbound {
            if !out.iter().any(|l| l.addr == listener.bind) {
                out.push(OwnListener {
                    addr: listener.bind,
                    what: format!(
                        "the egress listener of workload {workload} for {}",
                        listener.service
                    ),
                });
            }
        }
        for proxy in &self.egress.forward_proxies {
            out.push(OwnListener {
                addr: proxy.bind,
                what: format!("the forward-proxy listener of workload {workload}"),
            });
        }
        out
    }
}

/// Who a proxy is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    /// The WorkloadEntry's name.
    pub name: String,
    /// The WorkloadEntry's namespace.
    pub namespace: String,
    /// `spec.serviceAccount`, `default` when absent.
    pub service_account: String,
    /// `spec.address`: where the proxy listens for inbound connections.
    pub address: IpAddr,
    /// `spec.labels` (with `metadata.labels` under them, as Istio merges them).
    pub labels: BTreeMap<String, String>,
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub identity: String,
    /// A built-in app `ward up` runs behind the proxy (shipped examples only).
    pub demo_app: Option<DemoApp>,
    /// Keep path- and method-override headers (`X-Original-URL`, `X-HTTP-Method-Override`, …)
    /// on inbound HTTP requests: annotation [`KEEP_OVERRIDE_HEADERS_ANNOTATION`] set to `"true"`.
    /// Off by default: they let some frameworks serve another request than the one authorized.
    #[serde(default)]
    pub keep_override_headers: bool,
    /// What the proxy does when its audit trail cannot be written (a full disk, an unwritable
    /// directory): annotation [`AUDIT_ON_FAILURE_ANNOTATION`]; fail-open unless it says
    /// `fail-closed` (docs/audit.md).
    #[serde(default)]
    pub audit_fail_closed: bool,
    /// `gatewayTopology.numTrustedProxies`: the proxies in front of this workload (when it is
    /// a gateway) whose `X-Forwarded-For` entries are trusted; from the annotation
    /// [`PROXY_CONFIG_ANNOTATION`], else the mesh's `defaultConfig`, else 0 (docs/ingress.md).
    #[serde(default)]
    pub num_trusted_proxies: u32,
}

/// Istio's per-workload proxy settings annotation (a YAML `ProxyConfig`); Ward reads its
/// `gatewayTopology.numTrustedProxies`.
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";

/// Ward extension for shipped examples only: annotation `ward.dev/demo-app: echo` on the Sidecar or
/// WorkloadEntry asks `ward up` to run a built-in echo app at each ingress defaultEndpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DemoApp {
    /// Echoes every byte back.
    Echo,
    /// A tiny FHIR-like HTTP API (`GET /fhir/<Resource>` → 200, `POST` → 201), for the
    /// FHIR example.
    Fhir,
}

/// The annotation that asks for a [`DemoApp`].
pub const DEMO_APP_ANNOTATION: &str = "ward.dev/demo-app";

/// Ward annotation on a Sidecar or WorkloadEntry: `"true"` keeps the request headers with which
/// some frameworks override the path or method (docs/http.md, "Admission").
pub const KEEP_OVERRIDE_HEADERS_ANNOTATION: &str = "ward.dev/keep-override-headers";

/// Ward annotation on a Sidecar or WorkloadEntry: `fail-open` (the default: keep serving, with
/// a metric, an error log and `/ready` degraded) or `fail-closed` (refuse what cannot be
/// recorded) when the audit trail cannot be written (docs/audit.md). Istio has no such field.
pub const AUDIT_ON_FAILURE_ANNOTATION: &str = "ward.dev/audit-on-failure";

impl DemoApp {
    /// Parses the annotation value.
    pub fn parse(value: &str) -> Option<DemoApp> {
        match value {
            "echo" => Some(DemoApp::Echo),
            "fhir" => Some(DemoApp::Fhir),
            _ => None,
        }
    }
}

/// One inbound port of a workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundPort {
    /// The workload port the sidecar serves on `workload.address`.
    pub port: u16,
    /// From the Sidecar ingress port (protocol, else the port-name prefix).
    pub protocol: Protocol,
    /// Where the app listens: the ingress `defaultEndpoint`.
    pub target: SocketAddr,
    /// The port's effective PeerAuthentication mode.
    pub mtls: MtlsMode,
    /// The PeerAuthentication that decided `mtls`; `None` = Ward's default (STRICT).
    pub mtls_policy: Option<PolicyRef>,
}

/// An Istio port protocol (istio/istio `pkg/config/protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Opaque TCP.
    Tcp,
    /// HTTP/1.1 (also `HTTP_PROXY` and `GRPC-WEB`).
    Http,
    /// HTTP/2.
    Http2,
    /// gRPC.
    Grpc,
    /// TLS, routed by SNI.
    Tls,
    /// HTTPS, routed by SNI.
    Https,
    /// MongoDB.
    Mongo,
    /// MySQL.
    Mysql,
    /// Redis.
    Redis,
    /// Not declared: Istio sniffs the protocol; Ward treats the port as TCP.
    Unknown,
}

/// A protocol name Ward does not know, or one it cannot carry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Not an Istio protocol name.
    #[error(
        "unknown protocol `{0}`; Istio protocols are HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TCP, \
         TLS, MONGO, MYSQL, REDIS"
    )]
    Unknown(String),
    /// UDP: Ward proxies TCP only.
    #[error("protocol UDP is not supported: Ward proxies TCP only")]
    Udp,
}

impl Protocol {
    /// Parses an Istio protocol name, ignoring case as Istio does (`protocol.Parse`).
    pub fn parse(name: &str) -> Result<Protocol, ProtocolError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "http" | "http_proxy" | "grpc-web" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "tls" => Protocol::Tls,
            "https" => Protocol::Https,
            "mongo" => Protocol::Mongo,
            "mysql" => Protocol::Mysql,
            "redis" => Protocol::Redis,
            "udp" => return Err(ProtocolError::Udp),
            _ => return Err(ProtocolError::Unknown(name.to_owned())),
        })
    }

    /// The protocol of a port: its `protocol` field, else the prefix of its name.
    ///
    /// Istio "Protocol Selection": "Protocols can be specified manually by naming the Service
    /// port `name: <protocol>[-<suffix>]`" (istio.io `ops/configuration/traffic-management/
    /// protocol-selection`). A name without a known prefix leaves the protocol undeclared.
    pub fn of_port(protocol: Option<&str>, name: Option<&str>) -> Result<Protocol, ProtocolError> {
        if let Some(protocol) = protocol.filter(|p| !p.is_empty()) {
            return Protocol::parse(protocol);
        }
        let Some(name) = name else {
            return Ok(Protocol::Unknown);
        };
        let lower = name.to_ascii_lowercase();
        if lower == "grpc-web" || lower.starts_with("grpc-web-") {
            return Ok(Protocol::Http);
        }
        let prefix = lower.split('-').next().unwrap_or_default();
        Ok(Protocol::parse(prefix).unwrap_or(Protocol::Unknown))
    }

    /// Whether requests on this port are HTTP, so several services can share one egress
    /// listener: the proxy then routes each request by its `Host` / `:authority`
    /// ([`crate::routes::EgressRoutes`]).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// True when the app speaks HTTP/2 with prior knowledge on this port (HTTP2, GRPC).
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::Tls => "TLS",
            Protocol::Https => "HTTPS",
            Protocol::Mongo => "MONGO",
            Protocol::Mysql => "MYSQL",
            Protocol::Redis => "REDIS",
            Protocol::Unknown => "UNKNOWN",
        })
    }
}

/// A local listener for one service the app calls. Several HTTP services may share a `bind`
/// (one entry each): the proxy routes each request to one of them by its authority
/// ([`crate::routes::EgressRoutes`]); a TCP bind has exactly one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundListener {
    /// Egress `bind` (default 127.0.0.1) and the port.
    pub bind: SocketAddr,
    /// The ServiceEntry host, e.g. `db.datamesh.svc.cluster.local`.
    pub service: String,
    /// The ServiceEntry port.
    pub service_port: u16,
    /// The port's protocol.
    pub protocol: Protocol,
    /// Where connections go.
    pub endpoints: Vec<Endpoint>,
    /// The TLS the proxy originates toward the endpoints (a DestinationRule SIMPLE or MUTUAL
    /// `tls` for this client and port; docs/egress-tls.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Arc<crate::origination::TlsOrigination>>,
}

/// One destination of an outbound listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Workload address and target port.
    pub address: SocketAddr,
    /// `namespace/name` of the WorkloadEntry when the endpoint is in the mesh.
    pub workload: Option<String>,
    /// The server identity to expect (secure naming), `spiffe://...`.
    pub identity: Option<String>,
    /// How to reach it.
    pub transport: Transport,
}

/// How a proxy reaches an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Transport {
    /// mTLS HTTP/2 CONNECT to the peer proxy (port 15008).
    Hbone,
    /// Straight TCP to the address.
    Plaintext,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_of_port_follows_istio_naming() {
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Result<Protocol, ProtocolError>,
        );
        let cases: &[Case<'_>] = &[
            (Some("TCP"), Some("http-x"), Ok(Protocol::Tcp)),
            (Some("http"), None, Ok(Protocol::Http)),
            (Some("GRPC-Web"), None, Ok(Protocol::Http)),
            (Some("HTTP2"), None, Ok(Protocol::Http2)),
            (Some("Mongo"), None, Ok(Protocol::Mongo)),
            (Some(""), Some("grpc-api"), Ok(Protocol::Grpc)),
            (None, Some("http"), Ok(Protocol::Http)),
            (None, Some("https-admin"), Ok(Protocol::Https)),
            (None, Some("grpc-web-ui"), Ok(Protocol::Http)),
            (None, Some("tcp-db"), Ok(Protocol::Tcp)),
            (None, Some("db"), Ok(Protocol::Unknown)),
            (None, Some("udp-dns"), Ok(Protocol::Unknown)),
            (None, None, Ok(Protocol::Unknown)),
            (
                Some("HTPP"),
                None,
                Err(ProtocolError::Unknown("HTPP".into())),
            ),
            (Some("udp"), None, Err(ProtocolError::Udp)),
        ];
        for (protocol, name, want) in cases {
            assert_eq!(
                &Protocol::of_port(*protocol, *name),
                want,
                "{protocol:?} {name:?}"
            );
        }
    }

    #[test]
    fn only_http_family_shares_listeners() {
        let http = [Protocol::Http, Protocol::Http2, Protocol::Grpc];
        for p in http {
            assert!(p.is_http(), "{p}");
        }
        for p in [
            Protocol::Tcp,
            Protocol::Tls,
            Protocol::Https,
            Protocol::Unknown,
        ] {
            assert!(!p.is_http(), "{p}");
        }
    }

    #[test]
    fn enums_serialize_as_istio_spells_them() {
        assert_eq!(
            serde_json::to_string(&Protocol::Http2).unwrap(),
            "\"HTTP2\""
        );
        assert_eq!(
            serde_json::to_string(&Transport::Hbone).unwrap(),
            "\"HBONE\""
        );
        assert_eq!(serde_json::to_string(&DemoApp::Echo).unwrap(), "\"echo\"");
        assert_eq!(DemoApp::parse("echo"), Some(DemoApp::Echo));
        assert_eq!(DemoApp::parse("Echo"), None);
    }
}
