//! Which of Istio's standard metrics a proxy records, and without which labels: the `metrics`
//! part of the Telemetry resources that apply to the workload (`overrides` with `disabled` and
//! `tagOverrides` REMOVE), merged in Istio's order (the levels of `crate::tracing_policy`), each
//! level's overrides applied in the order written. Pure. docs/metrics.md, "Telemetry overrides".
//!
//! `match.mode` CLIENT is what the workload reports as the source (`reporter="source"`, its
//! outbound side), SERVER as the destination (`reporter="destination"`). A removed label is
//! written with an empty value, which Prometheus treats as no label at all
//! (https://prometheus.io/docs/concepts/data_model/: "Labels with an empty label value are
//! considered equivalent to labels that do not exist"), so the series that differed only by it
//! become one, as with Istio.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::istio::{IstioMetric, TelemetrySpec, TelemetryWorkloadMode};
use crate::load::ConfigSet;

/// Istio's standard metrics, by their `MetricSelector.IstioMetric` names.
pub const STANDARD_METRICS: [&str; 10] = [
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
];

/// The labels of Istio's standard metrics that Ward writes, which `tagOverrides` may remove.
pub const STANDARD_TAGS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "response_flags",
    "grpc_response_status",
    "connection_security_policy",
];

/// The metrics of one proxy, per reporter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsPolicy {
    /// What the workload reports as the destination (SERVER).
    #[serde(default)]
    pub server: MetricRules,
    /// What it reports as the source (CLIENT).
    #[serde(default)]
    pub client: MetricRules,
}

/// The overrides of one reporter, by standard metric name; a metric not listed is recorded
/// with every label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricRules {
    /// By [`STANDARD_METRICS`] name.
    #[serde(default)]
    pub metrics: BTreeMap<String, MetricOverride>,
}

/// One metric's override.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricOverride {
    /// Not recorded at all.
    #[serde(default)]
    pub disabled: bool,
    /// Labels written empty (absent for Prometheus).
    #[serde(default)]
    pub removed_tags: BTreeSet<String>,
}

impl MetricRules {
    /// The override of `metric` (a [`STANDARD_METRICS`] name), if any.
    pub fn get(&self, metric: &str) -> Option<&MetricOverride> {
        self.metrics.get(metric)
    }

    /// Whether `metric` is recorded.
    pub fn records(&self, metric: &str) -> bool {
        self.get(metric).is_none_or(|o| !o.disabled)
    }
}

/// The standard metric names an `IstioMetric` selects.
fn selected(metric: Option<IstioMetric>) -> &'static [&'static str] {
    let i = match metric {
        None | Some(IstioMetric::AllMetrics) => return &STANDARD_METRICS,
        Some(IstioMetric::RequestCount) => 0,
        Some(IstioMetric::RequestDuration) => 1,
        Some(IstioMetric::RequestSize) => 2,
        Some(IstioMetric::ResponseSize) => 3,
        Some(IstioMetric::TcpOpenedConnections) => 4,
        Some(IstioMetric::TcpClosedConnections) => 5,
        Some(IstioMetric::TcpSentBytes) => 6,
        Some(IstioMetric::TcpReceivedBytes) => 7,
        Some(IstioMetric::GrpcRequestMessages) => 8,
        Some(IstioMetric::GrpcResponseMessages) => 9,
    };
    &STANDARD_METRICS[i..=i]
}

