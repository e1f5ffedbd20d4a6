//! The watches: one kube-runtime reflector per kind, each a local cache of the API server's
//! objects kept current by a watch, relisted (with backoff) after errors, API server loss or an
//! expired resource version (410 Gone). [`Cluster::objects`] reads every cache at one moment.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, PodSpec, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{store::Writer, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;

use crate::translate::{Objects, LAST_APPLIED};

/// The Istio API groups whose kinds Ward reads.
pub const ISTIO_GROUPS: [&str; 3] = [
    "security.istio.io",
    "networking.istio.io",
    "telemetry.istio.io",
];

/// The mesh ConfigMap's name (istiod's `istio`, key `mesh`).
const MESH_CONFIG_MAP: &str = "istio";

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No kubeconfig could be loaded, or no client built from it.
    #[error("kubeconfig: {0}")]
    Config(String),
    /// The API server could not be reached for discovery.
    #[error("API server discovery of {group}: {source}")]
    Discovery {
        /// The API group.
        group: String,
        /// What the client said.
        source: kube::Error,
    },
}

/// A kind's cache, type-erased to what rendering needs.
trait Cache: Send + Sync {
    /// Whether the first list has completed.
    fn is_synced(&self) -> bool;
    /// Adds the cached objects to `out`.
    fn collect(&self, out: &mut Objects);
    /// What the cache holds, for logs (`Pod`, `security.istio.io/v1/AuthorizationPolicy`).
    fn what(&self) -> &str;
}

struct Typed<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    what: String,
    store: Store<K>,
    collect: fn(&[Arc<K>], &mut Objects),
}

impl<K> Cache for Typed<K>
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    fn is_synced(&self) -> bool {
        // `wait_until_ready` resolves once the writer has seen the first complete list.
        futures_util::FutureExt::now_or_never(self.store.wait_until_ready())
            .is_some_and(|r| r.is_ok())
    }

    fn collect(&self, out: &mut Objects) {
        (self.collect)(&self.store.state(), out);
    }

    fn what(&self) -> &str {
        &self.what
    }
}

/// The caches of every watched kind, and a counter bumped on every change any watch sees.
pub struct Cluster {
    caches: Vec<Box<dyn Cache>>,
    /// Bumped by the watch tasks on every change (and on every completed relist); read by the
    /// debouncing loop (`ward control-plane --kubernetes`). Dropped with the last task.
    changes: watch::Receiver<u64>,
    /// The Namespaces' cache, read by the injection webhook and the root publisher.
    namespaces: Store<Namespace>,
}

