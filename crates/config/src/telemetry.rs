//! What the metrics say about workloads and services, decided from the config alone. Pure.
//!
//! A [`MeshDirectory`] is built once per configuration by [`crate::translate()`] and shared by
//! every proxy (`ProxyConfig::directory`). A sidecar reads its peers' metric labels from it:
//! - the source of an inbound mTLS connection is the WorkloadEntry whose address and identity
//!   are the connection's (the identity verified by the TLS handshake, the address the socket's),
//!   never anything the peer says about itself ([`MeshDirectory::source`]);
//! - the destination of an outbound connection is the endpoint's WorkloadEntry;
//! - a service is one a ServiceEntry declares; a `Host` that names none is `unknown`.
//!
//! Label values follow Istio's derivation (docs/metrics.md, "Where the labels come from").

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::snapshot::WorkloadInfo;

/// The cluster every workload is in: Istio's default cluster name
/// (`values.global.multiCluster.clusterName`, default `Kubernetes`). Kiali skips a series whose
/// `source_cluster` or `destination_cluster` is `unknown` next to a known namespace.
pub const CLUSTER_ID: &str = "Kubernetes";

/// The label Istio reads the canonical service from first (`service.istio.io/canonical-name`).
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
/// The label Istio reads the canonical revision from first.
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";

/// A workload's metric labels (`source_*` or `destination_*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadMeta {
    /// The WorkloadEntry's name (`*_workload`).
    pub name: String,
    /// Its namespace (`*_workload_namespace`).
    pub namespace: String,
    /// Its SPIFFE id (`*_principal`), `spiffe://…` as Istio writes it.
    pub principal: String,
    /// `app.kubernetes.io/name`, else `app` (`*_app`); `None` is `unknown`.
    pub app: Option<String>,
    /// `app.kubernetes.io/version`, else `version` (`*_version`); `None` is `unknown`.
    pub version: Option<String>,
    /// `service.istio.io/canonical-name`, else `app.kubernetes.io/name`, else `app`, else the
    /// workload name (`*_canonical_service`).
    pub canonical_service: String,
    /// `service.istio.io/canonical-revision`, else `app.kubernetes.io/version`, else `version`,
    /// else `latest` (`*_canonical_revision`).
    pub canonical_revision: String,
}

/// The first of `keys` that `labels` has.
fn first_label(labels: &BTreeMap<String, String>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| labels.get(*k).cloned())
}

impl WorkloadMeta {
    /// The labels of a workload, derived from its WorkloadEntry as Istio derives them: app and
    /// version as the Istio proxy reads peer labels (istio/proxy
    /// `extensions/common/metadata_object.cc`: the `app.kubernetes.io/*` label wins over the short
    /// one), canonical service and revision as istiod does (istio/istio
    /// `pkg/config/labels` / `pkg/model/kube` `CanonicalService`).
    pub fn of(w: &WorkloadInfo) -> WorkloadMeta {
        let l = &w.labels;
        WorkloadMeta {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            principal: w.identity.clone(),
            app: first_label(l, &["app.kubernetes.io/name", "app"]),
            version: first_label(l, &["app.kubernetes.io/version", "version"]),
            canonical_service: first_label(
                l,
                &[CANONICAL_NAME_LABEL, "app.kubernetes.io/name", "app"],
            )
            .unwrap_or_else(|| w.name.clone()),
            canonical_revision: first_label(
                l,
                &[
                    CANONICAL_REVISION_LABEL,
                    "app.kubernetes.io/version",
                    "version",
                ],
            )
            .unwrap_or_else(|| "latest".to_owned()),
        }
    }
}

/// A service's metric labels (`destination_service*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMeta {
    /// The ServiceEntry host (`destination_service`).
    pub host: String,
    /// `destination_service_name`: `<name>` for a host `<name>.<namespace>.svc.<domain>` in the
    /// ServiceEntry's own namespace (a Kubernetes Service's name), else the host (Istio names a
    /// ServiceEntry's service by its host).
    pub name: String,
    /// The ServiceEntry's namespace (`destination_service_namespace`).
    pub namespace: String,
}

