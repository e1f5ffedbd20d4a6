//! Kubernetes objects → config documents, as pure functions.
//!
//! Every object becomes one document that the config crate loads exactly as it loads a file
//! (`ward_config::load_files`), so diagnostics and semantics are the files' own. A document's
//! "file" name is stable and names the object: `k8s:<apiVersion>/<Kind>/<namespace>/<name>`,
//! and its text is pretty-printed JSON (YAML's flow style), one field a line, so a diagnostic's
//! line points at the field.
//!
//! - Istio objects (`security.istio.io`, `networking.istio.io`, `telemetry.istio.io`), the mesh
//!   ConfigMap `istio` and Namespaces (their labels) pass through unchanged, less
//!   `metadata.managedFields`, the `kubectl.kubernetes.io/last-applied-configuration`
//!   annotation and `status`.
//! - A Pod that is Running and has `status.podIP` (and is not being deleted) becomes a
//!   WorkloadEntry of the same namespace and name: address = pod IP, its service account and
//!   labels. Its proxy is `namespace/pod-name`.
//! - A Service (not ExternalName) becomes a ServiceEntry, MESH_INTERNAL, STATIC, host
//!   `<name>.<namespace>.svc.cluster.local`, address = its cluster IP (none when headless),
//!   ports with the protocol of `appProtocol` (else Istio's port-name prefix detection) and a
//!   numeric `targetPort`. A Service with a selector selects the Pods' WorkloadEntries by it; a
//!   Service without one gets the ready addresses of its EndpointSlices as endpoints.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Map, Value};
use ward_config::ConfigFiles;

/// The DNS suffix of Service hosts (Kubernetes' default cluster domain).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The annotation `kubectl apply` stores the whole object in; never needed, often large.
pub(crate) const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Everything read from the API server at one moment.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// Istio objects (and the mesh ConfigMap, and Namespaces) as the API server returned
    /// them, as JSON with `apiVersion` and `kind`.
    pub passthrough: Vec<Value>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
}

/// One document: its stable name and its text.
/// The text is shared: a [`Renderer`] hands out the same bytes at every rendering, and the
/// control plane's load cache compares them by pointer first.
type Document = (String, std::sync::Arc<[u8]>);

/// The documents of `objects`, sorted by name, so that two renderings of the same objects are
/// equal byte for byte (an unchanged resync is then a no-op).
pub fn render(objects: &Objects) -> ConfigFiles {
    let mut docs: Vec<Document> = Vec::new();
    docs.extend(objects.passthrough.iter().filter_map(passthrough));
    docs.extend(objects.pods.iter().filter_map(workload_entry));
    docs.extend(
        objects
            .services
            .iter()
            .filter_map(|s| service_entry(s, &objects.endpoint_slices)),
    );
    docs.sort_by(|a, b| a.0.cmp(&b.0));
    docs.dedup_by(|a, b| a.0 == b.0);
    ConfigFiles::from_shared(docs)
}

/// An object's identity and version as the API server gives them (`metadata.uid` and
/// `metadata.resourceVersion`): equal keys mean an unchanged object. `None` when either is
/// missing (objects built by hand in tests): such an object is always translated again.
fn version_key(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<String> {
    Some(format!(
        "{}@{}",
        meta.uid.as_deref()?,
        meta.resource_version.as_deref()?
    ))
}

/// [`version_key`] of an untyped object.
fn value_version_key(object: &Value) -> Option<String> {
    let meta = object.get("metadata")?;
    Some(format!(
        "{}/{}/{}@{}",
        object.get("apiVersion")?.as_str()?,
        object.get("kind")?.as_str()?,
        meta.get("uid")?.as_str()?,
        meta.get("resourceVersion")?.as_str()?
    ))
}

/// One object's cached translation: the version it was made from and its document.
#[derive(Clone, Debug)]
struct Cached {
    version: String,
    doc: Option<Document>,
}

/// What one [`Renderer::render`] did, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenderStats {
    /// Objects translated again (new or changed since the last rendering).
    pub translated: usize,
    /// Objects whose last translation was reused.
    pub reused: usize,
}