/// The metrics policy of a workload of `namespace` with `labels`.
pub fn metrics_policy(
    set: &ConfigSet,
    root: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> MetricsPolicy {
    let mut policy = MetricsPolicy::default();
    for t in crate::tracing_policy::applicable(set, root, namespace, labels) {
        for m in t.spec.metrics.iter().flatten() {
            for o in m.overrides.iter().flatten() {
                let selector = o.match_.as_ref();
                if selector.is_some_and(|s| s.custom_metric.is_some()) {
                    continue;
                }
                let mode = selector
                    .and_then(|s| s.mode)
                    .unwrap_or(TelemetryWorkloadMode::ClientAndServer);
                let (to_server, to_client) = crate::tracing_policy::sides(mode);
                for (rule, on) in [
                    (&mut policy.server, to_server),
                    (&mut policy.client, to_client),
                ] {
                    if !on {
                        continue;
                    }
                    for name in selected(selector.and_then(|s| s.metric)) {
                        let entry = rule.metrics.entry((*name).to_owned()).or_default();
                        if let Some(d) = o.disabled {
                            entry.disabled = d;
                        }
                        for (tag, change) in o.tag_overrides.iter().flatten() {
                            if change.operation == Some(crate::istio::TagOperation::Remove) {
                                entry.removed_tags.insert(tag.clone());
                            }
                        }
                    }
                }
            }
        }
    }
    policy
}

/// The `metrics` fields Ward does not serve, as `spec.…` paths, for WARD0102: providers,
/// `reportingInterval`, custom metrics, tag UPSERTs (CEL values), and the removal of a label
/// Ward does not write.
pub fn unserved_metrics_fields(spec: &TelemetrySpec) -> Vec<String> {
    let mut out = Vec::new();
    for (i, m) in spec.metrics.iter().flatten().enumerate() {
        let at = |f: &str| format!("spec.metrics[{i}].{f}");
        if m.providers.is_some() {
            out.push(at("providers"));
        }
        if m.reporting_interval.is_some() {
            out.push(at("reportingInterval"));
        }
        for (j, o) in m.overrides.iter().flatten().enumerate() {
            if o.match_.as_ref().is_some_and(|s| s.custom_metric.is_some()) {
                out.push(at(&format!("overrides[{j}].match.customMetric")));
            }
            for (tag, change) in o.tag_overrides.iter().flatten() {
                let remove = change.operation == Some(crate::istio::TagOperation::Remove);
                if !remove || !STANDARD_TAGS.contains(&tag.as_str()) {
                    out.push(at(&format!("overrides[{j}].tagOverrides.{tag}")));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_merge_by_level_metric_and_mode() {
        let yaml = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh, namespace: istio-system}\nspec:\n  metrics:\n  - overrides:\n    - match: {metric: ALL_METRICS}\n      tagOverrides: {destination_principal: {operation: REMOVE}}\n    - match: {metric: REQUEST_SIZE}\n      disabled: true\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: srv, namespace: app}\nspec:\n  selector: {matchLabels: {app: srv}}\n  metrics:\n  - overrides:\n    - match: {metric: REQUEST_SIZE, mode: SERVER}\n      disabled: false\n    - match: {metric: REQUEST_COUNT, mode: CLIENT}\n      disabled: true\n      tagOverrides: {request_protocol: {operation: UPSERT, value: \"'x'\"}}\n";
        let set = crate::load::load_str("t.yaml", yaml).unwrap();
        let labels = |app: &str| [("app".to_owned(), app.to_owned())].into();
        let p = metrics_policy(&set, "istio-system", "app", &labels("srv"));
        assert!(p.server.records("REQUEST_SIZE"), "the workload level wins");
        assert!(!p.client.records("REQUEST_SIZE"), "for SERVER only");
        assert!(!p.client.records("REQUEST_COUNT") && p.server.records("REQUEST_COUNT"));
        assert!(p
            .server
            .get("TCP_SENT_BYTES")
            .unwrap()
            .removed_tags
            .contains("destination_principal"));
        let p = metrics_policy(&set, "istio-system", "other", &labels("srv"));
        assert!(!p.server.records("REQUEST_SIZE") && p.client.records("REQUEST_COUNT"));
        let spec = &set.telemetries[1].spec;
        assert_eq!(
            unserved_metrics_fields(spec),
            vec!["spec.metrics[0].overrides[1].tagOverrides.request_protocol".to_owned()]
        );
    }
}
