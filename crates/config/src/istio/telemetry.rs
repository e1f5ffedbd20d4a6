//! Telemetry (`telemetry.istio.io/v1` and `v1alpha1`, one schema; istio/api
//! `telemetry/v1alpha1/telemetry.proto`): tracing, metrics and access logging of the selected
//! workloads. Ward serves `tracing` (`crate::tracing_policy`) and `accessLogging`
//! (`crate::access_log_policy`); the rest is reported (WARD0102) and checked field for field,
//! with the rules
//! istiod's validation and the CRD apply (istio/istio `pkg/config/validation/validation.go`,
//! `ValidateTelemetry`).

use std::collections::BTreeMap;

use serde::Deserialize;
use ward_policy::spec::{PolicyTargetReference, WorkloadSelector};

use super::attachment::check_attachment;
use super::checks::non_empty;
use super::proto::Duration;
use crate::diag::{code, Finding};
use crate::yaml::{push_index, push_key};

/// `spec` of a Telemetry.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    /// The workloads configured; the whole namespace when absent.
    pub selector: Option<WorkloadSelector>,
    /// One gateway or waypoint attachment (hidden from Istio's docs; `targetRefs` replaces it).
    pub target_ref: Option<PolicyTargetReference>,
    /// Gateway, GatewayClass, Service or ServiceEntry attachments (at most 16).
    pub target_refs: Option<Vec<PolicyTargetReference>>,
    /// Tracing behavior.
    pub tracing: Option<Vec<Tracing>>,
    /// Metrics behavior.
    pub metrics: Option<Vec<Metrics>>,
    /// Access logging behavior.
    pub access_logging: Option<Vec<AccessLogging>>,
}

/// Traffic direction relative to the workload (Telemetry's `WorkloadMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TelemetryWorkloadMode {
    /// Both directions (the default).
    ClientAndServer,
    /// Outbound traffic: the workload is the client.
    Client,
    /// Inbound traffic: the workload is the server.
    Server,
}

/// A telemetry provider of MeshConfig `extensionProviders`, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    /// The provider's name (required).
    pub name: String,
}

/// Tracing configuration (`Tracing`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// Which traffic direction it applies to.
    #[serde(rename = "match")]
    pub match_: Option<TracingSelector>,
    /// Span reporting providers; the mesh default when absent.
    pub providers: Option<Vec<ProviderRef>>,
    /// Percentage of traffic sampled when no decision was made upstream, 0 to 100.
    pub random_sampling_percentage: Option<f64>,
    /// No span is reported when true.
    pub disable_span_reporting: Option<bool>,
    /// Tags added to spans, by tag name.
    pub custom_tags: Option<BTreeMap<String, CustomTag>>,
    /// Whether Envoy samples by the request ID (hidden from Istio's docs).
    pub use_request_id_for_trace_sampling: Option<bool>,
    /// Whether spans carry Istio's own tags.
    pub enable_istio_tags: Option<bool>,
    /// Trace context headers are not forwarded when true.
    pub disable_context_propagation: Option<bool>,
}

/// `Tracing.TracingSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSelector {
    /// The traffic direction.
    pub mode: Option<TelemetryWorkloadMode>,
}

/// `Tracing.CustomTag`: a oneof, at most one member set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTag {
    /// A fixed value.
    pub literal: Option<CustomTagLiteral>,
    /// The value of an environment variable of the proxy.
    pub environment: Option<CustomTagEnvironment>,
    /// The value of a request header.
    pub header: Option<CustomTagHeader>,
    /// An access-log formatter value, e.g. `%REQUESTED_SERVER_NAME%`.
    pub formatter: Option<CustomTagFormatter>,
}

/// `Tracing.Literal`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTagLiteral {
    /// The tag value (required).
    pub value: String,
}

/// `Tracing.Environment`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTagEnvironment {
    /// The environment variable (required).
    pub name: String,
    /// The value when the variable is not set.
    pub default_value: Option<String>,
}

/// `Tracing.RequestHeader`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTagHeader {
    /// The header (required).
    pub name: String,
    /// The value when the header is absent.
    pub default_value: Option<String>,
}

/// `Tracing.Formatter`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTagFormatter {
    /// The formatter expression (required).
    pub value: String,
}