/// Incremental [`render`]: it keeps each object's document from the last rendering, keyed by
/// the object's uid and resourceVersion (which the API server changes on every write), and
/// translates again only the objects that are new or changed. A selector-less Service's key
/// also holds the versions of its EndpointSlices, so an endpoint change translates that Service
/// again. The result is [`render`]'s, document for document (tests/`incremental_equals_full`).
#[derive(Debug, Default)]
pub struct Renderer {
    passthrough: std::collections::HashMap<String, Cached>,
    pods: std::collections::HashMap<String, Cached>,
    services: std::collections::HashMap<String, Cached>,
}

/// A map key naming a typed object: `namespace/name`.
fn meta_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// Looks `key` up in `cache` (last rendering) and moves it to `next` when its version is
/// `version`; else translates it with `make`. Counts what it did in `stats`.
fn reuse_or(
    cache: &mut std::collections::HashMap<String, Cached>,
    next: &mut std::collections::HashMap<String, Cached>,
    stats: &mut RenderStats,
    key: String,
    version: Option<String>,
    make: impl FnOnce() -> Option<Document>,
) -> Option<Document> {
    if let Some(version) = version {
        if let Some(hit) = cache.remove(&key).filter(|c| c.version == version) {
            stats.reused += 1;
            let doc = hit.doc.clone();
            next.insert(key, hit);
            return doc;
        }
        stats.translated += 1;
        let doc = make();
        next.insert(
            key,
            Cached {
                version,
                doc: doc.clone(),
            },
        );
        return doc;
    }
    stats.translated += 1;
    make()
}

impl Renderer {
    /// A renderer with nothing cached: its first rendering translates everything.
    pub fn new() -> Renderer {
        Renderer::default()
    }

    /// The documents of `objects`, equal to [`render`]`(objects)`, translating only what
    /// changed since the last call.
    pub fn render(&mut self, objects: &Objects) -> (ConfigFiles, RenderStats) {
        let mut stats = RenderStats::default();
        let mut docs: Vec<Document> = Vec::with_capacity(
            objects.passthrough.len() + objects.pods.len() + objects.services.len(),
        );
        let mut next = std::collections::HashMap::with_capacity(objects.passthrough.len());
        for object in &objects.passthrough {
            let version = value_version_key(object);
            let key = version.clone().unwrap_or_default();
            docs.extend(reuse_or(
                &mut self.passthrough,
                &mut next,
                &mut stats,
                key,
                version,
                || passthrough(object),
            ));
        }
        self.passthrough = next;
        let mut next = std::collections::HashMap::with_capacity(objects.pods.len());
        for pod in &objects.pods {
            docs.extend(reuse_or(
                &mut self.pods,
                &mut next,
                &mut stats,
                meta_key(&pod.metadata),
                version_key(&pod.metadata),
                || workload_entry(pod),
            ));
        }
        self.pods = next;
        // The slices of each selector-less Service, by `namespace/service`.
        let mut slices_of: BTreeMap<String, Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in &objects.endpoint_slices {
            if let Some(service) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                let ns = slice.metadata.namespace.as_deref().unwrap_or("");
                slices_of
                    .entry(format!("{ns}/{service}"))
                    .or_default()
                    .push(slice);
            }
        }
        let mut next = std::collections::HashMap::with_capacity(objects.services.len());
        for service in &objects.services {
            let key = meta_key(&service.metadata);
            let selectorless = service
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_none_or(|s| s.is_empty());
            let mut version = version_key(&service.metadata);
            let mine = slices_of.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            if selectorless {
                // Every slice's version, in a fixed order; a slice without one forces a
                // translation.
                let mut parts: Vec<Option<String>> =
                    mine.iter().map(|s| version_key(&s.metadata)).collect();
                parts.sort();
                version = version.and_then(|v| {
                    parts
                        .into_iter()
                        .try_fold(v, |acc, p| p.map(|p| format!("{acc},{p}")))
                });
            }
            docs.extend(reuse_or(
                &mut self.services,
                &mut next,
                &mut stats,
                key,
                version,
                || {
                    let owned: Vec<EndpointSlice> = mine.iter().map(|s| (*s).clone()).collect();
                    service_entry(service, &owned)
                },
            ));
        }
        self.services = next;
        docs.sort_by(|a, b| a.0.cmp(&b.0));
        docs.dedup_by(|a, b| a.0 == b.0);
        (ConfigFiles::from_shared(docs), stats)
    }
}