impl ServiceMeta {
    /// The labels of `host`, declared by a ServiceEntry in `namespace`.
    pub fn new(host: &str, namespace: &str) -> ServiceMeta {
        let mut parts = host.splitn(4, '.');
        let name = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(name), Some(ns), Some("svc"), Some(_)) if ns == namespace && !name.is_empty() => {
                name.to_owned()
            }
            _ => host.to_owned(),
        };
        ServiceMeta {
            host: host.to_owned(),
            name,
            namespace: namespace.to_owned(),
        }
    }
}

/// One workload, as the directory holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    address: IpAddr,
    meta: Arc<WorkloadMeta>,
}

fn entry_key(e: &Entry) -> String {
    format!("{}/{}", e.meta.namespace, e.meta.name)
}

/// One part of a [`MeshDirectory`] ([`MeshDirectory::split`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryPart {
    workloads: BTreeMap<String, Entry>,
    services: BTreeMap<String, Arc<ServiceMeta>>,
    served: BTreeMap<String, BTreeMap<u16, Vec<String>>>,
}

/// Every workload's and service's metric labels, for one configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshDirectory {
    /// By `namespace/name`.
    workloads: BTreeMap<String, Entry>,
    /// By SPIFFE id: the workloads that have it (a request's source is found without a scan).
    identities: BTreeMap<String, Vec<Entry>>,
    /// By host.
    services: BTreeMap<String, Arc<ServiceMeta>>,
    /// The hosts whose endpoints are a workload's port: by `namespace/name`, then port.
    served: BTreeMap<String, BTreeMap<u16, Vec<String>>>,
}

impl MeshDirectory {
    /// An empty directory (every lookup is `None`).
    pub fn new() -> MeshDirectory {
        MeshDirectory::default()
    }

    /// Add a workload (`namespace/name` is its key).
    pub fn add_workload(&mut self, info: &WorkloadInfo) {
        let entry = Entry {
            address: info.address,
            meta: Arc::new(WorkloadMeta::of(info)),
        };
        let key = format!("{}/{}", info.namespace, info.name);
        let same = self.identities.entry(info.identity.clone()).or_default();
        // Kept in workload-key order, the order [`MeshDirectory::join`] rebuilds.
        let at = same.partition_point(|e| entry_key(e) < key);
        same.insert(at, entry.clone());
        self.workloads.insert(key, entry);
    }

    /// Cuts the directory into `parts` parts: workload `namespace/name` (with the services its
    /// ports serve) goes to part `part_of(key)`, service `host` to `part_of(host)`. A change to
    /// one workload or service changes one part (the config stream sends parts as sections:
    /// docs/multi-host.md). [`MeshDirectory::join`] rebuilds the directory.
    pub fn split(&self, parts: usize, part_of: impl Fn(&str) -> usize) -> Vec<DirectoryPart> {
        let mut out = vec![DirectoryPart::default(); parts.max(1)];
        let n = out.len();
        for (key, entry) in &self.workloads {
            out[part_of(key) % n]
                .workloads
                .insert(key.clone(), entry.clone());
        }
        for (key, ports) in &self.served {
            out[part_of(key) % n]
                .served
                .insert(key.clone(), ports.clone());
        }
        for (host, meta) in &self.services {
            out[part_of(host) % n]
                .services
                .insert(host.clone(), meta.clone());
        }
        out
    }

