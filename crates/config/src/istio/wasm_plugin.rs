//! WasmPlugin (`extensions.istio.io/v1alpha1`; istio/api `extensions/v1alpha1/wasm.proto`): a
//! WebAssembly filter added to the selected proxies. Ward runs no Wasm, so it does not enforce
//! the kind (WARD0102), but checks it field for field, with the rules istiod's validation and the
//! CRD apply (istio/istio `pkg/config/validation/validation.go`, `ValidateWasmPlugin`).

use std::collections::BTreeSet;

use serde::Deserialize;
use ward_policy::spec::{PolicyTargetReference, WorkloadSelector};

use super::attachment::check_attachment;
use super::checks::{max_len, non_empty};
use super::proto::Struct;
use super::{port_number, PortSelector};
use crate::diag::{code, Finding};
use crate::yaml::{push_index, push_key};

/// `spec` of a WasmPlugin.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmPluginSpec {
    /// The workloads the plugin is added to; the whole namespace when absent.
    pub selector: Option<WorkloadSelector>,
    /// One gateway or waypoint attachment (hidden from Istio's docs; `targetRefs` replaces it).
    pub target_ref: Option<PolicyTargetReference>,
    /// Gateway, GatewayClass, Service or ServiceEntry attachments (at most 16).
    pub target_refs: Option<Vec<PolicyTargetReference>>,
    /// Where the module is: `oci://` (the default without a scheme), `file://`, `http(s)://`.
    /// Required.
    pub url: String,
    /// The module's SHA-256, 64 lowercase hex digits.
    pub sha256: Option<String>,
    /// When to pull the module again.
    pub image_pull_policy: Option<PullPolicy>,
    /// The pull secret for an OCI image, in the plugin's namespace.
    pub image_pull_secret: Option<String>,
    /// A public key for signed modules (hidden from Istio's docs, not implemented by Istio).
    pub verification_key: Option<String>,
    /// The plugin's own configuration (`google.protobuf.Struct`): any mapping, not checked.
    pub plugin_config: Option<Struct>,
    /// The plugin's name in the module (formerly `rootID`).
    pub plugin_name: Option<String>,
    /// Where in the filter chain the plugin goes.
    pub phase: Option<PluginPhase>,
    /// Order among the plugins of one phase, highest first.
    pub priority: Option<i32>,
    /// What a fatal plugin error does to requests.
    pub fail_strategy: Option<FailStrategy>,
    /// Settings of the Wasm VM.
    pub vm_config: Option<VmConfig>,
    /// The traffic the plugin sees; all of it when absent.
    #[serde(rename = "match")]
    pub match_: Option<Vec<TrafficSelector>>,
    /// HTTP or network filter.
    #[serde(rename = "type")]
    pub type_: Option<PluginType>,
}

/// `PullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum PullPolicy {
    /// `IfNotPresent`, or `Always` for an OCI image tagged `latest`.
    #[serde(rename = "UNSPECIFIED_POLICY")]
    Unspecified,
    /// Pull only when no version was pulled before.
    #[serde(rename = "IfNotPresent")]
    IfNotPresent,
    /// Pull on every change of the plugin.
    #[serde(rename = "Always")]
    Always,
}

/// `PluginPhase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PluginPhase {
    /// The control plane decides (at the end of the chain, before the router).
    UnspecifiedPhase,
    /// Before Istio's authentication filters.
    Authn,
    /// Before Istio's authorization filters.
    Authz,
    /// Before Istio's stats filters.
    Stats,
}

/// `FailStrategy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailStrategy {
    /// Requests fail with a 5xx.
    FailClose,
    /// The plugin is skipped.
    FailOpen,
    /// A new plugin instance is created for the next request.
    FailReload,
}

/// `PluginType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PluginType {
    /// HTTP.
    UnspecifiedPluginType,
    /// An HTTP filter.
    Http,
    /// A network (TCP) filter.
    Network,
}

/// `VmConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmConfig {
    /// Environment variables of the VM (at most 256, names unique).
    pub env: Option<Vec<EnvVar>>,
}

/// `EnvVar`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    /// The variable's name (required).
    pub name: String,
    /// Where the value comes from; INLINE when absent.
    pub value_from: Option<EnvValueSource>,
    /// The value, for INLINE only.
    pub value: Option<String>,
}

/// `EnvValueSource`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnvValueSource {
    /// `value` (the default).
    #[default]
    Inline,
    /// The proxy's variable of the same name.
    Host,
}

/// `WasmPlugin.TrafficSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSelector {
    /// The traffic direction; CLIENT_AND_SERVER when absent.
    pub mode: Option<WorkloadMode>,
    /// Destination ports; any when absent.
    pub ports: Option<Vec<PortSelector>>,
}

/// istio/api `type/v1beta1/selector.proto` `WorkloadMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    /// Left to the field's user.
    Undefined,
    /// Outbound traffic (and gateways).
    Client,
    /// Inbound traffic.
    Server,
    /// Both.
    ClientAndServer,
}

/// The URL schemes a module may be fetched with (istiod `validateWasmPluginURL`; no scheme is
/// `oci://`).
const URL_SCHEMES: &[&str] = &["", "file", "http", "https", "oci"];
const MAX_ENV: usize = 256;
const MAX_ENV_NAME: usize = 256;
const MAX_ENV_VALUE: usize = 2048;
const MAX_PULL_SECRET: usize = 253;
const MAX_PLUGIN_NAME: usize = 256;