/// The stable name of an object's document.
pub fn document_name(api_version: &str, kind: &str, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("k8s:{api_version}/{kind}/{name}")
    } else {
        format!("k8s:{api_version}/{kind}/{namespace}/{name}")
    }
}

fn document(value: &Value) -> Option<Document> {
    let api_version = value.get("apiVersion")?.as_str()?;
    let kind = value.get("kind")?.as_str()?;
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let namespace = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
    let text = serde_json::to_vec_pretty(value).ok()?;
    Some((
        document_name(api_version, kind, namespace, name),
        text.into(),
    ))
}

/// The text of an object's document (what [`render`] gives the config crate for it).
pub fn passthrough_text(object: &Value) -> Option<Vec<u8>> {
    passthrough(object).map(|(_, text)| text.to_vec())
}

/// An object read as is, less what the API server adds that Ward never reads.
fn passthrough(object: &Value) -> Option<Document> {
    let mut object = object.clone();
    let map = object.as_object_mut()?;
    map.remove("status");
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove(LAST_APPLIED);
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    document(&object)
}

/// The WorkloadEntry of a running Pod with an IP; `None` for any other Pod.
pub fn workload_entry(pod: &Pod) -> Option<Document> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    let spec = pod.spec.as_ref()?;
    let mut entry = Map::new();
    entry.insert("address".into(), json!(ip));
    if let Some(sa) = spec
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        entry.insert("serviceAccount".into(), json!(sa));
    }
    if let Some(labels) = meta.labels.as_ref().filter(|l| !l.is_empty()) {
        entry.insert("labels".into(), json!(labels));
    }
    document(&json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {
            "name": meta.name.as_deref()?,
            "namespace": meta.namespace.as_deref()?,
        },
        "spec": entry,
    }))
}

/// Istio's protocol for a Service port's `appProtocol`; `None` leaves detection to the port
/// name (istio.io "Protocol Selection": `appProtocol` first, then the name prefix).
pub fn app_protocol(app_protocol: &str) -> Option<&'static str> {
    Some(match app_protocol.to_ascii_lowercase().as_str() {
        "http" => "HTTP",
        "http2" | "kubernetes.io/h2c" | "h2c" => "HTTP2",
        "grpc" | "grpc-web" => "GRPC",
        "https" => "HTTPS",
        "tls" => "TLS",
        "tcp" => "TCP",
        "mongo" => "Mongo",
        "redis" => "Redis",
        "mysql" => "MySQL",
        _ => return None,
    })
}

