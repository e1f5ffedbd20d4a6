//! What one proxy's spans are: the mesh tracing settings (`enableTracing`,
//! `defaultProviders.tracing`, `defaultConfig.tracing.sampling`, `extensionProviders`) and the
//! Telemetry resources that apply to the workload, merged in Istio's order. Pure.
//!
//! Istio's order (istio.io "Telemetry API": "workload-specific configuration overrides
//! namespace-wide configuration, which overrides mesh-wide configuration"): the root
//! namespace's Telemetry without a selector, then the workload namespace's without a selector,
//! then the namespace's Telemetries whose `selector` matches the workload. At each level a field
//! that is set replaces the one before; `customTags` are merged by tag name, the more specific
//! level winning. A `tracing` entry whose `match.mode` is CLIENT or SERVER applies to that
//! direction only. Several Telemetries at one level apply in load order (Istio takes the oldest
//! and warns; Ward has no creation times). docs/tracing.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::istio::{TelemetrySpec, TelemetryWorkloadMode};
use crate::load::{ConfigSet, Resource};
use crate::mesh::{ExtensionProvider, ProviderKind};

/// The spans of one proxy, per direction. `None`: no span is reported in that direction
/// (trace context is still propagated).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracingPolicy {
    /// Inbound requests (SERVER spans), and the requests a gateway serves.
    #[serde(default)]
    pub server: Option<SpanReporting>,
    /// Outbound requests (CLIENT spans).
    #[serde(default)]
    pub client: Option<SpanReporting>,
    /// The percentage of new traces sampled in each direction when no span is reported: the
    /// sampled flag the next hop gets.
    #[serde(default)]
    pub sampling_without_reporting: f64,
}

/// Where a direction's spans go and which are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpanReporting {
    /// The extension provider's name.
    pub provider: String,
    /// The collector.
    pub collector: Collector,
    /// Percentage of new traces sampled (0 to 100); an incoming sampled flag is honoured.
    pub sampling: f64,
    /// `customTags`, by tag name.
    pub custom_tags: BTreeMap<String, TagValue>,
}

/// An OTLP collector.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Collector {
    /// Host name or address.
    pub service: String,
    /// Port.
    pub port: u16,
    /// OTLP/HTTP (protobuf) to this path; `None`: OTLP/gRPC.
    pub http_path: Option<String>,
    /// Export timeout, in milliseconds.
    pub timeout_ms: u64,
    /// The DestinationRule field that asks for TLS (SIMPLE or MUTUAL) to the collector, as an
    /// Istio user configures TLS to a tracing collector. Ward's exporter speaks plain text only,
    /// so with this set no span is sent (docs/tracing.md, "Export").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_rule: Option<String>,
}

/// Where a custom tag's value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TagValue {
    /// A fixed value.
    Literal(String),
    /// A request header, or the default when absent (no tag when there is no default).
    Header {
        /// The header name, lower case.
        name: String,
        /// The value when the header is absent.
        default: Option<String>,
    },
    /// An environment variable of the proxy process.
    Environment {
        /// The variable.
        name: String,
        /// The value when the variable is not set.
        default: Option<String>,
    },
}

/// A Telemetry field that cannot be served: the object, the field and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracingError {
    /// The Telemetry (`namespace/name`); `None`: the mesh settings.
    pub object: Option<String>,
    /// The field.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// The tracing settings of one direction while the levels are merged.
#[derive(Clone, Debug)]
struct Merged {
    /// Providers, and where they were named (`None`: mesh `defaultProviders`).
    providers: (Vec<String>, Option<(String, String)>),
    sampling: f64,
    disabled: bool,
    tags: BTreeMap<String, TagValue>,
}

/// The Telemetries that apply to a workload of `namespace` with `labels`, in merge order. One
/// attached by `targetRef(s)` (to a Gateway or a Service) applies to no sidecar here: WARD0102
/// says it is not served.
pub fn applicable<'s>(
    set: &'s ConfigSet,
    root: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'s Resource<TelemetrySpec>> {
    let mesh_wide = set
        .telemetries
        .iter()
        .filter(|t| t.meta.namespace == root && t.spec.selector.is_none());
    let namespace_wide = set
        .telemetries
        .iter()
        .filter(|t| namespace != root && t.meta.namespace == namespace)
        .filter(|t| {
            t.spec.selector.is_none() && t.spec.target_refs.is_none() && t.spec.target_ref.is_none()
        });
    let workload = set.telemetries.iter().filter(|t| {
        t.meta.namespace == namespace
            && t.spec.selector.as_ref().is_some_and(|s| {
                s.match_labels
                    .iter()
                    .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
            })
    });
    mesh_wide
        .filter(|t| t.spec.target_refs.is_none() && t.spec.target_ref.is_none())
        .chain(namespace_wide)
        .chain(workload)
        .collect()
}