    /// The directory whose parts are `parts` (from [`MeshDirectory::split`]).
    pub fn join<'a>(parts: impl IntoIterator<Item = &'a DirectoryPart>) -> MeshDirectory {
        let mut d = MeshDirectory::default();
        for part in parts {
            d.workloads
                .extend(part.workloads.iter().map(|(k, e)| (k.clone(), e.clone())));
            d.served
                .extend(part.served.iter().map(|(k, p)| (k.clone(), p.clone())));
            d.services
                .extend(part.services.iter().map(|(h, m)| (h.clone(), m.clone())));
        }
        for entry in d.workloads.values() {
            d.identities
                .entry(entry.meta.principal.clone())
                .or_default()
                .push(entry.clone());
        }
        d
    }

    /// Add a service host, declared by a ServiceEntry in `namespace`.
    pub fn add_service(&mut self, host: &str, namespace: &str) {
        self.services
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(ServiceMeta::new(host, namespace)));
    }

    /// Record that `host`'s endpoints include port `port` of workload `key`.
    pub fn add_endpoint(&mut self, host: &str, key: &str, port: u16) {
        let hosts = self
            .served
            .entry(key.to_owned())
            .or_default()
            .entry(port)
            .or_default();
        if !hosts.iter().any(|h| h == host) {
            hosts.push(host.to_owned());
        }
    }

    /// The workload `namespace/name`.
    pub fn workload(&self, key: &str) -> Option<&Arc<WorkloadMeta>> {
        self.workloads.get(key).map(|e| &e.meta)
    }

    /// The source of a connection from `ip` whose verified identity is `identity`: the
    /// workload with that address and identity; else, when exactly one workload has the
    /// identity (its traffic comes from another address, e.g. through NAT), that one. `None`
    /// when the config cannot say which workload it is.
    pub fn source(&self, ip: IpAddr, identity: &str) -> Option<&Arc<WorkloadMeta>> {
        let with_identity = self.identities.get(identity)?;
        match with_identity.iter().find(|e| e.address == ip) {
            Some(e) => Some(&e.meta),
            None if with_identity.len() == 1 => with_identity.first().map(|e| &e.meta),
            None => None,
        }
    }

    /// The service `host`, if a ServiceEntry declares it.
    pub fn service(&self, host: &str) -> Option<&Arc<ServiceMeta>> {
        self.services.get(host)
    }

    /// The service a connection to port `port` of workload `key` was for: the one whose host
    /// `authority` names (the host part, compared without case; a request's `Host`), among the
    /// services with that port as an endpoint; with no authority (TCP), the only such service.
    /// `None` (`unknown`) when none matches or several could.
    pub fn inbound_service(
        &self,
        key: &str,
        port: u16,
        authority: Option<&str>,
    ) -> Option<&Arc<ServiceMeta>> {
        let hosts = self.served.get(key)?.get(&port)?;
        let host = match authority {
            Some(authority) => {
                let name = host_of(authority);
                hosts.iter().find(|h| h.eq_ignore_ascii_case(name))?
            }
            None if hosts.len() == 1 => hosts.first()?,
            None => return None,
        };
        self.services.get(host)
    }
}

