//! WorkloadGroup (istio/api `networking/v1alpha3/workload_group.proto`; v1 and v1beta1 share
//! the schema): the template from which Istio creates a WorkloadEntry for each VM that joins,
//! and the readiness probe it runs. Ward accepts it without enforcing it (WARD0102): Ward's
//! workloads are WorkloadEntries written by hand. The spec is decoded field for field and
//! checked with the rules of Istio's validation (istio/istio `pkg/config/validation`,
//! `ValidateWorkloadGroup`) and of its CRD schema that are cheap to apply.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::checks::{self, at, invalid};
use super::WorkloadEntrySpec;
use crate::diag::Finding;
use crate::meta::check_labels;
use crate::yaml::{push_index, push_key};

/// `spec` of a WorkloadGroup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadGroupSpec {
    /// Labels and annotations of the WorkloadEntries created from the template.
    pub metadata: Option<WorkloadGroupMetadata>,
    /// The WorkloadEntry each joining VM gets (required); `address` is filled in per VM.
    pub template: Option<WorkloadEntrySpec>,
    /// The readiness probe run on each VM.
    pub probe: Option<ReadinessProbe>,
}

/// `WorkloadGroup.ObjectMeta`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadGroupMetadata {
    /// Labels of the created WorkloadEntries.
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations of the created WorkloadEntries.
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A readiness probe. `httpGet`, `tcpSocket`, `exec` and `grpc` are a oneof.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadinessProbe {
    /// Seconds before the first probe.
    pub initial_delay_seconds: Option<i32>,
    /// Seconds before a probe times out.
    pub timeout_seconds: Option<i32>,
    /// Seconds between probes.
    pub period_seconds: Option<i32>,
    /// Successes that make the workload ready.
    pub success_threshold: Option<i32>,
    /// Failures that make it not ready.
    pub failure_threshold: Option<i32>,
    /// An HTTP GET.
    pub http_get: Option<HttpHealthCheckConfig>,
    /// A TCP connection.
    pub tcp_socket: Option<TcpHealthCheckConfig>,
    /// A command on the VM.
    pub exec: Option<ExecHealthCheckConfig>,
    /// A gRPC health check.
    pub grpc: Option<GrpcHealthCheckConfig>,
}

/// `HTTPHealthCheckConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHealthCheckConfig {
    /// The path.
    pub path: Option<String>,
    /// The port (required).
    pub port: Option<u32>,
    /// The host; the VM's address when absent.
    pub host: Option<String>,
    /// `HTTP` (the default) or `HTTPS`.
    pub scheme: Option<String>,
    /// Extra request headers.
    pub http_headers: Option<Vec<HttpHeader>>,
}

/// `HTTPHeader`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader {
    /// The header's name.
    pub name: Option<String>,
    /// Its value.
    pub value: Option<String>,
}

/// `TCPHealthCheckConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpHealthCheckConfig {
    /// The host; the VM's address when absent.
    pub host: Option<String>,
    /// The port (required).
    pub port: Option<u32>,
}

/// `ExecHealthCheckConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecHealthCheckConfig {
    /// The command and its arguments (required); exit status 0 is healthy.
    pub command: Option<Vec<String>>,
}

/// `GrpcHealthCheckConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcHealthCheckConfig {
    /// The port.
    pub port: Option<u32>,
    /// The service name for the gRPC health protocol.
    pub service: Option<String>,
}

impl WorkloadGroupSpec {
    /// Problems Istio's validation or CRD schema would reject.
    pub(crate) fn validate(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        if let Some(labels) = self.metadata.as_ref().and_then(|m| m.labels.as_ref()) {
            out.extend(check_labels(labels, "spec.metadata.labels"));
        }
        match &self.template {
            None => invalid(&mut out, "spec", "missing required field `template`"),
            Some(template) => validate_template(template, "spec.template", &mut out),
        }
        if let Some(probe) = &self.probe {
            probe.validate("spec.probe", &mut out);
        }
        out
    }
}

/// The template is a WorkloadEntry whose `address` is filled in per VM, so Istio does not
/// validate it as one; its CRD schema still checks the labels and ports.
fn validate_template(template: &WorkloadEntrySpec, path: &str, out: &mut Vec<Finding>) {
    if let Some(labels) = &template.labels {
        out.extend(check_labels(labels, &at(path, "labels")));
    }
    for (name, port) in template.ports.iter().flatten() {
        checks::port(out, &push_key(&at(path, "ports"), name), *port);
    }
}