impl Cluster {
    /// Discovers which Istio kinds the API server serves and starts a watch for each of them,
    /// for Namespaces, Pods, Services, EndpointSlices and the mesh ConfigMap (`istio` in
    /// `root_namespace`). Returns at once; the caches fill in the background.
    pub async fn start(client: Client, root_namespace: &str) -> Result<Cluster, SourceError> {
        let (tx, changes) = watch::channel(0u64);
        let mut caches: Vec<Box<dyn Cache>> = Vec::new();
        for group in ISTIO_GROUPS {
            let discovered = match kube::discovery::group(&client, group).await {
                Ok(g) => g,
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    tracing::warn!(target: "kubernetes", group, "API group not served (no CRDs, see `ward install crds`); its kinds are not watched");
                    continue;
                }
                Err(source) => {
                    return Err(SourceError::Discovery {
                        group: group.to_owned(),
                        source,
                    })
                }
            };
            for (kind, _) in ward_config::served_kinds(group) {
                let Some((resource, _)) = discovered.recommended_kind(kind) else {
                    continue;
                };
                caches.push(watch_dynamic(client.clone(), resource, tx.clone()));
            }
        }
        let (namespaces_cache, namespaces) = watch_typed_store::<Namespace>(
            Api::all(client.clone()),
            watcher::Config::default(),
            "Namespace",
            |all, out| {
                out.passthrough
                    .extend(all.iter().filter_map(|o| to_value(&**o)))
            },
            |o| slim_meta(&mut o.metadata),
            tx.clone(),
        );
        caches.push(namespaces_cache);
        caches.push(watch_typed::<Pod>(
            Api::all(client.clone()),
            watcher::Config::default(),
            "Pod",
            |all, out| out.pods.extend(all.iter().map(|p| (**p).clone())),
            slim_pod,
            tx.clone(),
        ));
        caches.push(watch_typed::<Service>(
            Api::all(client.clone()),
            watcher::Config::default(),
            "Service",
            |all, out| out.services.extend(all.iter().map(|p| (**p).clone())),
            |o| slim_meta(&mut o.metadata),
            tx.clone(),
        ));
        caches.push(watch_typed::<EndpointSlice>(
            Api::all(client.clone()),
            watcher::Config::default(),
            "EndpointSlice",
            |all, out| {
                out.endpoint_slices
                    .extend(all.iter().map(|p| (**p).clone()))
            },
            |o| slim_meta(&mut o.metadata),
            tx.clone(),
        ));
        caches.push(watch_typed::<ConfigMap>(
            Api::namespaced(client.clone(), root_namespace),
            watcher::Config::default().fields(&format!("metadata.name={MESH_CONFIG_MAP}")),
            "ConfigMap istio",
            |all, out| {
                out.passthrough
                    .extend(all.iter().filter_map(|o| to_value(&**o)))
            },
            |o| slim_meta(&mut o.metadata),
            tx,
        ));
        Ok(Cluster {
            caches,
            changes,
            namespaces,
        })
    }

    /// Whether every watch has completed its first list.
    pub fn is_synced(&self) -> bool {
        self.caches.iter().all(|c| c.is_synced())
    }

    /// The kinds not synced yet, for logs.
    pub fn unsynced(&self) -> Vec<String> {
        self.caches
            .iter()
            .filter(|c| !c.is_synced())
            .map(|c| c.what().to_owned())
            .collect()
    }

    /// Every cached object, now.
    pub fn objects(&self) -> Objects {
        let mut out = Objects::default();
        for cache in &self.caches {
            cache.collect(&mut out);
        }
        out
    }

    /// The labels of namespace `name`; `None` when it is not (yet) known.
    pub fn namespace_labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces
            .get(&ObjectRef::new(name))
            .map(|ns| ns.metadata.labels.clone().unwrap_or_default())
    }

    /// The names of every namespace not being deleted.
    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces
            .state()
            .iter()
            .filter(|ns| ns.metadata.deletion_timestamp.is_none())
            .filter_map(|ns| ns.metadata.name.clone())
            .collect()
    }

    /// A receiver that changes whenever any watch sees a change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

/// A typed object as JSON with its `apiVersion` and `kind` (typed objects from the API carry
/// none once decoded).
fn to_value<K: Resource<DynamicType = ()> + serde::Serialize>(object: &K) -> Option<Value> {
    let mut v = serde_json::to_value(object).ok()?;
    let map = v.as_object_mut()?;
    map.insert("apiVersion".into(), Value::from(K::api_version(&())));
    map.insert("kind".into(), Value::from(K::kind(&())));
    Some(v)
}

fn watch_typed<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &str,
    collect: fn(&[Arc<K>], &mut Objects),
    slim: fn(&mut K),
    changes: watch::Sender<u64>,
) -> Box<dyn Cache>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watch_typed_store(api, config, what, collect, slim, changes).0
}

/// What a cache keeps of any object: not `metadata.managedFields` nor kubectl's
/// `last-applied-configuration` annotation, which Ward never reads and which are most of a
/// small object's size (docs/kubernetes.md, "Scale").
fn slim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// What the Pod cache keeps: the fields a Pod's WorkloadEntry is made of
/// (`translate::workload_entry`) and the metadata that identifies it and its version. A
/// Pod's containers, volumes and conditions are most of it, and a cluster has more Pods than
/// anything else.
fn slim_pod(pod: &mut Pod) {
    let meta = std::mem::take(&mut pod.metadata);
    pod.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        generation: meta.generation,
        labels: meta.labels,
        deletion_timestamp: meta.deletion_timestamp,
        ..ObjectMeta::default()
    };
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        service_account_name: spec.service_account_name,
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        ..PodStatus::default()
    });
}

/// [`watch_typed`], also returning the cache's store.
fn watch_typed_store<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &str,
    collect: fn(&[Arc<K>], &mut Objects),
    slim: fn(&mut K),
    changes: watch::Sender<u64>,
) -> (Box<dyn Cache>, Store<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let writer = Writer::new(());
    let store = writer.as_reader();
    tokio::spawn(run_watch(
        watcher(api, config).modify(slim),
        writer,
        what.to_owned(),
        changes,
    ));
    let cache = Box::new(Typed {
        what: what.to_owned(),
        store: store.clone(),
        collect,
    });
    (cache, store)
}

