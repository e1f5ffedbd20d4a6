//! Mesh-wide settings (istio/api `mesh/v1alpha1/config.proto` MeshConfig), read from the one
//! place a user keeps them:
//! - the Sail operator `Istio` resource (`sailoperator.io/v1` or `v1alpha1`):
//!   `spec.values.meshConfig`, with `spec.namespace` (istiod's namespace) as the default root
//!   namespace; the other `spec` fields are checked as the Sail Go types define them, and the
//!   rest of `values`, a huge helm-values tree, is accepted as is;
//! - an `IstioOperator` (`install.istio.io/v1alpha1`): `spec.meshConfig`;
//! - the ConfigMap `istio` (`v1`): `data.mesh` holds MeshConfig YAML as a string.
//!
//! Under `meshConfig` an unknown field is an error, and a known MeshConfig field Ward does not
//! act on is a WARD0103 warning. Ward reads `trustDomain`, `trustDomainAliases`,
//! `rootNamespace`, `enableAutoMtls` and `outboundTrafficPolicy.mode`.

use serde::{Deserialize, Serialize};

use crate::decode::{decode, unknown_name_message};
use crate::diag::{code, Finding};
use crate::istio::{IstioSpec, OutboundTrafficMode};
use crate::meta::{check_label_name, decode_finding};
use crate::yaml::{parse_documents, push_index, push_key, Node, Value};

/// Where a value was written.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceRef {
    /// The file, as the user named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
}

/// The mesh settings Ward uses, with Istio's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshSettings {
    /// `trustDomain`, default `cluster.local`.
    pub trust_domain: String,
    /// `trustDomainAliases`: other trust domains treated as this one.
    pub trust_domain_aliases: Vec<String>,
    /// `rootNamespace`, default the istiod namespace or `istio-system`.
    pub root_namespace: String,
    /// `enableAutoMtls`, default true.
    pub enable_auto_mtls: bool,
    /// `outboundTrafficPolicy.mode`, default REGISTRY_ONLY (Istio's is ALLOW_ANY: docs/security.md,
    /// "Egress").
    pub outbound_traffic_policy: OutboundTrafficMode,
    /// `dnsResolvers` (a Ward extension: Istio's proxies use the pod's resolver): the DNS
    /// servers the proxies resolve external hosts with, `ip` or `ip:port`. Empty: the
    /// system's (`/etc/resolv.conf`). docs/egress.md.
    pub dns_resolvers: Vec<std::net::SocketAddr>,
    /// `defaultConfig.gatewayTopology.numTrustedProxies`, default 0: how many proxies in front
    /// of a gateway append to `X-Forwarded-For` and are trusted (docs/ingress.md).
    pub num_trusted_proxies: u32,
    /// The document the settings came from; `None` = all defaults.
    pub source: Option<SourceRef>,
}

/// Istio's default trust domain (istio/istio `pkg/config/mesh/mesh.go`).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Istio's default root namespace (istio/istio `pkg/config/mesh/mesh.go`).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            trust_domain_aliases: Vec::new(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
            enable_auto_mtls: true,
            outbound_traffic_policy: OutboundTrafficMode::RegistryOnly,
            dns_resolvers: Vec::new(),
            num_trusted_proxies: 0,
            source: None,
        }
    }
}

