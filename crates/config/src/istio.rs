//! The Istio networking kinds Ward acts on, field for field: WorkloadEntry, ServiceEntry and
//! Sidecar (istio/api `networking/v1alpha3/{workload_entry,service_entry,sidecar}.proto`; the
//! v1 and v1beta1 versions share the schema). PeerAuthentication and AuthorizationPolicy specs
//! live in `ward_policy::spec`.
//!
//! Every proto field is accepted (JSON names, camelCase); an unknown field is an error (Ward is
//! stricter than Istio, which only warns). Fields Ward does not act on yet are reported as
//! WARD0103 warnings by the `validate` methods, never silently dropped. Validation also rejects
//! values Ward cannot run, e.g. a WorkloadEntry address that is a DNS name.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::diag::{code, Finding};
use crate::meta::{check_label_name, check_labels, check_subdomain};
use crate::snapshot::Protocol;
use crate::yaml::{push_index, push_key};

/// Selects workloads by label (networking `WorkloadSelector`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Every label must be present with this value.
    pub labels: Option<BTreeMap<String, String>>,
}

impl WorkloadSelector {
    /// Whether a workload with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v))
    }

    fn validate(&self, path: &str) -> Vec<Finding> {
        match &self.labels {
            Some(labels) if !labels.is_empty() => check_labels(labels, &push_key(path, "labels")),
            _ => vec![Finding::error(
                code::INVALID,
                path,
                "a workloadSelector needs labels; to select every workload, omit workloadSelector",
            )],
        }
    }
}

/// A non-Kubernetes workload (a VM, a process on a laptop). In Ward, each one gets a proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    /// The workload's IP address (Ward does not resolve DNS names).
    pub address: Option<String>,
    /// Port name → the workload's port for it.
    pub ports: Option<BTreeMap<String, u32>>,
    /// Labels that selectors match.
    pub labels: Option<BTreeMap<String, String>>,
    /// Network the workload is on (not enforced).
    pub network: Option<String>,
    /// Locality, e.g. `us-west/zone1` (not enforced).
    pub locality: Option<String>,
    /// Load-balancing weight (not enforced).
    pub weight: Option<u32>,
    /// The identity the workload runs as; `default` when absent.
    pub service_account: Option<String>,
}

/// The service account of a workload that names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// How strictly an endpoint address is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AddressRule {
    /// An IP address (WorkloadEntries, STATIC endpoints).
    Ip,
    /// An IP address or a DNS name (endpoints of DNS-resolved ServiceEntries).
    IpOrDns,
}

impl WorkloadEntrySpec {
    /// `spec.serviceAccount`, or `default`.
    pub fn service_account(&self) -> &str {
        self.service_account
            .as_deref()
            .filter(|sa| !sa.is_empty())
            .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
    }

    /// The address as an IP, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.as_deref().and_then(|a| a.parse().ok())
    }

    /// Problems with this entry; `path` is where it sits (`spec`, `spec.endpoints[0]`).
    /// `port_names` are the ServiceEntry's port names, for inline endpoints.
    pub(crate) fn validate(
        &self,
        path: &str,
        rule: AddressRule,
        port_names: Option<&BTreeSet<&str>>,
    ) -> Vec<Finding> {
        let mut findings = Vec::new();
        let address_path = push_key(path, "address");
        match self.address.as_deref() {
            None | Some("") => findings.push(Finding::error(
                code::INVALID,
                address_path,
                "missing required field `address`: Ward needs the workload's IP address",
            )),
            Some(address) => {
                if let Err(why) = check_address(address, rule) {
                    findings.push(Finding::error(code::INVALID, address_path, why));
                }
            }
        }
        for (name, port) in self.ports.iter().flatten() {
            let field = push_key(&push_key(path, "ports"), name);
            if port_number(*port).is_none() {
                findings.push(Finding::error(
                    code::INVALID,
                    field.clone(),
                    format!("port {port} is out of range 1-65535"),
                ));
            }
            if let Some(names) = port_names {
                if !names.contains(name.as_str()) {
                    // istio/istio pkg/config/validation: an endpoint port must name a port of
                    // the ServiceEntry.
                    findings.push(Finding::error(
                        code::INVALID,
                        field,
                        format!("`{name}` is not the name of a port of this ServiceEntry"),
                    ));
                }
            }
        }
        if let Some(labels) = &self.labels {
            findings.extend(check_labels(labels, &push_key(path, "labels")));
        }
        if let Some(sa) = &self.service_account {
            if let Err(why) = check_subdomain(sa) {
                findings.push(Finding::error(
                    code::INVALID,
                    push_key(path, "serviceAccount"),
                    why,
                ));
            }
        }
        for (set, field) in [
            (self.network.is_some(), "network"),
            (self.locality.is_some(), "locality"),
            (self.weight.is_some(), "weight"),
        ] {
            if set {
                findings.push(Finding::not_enforced(push_key(path, field), ""));
            }
        }
        findings
    }
}

fn check_address(address: &str, rule: AddressRule) -> Result<(), String> {
    if address.starts_with("unix://") {
        return Err(format!(
            "`{address}`: Unix domain socket addresses are not supported by Ward"
        ));
    }
    if address.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    match rule {
        AddressRule::Ip => Err(format!(
            "`{address}` is not an IP address: Ward needs an IP address here (it does not \
             resolve DNS names)"
        )),
        AddressRule::IpOrDns if is_dns_name(address) => Ok(()),
        AddressRule::IpOrDns => Err(format!(
            "`{address}` is neither an IP address nor a DNS name"
        )),
    }
}

