//! Sidecar (istio/api `networking/v1alpha3/sidecar.proto`): what a workload's proxy serves
//! (ingress listeners) and what its app may call (egress listeners).
//!
//! Every listener a Sidecar declares is explicit: an ingress listener forwards to the app's
//! `defaultEndpoint`, and the app calls egress listeners on their bind address. Transparent
//! capture (`ward up --capture`, docs/capture.md) is per workload: it adds the capture ports,
//! and a listener's `captureMode` is accepted but not read. TLS and connection-pool settings are accepted and reported as not
//! enforced (WARD0103).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::{
    is_dns_name, port_number, ConnectionPoolSettings, Destination, ServerTlsSettings,
    WorkloadSelector,
};
use crate::diag::{code, Finding};
use crate::meta::check_label_name;
use crate::snapshot::Protocol;
use crate::yaml::{push_index, push_key};

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
    /// The environment's default: `IPTABLES` under `ward up --capture`, else `NONE`.
    #[serde(rename = "DEFAULT")]
    Default,
    /// iptables redirection: Ward captures per workload (`ward up --capture`), not per listener.
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
    /// Only services in the registry (ServiceEntries) are reachable: Ward's default, stricter
    /// than Istio's (docs/security.md, "Egress").
    #[default]
    #[serde(rename = "REGISTRY_ONLY")]
    RegistryOnly,
    /// Unknown destinations pass through (Istio's default).
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
    /// Whether the DNS name is `*` or `*.suffix`: a pattern that may rightly match nothing yet
    /// (Istio's default Sidecar lists `./*` and `istio-system/*`).
    pub(crate) fn is_wildcard(&self) -> bool {
        self.dns.starts_with('*')
    }

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
                "missing required field `defaultEndpoint`: Ward forwards to the app there",
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

/// Ward captures per workload (`ward up --capture`, docs/capture.md), not per listener: a
/// listener's `IPTABLES` is accepted and reported as not enforced. NONE (and DEFAULT or absent
/// without capture) keep their meaning: the app connects to the listener explicitly.
fn check_capture_mode(mode: Option<CaptureMode>, path: &str) -> Option<Finding> {
    (mode == Some(CaptureMode::Iptables)).then(|| {
        Finding::not_enforced(
            push_key(path, "captureMode"),
            "capture is per workload: `ward up --capture` captures every port of the workload; \
             without it, apps connect to the listeners explicitly",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::findings_of;
    use super::*;

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
                ("spec.ingress[0].captureMode", code::FIELD_NOT_ENFORCED),
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
}