/// The ServiceEntry of a Service; `None` for an ExternalName Service or one without a name.
pub fn service_entry(service: &Service, slices: &[EndpointSlice]) -> Option<Document> {
    let meta = &service.metadata;
    let name = meta.name.as_deref()?;
    let namespace = meta.namespace.as_deref()?;
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let mut ports = Vec::new();
    // Ward carries TCP only: UDP and SCTP ports are left out (and a Service with no other port).
    let tcp = |p: &&k8s_openapi::api::core::v1::ServicePort| {
        p.protocol.as_deref().is_none_or(|proto| proto == "TCP")
    };
    for port in spec.ports.iter().flatten().filter(tcp) {
        let mut p = Map::new();
        p.insert("number".into(), json!(port.port));
        // Istio names unnamed ports by protocol and number; the name keys endpoint ports.
        let port_name = port
            .name
            .clone()
            .unwrap_or_else(|| format!("port-{}", port.port));
        p.insert("name".into(), json!(port_name));
        if let Some(proto) = port.app_protocol.as_deref().and_then(app_protocol) {
            p.insert("protocol".into(), json!(proto));
        }
        if let Some(IntOrString::Int(target)) = &port.target_port {
            p.insert("targetPort".into(), json!(target));
        }
        ports.push(Value::Object(p));
    }
    if ports.is_empty() {
        return None;
    }
    let mut entry = Map::new();
    entry.insert(
        "hosts".into(),
        json!([format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")]),
    );
    let addresses: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .map(String::as_str)
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !addresses.is_empty() {
        entry.insert("addresses".into(), json!(addresses));
    }
    entry.insert("ports".into(), Value::Array(ports));
    entry.insert("location".into(), json!("MESH_INTERNAL"));
    entry.insert("resolution".into(), json!("STATIC"));
    match spec.selector.as_ref().filter(|s| !s.is_empty()) {
        Some(selector) => {
            entry.insert("workloadSelector".into(), json!({ "labels": selector }));
        }
        None => {
            entry.insert(
                "endpoints".into(),
                Value::Array(endpoints(name, namespace, slices)),
            );
        }
    }
    document(&json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": namespace},
        "spec": entry,
    }))
}

