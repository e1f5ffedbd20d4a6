//! The Istio networking kinds, field for field: WorkloadEntry, ServiceEntry and Sidecar, which
//! Ward acts on, and VirtualService, DestinationRule, Gateway, WorkloadGroup and EnvoyFilter,
//! which it accepts and checks without enforcing them (istio/api `networking/v1alpha3/*.proto`;
//! the v1 and v1beta1 versions share the schema). PeerAuthentication and AuthorizationPolicy
//! specs live in `ward_policy::spec`.
//!
//! Layout: this file holds WorkloadEntry and ServiceEntry; `sidecar` holds Sidecar; one file per
//! other kind, each also holding the messages its proto defines that other kinds share
//! (`virtual_service`: [`Destination`], [`PortSelector`], [`StringMatch`], [`Percent`];
//! `destination_rule`: [`ConnectionPoolSettings`]; `gateway`: [`ServerTlsSettings`]); `proto`
//! holds the protobuf well-known types ([`Duration`], [`Struct`], [`FreeForm`]) and `checks` the
//! value checks the specs share.
//!
//! Kinds Ward accepts without enforcing them (WARD0102) are checked the same way, so that a typo
//! is an error today: `telemetry` (Telemetry), `wasm_plugin` (WasmPlugin), `proxy_config`
//! (ProxyConfig) and `operator` (the Sail operator's IstioRevision, IstioRevisionTag, IstioCNI
//! and ZTunnel; OpenShift Service Mesh 2's ServiceMeshControlPlane, ServiceMeshMemberRoll and
//! ServiceMeshMember), with `attachment` for istiod's `selector`/`targetRef(s)` checks.
//!
//! Every proto field is accepted (JSON names, camelCase); an unknown field is an error (Ward is
//! stricter than Istio, which only warns). Fields Ward does not act on yet are reported as
//! WARD0103 warnings by the `validate` methods, never silently dropped. Validation also rejects
//! values Ward cannot run, e.g. a WorkloadEntry address that is a DNS name.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::diag::{code, Finding};
use crate::meta::{check_label_name, check_labels, check_subdomain};
use crate::snapshot::Protocol;
use crate::yaml::{push_index, push_key};

mod attachment;
mod operator;
mod proxy_config;
mod sidecar;
mod telemetry;
mod wasm_plugin;

pub(crate) use operator::{
    validate_istio_cni, validate_member_roll, validate_revision, validate_revision_tag,
    validate_ztunnel, validate_ztunnel_v1alpha1,
};
pub use operator::{
    ControlPlaneMode, ControlPlaneRef, ControlPlaneSecurity, ControlPlaneSpecV1,
    ControlPlaneSpecV2, DataPlaneSecurity, IstioCniSpec, IstioRevisionSpec, IstioRevisionTagSpec,
    IstioSpec, IstioUpdateStrategy, LabelSelector, LabelSelectorOperator, LabelSelectorRequirement,
    MaistraSecurityConfig, MemberRollSpec, MemberSpec, SailTargetReference, UpdateStrategyType,
    ZTunnelSpec, ZTunnelV1Alpha1Spec,
};
pub use proxy_config::{ProxyConfigSpec, ProxyImage};
mod checks;
mod destination_rule;
mod envoy_filter;
mod gateway;
pub(crate) mod proto;
mod virtual_service;
mod workload_group;

pub use destination_rule::{
    ClientTlsMode, ClientTlsSettings, ConnectionKeepalive, ConnectionPoolSettings,
    ConsistentHashLb, CookieAttribute, DestinationRuleSpec, H2UpgradePolicy, HttpCookie,
    HttpSettings, LoadBalancerSettings, LocalityDistribute, LocalityFailover,
    LocalityLoadBalancerSetting, MagLev, OutlierDetection, PortTrafficPolicy, ProxyProtocol,
    ProxyProtocolVersion, RetryBudget, RingHash, SimpleLb, Subset, TcpKeepalive, TcpSettings,
    TrafficPolicy, TunnelSettings, WarmupConfiguration, ZoneAwareLoadBalancerSetting,
};
pub use envoy_filter::{
    ApplyTo, ClusterMatch, EnvoyConfigObjectMatch, EnvoyConfigObjectPatch, EnvoyFilterSpec,
    FilterChainMatch, FilterClass, FilterMatch, ListenerMatch, Patch, PatchContext, PatchOperation,
    ProxyMatch, RouteAction, RouteConfigurationMatch, RouteMatch, SubFilterMatch, VirtualHostMatch,
    WaypointFilterMatch, WaypointMatch, WaypointRouteMatch,
};
pub use gateway::{
    GatewayPort, GatewaySpec, Server, ServerTlsMode, ServerTlsSettings, TlsCertificate, TlsProtocol,
};
pub use proto::{Duration, FreeForm, Struct};
pub(crate) use sidecar::{parse_default_endpoint, AppEndpoint, HostNamespace, SidecarHost};
pub use sidecar::{
    CaptureMode, IstioEgressListener, IstioIngressListener, OutboundTrafficMode,
    OutboundTrafficPolicy, SidecarPort, SidecarSpec,
};
pub use telemetry::{
    AccessLogFilter, AccessLogging, CustomTag, CustomTagEnvironment, CustomTagFormatter,
    CustomTagHeader, CustomTagLiteral, IstioMetric, LogSelector, MetricSelector, Metrics,
    MetricsOverrides, ProviderRef, TagOperation, TagOverride, TelemetrySpec, TelemetryWorkloadMode,
    Tracing, TracingSelector,
};
pub use virtual_service::{
    CorsPolicy, Delegate, Destination, FaultAbort, FaultDelay, HeaderOperations, Headers, HttpBody,
    HttpDirectResponse, HttpFaultInjection, HttpMatchRequest, HttpMirrorPolicy, HttpRedirect,
    HttpRetry, HttpRewrite, HttpRoute, HttpRouteDestination, L4MatchAttributes, Percent,
    PortSelector, RedirectPortSelection, RegexRewrite, RouteDestination, StringMatch, TcpRoute,
    TlsMatchAttributes, TlsRoute, UnmatchedPreflights, VirtualServiceSpec, MESH_GATEWAY,
};
pub use wasm_plugin::{
    EnvValueSource, EnvVar, FailStrategy, PluginPhase, PluginType, PullPolicy, TrafficSelector,
    VmConfig, WasmPluginSpec, WorkloadMode,
};
pub use workload_group::{
    ExecHealthCheckConfig, GrpcHealthCheckConfig, HttpHeader, HttpHealthCheckConfig,
    ReadinessProbe, TcpHealthCheckConfig, WorkloadGroupMetadata, WorkloadGroupSpec,
};

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

    pub(crate) fn validate(&self, path: &str) -> Vec<Finding> {
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
pub(crate) fn is_dns_name(name: &str) -> bool {
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
    /// Virtual IPs or CIDRs: the service's addresses under transparent capture
    /// (docs/capture.md); auto-allocated when absent.
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
        }
        findings.extend(self.validate_ports());
        findings.extend(self.validate_endpoints());
        let resolution = self.resolution.unwrap_or_default();
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

    /// `workloadSelector` and `endpoints`: one or the other, with addresses Ward can use.
    fn validate_endpoints(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;
    use crate::yaml::parse_documents;

    /// Decode `yaml` as a spec and run `validate`; (field, code) of each finding. Shared with
    /// the sibling module's tests.
    pub(super) fn findings_of<T: serde::de::DeserializeOwned>(
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
