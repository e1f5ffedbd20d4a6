//! What the control plane writes to the API server besides Events: the mesh root as each
//! webhook configuration's `caBundle` (the webhooks' serving certificate comes from the mesh
//! CA), and the mesh root in every namespace as Istio's ConfigMap `istio-ca-root-cert`, which
//! injected sidecars mount. Both are idempotent: a write happens only when the value differs.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::install::{INJECTOR, MANAGED_BY, VALIDATOR};
use crate::webhook::{ROOT_CONFIG_MAP, ROOT_KEY};

/// The field manager of Ward's writes.
const MANAGER: &str = "ward-control-plane";

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct PublishError {
    /// What was being written.
    pub what: String,
    /// What the API server said.
    pub source: kube::Error,
}

/// Sets `ca_bundle` (PEM) on every webhook of Ward's two webhook configurations; returns how
/// many webhooks changed. A configuration that does not exist is skipped (not installed, or
/// installed under other names).
pub async fn set_ca_bundle(client: &Client, ca_bundle: &str) -> Result<usize, PublishError> {
    let want = ByteString(ca_bundle.as_bytes().to_vec());
    let mut changed = 0;
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(mut config) = get_opt(&validating, VALIDATOR).await? {
        let mut n = 0;
        for hook in config.webhooks.iter_mut().flatten() {
            if hook.client_config.ca_bundle.as_ref() != Some(&want) {
                hook.client_config.ca_bundle = Some(want.clone());
                n += 1;
            }
        }
        if n > 0 {
            validating
                .replace(VALIDATOR, &PostParams::default(), &config)
                .await
                .map_err(|source| PublishError {
                    what: format!("ValidatingWebhookConfiguration {VALIDATOR}"),
                    source,
                })?;
            changed += n;
        }
    }
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(mut config) = get_opt(&mutating, INJECTOR).await? {
        let mut n = 0;
        for hook in config.webhooks.iter_mut().flatten() {
            if hook.client_config.ca_bundle.as_ref() != Some(&want) {
                hook.client_config.ca_bundle = Some(want.clone());
                n += 1;
            }
        }
        if n > 0 {
            mutating
                .replace(INJECTOR, &PostParams::default(), &config)
                .await
                .map_err(|source| PublishError {
                    what: format!("MutatingWebhookConfiguration {INJECTOR}"),
                    source,
                })?;
            changed += n;
        }
    }
    Ok(changed)
}

async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>, PublishError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.map_err(|source| PublishError {
        what: format!("reading {name}"),
        source,
    })
}

/// Writes the mesh root (PEM) into `istio-ca-root-cert` in `namespace` (server-side apply,
/// so only Ward's fields are Ward's), unless it holds it already.
pub async fn publish_root(
    client: &Client,
    namespace: &str,
    root_pem: &str,
) -> Result<bool, PublishError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let what = || format!("ConfigMap {namespace}/{ROOT_CONFIG_MAP}");
    let current = api
        .get_opt(ROOT_CONFIG_MAP)
        .await
        .map_err(|source| PublishError {
            what: what(),
            source,
        })?;
    let holds = current
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(ROOT_KEY))
        .is_some_and(|v| v == root_pem);
    if holds {
        return Ok(false);
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ROOT_CONFIG_MAP, "namespace": namespace,
                     "labels": {(MANAGED_BY.0): MANAGED_BY.1}},
        "data": {ROOT_KEY: root_pem},
    });
    api.patch(
        ROOT_CONFIG_MAP,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| PublishError {
        what: what(),
        source,
    })?;
    Ok(true)
}

/// The CRDs the cluster has, by name, with whether Ward installed them (its label): `ward
/// install` leaves out the ones someone else installed (Istio's own), so both coexist.
pub async fn installed_crds(
    client: &Client,
) -> Result<std::collections::BTreeMap<String, bool>, PublishError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let list = api
        .list_metadata(&kube::api::ListParams::default())
        .await
        .map_err(|source| PublishError {
            what: "listing CustomResourceDefinitions".into(),
            source,
        })?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|c| {
            let ours = c
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY.0))
                .is_some_and(|v| v == MANAGED_BY.1);
            Some((c.metadata.name?, ours))
        })
        .collect())
}

/// The namespaces holding a root ConfigMap Ward wrote (for `ward uninstall`).
pub async fn root_config_maps(client: &Client) -> Result<Vec<String>, PublishError> {
    let api: Api<ConfigMap> = Api::all(client.clone());
    let params = kube::api::ListParams::default()
        .labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1))
        .fields(&format!("metadata.name={ROOT_CONFIG_MAP}"));
    let list = api
        .list_metadata(&params)
        .await
        .map_err(|source| PublishError {
            what: "listing ConfigMaps".into(),
            source,
        })?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|c| c.metadata.namespace)
        .collect())
}