/// A DNS name: labels of letters, digits and `-`, separated by dots.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A port number as u16, rejecting 0 and values above 65535.
pub(crate) fn port_number(port: u32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// Declares a service: its hosts, ports and where its endpoints are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// The service's host names (the `service` of Ward's outbound listeners).
    pub hosts: Option<Vec<String>>,
    /// Virtual IPs or CIDRs (not enforced: Ward does not capture traffic by VIP).
    pub addresses: Option<Vec<String>>,
    /// The service's ports.
    pub ports: Option<Vec<ServicePort>>,
    /// In or out of the mesh; `MESH_EXTERNAL` when absent.
    pub location: Option<Location>,
    /// How endpoints are found.
    pub resolution: Option<Resolution>,
    /// Inline endpoints.
    pub endpoints: Option<Vec<WorkloadEntrySpec>>,
    /// Selects WorkloadEntries of this namespace as endpoints.
    pub workload_selector: Option<WorkloadSelector>,
    /// Namespaces that see the service; all when absent.
    pub export_to: Option<Vec<String>>,
    /// Extra server identities to accept (not enforced).
    pub subject_alt_names: Option<Vec<String>>,
}

/// A port of a ServiceEntry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// The port clients use.
    pub number: u32,
    /// `HTTP`, `TCP` ...; from the name prefix when absent.
    pub protocol: Option<String>,
    /// The port's name, e.g. `http-api`; endpoints map names to their own ports.
    pub name: Option<String>,
    /// The endpoints' port when they do not say.
    pub target_port: Option<u32>,
}

impl ServicePort {
    /// The port's protocol (validated at load, so never an error afterwards).
    pub fn protocol(&self) -> Protocol {
        Protocol::of_port(self.protocol.as_deref(), self.name.as_deref())
            .unwrap_or(Protocol::Unknown)
    }
}

/// ServiceEntry `location`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Location {
    /// Outside the mesh: no mTLS (the default).
    #[default]
    #[serde(rename = "MESH_EXTERNAL")]
    MeshExternal,
    /// Part of the mesh.
    #[serde(rename = "MESH_INTERNAL")]
    MeshInternal,
}

/// ServiceEntry `resolution`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    /// `NONE`: the original destination (the default).
    #[default]
    #[serde(rename = "NONE")]
    Passthrough,
    /// `STATIC`: the endpoints' addresses.
    #[serde(rename = "STATIC")]
    Static,
    /// `DNS`: resolve the hosts or endpoint names.
    #[serde(rename = "DNS")]
    Dns,
    /// `DNS_ROUND_ROBIN`: resolve and use the first address.
    #[serde(rename = "DNS_ROUND_ROBIN")]
    DnsRoundRobin,
    /// `DYNAMIC_DNS`: resolve wildcard hosts per request.
    #[serde(rename = "DYNAMIC_DNS")]
    DynamicDns,
}

impl ServiceEntrySpec {
    /// The hosts (empty when absent).
    pub fn hosts(&self) -> &[String] {
        self.hosts.as_deref().unwrap_or_default()
    }

    /// The ports (empty when absent).
    pub fn ports(&self) -> &[ServicePort] {
        self.ports.as_deref().unwrap_or_default()
    }

    /// Whether a client in `namespace` sees this entry, declared in `own_namespace`.
    ///
    /// istio/api service_entry.proto `exportTo`: "If no namespaces are specified then the
    /// service is exported to all namespaces by default. The value "." is reserved and defines
    /// an export to the same namespace that the service is declared in. Similarly the value
    /// "*" is reserved and defines an export to all namespaces." ("~": to none.)
    pub fn visible_to(&self, own_namespace: &str, namespace: &str) -> bool {
        match self.export_to.as_deref() {
            None | Some([]) => true,
            Some(list) => list.iter().any(|e| match e.as_str() {
                "*" => true,
                "." => own_namespace == namespace,
                "~" => false,
                named => named == namespace,
            }),
        }
    }

