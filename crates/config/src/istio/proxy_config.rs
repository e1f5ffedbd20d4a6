//! ProxyConfig (`networking.istio.io/v1beta1`; istio/api `networking/v1beta1/proxy_config.proto`):
//! settings of the selected Envoy proxies. Ward's proxy is not Envoy, so the kind is not enforced
//! (WARD0102), but it is checked field for field, with the rules istiod's validation and the CRD
//! apply (istio/istio `pkg/config/validation/validation.go`, `ValidateProxyConfig`).

use std::collections::BTreeMap;

use serde::Deserialize;
use ward_policy::spec::WorkloadSelector;

use super::attachment::check_attachment;
use super::checks::max_len;
use crate::diag::{code, Finding};
use crate::yaml::push_key;

/// `spec` of a ProxyConfig. (Named so to stay apart from the per-proxy
/// [`ProxyConfig`](crate::ProxyConfig) Ward builds.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfigSpec {
    /// The workloads configured; the whole namespace when absent.
    pub selector: Option<WorkloadSelector>,
    /// Worker threads: 0 for every core; from the CPU limit when absent.
    pub concurrency: Option<i32>,
    /// Extra environment variables of the proxy.
    pub environment_variables: Option<BTreeMap<String, String>>,
    /// The proxy image.
    pub image: Option<ProxyImage>,
}

/// `ProxyImage`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyImage {
    /// `default`, `debug`, `distroless`, or another type published to the hub.
    pub image_type: Option<String>,
}

/// The CRD's `MaxLength` of an environment variable's value.
const MAX_ENV_VALUE: usize = 2048;

impl ProxyConfigSpec {
    /// What istiod and the CRD reject.
    pub(crate) fn validate(&self) -> Vec<Finding> {
        let mut findings = check_attachment(self.selector.as_ref(), None, None);
        if let Some(concurrency) = self.concurrency.filter(|c| *c < 0) {
            findings.push(Finding::error(
                code::INVALID,
                "spec.concurrency",
                format!("concurrency {concurrency} is negative: use 0 (every core) or more"),
            ));
        }
        for (name, value) in self.environment_variables.iter().flatten() {
            let path = push_key("spec.environmentVariables", name);
            findings.extend(max_len(value, MAX_ENV_VALUE, &path));
        }
        findings
    }
}