/// The host part of an authority: without the port, and without the brackets of an IPv6
/// literal.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(ns: &str, name: &str, ip: &str, sa: &str, labels: &[(&str, &str)]) -> WorkloadInfo {
        WorkloadInfo {
            name: name.into(),
            namespace: ns.into(),
            service_account: sa.into(),
            address: ip.parse().unwrap(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            identity: format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"),
            demo_app: None,
            keep_override_headers: false,
            audit_fail_closed: false,
            num_trusted_proxies: 0,
        }
    }

    #[test]
    fn labels_follow_istio_precedence() {
        // (labels, app, version, canonical service, canonical revision)
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
            &'a str,
        );
        let cases: &[Case<'_>] = &[
            (&[], None, None, "web-1", "latest"),
            (
                &[("app", "web"), ("version", "v1")],
                Some("web"),
                Some("v1"),
                "web",
                "v1",
            ),
            (
                &[
                    ("app", "web"),
                    ("app.kubernetes.io/name", "frontend"),
                    ("version", "v1"),
                    ("app.kubernetes.io/version", "2.0"),
                ],
                Some("frontend"),
                Some("2.0"),
                "frontend",
                "2.0",
            ),
            (
                &[
                    ("app", "web"),
                    ("app.kubernetes.io/name", "frontend"),
                    (CANONICAL_NAME_LABEL, "shop"),
                    ("version", "v1"),
                    (CANONICAL_REVISION_LABEL, "r7"),
                ],
                Some("frontend"),
                Some("v1"),
                "shop",
                "r7",
            ),
        ];
        for (labels, app, version, service, revision) in cases {
            let m = WorkloadMeta::of(&info("demo", "web-1", "127.0.0.1", "web", labels));
            assert_eq!(m.app.as_deref(), *app, "{labels:?}");
            assert_eq!(m.version.as_deref(), *version, "{labels:?}");
            assert_eq!(m.canonical_service, *service, "{labels:?}");
            assert_eq!(m.canonical_revision, *revision, "{labels:?}");
            assert_eq!(m.principal, "spiffe://cluster.local/ns/demo/sa/web");
        }
    }

    #[test]
    fn service_names_are_kubernetes_short_names_only_in_their_own_namespace() {
        let cases = [
            ("echo.demo.svc.cluster.local", "demo", "echo"),
            (
                "echo.other.svc.cluster.local",
                "demo",
                "echo.other.svc.cluster.local",
            ),
            ("api.example.com", "demo", "api.example.com"),
            ("echo", "demo", "echo"),
            (".demo.svc.cluster.local", "demo", ".demo.svc.cluster.local"),
        ];
        for (host, ns, name) in cases {
            let s = ServiceMeta::new(host, ns);
            assert_eq!((s.host.as_str(), s.name.as_str()), (host, name), "{host}");
            assert_eq!(s.namespace, ns);
        }
    }

    #[test]
    fn sources_are_found_by_address_and_verified_identity_only() {
        let mut d = MeshDirectory::new();
        d.add_workload(&info("demo", "web-1", "127.0.0.1", "web", &[]));
        d.add_workload(&info("demo", "web-2", "127.0.0.2", "web", &[]));
        d.add_workload(&info("jobs", "batch", "127.0.0.3", "batch", &[]));
        let web = "spiffe://cluster.local/ns/demo/sa/web";
        let batch = "spiffe://cluster.local/ns/jobs/sa/batch";
        let name = |m: Option<&Arc<WorkloadMeta>>| m.map(|m| m.name.clone());
        assert_eq!(
            name(d.source("127.0.0.2".parse().unwrap(), web)),
            Some("web-2".into())
        );
        // Two workloads share the identity and neither has the address: unknown.
        assert_eq!(name(d.source("10.0.0.1".parse().unwrap(), web)), None);
        // One workload has the identity: it, whatever the address.
        assert_eq!(
            name(d.source("10.0.0.1".parse().unwrap(), batch)),
            Some("batch".into())
        );
        // The address of a workload with another identity proves nothing.
        assert_eq!(
            name(d.source(
                "127.0.0.3".parse().unwrap(),
                "spiffe://cluster.local/ns/x/sa/y"
            )),
            None
        );
    }

    #[test]
    fn inbound_services_come_from_the_config_never_from_an_unknown_host() {
        let mut d = MeshDirectory::new();
        d.add_service("a.demo.svc.cluster.local", "demo");
        d.add_service("b.demo.svc.cluster.local", "demo");
        d.add_endpoint("a.demo.svc.cluster.local", "demo/srv", 9000);
        d.add_endpoint("a.demo.svc.cluster.local", "demo/srv", 8080);
        d.add_endpoint("b.demo.svc.cluster.local", "demo/srv", 8080);
        let host = |s: Option<&Arc<ServiceMeta>>| s.map(|s| s.host.clone());
        assert_eq!(
            host(d.inbound_service("demo/srv", 9000, None)),
            Some("a.demo.svc.cluster.local".into())
        );
        assert_eq!(
            host(d.inbound_service("demo/srv", 8080, None)),
            None,
            "two services: unknown"
        );
        assert_eq!(
            host(d.inbound_service("demo/srv", 8080, Some("B.demo.svc.cluster.local:8080"))),
            Some("b.demo.svc.cluster.local".into())
        );
        assert_eq!(
            host(d.inbound_service("demo/srv", 8080, Some("evil.example:8080"))),
            None
        );
        assert_eq!(host(d.inbound_service("demo/srv", 9001, None)), None);
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("a.b"), "a.b");
    }

    #[test]
    fn a_directory_split_in_parts_joins_back_to_itself() {
        let mut d = MeshDirectory::new();
        d.add_workload(&info("b", "w", "10.0.0.1", "sa", &[("app", "w")]));
        d.add_workload(&info("a-b", "x", "10.0.0.2", "sa", &[]));
        d.add_workload(&info("a", "x", "10.0.0.3", "shared", &[]));
        d.add_workload(&info("a", "y", "10.0.0.4", "shared", &[]));
        d.add_service("w.b.svc.cluster.local", "b");
        d.add_endpoint("w.b.svc.cluster.local", "b/w", 80);
        let part_of = |k: &str| k.len();
        let parts = d.split(4, part_of);
        assert_eq!(parts.len(), 4);
        assert_eq!(MeshDirectory::join(&parts), d);
        assert_eq!(MeshDirectory::join(parts.iter().rev()), d);
        // A change to one workload changes only its part.
        let mut e = d.clone();
        e.add_workload(&info("b", "w", "10.0.0.9", "sa", &[("app", "w")]));
        let changed: Vec<usize> = (0..4)
            .filter(|&i| e.split(4, part_of)[i] != parts[i])
            .collect();
        assert_eq!(changed, vec![part_of("b/w") % 4]);
    }
}