    /// Problems with this entry.
    pub(crate) fn validate(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        match self.hosts.as_deref() {
            None | Some([]) => findings.push(Finding::error(
                code::INVALID,
                "spec.hosts",
                "missing required field `hosts`",
            )),
            Some(hosts) => {
                for (i, host) in hosts.iter().enumerate() {
                    if let Err(why) = check_service_host(host) {
                        findings.push(Finding::error(
                            code::INVALID,
                            push_index("spec.hosts", i),
                            why,
                        ));
                    }
                }
            }
        }
        if let Some(addresses) = &self.addresses {
            for (i, address) in addresses.iter().enumerate() {
                if address.parse::<IpAddr>().is_err() && address.parse::<IpNet>().is_err() {
                    findings.push(Finding::error(
                        code::INVALID,
                        push_index("spec.addresses", i),
                        format!("`{address}` is not an IP address or CIDR"),
                    ));
                }
            }
            findings.push(Finding::not_enforced(
                "spec.addresses",
                "Ward does not capture traffic sent to virtual IPs; clients call the Sidecar \
                 egress listener instead",
            ));
        }
        findings.extend(self.validate_ports());
        let port_names: BTreeSet<&str> = self
            .ports()
            .iter()
            .filter_map(|p| p.name.as_deref())
            .collect();
        let resolution = self.resolution.unwrap_or_default();
        if let Some(selector) = &self.workload_selector {
            findings.extend(selector.validate("spec.workloadSelector"));
            if self.endpoints.is_some() {
                // istio/istio pkg/config/validation: "only one of WorkloadSelector or
                // Endpoints is allowed in Service Entry".
                findings.push(Finding::error(
                    code::INVALID,
                    "spec.endpoints",
                    "only one of workloadSelector or endpoints is allowed",
                ));
            }
        }
        if let Some(endpoints) = &self.endpoints {
            if resolution == Resolution::Passthrough && !endpoints.is_empty() {
                findings.push(Finding::error(
                    code::INVALID,
                    "spec.endpoints",
                    "no endpoints should be provided for resolution NONE (Istio rejects this too)",
                ));
            }
            let rule = match resolution {
                Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns => {
                    AddressRule::IpOrDns
                }
                Resolution::Passthrough | Resolution::Static => AddressRule::Ip,
            };
            for (i, endpoint) in endpoints.iter().enumerate() {
                findings.extend(endpoint.validate(
                    &push_index("spec.endpoints", i),
                    rule,
                    Some(&port_names),
                ));
            }
        }
        if matches!(
            resolution,
            Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns
        ) {
            findings.push(Finding::not_enforced(
                "spec.resolution",
                "Ward does not resolve DNS; only endpoints with IP addresses are used",
            ));
        }
        findings.extend(check_export_to(self.export_to.as_deref(), "spec.exportTo"));
        if self.subject_alt_names.is_some() {
            findings.push(Finding::not_enforced(
                "spec.subjectAltNames",
                "Ward expects each endpoint's own WorkloadEntry identity",
            ));
        }
        findings
    }

    fn validate_ports(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        let mut numbers = BTreeSet::new();
        let mut names = BTreeSet::new();
        for (i, port) in self.ports().iter().enumerate() {
            let path = push_index("spec.ports", i);
            if port_number(port.number).is_none() {
                findings.push(Finding::error(
                    code::INVALID,
                    push_key(&path, "number"),
                    format!("port {} is out of range 1-65535", port.number),
                ));
            } else if !numbers.insert(port.number) {
                findings.push(Finding::error(
                    code::INVALID,
                    push_key(&path, "number"),
                    format!("port {} is declared twice", port.number),
                ));
            }
            if let Some(target) = port.target_port {
                if port_number(target).is_none() {
                    findings.push(Finding::error(
                        code::INVALID,
                        push_key(&path, "targetPort"),
                        format!("port {target} is out of range 1-65535"),
                    ));
                }
            }
            if let Some(name) = &port.name {
                if !names.insert(name.as_str()) {
                    findings.push(Finding::error(
                        code::INVALID,
                        push_key(&path, "name"),
                        format!("port name `{name}` is used twice"),
                    ));
                }
            }
            if let Err(err) = Protocol::of_port(port.protocol.as_deref(), port.name.as_deref()) {
                findings.push(Finding::error(
                    code::INVALID,
                    push_key(&path, "protocol"),
                    err.to_string(),
                ));
            }
        }
        findings
    }
}

/// A ServiceEntry host: a DNS name, optionally with a `*.` wildcard prefix.
fn check_service_host(host: &str) -> Result<(), String> {
    if host == "*" {
        return Err(
            "`*` is not a host: name the service (a wildcard like `*.example.com` is allowed)"
                .to_owned(),
        );
    }
    if host.contains('/') {
        return Err(format!(
            "`{host}`: ServiceEntry hosts have no namespace part (that form is for Sidecar hosts)"
        ));
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if is_dns_name(name) {
        Ok(())
    } else {
        Err(format!("`{host}` is not a DNS name"))
    }
}

/// `exportTo`: `.`, `*`, `~` or namespace names; `~` alone.
fn check_export_to(export_to: Option<&[String]>, path: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    let Some(list) = export_to else {
        return findings;
    };
    for (i, entry) in list.iter().enumerate() {
        if !matches!(entry.as_str(), "." | "*" | "~") {
            if let Err(why) = check_label_name(entry) {
                findings.push(Finding::error(code::INVALID, push_index(path, i), why));
            }
        }
    }
    if list.len() > 1 && list.iter().any(|e| e == "~") {
        findings.push(Finding::error(
            code::INVALID,
            path,
            "`~` (export to no namespace) cannot be combined with other values",
        ));
    }
    findings
}

/// Configures a workload's proxy: what it serves (ingress) and what the app may call (egress).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSpec {
    /// The workloads configured; the namespace default when absent.
    pub workload_selector: Option<WorkloadSelector>,
    /// Ports served on the workload address.
    pub ingress: Option<Vec<IstioIngressListener>>,
    /// Local listeners for the services the app calls.
    pub egress: Option<Vec<IstioEgressListener>>,
    /// Connection pool for inbound connections (not enforced).
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    /// What to do with calls to unknown services (informational in this version).
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// A port the proxy serves, forwarding to the app.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    /// The workload port served.
    pub port: Option<SidecarPort>,
    /// The listen address (not enforced: Ward listens on the WorkloadEntry address).
    pub bind: Option<String>,
    /// Must be `NONE` or absent: Ward does not use iptables.
    pub capture_mode: Option<CaptureMode>,
    /// Where the app listens: `127.0.0.1:PORT`, `[::1]:PORT`, `0.0.0.0:PORT` or `[::]:PORT`.
    pub default_endpoint: Option<String>,
    /// TLS termination for non-mesh clients (not enforced).
    pub tls: Option<ServerTlsSettings>,
    /// Connection pool (not enforced).
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// A local listener for outbound calls.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    /// The listener's port; each service port when absent.
    pub port: Option<SidecarPort>,
    /// The listen IP; 127.0.0.1 when absent.
    pub bind: Option<String>,
    /// Must be `NONE` or absent: Ward does not use iptables.
    pub capture_mode: Option<CaptureMode>,
    /// `namespace/dnsName` of the services reachable through this listener.
    pub hosts: Option<Vec<String>>,
}