/// The ready addresses of a selector-less Service's EndpointSlices, as ServiceEntry endpoints
/// (port name → port), sorted and without duplicates.
fn endpoints(service: &str, namespace: &str, slices: &[EndpointSlice]) -> Vec<Value> {
    let mut out: BTreeMap<String, BTreeMap<String, i32>> = BTreeMap::new();
    let of_service = slices.iter().filter(|s| {
        s.metadata.namespace.as_deref() == Some(namespace)
            && s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .is_some_and(|n| n == service)
    });
    for slice in of_service {
        if slice.address_type == "FQDN" {
            continue;
        }
        let ports: BTreeMap<String, i32> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), p.port?)))
            .collect();
        for endpoint in &slice.endpoints {
            // Kubernetes: a nil `ready` means ready.
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                out.entry(address.clone())
                    .or_default()
                    .extend(ports.iter().map(|(k, v)| (k.clone(), *v)));
            }
        }
    }
    out.into_iter()
        .map(|(address, ports)| {
            let ports: BTreeMap<String, i32> =
                ports.into_iter().filter(|(k, _)| !k.is_empty()).collect();
            if ports.is_empty() {
                json!({ "address": address })
            } else {
                json!({ "address": address, "ports": ports })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn pod(name: &str, phase: &str, ip: Option<&str>) -> Pod {
        from_json(json!({
            "metadata": {"name": name, "namespace": "app", "labels": {"app": name}},
            "spec": {"serviceAccountName": "sa-x", "containers": []},
            "status": {"phase": phase, "podIP": ip},
        }))
    }

    #[test]
    fn only_running_pods_with_an_ip_are_workloads() {
        let cases = [
            (
                "running with an IP",
                pod("a", "Running", Some("10.0.0.1")),
                true,
            ),
            ("pending", pod("a", "Pending", Some("10.0.0.1")), false),
            ("no IP yet", pod("a", "Running", None), false),
            ("succeeded", pod("a", "Succeeded", Some("10.0.0.1")), false),
        ];
        for (name, p, want) in cases {
            assert_eq!(workload_entry(&p).is_some(), want, "{name}");
        }
        let mut deleting = pod("a", "Running", Some("10.0.0.1"));
        deleting.metadata.deletion_timestamp = Some(from_json(json!("2026-01-01T00:00:00Z")));
        assert!(workload_entry(&deleting).is_none(), "being deleted");
    }

    #[test]
    fn a_pod_loads_as_a_workload_with_its_identity() {
        let files = render(&Objects {
            pods: vec![pod("a", "Running", Some("127.130.0.1"))],
            ..Objects::default()
        });
        let set = ward_config::load_files(&files).unwrap();
        let we = &set.workload_entries[0];
        assert_eq!(we.key(), "app/a");
        assert_eq!(
            we.source.file,
            "k8s:networking.istio.io/v1/WorkloadEntry/app/a"
        );
        assert_eq!(we.spec.address.as_deref(), Some("127.130.0.1"));
        assert_eq!(we.spec.service_account.as_deref(), Some("sa-x"));
        assert_eq!(we.spec.labels.as_ref().unwrap()["app"], "a");
    }

    fn service(selector: Option<Value>, ports: Value) -> Service {
        from_json(json!({
            "metadata": {"name": "srv", "namespace": "app"},
            "spec": {"clusterIP": "10.96.0.10", "selector": selector, "ports": ports},
        }))
    }

    #[test]
    fn services_get_hosts_addresses_protocols_and_target_ports() {
        let s = service(
            Some(json!({"app": "srv"})),
            json!([
                {"name": "api", "port": 80, "appProtocol": "http", "targetPort": 8080},
                {"name": "grpc-x", "port": 90, "targetPort": "named"},
                {"port": 91, "appProtocol": "kubernetes.io/h2c"},
            ]),
        );
        let files = render(&Objects {
            services: vec![s],
            ..Objects::default()
        });
        let set = ward_config::load_files(&files).unwrap();
        let se = &set.service_entries[0].spec;
        assert_eq!(se.hosts.as_deref().unwrap(), ["srv.app.svc.cluster.local"]);
        assert_eq!(se.addresses.as_deref().unwrap(), ["10.96.0.10"]);
        let ports = se.ports.as_ref().unwrap();
        assert_eq!(ports[0].protocol.as_deref(), Some("HTTP"));
        assert_eq!(ports[0].target_port, Some(8080));
        // No appProtocol: the name prefix decides, as in Istio.
        assert_eq!(ports[1].protocol, None);
        assert_eq!(ports[1].target_port, None);
        assert_eq!(ports[2].protocol.as_deref(), Some("HTTP2"));
        assert_eq!(ports[2].name.as_deref(), Some("port-91"));
        assert_eq!(
            se.workload_selector
                .as_ref()
                .unwrap()
                .labels
                .as_ref()
                .unwrap()["app"],
            "srv"
        );
    }

    #[test]
    fn a_service_without_selector_gets_its_ready_endpoint_slice_addresses() {
        let s = service(None, json!([{"name": "tcp-db", "port": 5432}]));
        let slice: EndpointSlice = from_json(json!({
            "metadata": {"name": "srv-1", "namespace": "app",
                         "labels": {"kubernetes.io/service-name": "srv"}},
            "addressType": "IPv4",
            "ports": [{"name": "tcp-db", "port": 15432}],
            "endpoints": [
                {"addresses": ["10.1.0.2"]},
                {"addresses": ["10.1.0.3"], "conditions": {"ready": false}},
            ],
        }));
        let mut other = slice.clone();
        other.metadata.labels = Some([(SERVICE_NAME_LABEL.to_owned(), "x".to_owned())].into());
        let files = render(&Objects {
            services: vec![s],
            endpoint_slices: vec![slice, other],
            ..Objects::default()
        });
        let set = ward_config::load_files(&files).unwrap();
        let eps = set.service_entries[0].spec.endpoints.as_ref().unwrap();
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert_eq!(eps[0].address.as_deref(), Some("10.1.0.2"));
        assert_eq!(eps[0].ports.as_ref().unwrap()["tcp-db"], 15432);
    }

    #[test]
    fn an_invalid_istio_object_is_reported_with_its_object_name_and_field() {
        let ap = json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "app", "uid": "u", "resourceVersion": "7",
                         "managedFields": [{"manager": "kubectl"}],
                         "annotations": {LAST_APPLIED: "{}"}},
            "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principalz": ["x"]}}]}]},
            "status": {"validationMessages": []},
        });
        let err = ward_config::load_files(&render(&Objects {
            passthrough: vec![ap],
            ..Objects::default()
        }))
        .unwrap_err()
        .to_string();
        for part in [
            "k8s:security.istio.io/v1/AuthorizationPolicy/app/p",
            "AuthorizationPolicy app/p",
            "spec.rules[0].from[0].source: unknown field `principalz`",
        ] {
            assert!(err.contains(part), "{part:?} not in {err}");
        }
    }

    /// A small deterministic generator (xorshift64), so a failure replays.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// A cluster that the test changes as the API server would: every write bumps the
    /// object's resourceVersion (one counter for all, like etcd's revision).
    struct World {
        rng: Rng,
        revision: u64,
        objects: Objects,
    }

    impl World {
        fn bump(&mut self) -> String {
            self.revision += 1;
            self.revision.to_string()
        }

        fn pod(&mut self, i: usize) -> Pod {
            let rv = self.bump();
            let phase = ["Running", "Running", "Pending"][self.rng.below(3)];
            let mut p = pod(
                &format!("p{i}"),
                phase,
                Some(&format!("10.0.{}.{}", i / 250, i % 250)),
            );
            p.metadata.namespace = Some(format!("ns{}", i % 3));
            p.metadata.labels =
                Some([("app".to_owned(), format!("s{}", self.rng.below(4)))].into());
            p.metadata.uid = Some(format!("uid-pod-{i}-{}", self.rng.below(2)));
            p.metadata.resource_version = Some(rv);
            p
        }

        fn service(&mut self, i: usize) -> Service {
            let rv = self.bump();
            let selector = i
                .is_multiple_of(2)
                .then(|| json!({"app": format!("s{}", i % 4)}));
            let port = 80 + self.rng.below(3) as i32;
            let mut s: Service = from_json(json!({
                "metadata": {"name": format!("s{i}"), "namespace": format!("ns{}", i % 3),
                             "uid": format!("uid-svc-{i}"), "resourceVersion": rv},
                "spec": {"clusterIP": format!("10.96.0.{i}"), "selector": selector,
                         "ports": [{"name": "http", "port": port}]},
            }));
            if self.rng.below(5) == 0 {
                s.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
            }
            s
        }

        fn slice(&mut self, i: usize) -> EndpointSlice {
            let rv = self.bump();
            let ready = self.rng.below(3) != 0;
            from_json(json!({
                "metadata": {"name": format!("s{}-{}", i % 6, i), "namespace": format!("ns{}", i % 3),
                             "uid": format!("uid-slice-{i}"), "resourceVersion": rv,
                             "labels": {"kubernetes.io/service-name": format!("s{}", i % 6)}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8000 + self.rng.below(3) as i32}],
                "endpoints": [{"addresses": [format!("10.1.0.{}", self.rng.below(9))],
                               "conditions": {"ready": ready}}],
            }))
        }

        fn policy(&mut self, i: usize) -> Value {
            let rv = self.bump();
            let principal = format!("cluster.local/ns/x/sa/v{}", self.rng.below(5));
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                   "metadata": {"name": format!("ap{i}"), "namespace": format!("ns{}", i % 3),
                                "uid": format!("uid-ap-{i}"), "resourceVersion": rv,
                                "managedFields": [{"manager": "kubectl"}]},
                   "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principals": [principal]}}]}]},
                   "status": {"x": rv}})
        }

        /// One write: a create, an update or a delete of a random object.
        fn change(&mut self) {
            let which = self.rng.below(4);
            let i = self.rng.below(12);
            let delete = self.rng.below(4) == 0;
            macro_rules! upsert {
                ($list:ident, $make:ident, $name:expr) => {{
                    let name = $name;
                    self.objects
                        .$list
                        .retain(|o| name(o) != Some(format!("{i}")));
                    if !delete {
                        let o = self.$make(i);
                        self.objects.$list.push(o);
                    }
                }};
            }
            let num = |n: Option<&str>, prefix: &str| {
                n.and_then(|n| n.strip_prefix(prefix)).map(str::to_owned)
            };
            match which {
                0 => upsert!(pods, pod, |p: &Pod| num(p.metadata.name.as_deref(), "p")),
                1 => upsert!(services, service, |s: &Service| num(
                    s.metadata.name.as_deref(),
                    "s"
                )),
                2 => upsert!(endpoint_slices, slice, |s: &EndpointSlice| s
                    .metadata
                    .uid
                    .as_deref()
                    .and_then(|u| u.strip_prefix("uid-slice-"))
                    .map(str::to_owned)),
                _ => upsert!(passthrough, policy, |v: &Value| num(
                    v["metadata"]["name"].as_str(),
                    "ap"
                )),
            }
            // The stores hand objects out in no particular order.
            let n = self.objects.pods.len().max(1);
            self.objects.pods.rotate_left(self.rng.below(n));
        }
    }

    #[test]
    fn incremental_equals_full() {
        for seed in [1u64, 7, 42, 1234] {
            let mut world = World {
                rng: Rng(seed),
                revision: 0,
                objects: Objects::default(),
            };
            let mut renderer = Renderer::new();
            for step in 0..400 {
                world.change();
                let (incremental, stats) = renderer.render(&world.objects);
                assert_eq!(
                    incremental,
                    render(&world.objects),
                    "seed {seed}, step {step}"
                );
                // At most the changed object and the service its slice belongs to.
                if step > 0 {
                    assert!(stats.translated <= 2, "seed {seed} step {step}: {stats:?}");
                }
            }
            assert!(world.objects.pods.len() + world.objects.services.len() > 5);
        }
    }

    #[test]
    fn an_unchanged_cluster_translates_nothing_again() {
        let mut p = pod("a", "Running", Some("10.0.0.1"));
        p.metadata.uid = Some("u".into());
        p.metadata.resource_version = Some("1".into());
        let objects = Objects {
            pods: vec![p, pod("no-version", "Running", Some("10.0.0.2"))],
            ..Objects::default()
        };
        let mut renderer = Renderer::new();
        let (first, stats) = renderer.render(&objects);
        assert_eq!(
            stats,
            RenderStats {
                translated: 2,
                reused: 0
            }
        );
        let (again, stats) = renderer.render(&objects);
        assert_eq!(first, again);
        // The pod without uid/resourceVersion is translated every time.
        assert_eq!(
            stats,
            RenderStats {
                translated: 1,
                reused: 1
            }
        );
        // A new resourceVersion is a change, even with the same content.
        let mut changed = objects.clone();
        changed.pods[0].metadata.resource_version = Some("2".into());
        changed.pods[0].status.as_mut().unwrap().pod_ip = Some("10.0.0.9".into());
        let (after, stats) = renderer.render(&changed);
        assert_eq!(
            stats,
            RenderStats {
                translated: 2,
                reused: 0
            }
        );
        assert_eq!(after, render(&changed));
        assert_ne!(after, first);
    }

    #[test]
    fn rendering_is_deterministic() {
        let objects = Objects {
            pods: vec![
                pod("b", "Running", Some("10.0.0.2")),
                pod("a", "Running", Some("10.0.0.1")),
            ],
            ..Objects::default()
        };
        let mut reversed = objects.clone();
        reversed.pods.reverse();
        assert_eq!(render(&objects), render(&reversed));
    }
}