fn watch_dynamic(
    client: Client,
    resource: ApiResource,
    changes: watch::Sender<u64>,
) -> Box<dyn Cache> {
    let what = format!("{}/{}", resource.api_version, resource.kind);
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let writer = Writer::new(resource);
    let store = writer.as_reader();
    tokio::spawn(run_watch(
        watcher(api, watcher::Config::default()).modify(|o| slim_meta(&mut o.metadata)),
        writer,
        what.clone(),
        changes,
    ));
    Box::new(Typed {
        what,
        store,
        collect: |all, out| {
            out.passthrough.extend(all.iter().filter_map(|o| {
                let mut v = serde_json::to_value(&**o).ok()?;
                // A DynamicObject carries its type; set it in case the list omitted it.
                if let (Some(map), Some(types)) = (v.as_object_mut(), o.types.as_ref()) {
                    map.insert("apiVersion".into(), Value::from(types.api_version.clone()));
                    map.insert("kind".into(), Value::from(types.kind.clone()));
                }
                Some(v)
            }))
        },
    })
}

/// Runs one watch into its cache until the process ends; the runtime relists after errors with
/// its default backoff, and the cache keeps its last state meanwhile.
async fn run_watch<K, S>(stream: S, writer: Writer<K>, what: String, changes: watch::Sender<u64>)
where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
    S: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let stream = stream.default_backoff().reflect(writer);
    futures_util::pin_mut!(stream);
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(watcher::Event::InitDone) => {
                if failing {
                    tracing::info!(target: "kubernetes", kind = %what, "watch resynced");
                    failing = false;
                }
                changes.send_modify(|n| *n += 1);
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                changes.send_modify(|n| *n += 1);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(target: "kubernetes", kind = %what, error = %e, "watch failed; retrying with backoff, serving the last state");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A Pod as the API server serves it: containers, volumes, conditions, managed fields and
    /// annotations beside what Ward reads.
    fn full_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "fhir-0", "namespace": "fhir", "uid": "u-1", "resourceVersion": "42",
                "labels": {"app": "fhir", "version": "v1"},
                "annotations": {LAST_APPLIED: "{}", "sidecar.istio.io/status": "{}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "fhir", "uid": "r"}],
            },
            "spec": {
                "serviceAccountName": "fhir",
                "nodeName": "node-a",
                "containers": [{"name": "fhir", "image": "hapiproject/hapi:v7", "env": [{"name": "A", "value": "b"}]}],
                "volumes": [{"name": "data", "emptyDir": {}}],
            },
            "status": {
                "phase": "Running", "podIP": "10.1.0.7", "podIPs": [{"ip": "10.1.0.7"}],
                "hostIP": "192.168.0.2",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_slimmed_pod_gives_the_same_workload_and_keeps_little_else() {
        let full = full_pod();
        let mut slim = full.clone();
        slim_pod(&mut slim);
        let entry = |p: &Pod| crate::translate::workload_entry(p);
        assert_eq!(entry(&slim), entry(&full));
        assert!(entry(&slim).is_some());
        assert_eq!(slim.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(slim.metadata.uid.as_deref(), Some("u-1"));
        assert!(slim.metadata.managed_fields.is_none());
        assert!(slim.metadata.annotations.is_none());
        let spec = slim.spec.as_ref().unwrap();
        assert!(spec.containers.is_empty() && spec.volumes.is_none() && spec.node_name.is_none());
        assert!(slim.status.as_ref().unwrap().conditions.is_none());
        let size = |p: &Pod| serde_json::to_vec(p).unwrap().len();
        assert!(
            size(&slim) * 2 < size(&full),
            "{} vs {}",
            size(&slim),
            size(&full)
        );
    }

    #[test]
    fn slimming_metadata_drops_managed_fields_and_the_last_applied_copy_only() {
        let mut meta = full_pod().metadata;
        slim_meta(&mut meta);
        assert!(meta.managed_fields.is_none());
        let annotations = meta.annotations.unwrap();
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert!(annotations.contains_key("sidecar.istio.io/status"));
        assert!(meta.owner_references.is_some());
    }
}