/// A Sidecar listener port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarPort {
    /// The port number.
    pub number: Option<u32>,
    /// `HTTP`, `TCP` ...; from the name prefix when absent.
    pub protocol: Option<String>,
    /// The port's name.
    pub name: Option<String>,
    /// Not enforced.
    pub target_port: Option<u32>,
}

impl SidecarPort {
    /// The port's protocol (validated at load).
    pub fn protocol(&self) -> Protocol {
        Protocol::of_port(self.protocol.as_deref(), self.name.as_deref())
            .unwrap_or(Protocol::Unknown)
    }
}

/// Sidecar `captureMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaptureMode {
    /// The environment's default; for Ward, which has no traffic capture, that is `NONE`.
    #[serde(rename = "DEFAULT")]
    Default,
    /// iptables redirection: not available in Ward.
    #[serde(rename = "IPTABLES")]
    Iptables,
    /// No capture: apps connect to the listeners explicitly.
    #[serde(rename = "NONE")]
    NoCapture,
}

/// Sidecar `outboundTrafficPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// `REGISTRY_ONLY` or `ALLOW_ANY`.
    pub mode: Option<OutboundTrafficMode>,
    /// Where unknown traffic goes under ALLOW_ANY (not enforced).
    pub egress_proxy: Option<Destination>,
}

/// `outboundTrafficPolicy.mode` (Sidecar and MeshConfig).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboundTrafficMode {
    /// Only services in the registry (ServiceEntries) are reachable.
    #[serde(rename = "REGISTRY_ONLY")]
    RegistryOnly,
    /// Unknown destinations pass through (Istio's default).
    #[default]
    #[serde(rename = "ALLOW_ANY")]
    AllowAny,
}

impl OutboundTrafficMode {
    /// The Istio spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundTrafficMode::RegistryOnly => "REGISTRY_ONLY",
            OutboundTrafficMode::AllowAny => "ALLOW_ANY",
        }
    }
}

/// A destination service (`egressProxy`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// The service host.
    pub host: String,
    /// A DestinationRule subset.
    pub subset: Option<String>,
    /// The port.
    pub port: Option<PortSelector>,
}

/// A port by number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// The port number.
    pub number: Option<u32>,
}

/// TLS settings of an ingress listener (istio/api `ServerTLSSettings`; not enforced).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)] // the proto's fields, named as in the proto
pub struct ServerTlsSettings {
    pub https_redirect: Option<bool>,
    pub mode: Option<String>,
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub ca_crl: Option<String>,
    pub credential_name: Option<String>,
    pub credential_names: Option<Vec<String>>,
    pub tls_certificates: Option<Vec<TlsCertificate>>,
    pub subject_alt_names: Option<Vec<String>>,
    pub verify_certificate_spki: Option<Vec<String>>,
    pub verify_certificate_hash: Option<Vec<String>>,
    pub min_protocol_version: Option<String>,
    pub max_protocol_version: Option<String>,
    pub cipher_suites: Option<Vec<String>>,
}

/// One certificate of `ServerTLSSettings.tlsCertificates`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)] // the proto's fields, named as in the proto
pub struct TlsCertificate {
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
}

/// istio/api `ConnectionPoolSettings` (not enforced).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP limits.
    pub tcp: Option<TcpSettings>,
    /// HTTP limits.
    pub http: Option<HttpSettings>,
}

/// `ConnectionPoolSettings.TCPSettings`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)] // the proto's fields, named as in the proto
pub struct TcpSettings {
    pub max_connections: Option<i64>,
    pub connect_timeout: Option<String>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    pub max_connection_duration: Option<String>,
    pub idle_timeout: Option<String>,
}

/// `TCPSettings.TcpKeepalive`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)] // the proto's fields, named as in the proto
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<String>,
    pub interval: Option<String>,
}

/// `ConnectionPoolSettings.HTTPSettings`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)] // the proto's fields, named as in the proto
pub struct HttpSettings {
    pub http1_max_pending_requests: Option<i64>,
    pub http2_max_requests: Option<i64>,
    pub max_requests_per_connection: Option<i64>,
    pub max_retries: Option<i64>,
    pub idle_timeout: Option<String>,
    pub h2_upgrade_policy: Option<String>,
    pub use_client_protocol: Option<bool>,
    pub max_concurrent_streams: Option<i64>,
}

/// Where an ingress listener forwards to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppEndpoint {
    /// A loopback address and port.
    Local(SocketAddr),
    /// `0.0.0.0:PORT` / `[::]:PORT`: this port on the workload's own address.
    WorkloadAddress(u16),
}

