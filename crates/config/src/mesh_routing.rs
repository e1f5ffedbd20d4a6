//! What a sidecar needs to serve VirtualService routing on its outbound HTTP side (the `mesh`
//! gateway): the VirtualServices bound to `mesh` that its namespace sees, compiled once
//! ([`crate::http_routing::HttpRoutes`]), and the DestinationRule policies of the services it
//! sees ([`crate::traffic_policy`]). Carried in [`crate::ProxyConfig::mesh_routes`]; serialized
//! as the specs, and compiled again when read back (a proxy on another host gets the specs).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::http_routing::{HttpRoutes, RouteError, RouteSource};
use crate::istio::{VirtualServiceSpec, MESH_GATEWAY};
use crate::load::Resource;
use crate::meta::parse_timestamp;
use crate::traffic_policy::DestinationPolicy;

/// One VirtualService as a proxy receives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutedService {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its spec.
    pub spec: VirtualServiceSpec,
}

/// The serialized form of [`MeshRoutes`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshRoutesSpec {
    /// The VirtualServices bound to `mesh` visible to the proxy's namespace, in routing order
    /// (creation time, then namespace and name).
    #[serde(default)]
    pub virtual_services: Vec<RoutedService>,
    /// DestinationRule policies by service host.
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationPolicy>,
}

/// The `mesh` routing table of one proxy, compiled.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(try_from = "MeshRoutesSpec", into = "MeshRoutesSpec")]
pub struct MeshRoutes {
    spec: MeshRoutesSpec,
    table: HttpRoutes,
}

impl PartialEq for MeshRoutes {
    fn eq(&self, other: &MeshRoutes) -> bool {
        self.spec == other.spec
    }
}

impl TryFrom<MeshRoutesSpec> for MeshRoutes {
    type Error = RouteError;

    fn try_from(spec: MeshRoutesSpec) -> Result<MeshRoutes, RouteError> {
        let sources: Vec<RouteSource<'_>> = spec
            .virtual_services
            .iter()
            .map(|v| RouteSource {
                namespace: &v.namespace,
                name: &v.name,
                spec: &v.spec,
            })
            .collect();
        let table = HttpRoutes::compile_sources(&sources, MESH_GATEWAY)?;
        Ok(MeshRoutes { spec, table })
    }
}

impl From<MeshRoutes> for MeshRoutesSpec {
    fn from(routes: MeshRoutes) -> MeshRoutesSpec {
        routes.spec
    }
}

impl MeshRoutes {
    /// The compiled routes.
    pub fn table(&self) -> &HttpRoutes {
        &self.table
    }

    /// The DestinationRule policy of a service host.
    pub fn destination(&self, host: &str) -> Option<&DestinationPolicy> {
        self.spec.destinations.get(host)
    }

    /// The specs.
    pub fn spec(&self) -> &MeshRoutesSpec {
        &self.spec
    }
}

/// Whether a VirtualService (in `own`) is exported to `client` (istio/api
/// virtual_service.proto `exportTo`, the same rule as ServiceEntries').
fn exported(vs: &Resource<VirtualServiceSpec>, client: &str) -> bool {
    match vs.spec.export_to.as_deref() {
        None | Some([]) => true,
        Some(list) => list.iter().any(|e| match e.as_str() {
            "*" => true,
            "." => vs.meta.namespace == client,
            "~" => false,
            named => named == client,
        }),
    }
}

/// Whether a VirtualService applies to the sidecars: `gateways` absent, or listing `mesh`.
fn binds_mesh(vs: &Resource<VirtualServiceSpec>) -> bool {
    match vs.spec.gateways.as_deref() {
        None | Some([]) => true,
        Some(list) => list.iter().any(|g| g == MESH_GATEWAY),
    }
}

/// The VirtualServices a sidecar in `client` routes by, in routing order: creation time (the
/// oldest first, those without one after, in load order), then namespace and name.
pub fn mesh_services(vss: &[Resource<VirtualServiceSpec>], client: &str) -> Vec<RoutedService> {
    ranked(vss, |vs| binds_mesh(vs) && exported(vs, client))
}

/// Every VirtualService in routing order (a gateway filters them by its servers:
/// `crate::gateways`).
pub(crate) fn ordered_services(vss: &[Resource<VirtualServiceSpec>]) -> Vec<RoutedService> {
    ranked(vss, |_| true)
}

