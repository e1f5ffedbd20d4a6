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
//! `rootNamespace`, `enableAutoMtls`, `outboundTrafficPolicy.mode`, and for tracing
//! (docs/tracing.md) `enableTracing`, the `opentelemetry` entries of `extensionProviders`,
//! `defaultProviders.tracing` and `defaultConfig.tracing.sampling`.

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
#[derive(Clone, Debug, PartialEq)]
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
    /// What the tracing of the mesh starts from, before Telemetry resources (docs/tracing.md).
    pub tracing: MeshTracing,
    /// `extensionProviders`, by name, in the order written.
    pub extension_providers: Vec<ExtensionProvider>,
    /// The document the settings came from; `None` = all defaults.
    pub source: Option<SourceRef>,
}

/// The mesh-wide tracing defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshTracing {
    /// `enableTracing`, default true: false turns span reporting off wherever no Telemetry
    /// names a provider.
    pub enabled: bool,
    /// `defaultProviders.tracing`: the providers used where no Telemetry names one.
    pub default_providers: Vec<String>,
    /// `defaultConfig.tracing.sampling`: the percentage of new traces sampled, default 1
    /// (Istio's `values.pilot.traceSampling` default).
    pub sampling: f64,
}

impl Default for MeshTracing {
    fn default() -> Self {
        MeshTracing {
            enabled: true,
            default_providers: Vec::new(),
            sampling: 1.0,
        }
    }
}

/// One `extensionProviders` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionProvider {
    /// `name`, what Telemetry `providers` and `defaultProviders` refer to.
    pub name: String,
    /// What kind of provider it is.
    pub kind: ProviderKind,
}

/// The kind of an extension provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// `opentelemetry`: an OTLP collector, the one tracing provider Ward exports to.
    OpenTelemetry(OtlpCollector),
    /// Any other kind (`zipkin`, `envoyFileAccessLog`, `prometheus`...), by its key: accepted,
    /// not served.
    Other(String),
}

/// `extensionProviders[].opentelemetry`: where spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpCollector {
    /// `service`: the collector's host name or address.
    pub service: String,
    /// `port`.
    pub port: u16,
    /// `http`: OTLP/HTTP with protobuf bodies instead of OTLP/gRPC.
    pub http: Option<OtlpHttp>,
    /// `http.timeout` or `grpc.timeout`, in milliseconds; 10 s when absent.
    pub timeout_ms: u64,
}