/// Parses `defaultEndpoint`.
///
/// istio/api sidecar.proto `defaultEndpoint`: "Arbitrary IPs are not supported. Format should
/// be one of `127.0.0.1:PORT`, `[::1]:PORT` (forward to localhost), `0.0.0.0:PORT`, `[::]:PORT`
/// (forward to the instance IP), or `unix:///path/to/socket` (forward to Unix domain socket)."
/// Ward accepts any loopback address (127.0.0.0/8), which lets several apps share one laptop.
pub(crate) fn parse_default_endpoint(value: &str) -> Result<AppEndpoint, String> {
    if value.starts_with("unix://") {
        return Err(format!(
            "`{value}`: Unix domain sockets are not supported by Ward yet; use 127.0.0.1:PORT"
        ));
    }
    let addr: SocketAddr = value.parse().map_err(|_| {
        format!(
            "`{value}` is not IP:PORT; use 127.0.0.1:PORT, [::1]:PORT, 0.0.0.0:PORT or [::]:PORT"
        )
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "`{value}`: port 0 is not a port the app can listen on"
        ));
    }
    if addr.ip().is_loopback() {
        Ok(AppEndpoint::Local(addr))
    } else if addr.ip().is_unspecified() {
        Ok(AppEndpoint::WorkloadAddress(addr.port()))
    } else {
        Err(format!(
            "`{value}`: arbitrary IPs are not supported (istio/api sidecar.proto); use \
             127.0.0.1:PORT, [::1]:PORT, 0.0.0.0:PORT or [::]:PORT"
        ))
    }
}

/// The namespace part of a Sidecar egress host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostNamespace {
    /// `*`: every namespace.
    Any,
    /// `.`: the workload's namespace.
    Own,
    /// `~`: no namespace (imports nothing).
    Nothing,
    /// A namespace by name.
    Named(String),
}

/// A Sidecar egress host, `namespace/dnsName`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SidecarHost {
    pub(crate) namespace: HostNamespace,
    /// `*`, `*.suffix` or a DNS name (lowercase).
    pub(crate) dns: String,
}

impl SidecarHost {
    /// istio/api sidecar.proto `hosts`: "One or more service hosts exposed by the listener in
    /// `namespace/dnsName` format. Services in the specified namespace matching `dnsName` will
    /// be exposed. ... The `dnsName` should be specified using FQDN format, optionally including
    /// a wildcard character in the left-most component (e.g., `prod/*.example.com`). Set the
    /// `dnsName` to `*` to select all services from the specified namespace (e.g., `prod/*`)."
    /// The namespace may be `*` (any), `.` (the sidecar's) or `~` (none).
    pub(crate) fn parse(value: &str) -> Result<SidecarHost, String> {
        let Some((namespace, dns)) = value.split_once('/') else {
            return Err(format!(
                "`{value}` is not in `namespace/dnsName` form (e.g. `./{value}` or `*/{value}`)"
            ));
        };
        let namespace = match namespace {
            "*" => HostNamespace::Any,
            "." => HostNamespace::Own,
            "~" => HostNamespace::Nothing,
            named => {
                check_label_name(named).map_err(|why| format!("in `{value}`: {why}"))?;
                HostNamespace::Named(named.to_owned())
            }
        };
        let dns_ok = dns == "*" || is_dns_name(dns.strip_prefix("*.").unwrap_or(dns));
        if !dns_ok {
            return Err(format!(
                "in `{value}`: `{dns}` is not `*`, `*.suffix` or a DNS name"
            ));
        }
        Ok(SidecarHost {
            namespace,
            dns: dns.to_ascii_lowercase(),
        })
    }

    /// Whether a ServiceEntry `host` declared in `service_namespace` is selected for a
    /// workload in `workload_namespace`.
    pub(crate) fn matches(
        &self,
        workload_namespace: &str,
        service_namespace: &str,
        host: &str,
    ) -> bool {
        let namespace_ok = match &self.namespace {
            HostNamespace::Any => true,
            HostNamespace::Own => service_namespace == workload_namespace,
            HostNamespace::Nothing => false,
            HostNamespace::Named(ns) => ns == service_namespace,
        };
        let host = host.to_ascii_lowercase();
        namespace_ok
            && match self.dns.strip_prefix('*') {
                None => self.dns == host,
                Some("") => true,
                Some(suffix) => host.ends_with(suffix),
            }
    }
}

impl SidecarSpec {
    /// The ingress listeners (empty when absent).
    pub fn ingress(&self) -> &[IstioIngressListener] {
        self.ingress.as_deref().unwrap_or_default()
    }

    /// The egress listeners (empty when absent).
    pub fn egress(&self) -> &[IstioEgressListener] {
        self.egress.as_deref().unwrap_or_default()
    }