/// Metrics configuration (`Metrics`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    /// Metrics providers; the mesh default when absent.
    pub providers: Option<Vec<ProviderRef>>,
    /// Overrides, applied in order.
    pub overrides: Option<Vec<MetricsOverrides>>,
    /// Time between reports of TCP metrics, at least 1ms; 5s when absent.
    pub reporting_interval: Option<Duration>,
}

/// `MetricsOverrides`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverrides {
    /// The metrics and direction overridden; all of them when absent.
    #[serde(rename = "match")]
    pub match_: Option<MetricSelector>,
    /// Turns the selected metrics off when true.
    pub disabled: Option<bool>,
    /// Tag (dimension) changes, by tag name.
    pub tag_overrides: Option<BTreeMap<String, TagOverride>>,
}

/// `MetricSelector`: `metric` and `customMetric` are a oneof.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    /// One of Istio's standard metrics.
    pub metric: Option<IstioMetric>,
    /// Any other metric, by name.
    pub custom_metric: Option<String>,
    /// The traffic direction.
    pub mode: Option<TelemetryWorkloadMode>,
}

/// `MetricSelector.IstioMetric`: Istio's standard metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IstioMetric {
    /// Every standard metric.
    AllMetrics,
    /// `istio_requests_total`.
    RequestCount,
    /// `istio_request_duration_milliseconds`.
    RequestDuration,
    /// `istio_request_bytes`.
    RequestSize,
    /// `istio_response_bytes`.
    ResponseSize,
    /// `istio_tcp_connections_opened_total`.
    TcpOpenedConnections,
    /// `istio_tcp_connections_closed_total`.
    TcpClosedConnections,
    /// `istio_tcp_sent_bytes_total`.
    TcpSentBytes,
    /// `istio_tcp_received_bytes_total`.
    TcpReceivedBytes,
    /// `istio_request_messages_total`.
    GrpcRequestMessages,
    /// `istio_response_messages_total`.
    GrpcResponseMessages,
}

/// `MetricsOverrides.TagOverride`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverride {
    /// Add or change the tag (the default), or remove it.
    pub operation: Option<TagOperation>,
    /// A CEL expression for the tag's value; required for UPSERT, not allowed for REMOVE.
    pub value: Option<String>,
}

/// `MetricsOverrides.TagOverride.Operation`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagOperation {
    /// Insert or update the tag (the default).
    #[default]
    Upsert,
    /// Leave the tag out.
    Remove,
}

/// Access logging configuration (`AccessLogging`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    /// Which traffic direction it applies to.
    #[serde(rename = "match")]
    pub match_: Option<LogSelector>,
    /// Logging providers; the mesh default when absent.
    pub providers: Option<Vec<ProviderRef>>,
    /// No access log when true.
    pub disabled: Option<bool>,
    /// Which requests or connections are logged.
    pub filter: Option<AccessLogFilter>,
}

/// `AccessLogging.LogSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogSelector {
    /// The traffic direction.
    pub mode: Option<TelemetryWorkloadMode>,
}

/// `AccessLogging.Filter`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogFilter {
    /// A CEL expression over request and connection attributes; Ward evaluates the subset
    /// `crate::access_log_policy` describes.
    pub expression: Option<String>,
}

impl TelemetrySpec {
    /// What istiod and the CRD reject.
    pub(crate) fn validate(&self) -> Vec<Finding> {
        let mut findings = check_attachment(
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            self.target_refs.as_deref(),
        );
        for (i, tracing) in self.tracing.iter().flatten().enumerate() {
            findings.extend(tracing.validate(&push_index("spec.tracing", i)));
        }
        for (i, metrics) in self.metrics.iter().flatten().enumerate() {
            findings.extend(metrics.validate(&push_index("spec.metrics", i)));
        }
        for (i, logging) in self.access_logging.iter().flatten().enumerate() {
            let path = push_index("spec.accessLogging", i);
            findings.extend(check_providers(logging.providers.as_deref(), &path));
            if let Some(text) = logging.filter.as_ref().and_then(|f| f.expression.as_ref()) {
                if let Err(why) = crate::access_log_policy::parse(text) {
                    findings.push(Finding::error(
                        code::INVALID,
                        push_key(&push_key(&path, "filter"), "expression"),
                        format!("cannot evaluate `{text}`: {why}"),
                    ));
                }
            }
        }
        findings
    }
}