impl WasmPluginSpec {
    /// What istiod and the CRD reject.
    pub(crate) fn validate(&self) -> Vec<Finding> {
        let mut findings = check_attachment(
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            self.target_refs.as_deref(),
        );
        findings.extend(non_empty(&self.url, "spec", "url"));
        if let Err(why) = check_url(&self.url) {
            findings.push(Finding::error(code::INVALID, "spec.url", why));
        }
        if let Some(sha) = self.sha256.as_deref() {
            let hex = sha.len() == 64
                && sha
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !sha.is_empty() && !hex {
                findings.push(Finding::error(
                    code::INVALID,
                    "spec.sha256",
                    "expected 64 lowercase hexadecimal digits",
                ));
            }
        }
        for (value, field, max) in [
            (&self.image_pull_secret, "imagePullSecret", MAX_PULL_SECRET),
            (&self.plugin_name, "pluginName", MAX_PLUGIN_NAME),
        ] {
            if let Some(value) = value {
                findings.extend(non_empty(value, "spec", field));
                findings.extend(max_len(value, max, &push_key("spec", field)));
            }
        }
        if let Some(env) = self.vm_config.as_ref().and_then(|vm| vm.env.as_deref()) {
            findings.extend(check_env(env));
        }
        for (i, selector) in self.match_.iter().flatten().enumerate() {
            findings.extend(selector.validate(&push_index("spec.match", i)));
        }
        findings
    }
}

/// The scheme rule of istiod's `validateWasmPluginURL`: the scheme, as Go's `net/url` reads it
/// (letters, then letters, digits, `+`, `-` or `.`, up to the first `:`), must be one of
/// [`URL_SCHEMES`]. Control characters make the URL unparsable.
fn check_url(url: &str) -> Result<(), String> {
    if url.chars().any(char::is_control) {
        return Err("the url contains a control character".to_owned());
    }
    let scheme = url_scheme(url)?.to_ascii_lowercase();
    if URL_SCHEMES.contains(&scheme.as_str()) {
        Ok(())
    } else {
        Err(format!(
            "unsupported url scheme `{scheme}`: use oci:// (the default without a scheme), \
             file://, http:// or https://"
        ))
    }
}

/// Go `net/url` `getScheme`.
fn url_scheme(url: &str) -> Result<&str, String> {
    for (i, c) in url.char_indices() {
        match c {
            c if c.is_ascii_alphabetic() => {}
            '0'..='9' | '+' | '-' | '.' if i == 0 => return Ok(""),
            '0'..='9' | '+' | '-' | '.' => {}
            ':' if i == 0 => return Err("the url has no scheme before `:`".to_owned()),
            ':' => return Ok(&url[..i]),
            _ => return Ok(""),
        }
    }
    Ok("")
}

fn check_env(env: &[EnvVar]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let path = "spec.vmConfig.env";
    if env.len() > MAX_ENV {
        findings.push(Finding::error(
            code::INVALID,
            path,
            format!("{} variables: at most {MAX_ENV} are allowed", env.len()),
        ));
    }
    let mut names = BTreeSet::new();
    for (i, var) in env.iter().enumerate() {
        let var_path = push_index(path, i);
        findings.extend(non_empty(&var.name, &var_path, "name"));
        findings.extend(max_len(
            &var.name,
            MAX_ENV_NAME,
            &push_key(&var_path, "name"),
        ));
        if !var.name.is_empty() && !names.insert(var.name.as_str()) {
            findings.push(Finding::error(
                code::INVALID,
                push_key(&var_path, "name"),
                format!("variable `{}` is set twice", var.name),
            ));
        }
        if let Some(value) = &var.value {
            if var.value_from.unwrap_or_default() == EnvValueSource::Host {
                findings.push(Finding::error(
                    code::INVALID,
                    push_key(&var_path, "value"),
                    "value may only be set when valueFrom is INLINE",
                ));
            }
            findings.extend(max_len(value, MAX_ENV_VALUE, &push_key(&var_path, "value")));
        }
    }
    findings
}

impl TrafficSelector {
    fn validate(&self, path: &str) -> Vec<Finding> {
        let mut findings = Vec::new();
        let mut seen = BTreeSet::new();
        let ports_path = push_key(path, "ports");
        for (i, port) in self.ports.iter().flatten().enumerate() {
            let port_path = push_index(&ports_path, i);
            match port.number {
                None => findings.push(Finding::error(
                    code::INVALID,
                    port_path,
                    "missing required field `number`",
                )),
                Some(number) if port_number(number).is_none() => findings.push(Finding::error(
                    code::INVALID,
                    push_key(&port_path, "number"),
                    format!("port {number} is out of range 1-65535"),
                )),
                Some(number) if !seen.insert(number) => findings.push(Finding::error(
                    code::INVALID,
                    push_key(&port_path, "number"),
                    format!("port {number} is listed twice"),
                )),
                Some(_) => {}
            }
        }
        findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_schemes_read_like_go() {
        for ok in [
            "oci://ghcr.io/istio/plugin:1.0",
            "ghcr.io/istio/plugin:1.0",
            "file:///opt/filters/plugin.wasm",
            "HTTPS://example.com/plugin.wasm",
            "/opt/plugin.wasm",
            "1.2.3.4:5000/plugin",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "ftp://example.com/plugin.wasm",
            "localhost:5000/plugin",
            ":plugin",
            "oci://x\n",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