    /// Problems with this Sidecar.
    pub(crate) fn validate(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        if let Some(selector) = &self.workload_selector {
            findings.extend(selector.validate("spec.workloadSelector"));
        }
        let mut ports = BTreeSet::new();
        for (i, listener) in self.ingress().iter().enumerate() {
            let path = push_index("spec.ingress", i);
            findings.extend(listener.validate(&path));
            if let Some(number) = listener.port.as_ref().and_then(|p| p.number) {
                if !ports.insert(number) {
                    findings.push(Finding::error(
                        code::INVALID,
                        push_key(&push_key(&path, "port"), "number"),
                        format!("port {number} is served by two ingress listeners"),
                    ));
                }
            }
        }
        let egress = self.egress();
        for (i, listener) in egress.iter().enumerate() {
            let path = push_index("spec.egress", i);
            findings.extend(listener.validate(&path));
            // istio/istio pkg/config/validation (Sidecar): "the egress listener with empty
            // port should be the last listener in the list".
            if listener.port.is_none() && i + 1 != egress.len() {
                findings.push(Finding::error(
                    code::INVALID,
                    path,
                    "an egress listener without a port must be the last one",
                ));
            }
        }
        if self.inbound_connection_pool.is_some() {
            findings.push(Finding::not_enforced("spec.inboundConnectionPool", ""));
        }
        if let Some(policy) = &self.outbound_traffic_policy {
            if policy.egress_proxy.is_some() {
                findings.push(Finding::not_enforced(
                    "spec.outboundTrafficPolicy.egressProxy",
                    "",
                ));
            }
        }
        findings
    }
}

impl IstioIngressListener {
    fn validate(&self, path: &str) -> Vec<Finding> {
        let mut findings = Vec::new();
        match &self.port {
            None => findings.push(Finding::error(
                code::INVALID,
                path,
                "missing required field `port`",
            )),
            Some(port) => findings.extend(port.validate(&push_key(path, "port"))),
        }
        match self.default_endpoint.as_deref() {
            None | Some("") => findings.push(Finding::error(
                code::INVALID,
                path,
                "missing required field `defaultEndpoint`: Ward forwards to the app there \
                 (it does not capture traffic)",
            )),
            Some(endpoint) => {
                if let Err(why) = parse_default_endpoint(endpoint) {
                    findings.push(Finding::error(
                        code::INVALID,
                        push_key(path, "defaultEndpoint"),
                        why,
                    ));
                }
            }
        }
        findings.extend(check_capture_mode(self.capture_mode, path));
        for (set, field, why) in [
            (
                self.bind.is_some(),
                "bind",
                "Ward listens on the WorkloadEntry address",
            ),
            (self.tls.is_some(), "tls", ""),
            (self.connection_pool.is_some(), "connectionPool", ""),
        ] {
            if set {
                findings.push(Finding::not_enforced(push_key(path, field), why));
            }
        }
        findings
    }
}

impl IstioEgressListener {
    /// The hosts (empty when absent).
    pub fn hosts(&self) -> &[String] {
        self.hosts.as_deref().unwrap_or_default()
    }

    fn validate(&self, path: &str) -> Vec<Finding> {
        let mut findings = Vec::new();
        if let Some(port) = &self.port {
            findings.extend(port.validate(&push_key(path, "port")));
        }
        if let Some(bind) = &self.bind {
            if bind.parse::<IpAddr>().is_err() {
                findings.push(Finding::error(
                    code::INVALID,
                    push_key(path, "bind"),
                    format!("`{bind}` is not an IP address (Ward binds egress listeners to an IP)"),
                ));
            }
        }
        findings.extend(check_capture_mode(self.capture_mode, path));
        match self.hosts.as_deref() {
            None | Some([]) => findings.push(Finding::error(
                code::INVALID,
                path,
                "missing required field `hosts`",
            )),
            Some(hosts) => {
                for (i, host) in hosts.iter().enumerate() {
                    if let Err(why) = SidecarHost::parse(host) {
                        findings.push(Finding::error(
                            code::INVALID,
                            push_index(&push_key(path, "hosts"), i),
                            why,
                        ));
                    }
                }
            }
        }
        findings
    }
}

impl SidecarPort {
    fn validate(&self, path: &str) -> Vec<Finding> {
        let mut findings = Vec::new();
        match self.number {
            None => findings.push(Finding::error(
                code::INVALID,
                path,
                "missing required field `number`",
            )),
            Some(number) if port_number(number).is_none() => findings.push(Finding::error(
                code::INVALID,
                push_key(path, "number"),
                format!("port {number} is out of range 1-65535"),
            )),
            Some(_) => {}
        }
        if let Err(err) = Protocol::of_port(self.protocol.as_deref(), self.name.as_deref()) {
            findings.push(Finding::error(
                code::INVALID,
                push_key(path, "protocol"),
                err.to_string(),
            ));
        }
        if self.target_port.is_some() {
            findings.push(Finding::not_enforced(push_key(path, "targetPort"), ""));
        }
        findings
    }
}