/// The VirtualServices `keep` keeps, in routing order.
fn ranked(
    vss: &[Resource<VirtualServiceSpec>],
    keep: impl Fn(&Resource<VirtualServiceSpec>) -> bool,
) -> Vec<RoutedService> {
    let mut ranked: Vec<(usize, &Resource<VirtualServiceSpec>)> =
        vss.iter().enumerate().filter(|(_, vs)| keep(vs)).collect();
    ranked.sort_by(|(i, a), (j, b)| {
        let created = |r: &Resource<VirtualServiceSpec>| {
            r.meta
                .creation_timestamp
                .as_deref()
                .and_then(parse_timestamp)
        };
        let (ca, cb) = (created(a), created(b));
        (ca.is_none(), ca).cmp(&(cb.is_none(), cb)).then_with(|| {
            if ca.is_some() {
                (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name))
            } else {
                i.cmp(j)
            }
        })
    });
    ranked
        .into_iter()
        .map(|(_, vs)| RoutedService {
            namespace: vs.meta.namespace.clone(),
            name: vs.meta.name.clone(),
            spec: vs.spec.clone(),
        })
        .collect()
}

/// The parts of a VirtualService Ward does not serve (for WARD0102): `tls[]` and `tcp[]` on the
/// sidecars (`mesh`; gateways serve them: `crate::gateways`), and `http[].delegate`. Empty:
/// all of it is served.
pub fn unserved_virtual_service_fields(spec: &VirtualServiceSpec) -> Vec<String> {
    let mut out = Vec::new();
    let mesh = match spec.gateways.as_deref() {
        None | Some([]) => true,
        Some(list) => list.iter().any(|g| g == MESH_GATEWAY),
    };
    if mesh && spec.tls.as_ref().is_some_and(|t| !t.is_empty()) {
        out.push("spec.tls (on `mesh`; gateways serve it)".to_owned());
    }
    if mesh && spec.tcp.as_ref().is_some_and(|t| !t.is_empty()) {
        out.push("spec.tcp (on `mesh`; gateways serve it)".to_owned());
    }
    for (i, http) in spec.http.iter().flatten().enumerate() {
        if http.delegate.is_some() {
            out.push(format!("spec.http[{i}].delegate"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: own, namespace: a}
spec:
  hosts: [web]
  http: [{match: [{uri: {regex: "/v[0-9]+/.*"}}], route: [{destination: {host: web}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: private, namespace: b}
spec:
  hosts: [db]
  exportTo: ["."]
  http: [{route: [{destination: {host: db}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: a}
spec:
  hosts: [web.example.com]
  gateways: [ingress]
  http: [{route: [{destination: {host: web}}]}]
"#;

    #[test]
    fn sidecars_see_mesh_services_exported_to_them_and_read_them_back_from_json() {
        let set = crate::load_str("vs.yaml", YAML).unwrap();
        let names = |ns: &str| -> Vec<String> {
            mesh_services(&set.virtual_services, ns)
                .into_iter()
                .map(|v| format!("{}/{}", v.namespace, v.name))
                .collect()
        };
        // The gateway's VirtualService is not for sidecars; `exportTo: ["."]` keeps b's own.
        assert_eq!(names("a"), ["a/own"]);
        assert_eq!(names("b"), ["a/own", "b/private"]);
        let routes = MeshRoutes::try_from(MeshRoutesSpec {
            virtual_services: mesh_services(&set.virtual_services, "a"),
            destinations: BTreeMap::new(),
        })
        .unwrap();
        assert!(routes.table().covers("web.a.svc.cluster.local"));
        // A proxy on another host gets the specs and compiles them again.
        let json = serde_json::to_string(&routes).unwrap();
        let back: MeshRoutes = serde_json::from_str(&json).unwrap();
        assert_eq!(back, routes);
        assert!(back.table().covers("web.a.svc.cluster.local"));
    }

    #[test]
    fn unserved_fields_are_listed_for_the_warning() {
        let set = crate::load_str("vs.yaml", YAML).unwrap();
        let unserved: Vec<Vec<String>> = set
            .virtual_services
            .iter()
            .map(|v| unserved_virtual_service_fields(&v.spec))
            .collect();
        assert_eq!(unserved[0], Vec::<String>::new());
        assert_eq!(unserved[2], Vec::<String>::new());
    }
}