/// The MeshConfig fields Ward knows but does not act on (istio/api `mesh/v1alpha1/config.proto`,
/// JSON names). Of `defaultConfig` (the proxy defaults) only
/// `gatewayTopology.numTrustedProxies` is read.
const IGNORED_FIELDS: &[&str] = &[
    "proxyListenPort",
    "proxyInboundListenPort",
    "proxyHttpPort",
    "connectTimeout",
    "protocolDetectionTimeout",
    "tcpKeepalive",
    "ingressClass",
    "ingressService",
    "ingressControllerMode",
    "ingressSelector",
    "enableTracing",
    "accessLogFile",
    "accessLogFormat",
    "accessLogEncoding",
    "enableEnvoyAccessLogService",
    "disableEnvoyListenerLog",
    "inboundTrafficPolicy",
    "configSources",
    "caCertificates",
    "defaultServiceExportTo",
    "defaultVirtualServiceExportTo",
    "defaultDestinationRuleExportTo",
    "localityLbSetting",
    "dnsRefreshRate",
    "h2UpgradePolicy",
    "inboundClusterStatName",
    "outboundClusterStatName",
    "certificates",
    "serviceSettings",
    "serviceScopeConfigs",
    "enablePrometheusMerge",
    "verifyCertificateAtClient",
    "ca",
    "extensionProviders",
    "defaultProviders",
    "discoverySelectors",
    "pathNormalization",
    "defaultHttpRetryPolicy",
    "meshMTLS",
    "tlsDefaults",
    "compliancePolicy",
];

/// The MeshConfig fields Ward reads.
const READ_FIELDS: &[&str] = &[
    "trustDomain",
    "trustDomainAliases",
    "rootNamespace",
    "enableAutoMtls",
    "outboundTrafficPolicy",
    "dnsResolvers",
    "defaultConfig",
];

/// `ProxyConfig.gatewayTopology` (istio/api `mesh/v1alpha1/proxy.proto`), in `defaultConfig`
/// or in the `proxy.istio.io/config` annotation. Only `numTrustedProxies` is acted on.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTopology {
    /// Proxies in front of the gateway whose `X-Forwarded-For` entries are trusted.
    pub num_trusted_proxies: Option<u32>,
}

/// The part of a `ProxyConfig` (annotation or `defaultConfig`) Ward reads.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyDefaults {
    /// `gatewayTopology`.
    pub gateway_topology: Option<GatewayTopology>,
}

impl ProxyDefaults {
    /// `gatewayTopology.numTrustedProxies`, if set.
    pub fn num_trusted_proxies(&self) -> Option<u32> {
        self.gateway_topology.as_ref()?.num_trusted_proxies
    }
}

/// Reads the `proxy.istio.io/config` annotation (a YAML `ProxyConfig`): its
/// `gatewayTopology.numTrustedProxies`, or why the annotation cannot be read.
pub fn annotation_trusted_proxies(text: &str) -> Result<Option<u32>, String> {
    let docs = parse_documents(text).map_err(|e| e.message)?;
    let Some(node) = docs.first() else {
        return Ok(None);
    };
    if !matches!(node.value, Value::Map(_)) {
        return Err(format!("expected a mapping, found {}", node.describe()));
    }
    let defaults: ProxyDefaults = decode(node, "").map_err(|e| e.to_string())?;
    Ok(defaults.num_trusted_proxies())
}