/// istiod: "providers.name may not be empty".
fn check_providers(providers: Option<&[ProviderRef]>, path: &str) -> Vec<Finding> {
    let providers_path = push_key(path, "providers");
    providers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| non_empty(&p.name, &push_index(&providers_path, i), "name"))
        .collect()
}

impl Tracing {
    fn validate(&self, path: &str) -> Vec<Finding> {
        let mut findings = check_providers(self.providers.as_deref(), path);
        if let Some(percentage) = self.random_sampling_percentage {
            if !(0.0..=100.0).contains(&percentage) {
                findings.push(Finding::error(
                    code::INVALID,
                    push_key(path, "randomSamplingPercentage"),
                    format!("{percentage} is not a percentage: use 0 to 100"),
                ));
            }
        }
        let tags_path = push_key(path, "customTags");
        for (name, tag) in self.custom_tags.iter().flatten() {
            let tag_path = push_key(&tags_path, name);
            if name.is_empty() {
                findings.push(Finding::error(
                    code::INVALID,
                    tags_path.clone(),
                    "a custom tag's name must not be empty",
                ));
            }
            findings.extend(tag.validate(&tag_path));
        }
        findings
    }
}

impl CustomTag {
    fn validate(&self, path: &str) -> Vec<Finding> {
        let mut findings = Vec::new();
        let set = [
            self.literal.is_some(),
            self.environment.is_some(),
            self.header.is_some(),
            self.formatter.is_some(),
        ];
        if set.iter().filter(|on| **on).count() > 1 {
            findings.push(Finding::error(
                code::INVALID,
                path,
                "only one of literal, environment, header and formatter can be set",
            ));
        }
        let required = [
            self.literal
                .as_ref()
                .map(|t| (t.value.as_str(), "literal", "value")),
            self.environment
                .as_ref()
                .map(|t| (t.name.as_str(), "environment", "name")),
            self.header
                .as_ref()
                .map(|t| (t.name.as_str(), "header", "name")),
            self.formatter
                .as_ref()
                .map(|t| (t.value.as_str(), "formatter", "value")),
        ];
        for (value, member, field) in required.into_iter().flatten() {
            findings.extend(non_empty(value, &push_key(path, member), field));
        }
        findings
    }
}

/// The CRD's minimum `reportingInterval` (`duration(self) >= duration('1ms')`).
const MIN_REPORTING_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

impl Metrics {
    fn validate(&self, path: &str) -> Vec<Finding> {
        let mut findings = check_providers(self.providers.as_deref(), path);
        if let Some(interval) = self.reporting_interval {
            if interval.0 < MIN_REPORTING_INTERVAL {
                findings.push(Finding::error(
                    code::INVALID,
                    push_key(path, "reportingInterval"),
                    "the reporting interval must be at least 1ms",
                ));
            }
        }
        for (i, o) in self.overrides.iter().flatten().enumerate() {
            findings.extend(o.validate(&push_index(&push_key(path, "overrides"), i)));
        }
        findings
    }
}

impl MetricsOverrides {
    fn validate(&self, path: &str) -> Vec<Finding> {
        let mut findings = Vec::new();
        if let Some(selector) = &self.match_ {
            let match_path = push_key(path, "match");
            if selector.metric.is_some() && selector.custom_metric.is_some() {
                findings.push(Finding::error(
                    code::INVALID,
                    match_path.clone(),
                    "only one of metric and customMetric can be set",
                ));
            }
            if let Some(custom) = &selector.custom_metric {
                findings.extend(non_empty(custom, &match_path, "customMetric"));
            }
        }
        let tags_path = push_key(path, "tagOverrides");
        for (name, tag) in self.tag_overrides.iter().flatten() {
            let tag_path = push_key(&tags_path, name);
            // istiod: an UPSERT (the default operation) needs a value; the CRD: a REMOVE has none.
            match (tag.operation.unwrap_or_default(), tag.value.as_deref()) {
                (TagOperation::Upsert, None | Some("")) => findings.push(Finding::error(
                    code::INVALID,
                    tag_path,
                    "value must be set when operation is UPSERT (the default)",
                )),
                (TagOperation::Remove, Some(_)) => findings.push(Finding::error(
                    code::INVALID,
                    push_key(&tag_path, "value"),
                    "value must not be set when operation is REMOVE",
                )),
                _ => {}
            }
        }
        findings
    }
}