/// The tracing policy of a workload of `namespace` with `labels`.
pub fn tracing_policy(
    set: &ConfigSet,
    root: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<TracingPolicy, TracingError> {
    let telemetries = applicable(set, root, namespace, labels);
    let mesh = &set.mesh.tracing;
    let start = Merged {
        providers: (mesh.default_providers.clone(), None),
        sampling: mesh.sampling,
        disabled: !mesh.enabled,
        tags: BTreeMap::new(),
    };
    let mut server = start.clone();
    let mut client = start;
    for t in &telemetries {
        for (i, tracing) in t.spec.tracing.iter().flatten().enumerate() {
            let mode = tracing
                .match_
                .as_ref()
                .and_then(|m| m.mode)
                .unwrap_or(TelemetryWorkloadMode::ClientAndServer);
            let (to_server, to_client) = sides(mode);
            for (m, on) in [(&mut server, to_server), (&mut client, to_client)] {
                if !on {
                    continue;
                }
                if let Some(p) = &tracing.providers {
                    m.providers = (
                        p.iter().map(|p| p.name.clone()).collect(),
                        Some((t.key(), format!("spec.tracing[{i}].providers"))),
                    );
                }
                if let Some(s) = tracing.random_sampling_percentage {
                    m.sampling = s;
                }
                if let Some(d) = tracing.disable_span_reporting {
                    m.disabled = d;
                }
                for (name, tag) in tracing.custom_tags.iter().flatten() {
                    if let Some(value) = tag_value(tag) {
                        m.tags.insert(name.clone(), value);
                    }
                }
            }
        }
    }
    let sampling_without_reporting = server.sampling;
    let with_tls_rule = |r: Option<SpanReporting>| {
        r.map(|mut r| {
            r.collector.tls_rule = collector_tls_rule(set, namespace, labels, &r.collector);
            r
        })
    };
    Ok(TracingPolicy {
        server: with_tls_rule(reporting(server, &set.mesh.extension_providers)?),
        client: with_tls_rule(reporting(client, &set.mesh.extension_providers)?),
        sampling_without_reporting,
    })
}

/// The DestinationRule field that asks this workload's proxy for TLS to `collector`, if any
/// (the rule a sidecar's outbound traffic to that host and port would follow). The service's
/// namespace is the second label of a `name.namespace.svc…` host, else the workload's.
fn collector_tls_rule(
    set: &ConfigSet,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    collector: &Collector,
) -> Option<String> {
    let host = collector.service.as_str();
    let labels_of_host: Vec<&str> = host.split('.').collect();
    let service_namespace = match labels_of_host.as_slice() {
        [_, ns, "svc", ..] => *ns,
        _ => namespace,
    };
    let tls = crate::origination::origination(
        set,
        namespace,
        Some(labels),
        service_namespace,
        host,
        collector.port,
    )?;
    Some(format!("{} {}", tls.rule, tls.field))
}

/// Which directions a `match.mode` selects: (SERVER, CLIENT).
pub(crate) fn sides(mode: TelemetryWorkloadMode) -> (bool, bool) {
    match mode {
        TelemetryWorkloadMode::ClientAndServer => (true, true),
        TelemetryWorkloadMode::Server => (true, false),
        TelemetryWorkloadMode::Client => (false, true),
    }
}

/// A custom tag's value; `None` for `formatter` (reported as not enforced at load).
fn tag_value(tag: &crate::istio::CustomTag) -> Option<TagValue> {
    if let Some(l) = &tag.literal {
        return Some(TagValue::Literal(l.value.clone()));
    }
    if let Some(h) = &tag.header {
        return Some(TagValue::Header {
            name: h.name.to_ascii_lowercase(),
            default: h.default_value.clone(),
        });
    }
    tag.environment.as_ref().map(|e| TagValue::Environment {
        name: e.name.clone(),
        default: e.default_value.clone(),
    })
}

fn reporting(
    m: Merged,
    providers: &[ExtensionProvider],
) -> Result<Option<SpanReporting>, TracingError> {
    let (names, named_at) = m.providers;
    if m.disabled {
        return Ok(None);
    }
    let Some(name) = names.first() else {
        return Ok(None);
    };
    let (object, field) = match named_at {
        Some((object, field)) => (Some(object), field),
        None => (None, "meshConfig.defaultProviders.tracing".to_owned()),
    };
    let fail = |reason: String| TracingError {
        object: object.clone(),
        field: field.clone(),
        reason,
    };
    if names.len() > 1 {
        return Err(fail(format!(
            "{} tracing providers are named; a proxy reports spans to one (Istio uses only the \
             first): name one",
            names.len()
        )));
    }
    let Some(provider) = providers.iter().find(|p| &p.name == name) else {
        let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
        return Err(fail(format!(
            "no meshConfig.extensionProviders entry is named `{name}` (declared: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    };
    let collector = match &provider.kind {
        ProviderKind::OpenTelemetry(c) => Collector {
            service: c.service.clone(),
            port: c.port,
            http_path: c.http.as_ref().map(|h| h.path.clone()),
            timeout_ms: c.timeout_ms,
            tls_rule: None,
        },
        ProviderKind::Other(kind) => {
            return Err(fail(format!(
                "provider `{name}` is a `{kind}` provider: Ward exports spans over OTLP, to \
                 `opentelemetry` providers only"
            )))
        }
    };
    Ok(Some(SpanReporting {
        provider: name.clone(),
        collector,
        sampling: m.sampling,
        custom_tags: m.tags,
    }))
}

/// The Telemetry fields Ward does not serve, as `spec.…` paths: WARD0102 names them.
pub fn unserved_telemetry_fields(spec: &TelemetrySpec) -> Vec<String> {
    let mut out = Vec::new();
    if spec.target_ref.is_some() {
        out.push("spec.targetRef".to_owned());
    }
    if spec.target_refs.is_some() {
        out.push("spec.targetRefs".to_owned());
    }
    out.extend(crate::metrics_policy::unserved_metrics_fields(spec));
    for (i, l) in spec.access_logging.iter().flatten().enumerate() {
        if l.providers.is_some() {
            out.push(format!("spec.accessLogging[{i}].providers"));
        }
    }
    for (i, t) in spec.tracing.iter().flatten().enumerate() {
        let at = |f: &str| format!("spec.tracing[{i}].{f}");
        if t.use_request_id_for_trace_sampling.is_some() {
            out.push(at("useRequestIdForTraceSampling"));
        }
        if t.enable_istio_tags.is_some() {
            out.push(at("enableIstioTags"));
        }
        if t.disable_context_propagation.is_some() {
            out.push(at("disableContextPropagation"));
        }
        for (name, tag) in t.custom_tags.iter().flatten() {
            if tag.formatter.is_some() {
                out.push(at(&format!("customTags.{name}.formatter")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::load_str;

    const MESH: &str = "apiVersion: sailoperator.io/v1\nkind: Istio\nmetadata: {name: default}\nspec:\n  namespace: istio-system\n  values:\n    meshConfig:\n      extensionProviders:\n      - name: grpc\n        opentelemetry: {service: otel.example, port: 4317}\n      - name: http\n        opentelemetry: {service: 10.0.0.5, port: 4318, http: {timeout: 2s}}\n      - name: zipkin\n        zipkin: {service: zipkin.example, port: 9411}\n      defaultProviders: {tracing: [grpc]}\n      defaultConfig: {tracing: {sampling: 10}}\n";

    fn telemetry(ns: &str, name: &str, spec: &str) -> String {
        format!("---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}")
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_owned(), app.to_owned())].into()
    }

    fn policy(extra: &str, ns: &str, app: &str) -> Result<TracingPolicy, TracingError> {
        let set = load_str("t.yaml", &format!("{MESH}{extra}")).unwrap();
        tracing_policy(&set, "istio-system", ns, &labels(app))
    }

    #[test]
    fn mesh_defaults_then_namespace_then_workload() {
        let p = policy("", "app", "srv").unwrap();
        let server = p.server.unwrap();
        assert_eq!(
            (
                server.provider.as_str(),
                server.sampling,
                server.collector.http_path
            ),
            ("grpc", 10.0, None)
        );
        assert_eq!(server.collector.timeout_ms, 10_000);

        let extra = [
            telemetry(
                "istio-system",
                "mesh",
                "  tracing:\n  - randomSamplingPercentage: 50\n    customTags: {env: {literal: {value: prod}}, t: {header: {name: X-Tenant}}}\n",
            ),
            telemetry(
                "app",
                "ns",
                "  tracing:\n  - randomSamplingPercentage: 100\n    customTags: {env: {literal: {value: app}}}\n",
            ),
            telemetry(
                "app",
                "srv",
                "  selector: {matchLabels: {app: srv}}\n  tracing:\n  - providers: [{name: http}]\n    match: {mode: SERVER}\n",
            ),
            telemetry(
                "app",
                "quiet",
                "  selector: {matchLabels: {app: quiet}}\n  tracing:\n  - disableSpanReporting: true\n",
            ),
        ]
        .concat();
        let p = policy(&extra, "app", "srv").unwrap();
        let (server, client) = (p.server.unwrap(), p.client.unwrap());
        assert_eq!(
            server.provider, "http",
            "the workload's Telemetry, SERVER only"
        );
        assert_eq!(server.collector.http_path.as_deref(), Some("/v1/traces"));
        assert_eq!(server.collector.timeout_ms, 2_000);
        assert_eq!(client.provider, "grpc");
        assert_eq!((server.sampling, client.sampling), (100.0, 100.0));
        assert_eq!(
            server.custom_tags,
            [
                ("env".to_owned(), TagValue::Literal("app".into())),
                (
                    "t".to_owned(),
                    TagValue::Header {
                        name: "x-tenant".into(),
                        default: None
                    }
                ),
            ]
            .into()
        );
        let p = policy(&extra, "app", "quiet").unwrap();
        assert_eq!((p.server, p.client), (None, None));
        let p = policy(&extra, "other", "x").unwrap();
        assert_eq!(p.server.unwrap().sampling, 50.0, "mesh-wide only");
    }

    #[test]
    fn a_destination_rule_asking_for_tls_to_the_collector_is_named() {
        let p = policy("", "app", "srv").unwrap();
        assert_eq!(p.server.unwrap().collector.tls_rule, None);
        let dr = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: otel-tls, namespace: istio-system}\nspec:\n  host: otel.example\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 4317}\n      tls: {mode: SIMPLE}\n";
        let p = policy(dr, "app", "srv").unwrap();
        let rule = p.server.unwrap().collector.tls_rule.unwrap();
        assert!(
            rule.contains("istio-system/otel-tls")
                && rule.contains("spec.trafficPolicy.portLevelSettings[0].tls"),
            "{rule}"
        );
        // Another port of the host: no TLS asked for.
        let other = dr.replace("number: 4317", "number: 4318");
        let p = policy(&other, "app", "srv").unwrap();
        assert_eq!(p.server.unwrap().collector.tls_rule, None);
        // DISABLE is plain text, as asked.
        let off = dr.replace("mode: SIMPLE", "mode: DISABLE");
        let p = policy(&off, "app", "srv").unwrap();
        assert_eq!(p.server.unwrap().collector.tls_rule, None);
    }

    #[test]
    fn unusable_providers_are_errors_naming_the_field() {
        let err = policy(
            &telemetry("app", "t", "  tracing:\n  - providers: [{name: nope}]\n"),
            "app",
            "srv",
        )
        .unwrap_err();
        assert_eq!(
            (err.object.as_deref(), err.field.as_str()),
            (Some("app/t"), "spec.tracing[0].providers")
        );
        assert!(err.reason.contains("`nope`"), "{}", err.reason);
        let err = policy(
            &telemetry("app", "t", "  tracing:\n  - providers: [{name: zipkin}]\n"),
            "app",
            "srv",
        )
        .unwrap_err();
        assert!(err.reason.contains("OTLP"), "{}", err.reason);
    }

    #[test]
    fn translation_rejects_the_config_once_naming_the_telemetry_and_field() {
        let we = |name: &str, ip: &str| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: app}}\nspec: {{address: {ip}, serviceAccount: {name}, labels: {{app: {name}}}}}\n")
        };
        let yaml = format!(
            "{MESH}{}{}{}",
            we("a", "10.0.0.1"),
            we("b", "10.0.0.2"),
            telemetry("app", "t", "  tracing:\n  - providers: [{name: nope}]\n")
        );
        let set = load_str("t.yaml", &yaml).unwrap();
        let errors = crate::translate(&set).unwrap_err();
        let errors: Vec<_> = errors
            .0
            .iter()
            .filter(|d| d.code == crate::code::INVALID)
            .collect();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].object.as_deref(), Some("Telemetry app/t"));
        assert_eq!(
            errors[0].field.as_deref(),
            Some("spec.tracing[0].providers")
        );
    }

    #[test]
    fn load_names_the_telemetry_fields_not_served() {
        let yaml = format!(
            "{MESH}{}",
            telemetry(
                "istio-system",
                "m",
                "  metrics: [{reportingInterval: 10s, overrides: [{disabled: true}]}]\n  accessLogging: [{disabled: true}]\n  tracing:\n  - providers: [{name: nope}]\n    enableIstioTags: true\n",
            )
        );
        let set = load_str("t.yaml", &yaml).unwrap();
        let warning = set
            .warnings
            .iter()
            .find(|d| d.code == crate::code::KIND_NOT_ENFORCED)
            .unwrap();
        assert!(
            warning
                .message
                .contains("spec.metrics[0].reportingInterval")
                && !warning.message.contains("overrides")
                && !warning.message.contains("spec.accessLogging")
                && warning.message.contains("spec.tracing[0].enableIstioTags")
                && !warning.message.contains("providers"),
            "{}",
            warning.message
        );
    }
}