/// The fields of a `ProxyConfig` Ward does not act on, by path under `at` (for warnings).
fn unread_proxy_fields(node: &Node, at: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (key, value) in node.entries() {
        let name = key.text().unwrap_or_default();
        let field = push_key(at, &name);
        if name != "gatewayTopology" {
            out.push((field, key.line));
            continue;
        }
        for (k, _) in value.entries() {
            let inner = k.text().unwrap_or_default();
            if inner != "numTrustedProxies" {
                out.push((push_key(&field, &inner), k.line));
            }
        }
    }
    out
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MeshOutboundTrafficPolicy {
    mode: Option<OutboundTrafficMode>,
}

/// Settings found in one document, before the loader adds where it came from.
#[derive(Debug, Default)]
pub(crate) struct MeshParse {
    pub(crate) settings: MeshSettings,
    pub(crate) findings: Vec<Finding>,
}

/// Reads a Sail operator `Istio` resource. Its other spec fields are checked as the other Sail
/// kinds' are ([`IstioSpec`]).
pub(crate) fn from_sail_istio(doc: &Node) -> MeshParse {
    let spec = doc.get("spec").filter(|s| s.value != Value::Null);
    let install_namespace = spec.and_then(|s| s.get("namespace"));
    let mesh_config = spec
        .and_then(|s| s.get("values"))
        .and_then(|v| v.get("meshConfig"));
    let mut parse = from_install(
        install_namespace,
        mesh_config,
        "spec.namespace",
        "spec.values.meshConfig",
    );
    if let Some(Err(err)) = spec.map(|s| decode::<IstioSpec>(s, "spec")) {
        parse.findings.push(decode_finding(&err));
    }
    parse
}

/// Reads an `IstioOperator`.
pub(crate) fn from_istio_operator(doc: &Node) -> MeshParse {
    let spec = doc.get("spec");
    from_install(
        spec.and_then(|s| s.get("namespace")),
        spec.and_then(|s| s.get("meshConfig")),
        "spec.namespace",
        "spec.meshConfig",
    )
}

fn from_install(
    install_namespace: Option<&Node>,
    mesh_config: Option<&Node>,
    namespace_path: &str,
    mesh_path: &str,
) -> MeshParse {
    let mut parse = MeshParse::default();
    if let Some(node) = install_namespace.filter(|n| n.value != Value::Null) {
        match node.as_str() {
            Some(ns) => match check_label_name(ns) {
                Ok(()) => parse.settings.root_namespace = ns.to_owned(),
                Err(why) => parse
                    .findings
                    .push(Finding::error(code::INVALID, namespace_path, why).on_line(node.line)),
            },
            None => parse.findings.push(
                Finding::error(
                    code::INVALID,
                    namespace_path,
                    format!("expected a string, found {}", node.describe()),
                )
                .on_line(node.line),
            ),
        }
    }
    if let Some(node) = mesh_config {
        read_mesh_config(node, mesh_path, &mut parse);
    }
    parse
}

/// Reads the mesh ConfigMap `istio`. `namespace` is the ConfigMap's, when written: istiod
/// reads the ConfigMap of its own namespace, which is then the default root namespace.
pub(crate) fn from_config_map(doc: &Node, namespace: Option<&str>) -> MeshParse {
    let mut parse = MeshParse::default();
    if let Some(ns) = namespace {
        parse.settings.root_namespace = ns.to_owned();
    }
    let Some(data) = doc.get("data") else {
        return parse;
    };
    for (key, value) in data.entries() {
        let key_text = key.text().unwrap_or_default();
        let path = push_key("data", &key_text);
        match key_text.as_str() {
            "mesh" => {
                let Some(text) = value.as_str() else {
                    parse.findings.push(
                        Finding::error(
                            code::INVALID,
                            path,
                            format!(
                                "expected MeshConfig YAML as a string, found {}",
                                value.describe()
                            ),
                        )
                        .on_line(value.line),
                    );
                    continue;
                };
                read_embedded_mesh(text, value.line, &path, &mut parse);
            }
            _ => parse.findings.push(
                Finding::not_enforced(path, "Ward reads only `data.mesh` of the ConfigMap `istio`")
                    .on_line(key.line),
            ),
        }
    }
    parse
}

/// MeshConfig YAML inside a string that starts on `first_line` of the file.
fn read_embedded_mesh(text: &str, first_line: usize, path: &str, parse: &mut MeshParse) {
    let shift = first_line.saturating_sub(1);
    match parse_documents(text) {
        Err(err) => parse.findings.push(
            Finding::error(
                code::PARSE,
                path,
                format!("invalid MeshConfig YAML: {}", err.message),
            )
            .on_line(err.line.map_or(first_line, |l| l + shift)),
        ),
        Ok(mut docs) => {
            if docs.len() > 1 {
                parse.findings.push(
                    Finding::error(code::INVALID, path, "expected one MeshConfig document")
                        .on_line(first_line),
                );
            }
            if let Some(doc) = docs.first_mut() {
                shift_lines(doc, shift);
                read_mesh_config(doc, path, parse);
            }
        }
    }
}

fn shift_lines(node: &mut Node, by: usize) {
    node.line += by;
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|n| shift_lines(n, by)),
        Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            shift_lines(k, by);
            shift_lines(v, by);
        }),
        _ => {}
    }
}