/// `opentelemetry.http`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpHttp {
    /// `path`, default `/v1/traces`.
    pub path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OpenTelemetryDoc {
    service: String,
    port: u32,
    max_tag_length: Option<u32>,
    http: Option<OtlpHttpDoc>,
    grpc: Option<OtlpGrpcDoc>,
    resource_detectors: Option<serde_json::Value>,
    dynatrace_sampler: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OtlpHttpDoc {
    path: Option<String>,
    timeout: Option<crate::istio::proto::Duration>,
    headers: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OtlpGrpcDoc {
    timeout: Option<crate::istio::proto::Duration>,
    initial_metadata: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DefaultProvidersDoc {
    tracing: Option<Vec<String>>,
    metrics: Option<Vec<String>>,
    access_logging: Option<Vec<String>>,
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
            tracing: MeshTracing::default(),
            extension_providers: Vec::new(),
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
    "enableTracing",
    "extensionProviders",
    "defaultProviders",
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
            "enableTracing" => {
                if let Some(enabled) = read(value, &field, parse) {
                    parse.settings.tracing.enabled = enabled;
                }
            }
            "extensionProviders" => read_extension_providers(value, &field, parse),
            "defaultProviders" => {
                if let Some(d) = read::<DefaultProvidersDoc>(value, &field, parse) {
                    parse.settings.tracing.default_providers = d.tracing.unwrap_or_default();
                    for (set, name) in [
                        (d.metrics.is_some(), "metrics"),
                        (d.access_logging.is_some(), "accessLogging"),
                    ] {
                        if set {
                            parse.findings.push(
                                Finding::not_enforced(
                                    push_key(&field, name),
                                    "Ward's metrics and access log are always on",
                                )
                                .on_line(value.line),
                            );
                        }
                    }
                }
            }
            "defaultConfig" => read_default_config(value, &field, parse),
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

/// `extensionProviders`: each entry has a `name` and one provider kind. `opentelemetry` is
/// read; other kinds are kept by name (a Telemetry that selects one is an error at
/// translation) and warned about.
fn read_extension_providers(node: &Node, path: &str, parse: &mut MeshParse) {
    let Value::Seq(items) = &node.value else {
        parse.findings.push(
            Finding::error(
                code::INVALID,
                path,
                format!("expected a list, found {}", node.describe()),
            )
            .on_line(node.line),
        );
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let item_path = push_index(path, i);
        let Some(name) = item.get("name").and_then(|n| n.as_str()) else {
            parse.findings.push(
                Finding::error(
                    code::INVALID,
                    &item_path,
                    "an extension provider needs a `name`",
                )
                .on_line(item.line),
            );
            continue;
        };
        let name = name.to_owned();
        if parse
            .settings
            .extension_providers
            .iter()
            .any(|p| p.name == name)
        {
            parse.findings.push(
                Finding::error(
                    code::INVALID,
                    push_key(&item_path, "name"),
                    format!("extension provider `{name}` is declared twice"),
                )
                .on_line(item.line),
            );
            continue;
        }
        let kinds: Vec<(String, &Node)> = item
            .entries()
            .iter()
            .filter_map(|(k, v)| Some((k.text()?, v)))
            .filter(|(k, _)| k != "name")
            .collect();
        if kinds.len() != 1 {
            parse.findings.push(
                Finding::error(
                    code::INVALID,
                    &item_path,
                    format!(
                        "extension provider `{name}` must set exactly one provider kind, found {}",
                        kinds.len()
                    ),
                )
                .on_line(item.line),
            );
            continue;
        }
        let (kind, body) = &kinds[0];
        let kind_path = push_key(&item_path, kind);
        let kind = if kind == "opentelemetry" {
            let Some(doc) = read::<OpenTelemetryDoc>(body, &kind_path, parse) else {
                continue;
            };
            match otlp_collector(doc, &kind_path, body.line) {
                Ok((collector, warnings)) => {
                    parse.findings.extend(warnings);
                    ProviderKind::OpenTelemetry(collector)
                }
                Err(finding) => {
                    parse.findings.push(finding);
                    continue;
                }
            }
        } else {
            parse.findings.push(
                Finding::not_enforced(
                    kind_path,
                    "Ward exports spans to `opentelemetry` providers only; its metrics are \
                     scraped and its access log is written to stdout",
                )
                .on_line(body.line),
            );
            ProviderKind::Other(kind.clone())
        };
        parse
            .settings
            .extension_providers
            .push(ExtensionProvider { name, kind });
    }
}

/// The default OTLP export timeout (Envoy's and the OpenTelemetry SDK's: 10 s).
const DEFAULT_OTLP_TIMEOUT_MS: u64 = 10_000;

fn otlp_collector(
    doc: OpenTelemetryDoc,
    path: &str,
    line: usize,
) -> Result<(OtlpCollector, Vec<Finding>), Finding> {
    let mut warnings = Vec::new();
    if doc.service.is_empty() || doc.service.contains(['/', ' ', '?', '#', '@']) {
        return Err(Finding::error(
            code::INVALID,
            push_key(path, "service"),
            format!("`{}` is not a host name or address", doc.service),
        )
        .on_line(line));
    }
    let port = u16::try_from(doc.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            Finding::error(
                code::INVALID,
                push_key(path, "port"),
                format!("{} is not a port: use 1 to 65535", doc.port),
            )
            .on_line(line)
        })?;
    if doc.http.is_some() && doc.grpc.is_some() {
        return Err(Finding::error(
            code::INVALID,
            path,
            "only one of `http` and `grpc` can be set",
        )
        .on_line(line));
    }
    let mut timeout = None;
    let http = match doc.http {
        Some(h) => {
            let path_value = h.path.unwrap_or_else(|| "/v1/traces".to_owned());
            if !path_value.starts_with('/') || path_value.contains(['?', '#', ' ']) {
                return Err(Finding::error(
                    code::INVALID,
                    push_key(&push_key(path, "http"), "path"),
                    format!("`{path_value}` is not an absolute path"),
                )
                .on_line(line));
            }
            timeout = h.timeout;
            if h.headers.is_some() {
                warnings.push(
                    Finding::not_enforced(push_key(&push_key(path, "http"), "headers"), "")
                        .on_line(line),
                );
            }
            Some(OtlpHttp { path: path_value })
        }
        None => None,
    };
    if let Some(g) = doc.grpc {
        timeout = g.timeout;
        if g.initial_metadata.is_some() {
            warnings.push(
                Finding::not_enforced(push_key(&push_key(path, "grpc"), "initialMetadata"), "")
                    .on_line(line),
            );
        }
    }
    for (set, name) in [
        (doc.max_tag_length.is_some(), "maxTagLength"),
        (doc.resource_detectors.is_some(), "resourceDetectors"),
        (doc.dynatrace_sampler.is_some(), "dynatraceSampler"),
    ] {
        if set {
            warnings.push(Finding::not_enforced(push_key(path, name), "").on_line(line));
        }
    }
    let timeout_ms = timeout
        .map(|d| u64::try_from(d.0.as_millis()).unwrap_or(u64::MAX))
        .filter(|ms| *ms > 0)
        .unwrap_or(DEFAULT_OTLP_TIMEOUT_MS);
    Ok((
        OtlpCollector {
            service: doc.service,
            port,
            http,
            timeout_ms,
        },
        warnings,
    ))
}

/// `defaultConfig` (ProxyConfig, the proxies' defaults): Ward reads `tracing.sampling`; every
/// other field is accepted and warned about.
fn read_default_config(node: &Node, path: &str, parse: &mut MeshParse) {
    if node.value == Value::Null {
        return;
    }
    for (key, value) in node.entries().iter() {
        let name = key.text().unwrap_or_default();
        let field = push_key(path, &name);
        if name == "gatewayTopology" {
            read_gateway_topology(value, &field, parse);
            continue;
        }
        if name != "tracing" {
            parse
                .findings
                .push(Finding::not_enforced(field, "").on_line(key.line));
            continue;
        }
        for (tkey, tvalue) in value.entries().iter() {
            let tname = tkey.text().unwrap_or_default();
            let tfield = push_key(&field, &tname);
            if tname != "sampling" {
                parse
                    .findings
                    .push(Finding::not_enforced(tfield, "").on_line(tkey.line));
                continue;
            }
            if let Some(sampling) = read::<f64>(tvalue, &tfield, parse) {
                if (0.0..=100.0).contains(&sampling) {
                    parse.settings.tracing.sampling = sampling;
                } else {
                    parse.findings.push(
                        Finding::error(
                            code::INVALID,
                            tfield,
                            format!("{sampling} is not a percentage: use 0 to 100"),
                        )
                        .on_line(tvalue.line),
                    );
                }
            }
        }
    }
}

/// `defaultConfig.gatewayTopology`: `numTrustedProxies` is read (docs/ingress.md), the other
/// fields are named as not enforced.
fn read_gateway_topology(node: &Node, path: &str, parse: &mut MeshParse) {
    for (key, value) in node.entries().iter() {
        let name = key.text().unwrap_or_default();
        let field = push_key(path, &name);
        if name != "numTrustedProxies" {
            parse
                .findings
                .push(Finding::not_enforced(field, "").on_line(key.line));
            continue;
        }
        if let Some(n) = read::<u32>(value, &field, parse) {
            parse.settings.num_trusted_proxies = n;
        }
    }
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
    fn tracing_settings_are_read_and_the_rest_of_default_config_is_warned() {
        let parse = from_sail_istio(&doc(
            "apiVersion: sailoperator.io/v1\nkind: Istio\nmetadata: {name: default}\nspec:\n  values:\n    meshConfig:\n      enableTracing: true\n      extensionProviders:\n      - name: otel\n        opentelemetry: {service: otel.example, port: 4317, grpc: {timeout: 3s}}\n      - name: web\n        opentelemetry: {service: 10.0.0.5, port: 4318, http: {path: /otlp/v1/traces}}\n      - name: zipkin\n        zipkin: {service: zipkin.example, port: 9411}\n      - name: bad-port\n        opentelemetry: {service: x, port: 70000}\n      - name: otel\n        opentelemetry: {service: y, port: 1}\n      defaultProviders: {tracing: [otel], metrics: [prometheus]}\n      defaultConfig: {tracing: {sampling: 12.5}, holdApplicationUntilProxyStarts: true}\n",
        ));
        assert_eq!(
            brief(&parse.findings),
            vec![
                (
                    code::FIELD_NOT_ENFORCED,
                    "spec.values.meshConfig.extensionProviders[2].zipkin",
                    Some(14)
                ),
                (
                    code::INVALID,
                    "spec.values.meshConfig.extensionProviders[3].opentelemetry.port",
                    Some(16)
                ),
                (
                    code::INVALID,
                    "spec.values.meshConfig.extensionProviders[4].name",
                    Some(17)
                ),
                (
                    code::FIELD_NOT_ENFORCED,
                    "spec.values.meshConfig.defaultProviders.metrics",
                    Some(19)
                ),
                (
                    code::FIELD_NOT_ENFORCED,
                    "spec.values.meshConfig.defaultConfig.holdApplicationUntilProxyStarts",
                    Some(20)
                ),
            ]
        );
        let s = &parse.settings;
        assert_eq!(s.tracing.default_providers, vec!["otel".to_owned()]);
        assert_eq!(s.tracing.sampling, 12.5);
        let names: Vec<&str> = s
            .extension_providers
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, vec!["otel", "web", "zipkin"]);
        assert_eq!(
            s.extension_providers[0].kind,
            ProviderKind::OpenTelemetry(OtlpCollector {
                service: "otel.example".into(),
                port: 4317,
                http: None,
                timeout_ms: 3000
            })
        );
        assert_eq!(
            s.extension_providers[1].kind,
            ProviderKind::OpenTelemetry(OtlpCollector {
                service: "10.0.0.5".into(),
                port: 4318,
                http: Some(OtlpHttp {
                    path: "/otlp/v1/traces".into()
                }),
                timeout_ms: 10_000
            })
        );
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