impl ReadinessProbe {
    /// istio/istio validateReadinessProbe.
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        for (field, value) in [
            ("initialDelaySeconds", self.initial_delay_seconds),
            ("timeoutSeconds", self.timeout_seconds),
            ("periodSeconds", self.period_seconds),
            ("successThreshold", self.success_threshold),
            ("failureThreshold", self.failure_threshold),
        ] {
            checks::non_negative(out, &at(path, field), value);
        }
        let methods = [
            ("httpGet", self.http_get.is_some()),
            ("tcpSocket", self.tcp_socket.is_some()),
            ("exec", self.exec.is_some()),
            ("grpc", self.grpc.is_some()),
        ];
        if methods.iter().all(|(_, set)| !set) {
            invalid(
                out,
                path,
                "a probe needs `httpGet`, `tcpSocket`, `exec` or `grpc`",
            );
        }
        checks::one_of(out, path, &methods);
        if let Some(http) = &self.http_get {
            let http_path = at(path, "httpGet");
            checks::port(out, &at(&http_path, "port"), http.port.unwrap_or(0));
            if let Some(scheme) = http.scheme.as_deref().filter(|s| !s.is_empty()) {
                if scheme != "HTTP" && scheme != "HTTPS" {
                    invalid(
                        out,
                        &at(&http_path, "scheme"),
                        format!("`{scheme}` is not `HTTP` or `HTTPS`"),
                    );
                }
            }
            for (i, header) in http.http_headers.iter().flatten().enumerate() {
                let header_path = push_index(&at(&http_path, "httpHeaders"), i);
                checks::require_text(out, &header_path, "name", header.name.as_deref());
            }
        }
        if let Some(tcp) = &self.tcp_socket {
            checks::port(
                out,
                &at(&at(path, "tcpSocket"), "port"),
                tcp.port.unwrap_or(0),
            );
        }
        if let Some(exec) = &self.exec {
            checks::require_items(out, &at(path, "exec"), "command", exec.command.as_deref());
        }
        if let Some(grpc) = &self.grpc {
            checks::port_if_set(out, &at(&at(path, "grpc"), "port"), grpc.port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::findings_of;
    use super::*;
    use crate::diag::code;

    #[test]
    fn workload_group_validation() {
        let cases: Vec<(&str, Vec<&str>)> = vec![
            ("template: {serviceAccount: vm}\n", vec![]),
            ("metadata: {labels: {app: vm}}\n", vec!["spec"]),
            (
                "metadata: {labels: {\"-bad\": x}}\ntemplate: {ports: {http: 0}, labels: {version: \"v 1\"}}\n",
                vec!["spec.metadata.labels[\"-bad\"]", "spec.template.ports.http", "spec.template.labels.version"],
            ),
            ("template: {}\nprobe: {periodSeconds: 5}\n", vec!["spec.probe"]),
            (
                "template: {}\nprobe:\n  timeoutSeconds: -1\n  httpGet: {port: 70000, scheme: ftp, httpHeaders: [{value: x}]}\n  tcpSocket: {}\n  exec: {command: []}\n  grpc: {port: 99999}\n",
                vec![
                    "spec.probe",
                    "spec.probe.timeoutSeconds",
                    "spec.probe.httpGet.port",
                    "spec.probe.httpGet.scheme",
                    "spec.probe.httpGet.httpHeaders[0]",
                    "spec.probe.tcpSocket.port",
                    "spec.probe.exec",
                    "spec.probe.grpc.port",
                ],
            ),
        ];
        for (yaml, want) in cases {
            let got = findings_of(yaml, WorkloadGroupSpec::validate);
            let mut got: Vec<String> = got
                .into_iter()
                .inspect(|(_, c)| assert_eq!(*c, code::INVALID, "{yaml}"))
                .map(|(f, _)| f)
                .collect();
            got.sort();
            let mut want: Vec<String> = want.into_iter().map(str::to_owned).collect();
            want.sort();
            assert_eq!(got, want, "{yaml}");
        }
    }
}