/// Reads a MeshConfig mapping at `path`.
fn read_mesh_config(node: &Node, path: &str, parse: &mut MeshParse) {
    if node.value == Value::Null {
        return;
    }
    if !matches!(node.value, Value::Map(_)) {
        parse.findings.push(
            Finding::error(
                code::INVALID,
                path,
                format!("expected a mapping, found {}", node.describe()),
            )
            .on_line(node.line),
        );
        return;
    }
    for (key, value) in node.entries() {
        let name = key.text().unwrap_or_default();
        let field = push_key(path, &name);
        match name.as_str() {
            "trustDomain" => {
                if let Some(td) = read(value, &field, parse) {
                    parse.settings.trust_domain = td;
                }
            }
            "trustDomainAliases" => {
                if let Some(aliases) = read::<Vec<String>>(value, &field, parse) {
                    parse.settings.trust_domain_aliases = aliases;
                }
            }
            "rootNamespace" => {
                if let Some(ns) = read::<String>(value, &field, parse) {
                    match check_label_name(&ns) {
                        Ok(()) => parse.settings.root_namespace = ns,
                        Err(why) => parse
                            .findings
                            .push(Finding::error(code::INVALID, field, why).on_line(value.line)),
                    }
                }
            }
            "enableAutoMtls" => {
                if let Some(enabled) = read(value, &field, parse) {
                    parse.settings.enable_auto_mtls = enabled;
                }
            }
            "outboundTrafficPolicy" => {
                if let Some(policy) = read::<MeshOutboundTrafficPolicy>(value, &field, parse) {
                    parse.settings.outbound_traffic_policy = policy.mode.unwrap_or_default();
                }
            }
            "dnsResolvers" => {
                if let Some(servers) = read::<Vec<String>>(value, &field, parse) {
                    let mut parsed = Vec::new();
                    for (i, server) in servers.iter().enumerate() {
                        match parse_resolver(server) {
                            Some(addr) => parsed.push(addr),
                            None => parse.findings.push(
                                Finding::error(
                                    code::INVALID,
                                    push_index(&field, i),
                                    format!(
                                        "`{server}` is not a DNS server address: write `ip` or \
                                         `ip:port` (`[v6]:port` for IPv6)"
                                    ),
                                )
                                .on_line(value.line),
                            ),
                        }
                    }
                    parse.settings.dns_resolvers = parsed;
                }
            }
            "defaultConfig" => {
                if let Some(defaults) = read::<ProxyDefaults>(value, &field, parse) {
                    if let Some(n) = defaults.num_trusted_proxies() {
                        parse.settings.num_trusted_proxies = n;
                    }
                    for (unread, line) in unread_proxy_fields(value, &field) {
                        parse
                            .findings
                            .push(Finding::not_enforced(unread, "").on_line(line));
                    }
                }
            }
            known if IGNORED_FIELDS.contains(&known) => {
                parse
                    .findings
                    .push(Finding::not_enforced(field, "").on_line(key.line));
            }
            unknown => {
                let all: Vec<&str> = READ_FIELDS.iter().chain(IGNORED_FIELDS).copied().collect();
                parse.findings.push(
                    Finding::error(
                        code::UNKNOWN_FIELD,
                        path,
                        unknown_name_message("field", unknown, &all),
                    )
                    .on_line(key.line),
                );
            }
        }
    }
    check_trust_domains(node, path, parse);
}

fn read<T: serde::de::DeserializeOwned>(
    node: &Node,
    path: &str,
    parse: &mut MeshParse,
) -> Option<T> {
    match decode(node, path) {
        Ok(value) => Some(value),
        Err(err) => {
            parse.findings.push(decode_finding(&err));
            None
        }
    }
}