/// Ward has no traffic capture, so a listener's capture mode must be NONE (or DEFAULT or
/// absent, which mean the environment's default: NONE).
fn check_capture_mode(mode: Option<CaptureMode>, path: &str) -> Option<Finding> {
    (mode == Some(CaptureMode::Iptables)).then(|| {
        Finding::error(
            code::INVALID,
            push_key(path, "captureMode"),
            "Ward runs without iptables: captureMode must be NONE or omitted, and apps connect \
             to the listeners explicitly",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;
    use crate::yaml::parse_documents;

    fn findings_of<T: serde::de::DeserializeOwned>(
        yaml: &str,
        validate: impl Fn(&T) -> Vec<Finding>,
    ) -> Vec<(String, &'static str)> {
        let docs = parse_documents(yaml).unwrap();
        let spec: T = decode(&docs[0], "spec").unwrap();
        validate(&spec)
            .into_iter()
            .map(|f| (f.field, f.code))
            .collect()
    }

    #[test]
    fn workload_entry_validation() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            (
                "address: 10.0.0.1\nports: {http: 8080}\nserviceAccount: sa\n",
                &[],
            ),
            ("address: ::1\n", &[]),
            ("ports: {}\n", &[("spec.address", code::INVALID)]),
            (
                "address: vm1.example.com\n",
                &[("spec.address", code::INVALID)],
            ),
            (
                "address: unix:///tmp/s\n",
                &[("spec.address", code::INVALID)],
            ),
            (
                "address: 10.0.0.1\nports: {http: 0, grpc: 70000}\n",
                &[
                    ("spec.ports.http", code::INVALID),
                    ("spec.ports.grpc", code::INVALID),
                ],
            ),
            (
                "address: 10.0.0.1\nserviceAccount: Bad_SA\n",
                &[("spec.serviceAccount", code::INVALID)],
            ),
            (
                "address: 10.0.0.1\nnetwork: n1\nlocality: r/z\nweight: 2\n",
                &[
                    ("spec.network", code::FIELD_NOT_ENFORCED),
                    ("spec.locality", code::FIELD_NOT_ENFORCED),
                    ("spec.weight", code::FIELD_NOT_ENFORCED),
                ],
            ),
        ];
        for (yaml, want) in cases {
            let mut got = findings_of(yaml, |s: &WorkloadEntrySpec| {
                s.validate("spec", AddressRule::Ip, None)
            });
            got.sort();
            let mut want: Vec<_> = want.iter().map(|(f, c)| (f.to_string(), *c)).collect();
            want.sort();
            assert_eq!(got, want, "{yaml}");
        }
    }

    #[test]
    fn service_entry_validation() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            (
                "hosts: [db.example.com]\nports: [{number: 5432, name: tcp-db}]\nlocation: MESH_INTERNAL\nresolution: STATIC\nendpoints: [{address: 10.0.0.2, ports: {tcp-db: 15432}}]\n",
                &[],
            ),
            ("ports: []\n", &[("spec.hosts", code::INVALID)]),
            ("hosts: [\"*\", ns/x, \"bad host\", \"*.ok.com\"]\n", &[
                ("spec.hosts[0]", code::INVALID),
                ("spec.hosts[1]", code::INVALID),
                ("spec.hosts[2]", code::INVALID),
            ]),
            ("hosts: [a]\naddresses: [10.0.0.0/33, 10.1.0.0/16, 10.2.0.1]\n", &[
                ("spec.addresses[0]", code::INVALID),
                ("spec.addresses", code::FIELD_NOT_ENFORCED),
            ]),
            ("hosts: [a]\nports: [{number: 80, name: http}, {number: 80, name: http}, {number: 0, protocol: HTPP}]\n", &[
                ("spec.ports[1].number", code::INVALID),
                ("spec.ports[1].name", code::INVALID),
                ("spec.ports[2].number", code::INVALID),
                ("spec.ports[2].protocol", code::INVALID),
            ]),
            ("hosts: [a]\nworkloadSelector: {labels: {app: a}}\nendpoints: [{address: 10.0.0.1}]\nresolution: STATIC\n", &[
                ("spec.endpoints", code::INVALID),
            ]),
            ("hosts: [a]\nworkloadSelector: {labels: {}}\n", &[("spec.workloadSelector", code::INVALID)]),
            ("hosts: [a]\nendpoints: [{address: 10.0.0.1}]\n", &[("spec.endpoints", code::INVALID)]),
            ("hosts: [a]\nresolution: STATIC\nendpoints: [{address: db.local}]\n", &[
                ("spec.endpoints[0].address", code::INVALID),
            ]),
            ("hosts: [a]\nresolution: DNS\nports: [{number: 80, name: http}]\nendpoints: [{address: db.local, ports: {grpc: 9}}]\n", &[
                ("spec.endpoints[0].ports.grpc", code::INVALID),
                ("spec.resolution", code::FIELD_NOT_ENFORCED),
            ]),
            ("hosts: [a]\nexportTo: [\"~\", Bad]\nsubjectAltNames: [x]\n", &[
                ("spec.exportTo[1]", code::INVALID),
                ("spec.exportTo", code::INVALID),
                ("spec.subjectAltNames", code::FIELD_NOT_ENFORCED),
            ]),
        ];
        for (yaml, want) in cases {
            let mut got = findings_of(yaml, ServiceEntrySpec::validate);
            got.sort();
            let mut want: Vec<_> = want.iter().map(|(f, c)| (f.to_string(), *c)).collect();
            want.sort();
            assert_eq!(got, want, "{yaml}");
        }
    }

    #[test]
    fn sidecar_validation() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            (
                "workloadSelector: {labels: {app: a}}\ningress:\n- port: {number: 9080, protocol: HTTP, name: http}\n  defaultEndpoint: 127.0.0.1:8080\n  captureMode: NONE\negress:\n- port: {number: 5432}\n  bind: 127.0.0.2\n  hosts: [./db.example.com]\n- hosts: [\"*/*\", \"~/*\", \"istio-system/*.svc.cluster.local\"]\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
                &[],
            ),
            ("ingress:\n- defaultEndpoint: 127.0.0.1:80\n", &[("spec.ingress[0]", code::INVALID)]),
            ("ingress:\n- port: {number: 80}\n", &[("spec.ingress[0]", code::INVALID)]),
            ("ingress:\n- port: {number: 80}\n  defaultEndpoint: unix:///var/run/app.sock\n", &[
                ("spec.ingress[0].defaultEndpoint", code::INVALID),
            ]),
            ("ingress:\n- port: {number: 80}\n  defaultEndpoint: 10.1.1.1:80\n  captureMode: IPTABLES\n", &[
                ("spec.ingress[0].defaultEndpoint", code::INVALID),
                ("spec.ingress[0].captureMode", code::INVALID),
            ]),
            ("ingress:\n- port: {number: 80, targetPort: 81}\n  defaultEndpoint: 0.0.0.0:8080\n  bind: 10.0.0.1\n  tls: {mode: SIMPLE}\n  connectionPool: {tcp: {maxConnections: 1}}\ninboundConnectionPool: {http: {idleTimeout: 1s}}\n", &[
                ("spec.ingress[0].port.targetPort", code::FIELD_NOT_ENFORCED),
                ("spec.ingress[0].bind", code::FIELD_NOT_ENFORCED),
                ("spec.ingress[0].tls", code::FIELD_NOT_ENFORCED),
                ("spec.ingress[0].connectionPool", code::FIELD_NOT_ENFORCED),
                ("spec.inboundConnectionPool", code::FIELD_NOT_ENFORCED),
            ]),
            ("ingress:\n- port: {number: 80}\n  defaultEndpoint: 127.0.0.1:1\n- port: {number: 80, protocol: UDP}\n  defaultEndpoint: 127.0.0.1:2\n", &[
                ("spec.ingress[1].port.number", code::INVALID),
                ("spec.ingress[1].port.protocol", code::INVALID),
            ]),
            ("egress:\n- hosts: [db.example.com, \"./bad_name\", \"Bad/x\"]\n- {}\n- port: {number: 1}\n  hosts: [\"*/*\"]\n  bind: localhost\n", &[
                ("spec.egress[0].hosts[0]", code::INVALID),
                ("spec.egress[0].hosts[1]", code::INVALID),
                ("spec.egress[0].hosts[2]", code::INVALID),
                ("spec.egress[0]", code::INVALID),
                ("spec.egress[1]", code::INVALID),
                ("spec.egress[1]", code::INVALID),
                ("spec.egress[2].bind", code::INVALID),
            ]),
            ("outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: proxy, port: {number: 3128}}}\n", &[
                ("spec.outboundTrafficPolicy.egressProxy", code::FIELD_NOT_ENFORCED),
            ]),
        ];
        for (yaml, want) in cases {
            let mut got = findings_of(yaml, SidecarSpec::validate);
            got.sort();
            let mut want: Vec<_> = want.iter().map(|(f, c)| (f.to_string(), *c)).collect();
            want.sort();
            assert_eq!(got, want, "{yaml}");
        }
    }

    #[test]
    fn default_endpoints() {
        let cases = [
            (
                "127.0.0.1:8080",
                Ok(AppEndpoint::Local("127.0.0.1:8080".parse().unwrap())),
            ),
            (
                "127.0.0.5:80",
                Ok(AppEndpoint::Local("127.0.0.5:80".parse().unwrap())),
            ),
            (
                "[::1]:80",
                Ok(AppEndpoint::Local("[::1]:80".parse().unwrap())),
            ),
            ("0.0.0.0:9000", Ok(AppEndpoint::WorkloadAddress(9000))),
            ("[::]:9000", Ok(AppEndpoint::WorkloadAddress(9000))),
        ];
        for (value, want) in cases {
            assert_eq!(parse_default_endpoint(value), want, "{value}");
        }
        for bad in [
            "unix:///tmp/x",
            "10.0.0.1:80",
            "127.0.0.1",
            "localhost:80",
            "127.0.0.1:0",
        ] {
            assert!(parse_default_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sidecar_hosts_match_like_istio() {
        // (pattern, workload ns, service ns, host, matches)
        let cases = [
            ("*/*", "a", "b", "x.b.svc", true),
            ("./*", "a", "a", "x", true),
            ("./*", "a", "b", "x", false),
            ("~/*", "a", "a", "x", false),
            ("b/db.example.com", "a", "b", "DB.example.com", true),
            ("b/db.example.com", "a", "c", "db.example.com", false),
            ("*/*.example.com", "a", "b", "db.example.com", true),
            ("*/*.example.com", "a", "b", "example.com", false),
            ("*/*.example.com", "a", "b", "*.api.example.com", true),
            ("*/db.example.com", "a", "b", "db.example.org", false),
        ];
        for (pattern, wns, sns, host, want) in cases {
            let parsed = SidecarHost::parse(pattern).unwrap();
            assert_eq!(
                parsed.matches(wns, sns, host),
                want,
                "{pattern} {wns} {sns} {host}"
            );
        }
    }

    #[test]
    fn export_to_visibility() {
        let cases: &[(Option<&[&str]>, &str, bool)] = &[
            (None, "other", true),
            (Some(&[]), "other", true),
            (Some(&["*"]), "other", true),
            (Some(&["."]), "own", true),
            (Some(&["."]), "other", false),
            (Some(&["~"]), "own", false),
            (Some(&["other"]), "other", true),
            (Some(&["third"]), "other", false),
        ];
        for (export_to, ns, want) in cases {
            let spec = ServiceEntrySpec {
                export_to: export_to.map(|l| l.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            };
            assert_eq!(spec.visible_to("own", ns), *want, "{export_to:?} {ns}");
        }
    }
}