fn check_trust_domains(node: &Node, path: &str, parse: &mut MeshParse) {
    let line_of = |key: &str| node.get(key).map_or(node.line, |n| n.line);
    if let Err(why) = check_trust_domain(&parse.settings.trust_domain) {
        parse.findings.push(
            Finding::error(code::INVALID, push_key(path, "trustDomain"), why)
                .on_line(line_of("trustDomain")),
        );
    }
    for (i, alias) in parse.settings.trust_domain_aliases.iter().enumerate() {
        if let Err(why) = check_trust_domain(alias) {
            parse.findings.push(
                Finding::error(
                    code::INVALID,
                    push_index(&push_key(path, "trustDomainAliases"), i),
                    why,
                )
                .on_line(line_of("trustDomainAliases")),
            );
        }
    }
}

/// SPIFFE-ID spec §2.1: "Trust domain names are nominally self-registered ... The trust
/// domain name MUST contain only lowercase letters, numbers, dots, dashes, and underscores."
fn check_trust_domain(td: &str) -> Result<(), String> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{td}` is not a SPIFFE trust domain: use lowercase letters, digits, `.`, `-` and `_`"
        ))
    }
}

/// A `dnsResolvers` entry: `ip` (port 53) or `ip:port`.
fn parse_resolver(server: &str) -> Option<std::net::SocketAddr> {
    server.parse().ok().or_else(|| {
        server
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| (ip, 53).into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Node {
        parse_documents(yaml).unwrap().remove(0)
    }

    fn brief(findings: &[Finding]) -> Vec<(&str, &str, Option<usize>)> {
        findings
            .iter()
            .map(|f| (f.code, f.field.as_str(), f.line))
            .collect()
    }

    #[test]
    fn dns_resolvers_are_addresses_with_port_53_by_default() {
        let parse = from_sail_istio(&doc(
            "apiVersion: sailoperator.io/v1\nkind: Istio\nmetadata: {name: default}\nspec:\n  values:\n    meshConfig:\n      dnsResolvers: [127.131.0.53, \"127.131.0.54:5353\", \"[::1]:53\", dns.example]\n",
        ));
        assert_eq!(
            brief(&parse.findings),
            vec![(
                code::INVALID,
                "spec.values.meshConfig.dnsResolvers[3]",
                Some(7)
            )]
        );
        assert_eq!(
            parse.settings.dns_resolvers,
            vec![
                "127.131.0.53:53".parse().unwrap(),
                "127.131.0.54:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
            ]
        );
        assert_eq!(
            MeshSettings::default().outbound_traffic_policy,
            OutboundTrafficMode::RegistryOnly,
            "Ward's default (docs/security.md, \"Egress\")"
        );
    }

    #[test]
    fn sail_istio_reads_mesh_config_and_accepts_any_helm_value() {
        let parse = from_sail_istio(&doc(
            "apiVersion: sailoperator.io/v1\nkind: Istio\nmetadata: {name: default}\nspec:\n  version: v1.26.0\n  namespace: istio-cp\n  updateStrategy: {type: InPlace}\n  values:\n    pilot: {resources: {requests: {cpu: 100m}}}\n    global: {proxy: {image: x}}\n    meshConfig:\n      trustDomain: corp.example\n      trustDomainAliases: [old.example]\n      enableAutoMtls: false\n      outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n      accessLogFile: /dev/stdout\n      defaultConfig: {holdApplicationUntilProxyStarts: true, gatewayTopology: {numTrustedProxies: 2}}\n",
        ));
        assert_eq!(
            brief(&parse.findings),
            vec![
                (
                    code::FIELD_NOT_ENFORCED,
                    "spec.values.meshConfig.accessLogFile",
                    Some(16)
                ),
                (
                    code::FIELD_NOT_ENFORCED,
                    "spec.values.meshConfig.defaultConfig.holdApplicationUntilProxyStarts",
                    Some(17)
                ),
            ]
        );
        assert_eq!(parse.settings.num_trusted_proxies, 2);
        let s = parse.settings;
        assert_eq!(s.trust_domain, "corp.example");
        assert_eq!(s.trust_domain_aliases, vec!["old.example".to_string()]);
        assert_eq!(s.root_namespace, "istio-cp");
        assert!(!s.enable_auto_mtls);
        assert_eq!(s.outbound_traffic_policy, OutboundTrafficMode::RegistryOnly);
    }

    #[test]
    fn sail_istio_spec_fields_are_checked_like_the_other_sail_kinds() {
        let cases = [
            ("spec:\n  namepsace: istio-cp\n", vec![(code::UNKNOWN_FIELD, "spec", Some(2))]),
            (
                "spec:\n  updateStrategy:\n    type: Rolling\n",
                vec![(code::INVALID, "spec.updateStrategy.type", Some(3))],
            ),
            (
                "spec:\n  values: []\n",
                vec![(code::INVALID, "spec.values", Some(2))],
            ),
            (
                "spec:\n  namespace: [a]\n",
                vec![(code::INVALID, "spec.namespace", Some(2))],
            ),
            (
                "spec:\n  version: v1.26.0\n  profile: default\n  updateStrategy: {type: RevisionBased, inactiveRevisionDeletionGracePeriodSeconds: 30, updateWorkloads: true}\n",
                vec![],
            ),
            ("spec:\n", vec![]),
        ];
        for (yaml, want) in cases {
            assert_eq!(brief(&from_sail_istio(&doc(yaml)).findings), want, "{yaml}");
        }
    }

    #[test]
    fn mesh_config_errors_are_located() {
        let parse = from_istio_operator(&doc(
            "spec:\n  meshConfig:\n    trustDomian: x\n    trustDomain: Bad_TD\n    enableAutoMtls: maybe\n    rootNamespace: mesh-root\n    outboundTrafficPolicy: {mode: DENY}\n",
        ));
        assert_eq!(
            brief(&parse.findings),
            vec![
                (code::UNKNOWN_FIELD, "spec.meshConfig", Some(3)),
                (code::INVALID, "spec.meshConfig.enableAutoMtls", Some(5)),
                (
                    code::INVALID,
                    "spec.meshConfig.outboundTrafficPolicy.mode",
                    Some(7)
                ),
                (code::INVALID, "spec.meshConfig.trustDomain", Some(4)),
            ]
        );
        assert!(parse.findings[0]
            .message
            .contains("did you mean `trustDomain`?"));
        assert_eq!(parse.settings.root_namespace, "mesh-root");
    }

    #[test]
    fn config_map_mesh_lines_map_into_the_file() {
        let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  meshNetworks: '{}'\n  mesh: |-\n    trustDomain: td.example\n    rootNamespace: mesh-root\n    enableTracing: true\n    bogus: 1\n";
        let parse = from_config_map(&doc(yaml), Some("istio-system"));
        assert_eq!(
            brief(&parse.findings),
            vec![
                (code::FIELD_NOT_ENFORCED, "data.meshNetworks", Some(5)),
                (code::FIELD_NOT_ENFORCED, "data.mesh.enableTracing", Some(9)),
                (code::UNKNOWN_FIELD, "data.mesh", Some(10)),
            ]
        );
        assert_eq!(parse.settings.trust_domain, "td.example");
        assert_eq!(parse.settings.root_namespace, "mesh-root");

        let parse = from_config_map(&doc("data:\n  mesh: \"a: [\"\n"), None);
        assert_eq!(
            brief(&parse.findings),
            vec![(code::PARSE, "data.mesh", Some(2))]
        );
        assert_eq!(parse.settings.root_namespace, DEFAULT_ROOT_NAMESPACE);
    }

    #[test]
    fn defaults_are_istios() {
        let s = MeshSettings::default();
        assert_eq!(
            (
                s.trust_domain.as_str(),
                s.root_namespace.as_str(),
                s.enable_auto_mtls
            ),
            ("cluster.local", "istio-system", true)
        );
        assert_eq!(
            from_istio_operator(&doc("spec: {}\n")).settings,
            MeshSettings::default()
        );
    }

    #[test]
    fn trust_domains_follow_spiffe() {
        for ok in ["cluster.local", "a-b_c.9"] {
            assert!(check_trust_domain(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Cluster.local", "a/b", "a b"] {
            assert!(check_trust_domain(bad).is_err(), "{bad}");
        }
    }
}
