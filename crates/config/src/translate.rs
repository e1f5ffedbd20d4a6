//! Translation: a [`ConfigSet`] in, one [`ProxyConfig`] per WorkloadEntry out. Pure.
//!
//! For each workload: its Sidecar gives the inbound ports (ingress listeners, each with the
//! port's effective PeerAuthentication mode) and the outbound listeners (egress listeners ×
//! matching ServiceEntry hosts, with endpoints and the transport to use); its
//! AuthorizationPolicies are compiled once and selected per workload, and so are the `jwtRules`
//! of its RequestAuthentications (`request_authn`). Every error names the
//! object, file and line; translation fails if there is any.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use ward_authn::JwtRuleSet;
use ward_policy::spec::PeerAuthenticationSpec;
use ward_policy::{
    effective_mtls, parse_dry_run, AuthzPolicy, MeshContext, MtlsMode, PeerAuthnPolicy, PolicyRef,
    WorkloadPolicies, DRY_RUN_ANNOTATION,
};

use crate::diag::{code, Diagnostic, Diagnostics, Severity};
use crate::istio::{
    parse_default_endpoint, port_number, AppEndpoint, HostNamespace, IstioEgressListener, Location,
    ServiceEntrySpec, ServicePort, SidecarHost, SidecarSpec, WorkloadEntrySpec,
};
use crate::load::{ConfigSet, Resource};
use crate::mesh_routing::{mesh_services, MeshRoutes, MeshRoutesSpec};
use crate::meta::parse_timestamp;
use crate::request_authn;
use crate::snapshot::{
    DemoApp, EgressSettings, Endpoint, ForwardProxy, InboundPort, MeshService, MeshServicePort,
    MeshSnapshot, OutboundListener, Protocol, ProxyConfig, Transport, WorkloadInfo,
    AUDIT_ON_FAILURE_ANNOTATION, DEMO_APP_ANNOTATION, KEEP_OVERRIDE_HEADERS_ANNOTATION,
};
use crate::telemetry::MeshDirectory;
use crate::traffic_policy::destination_policies;
use crate::yaml::{push_index, push_key};

/// Builds every proxy's configuration. Fails with all the errors found.
pub fn translate(set: &ConfigSet) -> Result<MeshSnapshot, Diagnostics> {
    let (context, mut errors) = Context::build(set);
    let mut proxies = BTreeMap::new();
    for workload in &context.workloads {
        let (proxy, proxy_errors) = context.proxy(workload);
        errors.extend(proxy_errors);
        proxies.insert(workload.resource.key(), proxy);
    }
    errors.extend(request_authn::issuer_conflicts(&context));
    errors.extend(request_authn::jwks_at_own_listeners(&context, &proxies));
    let mut errors = Diagnostics(errors);
    errors.sort();
    errors.0.dedup();
    if errors.has_errors() {
        return Err(errors);
    }
    let directory = Arc::new(context.directory(&proxies));
    for proxy in proxies.values_mut() {
        proxy.directory = directory.clone();
    }
    Ok(MeshSnapshot {
        trust_domain: set.mesh.trust_domain.clone(),
        trust_domain_aliases: set.mesh.trust_domain_aliases.clone(),
        root_namespace: set.mesh.root_namespace.clone(),
        proxies,
    })
}

/// A WorkloadEntry with what translation derives from it.
pub(crate) struct Workload<'a> {
    pub(crate) resource: &'a Resource<WorkloadEntrySpec>,
    pub(crate) address: IpAddr,
    /// `spec.labels` overlaid with `metadata.labels`.
    pub(crate) labels: BTreeMap<String, String>,
    /// `spiffe://...`.
    pub(crate) identity: String,
}

impl Workload<'_> {
    pub(crate) fn namespace(&self) -> &str {
        &self.resource.meta.namespace
    }
}

/// What every workload's translation shares: compiled policies, PeerAuthentications in
/// creation order, and the workloads.
pub(crate) struct Context<'a> {
    pub(crate) set: &'a ConfigSet,
    pub(crate) policies: Vec<AuthzPolicy>,
    /// The indices in `policies` of each namespace's AuthorizationPolicies, in order: a
    /// workload is selected only by its own namespace's and the root namespace's.
    policies_by_namespace: HashMap<String, Vec<usize>>,
    /// The indices in `set.service_entries` of each namespace's ServiceEntries with a
    /// `workloadSelector`, in order: those give a workload its inbound ports
    /// ([`Context::service_inbound`]). Scanning every entry for each workload was 3% of a
    /// change at 10,000 workloads and 2,000 services.
    selecting_entries: HashMap<String, Vec<usize>>,
    /// The compiled policy set of each distinct selection (indices in `policies`): workloads
    /// selected by the same policies share one, compiled and indexed once.
    authz_by_selection: std::cell::RefCell<HashMap<Vec<usize>, Arc<WorkloadPolicies>>>,
    /// The compiled policy of each AuthorizationPolicy, by index (`None`: did not compile).
    pub(crate) compiled: Vec<Option<usize>>,
    pub(crate) peer_authn: Vec<PeerAuthnPolicy>,
    pub(crate) workloads: Vec<Workload<'a>>,
    /// The auto-allocated address of each `namespace/host` without `spec.addresses`
    /// ([`crate::vip`]); the same for every workload.
    pub(crate) vips: BTreeMap<String, Ipv4Addr>,
    /// The services the workloads of each namespace see ([`Context::services_for`]), computed
    /// once per namespace: they depend on the namespace only.
    services_by_namespace: std::cell::RefCell<BTreeMap<String, Arc<BTreeMap<String, MeshService>>>>,
    /// The `mesh` routing of each namespace's workloads, computed once per namespace.
    routes_by_namespace: std::cell::RefCell<BTreeMap<String, Arc<MeshRoutes>>>,
    /// Indexes into `workloads`, by namespace.
    workloads_by_namespace: HashMap<String, Vec<usize>>,
    /// The first workload (in `workloads`' order) at each address.
    workload_by_address: HashMap<IpAddr, usize>,
    /// Each ServiceEntry port's endpoints and the errors found computing them, keyed by the
    /// port's address in `set`: they do not depend on who looks, so every namespace's services
    /// share one computation ([`Context::endpoints`]).
    endpoints_by_port: std::cell::RefCell<HashMap<usize, PortEndpoints>>,
}

/// A ServiceEntry port's endpoints, and the errors found computing them.
type PortEndpoints = (Vec<Endpoint>, Vec<Diagnostic>);

impl<'a> Context<'a> {
    /// Compiles and indexes everything; returns the errors found on the way.
    pub(crate) fn build(set: &'a ConfigSet) -> (Context<'a>, Vec<Diagnostic>) {
        let mut errors = Vec::new();
        let mesh = MeshContext {
            root_namespace: set.mesh.root_namespace.clone(),
            trust_domain: set.mesh.trust_domain.clone(),
            trust_domain_aliases: set.mesh.trust_domain_aliases.clone(),
        };
        let mut policies = Vec::new();
        let mut compiled = Vec::new();
        for ap in &set.authorization_policies {
            let dry_run = ap
                .meta
                .annotations
                .get(DRY_RUN_ANNOTATION)
                .and_then(|v| parse_dry_run(v))
                .unwrap_or(false);
            let reference = PolicyRef::new(ap.meta.namespace.clone(), ap.meta.name.clone());
            match AuthzPolicy::compile(reference, &ap.spec, dry_run, &mesh) {
                Ok(policy) => {
                    compiled.push(Some(policies.len()));
                    policies.push(policy);
                }
                Err(err) => {
                    compiled.push(None);
                    let field = if err.field.starts_with("spec") {
                        err.field.clone()
                    } else {
                        push_key("spec", &err.field)
                    };
                    errors.push(ap.diagnostic(
                        Severity::Error,
                        code::POLICY_INVALID,
                        &field,
                        err.message,
                    ));
                }
            }
        }
        let workloads = index_workloads(set, &mut errors);
        let mut workloads_by_namespace: HashMap<String, Vec<usize>> = HashMap::new();
        let mut workload_by_address = HashMap::new();
        for (i, w) in workloads.iter().enumerate() {
            workloads_by_namespace
                .entry(w.namespace().to_owned())
                .or_default()
                .push(i);
            workload_by_address.entry(w.address).or_insert(i);
        }
        let mut policies_by_namespace: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, p) in policies.iter().enumerate() {
            policies_by_namespace
                .entry(p.policy.namespace.clone())
                .or_default()
                .push(i);
        }
        let mut selecting_entries: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, se) in set.service_entries.iter().enumerate() {
            if se.spec.workload_selector.is_some() {
                selecting_entries
                    .entry(se.meta.namespace.clone())
                    .or_default()
                    .push(i);
            }
        }
        let context = Context {
            set,
            policies,
            policies_by_namespace,
            selecting_entries,
            authz_by_selection: Default::default(),
            compiled,
            peer_authn: peer_authn_policies(&set.peer_authentications),
            workloads,
            vips: allocate_vips(set),
            services_by_namespace: Default::default(),
            routes_by_namespace: Default::default(),
            workloads_by_namespace,
            workload_by_address,
            endpoints_by_port: Default::default(),
        };
        (context, errors)
    }

    fn root(&self) -> &str {
        &self.set.mesh.root_namespace
    }

    /// A tracing setting that cannot be served, on the Telemetry or the mesh settings that
    /// wrote it (`crate::tracing_policy`).
    fn tracing_error(&self, err: crate::tracing_policy::TracingError) -> Diagnostic {
        let telemetry = err
            .object
            .as_ref()
            .and_then(|key| self.set.telemetries.iter().find(|t| &t.key() == key));
        if let Some(t) = telemetry {
            return t.diagnostic(Severity::Error, code::INVALID, &err.field, err.reason);
        }
        let d = Diagnostic::new(Severity::Error, code::INVALID, err.reason).field(err.field);
        match &self.set.mesh.source {
            Some(src) => d.at(src.file.clone(), Some(src.line)),
            None => d,
        }
    }

    /// The Sidecar that configures `workload`.
    ///
    /// istio/api sidecar.proto: "A Sidecar configuration with a workloadSelector takes
    /// precedence over a Sidecar configuration without a workloadSelector" in the workload's
    /// namespace; "Each namespace can have only one Sidecar configuration without any
    /// workloadSelector"; the one "in the config root namespace will be applied by default to
    /// all namespaces without a Sidecar configuration". Two selectors matching one workload
    /// are an error in Ward (Istio's choice between them is undefined).
    pub(crate) fn sidecar_for(
        &self,
        workload: &Workload<'_>,
    ) -> Result<Option<&'a Resource<SidecarSpec>>, Box<Diagnostic>> {
        let ns = workload.namespace();
        let sidecars = &self.set.sidecars;
        let selecting: Vec<_> = sidecars
            .iter()
            .filter(|s| s.meta.namespace == ns)
            .filter(|s| {
                s.spec
                    .workload_selector
                    .as_ref()
                    .is_some_and(|sel| sel.matches(&workload.labels))
            })
            .collect();
        if let [first, second, ..] = selecting.as_slice() {
            return Err(Box::new(second.diagnostic(
                Severity::Error,
                code::SIDECAR_CONFLICT,
                "spec.workloadSelector",
                format!(
                    "{} and {} both select workload {}; a workload must be selected by one \
                     Sidecar",
                    first.object(),
                    second.object(),
                    workload.resource.key()
                ),
            )));
        }
        if let Some(one) = selecting.first() {
            return Ok(Some(one));
        }
        for namespace in [ns, self.root()] {
            let defaults: Vec<_> = sidecars
                .iter()
                .filter(|s| s.meta.namespace == namespace && s.spec.workload_selector.is_none())
                .collect();
            match defaults.as_slice() {
                [] => continue,
                [one] => return Ok(Some(one)),
                [first, second, ..] => {
                    return Err(Box::new(second.diagnostic(
                        Severity::Error,
                        code::SIDECAR_CONFLICT,
                        "metadata.name",
                        format!(
                            "namespace `{namespace}` has two Sidecars without workloadSelector \
                             ({} and {}); Istio allows one",
                            first.object(),
                            second.object()
                        ),
                    )))
                }
            }
        }
        Ok(None)
    }

    /// The ServiceEntry hosts an egress host pattern selects for a workload in `namespace`.
    pub(crate) fn services_matching(
        &self,
        host: &SidecarHost,
        namespace: &str,
    ) -> Vec<(&'a Resource<ServiceEntrySpec>, &'a str)> {
        let mut matched = Vec::new();
        for se in &self.set.service_entries {
            if !se.spec.visible_to(&se.meta.namespace, namespace) {
                continue;
            }
            for name in se.spec.hosts() {
                if host.matches(namespace, &se.meta.namespace, name) {
                    matched.push((se, name.as_str()));
                }
            }
        }
        matched
    }

    /// The services an egress listener's hosts match for a workload in `namespace`, when the
    /// listener has a `port` and none of them has it: such a listener gives no outbound
    /// listener. `None` when the listener has no port, matches nothing, or serves a service.
    pub(crate) fn services_without_egress_port(
        &self,
        egress: &IstioEgressListener,
        namespace: &str,
    ) -> Option<Vec<(&'a Resource<ServiceEntrySpec>, &'a str)>> {
        egress.port.as_ref().and_then(|p| p.number)?;
        if is_forward_proxy(egress) {
            // Its port is the proxy's own, never a service's.
            return None;
        }
        let mut matched: Vec<(&'a Resource<ServiceEntrySpec>, &'a str)> = Vec::new();
        for host in egress.hosts() {
            let Ok(pattern) = SidecarHost::parse(host) else {
                continue;
            };
            for service in self.services_matching(&pattern, namespace) {
                if !ports_for(egress, &service.0.spec).is_empty() {
                    return None;
                }
                if !matched
                    .iter()
                    .any(|m| std::ptr::eq(m.0, service.0) && m.1 == service.1)
                {
                    matched.push(service);
                }
            }
        }
        (!matched.is_empty()).then_some(matched)
    }

    pub(crate) fn mtls_of(
        &self,
        workload: &Workload<'_>,
        port: u16,
    ) -> (MtlsMode, Option<PolicyRef>) {
        let effective = effective_mtls(
            &self.peer_authn,
            self.root(),
            workload.namespace(),
            &workload.labels,
            port,
        );
        (effective.mode, effective.policy)
    }

    /// The metric labels of every workload and service (`crate::telemetry`): the workloads of
    /// `proxies`, each ServiceEntry host, and which workload ports each host's endpoints are.
    fn directory(&self, proxies: &BTreeMap<String, ProxyConfig>) -> MeshDirectory {
        let mut directory = MeshDirectory::new();
        for proxy in proxies.values() {
            directory.add_workload(&proxy.workload);
        }
        for se in &self.set.service_entries {
            for host in se.spec.hosts() {
                directory.add_service(host, &se.meta.namespace);
                for port in se.spec.ports.iter().flatten() {
                    // Errors in the endpoints were reported when the proxies were built.
                    for ep in self.endpoints(se, port, &mut Vec::new()) {
                        if let Some(key) = &ep.workload {
                            directory.add_endpoint(host, key, ep.address.port());
                        }
                    }
                }
            }
        }
        directory
    }

    /// One workload's proxy, and the errors found building it.
    fn proxy(&self, workload: &Workload<'_>) -> (ProxyConfig, Vec<Diagnostic>) {
        let mut errors = Vec::new();
        let sidecar = self.sidecar_for(workload).unwrap_or_else(|err| {
            errors.push(*err);
            None
        });
        let we = workload.resource;
        let demo_app = sidecar
            .and_then(|s| s.meta.annotations.get(DEMO_APP_ANNOTATION))
            .or_else(|| we.meta.annotations.get(DEMO_APP_ANNOTATION))
            .and_then(|v| DemoApp::parse(v));
        let keep_override_headers = sidecar
            .and_then(|s| s.meta.annotations.get(KEEP_OVERRIDE_HEADERS_ANNOTATION))
            .or_else(|| we.meta.annotations.get(KEEP_OVERRIDE_HEADERS_ANNOTATION))
            .is_some_and(|v| v == "true");
        let audit_fail_closed = sidecar
            .and_then(|s| s.meta.annotations.get(AUDIT_ON_FAILURE_ANNOTATION))
            .or_else(|| we.meta.annotations.get(AUDIT_ON_FAILURE_ANNOTATION))
            .is_some_and(|v| v == "fail-closed");
        let inbound = sidecar
            .map(|s| self.inbound(workload, s, &mut errors))
            .unwrap_or_default();
        let outbound = sidecar
            .map(|s| self.outbound(workload, s, &mut errors))
            .unwrap_or_default();
        if let Some(sidecar) = sidecar {
            errors.extend(check_binds(workload, sidecar, &inbound, &outbound));
        }
        // A Sidecar with ingress listeners names the inbound ports itself, captured or not.
        let service_inbound = if sidecar.is_some_and(|s| !s.spec.ingress().is_empty()) {
            Vec::new()
        } else {
            self.service_inbound(workload)
        };
        // Compiled here, once per configuration, like the AuthorizationPolicies: a request reads
        // the authenticator from its config.
        let jwt_rules = request_authn::jwt_rule_set(self, workload).unwrap_or_else(|err| {
            errors.push(*err);
            JwtRuleSet::default()
        });
        // `proxy.istio.io/config` on the WorkloadEntry (a pod's annotation in Istio), else the
        // mesh's `defaultConfig` (a bad annotation is an error at load: `load.rs`).
        let num_trusted_proxies = we
            .meta
            .annotations
            .get(crate::snapshot::PROXY_CONFIG_ANNOTATION)
            .and_then(|v| crate::mesh::annotation_trusted_proxies(v).ok().flatten())
            .unwrap_or(self.set.mesh.num_trusted_proxies);
        let outbound_traffic_policy = sidecar
            .and_then(|s| s.spec.outbound_traffic_policy.as_ref())
            .and_then(|p| p.mode)
            .unwrap_or(self.set.mesh.outbound_traffic_policy);
        let proxy = ProxyConfig {
            workload: WorkloadInfo {
                name: we.meta.name.clone(),
                namespace: we.meta.namespace.clone(),
                service_account: we.spec.service_account().to_owned(),
                address: workload.address,
                labels: workload.labels.clone(),
                identity: workload.identity.clone(),
                demo_app,
                keep_override_headers,
                audit_fail_closed,
                num_trusted_proxies,
            },
            inbound,
            outbound,
            authz: self.authz_for(workload),
            jwt_rules,
            outbound_traffic_policy: outbound_traffic_policy.as_str().to_owned(),
            services: self.services_in_namespace(workload, &mut errors),
            service_inbound,
            directory: Default::default(),
            egress: EgressSettings {
                forward_proxies: sidecar
                    .map(|s| self.forward_proxies(workload, s, &mut errors))
                    .unwrap_or_default(),
                dns_resolvers: self.set.mesh.dns_resolvers.clone(),
            },
            mesh_routes: Default::default(),
            gateway: Default::default(),
            tracing: Default::default(),
            access_logging: Arc::new(crate::access_log_policy::access_log_policy(
                self.set,
                self.root(),
                workload.namespace(),
                &workload.labels,
            )),
            metrics: Arc::new(crate::metrics_policy::metrics_policy(
                self.set,
                self.root(),
                workload.namespace(),
                &workload.labels,
            )),
        };
        let mut proxy = proxy;
        match crate::tracing_policy::tracing_policy(
            self.set,
            self.root(),
            workload.namespace(),
            &workload.labels,
        ) {
            Ok(policy) => proxy.tracing = Arc::new(policy),
            Err(err) => errors.push(self.tracing_error(err)),
        }
        proxy.mesh_routes = self.routes_in_namespace(workload, &proxy.services, &mut errors);
        match crate::gateways::gateway_routes(self.set, workload.namespace(), &workload.labels) {
            Ok(Some(routes)) => proxy.gateway = Arc::new(routes),
            Ok(None) => {}
            Err(err) => {
                let vs = self
                    .set
                    .virtual_services
                    .iter()
                    .find(|vs| vs.key() == err.object);
                if let Some(vs) = vs {
                    errors.push(vs.diagnostic(
                        Severity::Error,
                        code::INVALID,
                        &err.field,
                        err.reason.clone(),
                    ));
                }
            }
        }
        (proxy, errors)
    }

    /// The AuthorizationPolicies that apply to `workload`, in order ([`AuthzPolicy::applies_to`]
    /// over its namespace's and the root namespace's), as a set shared with every workload
    /// they select alike. At 10,000 workloads and 1,000 policies, testing every policy and
    /// compiling every workload's set was a quarter of a change's translation.
    pub(crate) fn authz_for(&self, workload: &Workload<'_>) -> Arc<WorkloadPolicies> {
        let (namespace, root) = (workload.namespace(), self.root());
        let of = |ns: &str| {
            self.policies_by_namespace
                .get(ns)
                .map_or(&[][..], Vec::as_slice)
        };
        let mut candidates: Vec<usize> = of(root).to_vec();
        if namespace != root {
            candidates.extend_from_slice(of(namespace));
            candidates.sort_unstable();
        }
        candidates.retain(|&i| self.policies[i].applies_to(namespace, &workload.labels, root));
        if let Some(found) = self.authz_by_selection.borrow().get(&candidates) {
            return found.clone();
        }
        let set = Arc::new(WorkloadPolicies::new(
            candidates
                .iter()
                .map(|&i| self.policies[i].clone())
                .collect(),
        ));
        self.authz_by_selection
            .borrow_mut()
            .insert(candidates, set.clone());
        set
    }

    /// Every ServiceEntry host visible to `workload`, with its addresses and endpoints, for
    /// transparent capture. The first entry declaring a host wins.
    /// [`Context::services_for`] for `workload`'s namespace, computed once per namespace.
    fn services_in_namespace(
        &self,
        workload: &Workload<'_>,
        errors: &mut Vec<Diagnostic>,
    ) -> Arc<BTreeMap<String, MeshService>> {
        if let Some(found) = self
            .services_by_namespace
            .borrow()
            .get(workload.namespace())
        {
            return found.clone();
        }
        let services = Arc::new(self.services_for(workload, errors));
        self.services_by_namespace
            .borrow_mut()
            .insert(workload.namespace().to_owned(), services.clone());
        services
    }

    /// The `mesh` VirtualServices and DestinationRule policies for `workload`'s namespace,
    /// compiled once per namespace. A VirtualService that does not compile is an error on it.
    fn routes_in_namespace(
        &self,
        workload: &Workload<'_>,
        services: &BTreeMap<String, MeshService>,
        errors: &mut Vec<Diagnostic>,
    ) -> Arc<MeshRoutes> {
        let namespace = workload.namespace();
        if let Some(found) = self.routes_by_namespace.borrow().get(namespace) {
            return found.clone();
        }
        let by_key: BTreeMap<String, &BTreeMap<String, String>> =
            if self.set.destination_rules.is_empty() {
                BTreeMap::new()
            } else {
                self.workloads
                    .iter()
                    .map(|w| (w.resource.key(), &w.labels))
                    .collect()
            };
        let labels = |key: &str| by_key.get(key).map(|l| (*l).clone());
        let spec = MeshRoutesSpec {
            virtual_services: mesh_services(&self.set.virtual_services, namespace),
            destinations: destination_policies(self.set, namespace, self.root(), services, labels),
        };
        let routes = match MeshRoutes::try_from(spec) {
            Ok(routes) => routes,
            Err(err) => {
                let vs = self
                    .set
                    .virtual_services
                    .iter()
                    .find(|vs| vs.key() == err.object);
                if let Some(vs) = vs {
                    errors.push(vs.diagnostic(
                        Severity::Error,
                        code::INVALID,
                        &err.field,
                        err.reason.clone(),
                    ));
                }
                MeshRoutes::default()
            }
        };
        let routes = Arc::new(routes);
        self.routes_by_namespace
            .borrow_mut()
            .insert(namespace.to_owned(), routes.clone());
        routes
    }

    fn services_for(
        &self,
        workload: &Workload<'_>,
        errors: &mut Vec<Diagnostic>,
    ) -> BTreeMap<String, MeshService> {
        let mut services = BTreeMap::new();
        for se in &self.set.service_entries {
            if !se.spec.visible_to(&se.meta.namespace, workload.namespace()) {
                continue;
            }
            let explicit: Vec<IpNet> = se
                .spec
                .addresses
                .iter()
                .flatten()
                .filter_map(|a| parse_net(a))
                .collect();
            for host in se.spec.hosts() {
                if services.contains_key(host) {
                    continue;
                }
                let auto = self.vips.get(&vip_key(&se.meta.namespace, host));
                let addresses = match auto {
                    Some(ip) if explicit.is_empty() => vec![IpNet::from(IpAddr::V4(*ip))],
                    _ => explicit.clone(),
                };
                let ports = se
                    .spec
                    .ports()
                    .iter()
                    .filter_map(|p| {
                        Some(MeshServicePort {
                            number: port_number(p.number)?,
                            protocol: p.protocol(),
                            target_port: p.target_port.and_then(port_number),
                            endpoints: self.endpoints(se, p, errors),
                            tls: crate::origination::origination(
                                self.set,
                                workload.namespace(),
                                None,
                                &se.meta.namespace,
                                host,
                                port_number(p.number)?,
                            )
                            .map(Arc::new),
                        })
                    })
                    .collect();
                services.insert(
                    host.clone(),
                    MeshService {
                        namespace: se.meta.namespace.clone(),
                        hostnames: hostnames(host, workload.namespace()),
                        addresses,
                        auto_allocated: auto.is_some() && explicit.is_empty(),
                        ports,
                        resolution: se.spec.resolution.unwrap_or_default(),
                    },
                );
            }
        }
        services
    }

    /// The inbound ports of a captured workload without Sidecar ingress listeners, as Istio
    /// derives them: each port of every ServiceEntry of its namespace that selects it (at the
    /// port its WorkloadEntry `ports` names, else `targetPort`, else the number), then each
    /// WorkloadEntry `ports` value not covered yet (protocol from its name). The app is reached
    /// at `<workload address>:<port>` (Istio sidecars forward inbound to the pod IP since 1.10).
    fn service_inbound(&self, workload: &Workload<'_>) -> Vec<InboundPort> {
        let mut ports: Vec<InboundPort> = Vec::new();
        let mut add = |port: u16, protocol: Protocol| {
            if ports.iter().any(|p| p.port == port) {
                return;
            }
            let (mtls, mtls_policy) = self.mtls_of(workload, port);
            ports.push(InboundPort {
                port,
                protocol,
                target: SocketAddr::new(workload.address, port),
                mtls,
                mtls_policy,
            });
        };
        let we_ports = workload.resource.spec.ports.as_ref();
        let candidates = self
            .selecting_entries
            .get(workload.namespace())
            .map_or(&[][..], Vec::as_slice);
        for se in candidates.iter().map(|&i| &self.set.service_entries[i]) {
            let selects = se
                .spec
                .workload_selector
                .as_ref()
                .is_some_and(|sel| sel.matches(&workload.labels));
            if !selects {
                continue;
            }
            for se_port in se.spec.ports() {
                let named = se_port
                    .name
                    .as_ref()
                    .and_then(|name| we_ports.and_then(|p| p.get(name)))
                    .copied();
                let target = named.or(se_port.target_port).unwrap_or(se_port.number);
                if let Some(port) = port_number(target) {
                    add(port, se_port.protocol());
                }
            }
        }
        for (name, number) in we_ports.into_iter().flatten() {
            if let Some(port) = port_number(*number) {
                add(
                    port,
                    Protocol::of_port(None, Some(name)).unwrap_or(Protocol::Unknown),
                );
            }
        }
        ports
    }

    /// One inbound port per ingress listener. `port.number` is served on the workload
    /// address; `defaultEndpoint` is where the app listens. These listeners are explicit
    /// whether or not the workload's traffic is captured (docs/capture.md).
    fn inbound(
        &self,
        workload: &Workload<'_>,
        sidecar: &Resource<SidecarSpec>,
        errors: &mut Vec<Diagnostic>,
    ) -> Vec<InboundPort> {
        let mut ports = Vec::new();
        for (i, listener) in sidecar.spec.ingress().iter().enumerate() {
            let path = push_index("spec.ingress", i);
            let Some(sidecar_port) = &listener.port else {
                continue;
            };
            let Some(port) = sidecar_port.number.and_then(port_number) else {
                continue;
            };
            let Some(Ok(endpoint)) = listener
                .default_endpoint
                .as_deref()
                .map(parse_default_endpoint)
            else {
                continue;
            };
            let target = match endpoint {
                AppEndpoint::Local(addr) => addr,
                AppEndpoint::WorkloadAddress(app_port) => {
                    SocketAddr::new(workload.address, app_port)
                }
            };
            if target == SocketAddr::new(workload.address, port) {
                errors.push(sidecar.diagnostic(
                    Severity::Error,
                    code::LISTENER_CONFLICT,
                    &push_key(&path, "defaultEndpoint"),
                    format!(
                        "for workload {} the app endpoint {target} is the listener itself; \
                         give the app another port",
                        workload.resource.key()
                    ),
                ));
                continue;
            }
            let (mtls, mtls_policy) = self.mtls_of(workload, port);
            ports.push(InboundPort {
                port,
                protocol: sidecar_port.protocol(),
                target,
                mtls,
                mtls_policy,
            });
        }
        ports
    }

    /// One listener per (egress listener, matched ServiceEntry host, port).
    fn outbound(
        &self,
        workload: &Workload<'_>,
        sidecar: &Resource<SidecarSpec>,
        errors: &mut Vec<Diagnostic>,
    ) -> Vec<OutboundListener> {
        let mut listeners: Vec<OutboundListener> = Vec::new();
        for egress in sidecar.spec.egress() {
            if is_forward_proxy(egress) {
                continue;
            }
            let bind_ip = egress
                .bind
                .as_deref()
                .and_then(|b| b.parse().ok())
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            for host in egress.hosts() {
                let Ok(pattern) = SidecarHost::parse(host) else {
                    continue;
                };
                if pattern.namespace == HostNamespace::Nothing {
                    continue;
                }
                // A host matching nothing yet is not an error: it simply gives no listener
                // (`ward analyze` reports it, WARD0211). Nor is an egress `port` that none of the
                // matched services has: Istio accepts that Sidecar, and here it gives no listener
                // either (`ward analyze` warns, WARD0211).
                let services = self.services_matching(&pattern, workload.namespace());
                for (se, name) in services {
                    for se_port in ports_for(egress, &se.spec) {
                        let listener =
                            self.listener(workload, bind_ip, egress, (se, name), se_port, errors);
                        if let Some(listener) = listener {
                            if !listeners.contains(&listener) {
                                listeners.push(listener);
                            }
                        }
                    }
                }
            }
        }
        errors.extend(check_shared_listeners(sidecar, workload, &listeners));
        listeners
    }

    /// The Sidecar's explicit forward-proxy listeners (`port.protocol: HTTP_PROXY`), each with
    /// the ServiceEntry hosts its `hosts` select (docs/egress.md).
    fn forward_proxies(
        &self,
        workload: &Workload<'_>,
        sidecar: &Resource<SidecarSpec>,
        errors: &mut Vec<Diagnostic>,
    ) -> Vec<ForwardProxy> {
        let mut proxies = Vec::new();
        for (i, egress) in sidecar.spec.egress().iter().enumerate() {
            if !is_forward_proxy(egress) {
                continue;
            }
            let Some(port) = egress
                .port
                .as_ref()
                .and_then(|p| p.number)
                .and_then(port_number)
            else {
                errors.push(sidecar.diagnostic(
                    Severity::Error,
                    code::INVALID,
                    &push_key(&push_index("spec.egress", i), "port.number"),
                    "an HTTP_PROXY egress listener needs a port number to listen on".to_owned(),
                ));
                continue;
            };
            let bind_ip = egress
                .bind
                .as_deref()
                .and_then(|b| b.parse().ok())
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            let mut hosts: Vec<String> = Vec::new();
            for host in egress.hosts() {
                let Ok(pattern) = SidecarHost::parse(host) else {
                    continue;
                };
                if pattern.namespace == HostNamespace::Nothing {
                    continue;
                }
                for (_, name) in self.services_matching(&pattern, workload.namespace()) {
                    if !hosts.iter().any(|h| h == name) {
                        hosts.push(name.to_owned());
                    }
                }
            }
            proxies.push(ForwardProxy {
                bind: SocketAddr::new(bind_ip, port),
                hosts,
            });
        }
        proxies
    }

    fn listener(
        &self,
        workload: &Workload<'_>,
        bind_ip: IpAddr,
        egress: &IstioEgressListener,
        (se, host): (&Resource<ServiceEntrySpec>, &str),
        se_port: &ServicePort,
        errors: &mut Vec<Diagnostic>,
    ) -> Option<OutboundListener> {
        let service_port = port_number(se_port.number)?;
        let listen_port = egress
            .port
            .as_ref()
            .and_then(|p| p.number)
            .and_then(port_number)
            .unwrap_or(service_port);
        let protocol = match egress.port.as_ref().map(|p| p.protocol()) {
            Some(p) if p != Protocol::Unknown => p,
            _ => se_port.protocol(),
        };
        Some(OutboundListener {
            bind: SocketAddr::new(bind_ip, listen_port),
            service: host.to_owned(),
            service_port,
            protocol,
            endpoints: self.endpoints(se, se_port, errors),
            tls: crate::origination::origination(
                self.set,
                workload.namespace(),
                Some(&workload.labels),
                &se.meta.namespace,
                host,
                service_port,
            )
            .map(Arc::new),
        })
    }

    /// The endpoints of one ServiceEntry port.
    ///
    /// Selected WorkloadEntries (MESH_INTERNAL with workloadSelector) and inline endpoints
    /// both use the port named like the service port, else `targetPort`, else the service
    /// port. Transport follows Istio auto-mTLS (istio/istio
    /// `pilot/pkg/networking/core/cluster_tls.go`): mTLS (HBONE) to a workload with a sidecar
    /// unless the service is MESH_EXTERNAL, auto-mTLS is off, or the destination port's
    /// PeerAuthentication mode is DISABLE; otherwise plaintext.
    ///
    /// `se_port` is one of `se`'s ports in the config set (the cache is keyed by its address):
    /// computed once, and the same errors given to every caller.
    pub(crate) fn endpoints(
        &self,
        se: &Resource<ServiceEntrySpec>,
        se_port: &ServicePort,
        errors: &mut Vec<Diagnostic>,
    ) -> Vec<Endpoint> {
        let key = std::ptr::from_ref(se_port) as usize;
        if let Some((endpoints, found)) = self.endpoints_by_port.borrow().get(&key) {
            errors.extend(found.iter().cloned());
            return endpoints.clone();
        }
        let mut found = Vec::new();
        let endpoints = self.endpoints_of(se, se_port, &mut found);
        errors.extend(found.iter().cloned());
        self.endpoints_by_port
            .borrow_mut()
            .insert(key, (endpoints.clone(), found));
        endpoints
    }

    fn endpoints_of(
        &self,
        se: &Resource<ServiceEntrySpec>,
        se_port: &ServicePort,
        errors: &mut Vec<Diagnostic>,
    ) -> Vec<Endpoint> {
        let mut endpoints = Vec::new();
        let internal = se.spec.location.unwrap_or_default() == Location::MeshInternal;
        let target_port = |ports: Option<&BTreeMap<String, u32>>| -> Option<u16> {
            se_port
                .name
                .as_ref()
                .and_then(|name| ports.and_then(|p| p.get(name)))
                .copied()
                .or(se_port.target_port)
                .or(Some(se_port.number))
                .and_then(port_number)
        };
        if let Some(selector) = &se.spec.workload_selector {
            let in_namespace = self
                .workloads_by_namespace
                .get(&se.meta.namespace)
                .into_iter()
                .flatten()
                .filter_map(|i| self.workloads.get(*i));
            for workload in in_namespace {
                if !selector.matches(&workload.labels) {
                    continue;
                }
                let Some(port) = target_port(workload.resource.spec.ports.as_ref()) else {
                    continue;
                };
                endpoints.push(self.endpoint_to(workload, port, internal));
            }
        }
        for (i, inline) in se.spec.endpoints.iter().flatten().enumerate() {
            let Some(port) = target_port(inline.ports.as_ref()) else {
                continue;
            };
            let Some(ip) = inline.ip() else {
                errors.push(se.diagnostic(
                    Severity::Error,
                    code::ENDPOINT_INVALID,
                    &push_key(&push_index("spec.endpoints", i), "address"),
                    format!(
                        "`{}` is not an IP address: Ward needs an IP address here (it does not \
                         resolve DNS names)",
                        inline.address.as_deref().unwrap_or_default()
                    ),
                ));
                continue;
            };
            let at_address = self
                .workload_by_address
                .get(&ip)
                .and_then(|i| self.workloads.get(*i));
            match at_address {
                // An inline endpoint at a WorkloadEntry's address is that workload.
                Some(workload) => endpoints.push(self.endpoint_to(workload, port, internal)),
                None => endpoints.push(Endpoint {
                    address: SocketAddr::new(ip, port),
                    workload: None,
                    identity: None,
                    transport: Transport::Plaintext,
                }),
            }
        }
        endpoints
    }

    fn endpoint_to(&self, workload: &Workload<'_>, port: u16, internal: bool) -> Endpoint {
        let address = SocketAddr::new(workload.address, port);
        if !internal {
            return Endpoint {
                address,
                workload: None,
                identity: None,
                transport: Transport::Plaintext,
            };
        }
        let (mode, _) = self.mtls_of(workload, port);
        Endpoint {
            address,
            workload: Some(workload.resource.key()),
            identity: Some(workload.identity.clone()),
            transport: mesh_transport(self.set, mode),
        }
    }
}

/// The key a host's auto-allocated address is computed from: `namespace/host`.
fn vip_key(namespace: &str, host: &str) -> String {
    format!("{namespace}/{host}")
}

/// `spec.addresses` entry as a network: a plain address is a /32 (/128).
fn parse_net(address: &str) -> Option<IpNet> {
    address
        .parse::<IpAddr>()
        .map(IpNet::from)
        .ok()
        .or_else(|| address.parse::<IpNet>().ok())
}

/// The auto-allocated address of every non-wildcard host of an entry without `spec.addresses`
/// (docs/capture.md, "Service addresses"). Unlike Istio, the resolution does not matter: Ward
/// always routes a service's connections to its endpoints, never to the original destination.
fn allocate_vips(set: &ConfigSet) -> BTreeMap<String, Ipv4Addr> {
    let mut keys = BTreeSet::new();
    let mut reserved = Vec::new();
    for se in &set.service_entries {
        match se.spec.addresses.as_deref() {
            Some(list) if !list.is_empty() => {
                reserved.extend(list.iter().filter_map(|a| a.parse::<IpAddr>().ok()));
            }
            _ => keys.extend(
                se.spec
                    .hosts()
                    .iter()
                    .filter(|h| !h.starts_with('*'))
                    .map(|h| vip_key(&se.meta.namespace, h)),
            ),
        }
    }
    crate::vip::allocate(&keys, &reserved)
}

/// The names a client in `client_namespace` may use for `host` (see
/// [`MeshService::hostnames`]).
fn hostnames(host: &str, client_namespace: &str) -> Vec<String> {
    let mut names = vec![host.to_owned()];
    let labels: Vec<&str> = host.split('.').collect();
    if let [name, ns, "svc", _, ..] = labels.as_slice() {
        names.push(format!("{name}.{ns}.svc"));
        names.push(format!("{name}.{ns}"));
        if *ns == client_namespace {
            names.push((*name).to_owned());
        }
    }
    names
}

/// How a proxy reaches a workload in the mesh whose port has `mode`: mTLS (HBONE) unless
/// auto-mTLS is off or the port is DISABLE (istio/istio `pilot/pkg/networking/core/cluster_tls.go`).
pub(crate) fn mesh_transport(set: &ConfigSet, mode: MtlsMode) -> Transport {
    if set.mesh.enable_auto_mtls && mode != MtlsMode::Disable {
        Transport::Hbone
    } else {
        Transport::Plaintext
    }
}

/// The endpoints a proxy calling `host`:`port` gets, as [`translate()`] builds them; `None`
/// when no ServiceEntry has that host with that port. For `ward check`.
pub(crate) fn service_endpoints(set: &ConfigSet, host: &str, port: u16) -> Option<Vec<Endpoint>> {
    let (context, _) = Context::build(set);
    let (se, se_port) = set.service_entries.iter().find_map(|se| {
        let has_host = se.spec.hosts().iter().any(|h| h == host);
        let se_port = se
            .spec
            .ports()
            .iter()
            .find(|p| p.number == u32::from(port))?;
        has_host.then_some((se, se_port))
    })?;
    Some(context.endpoints(se, se_port, &mut Vec::new()))
}

/// The effective PeerAuthentication of `port` on `workload` (`namespace/name`), as
/// [`translate()`] resolves it for the workload's inbound ports. For `ward check`.
pub(crate) fn workload_mtls(
    set: &ConfigSet,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    port: u16,
) -> ward_policy::EffectiveMtls {
    effective_mtls(
        &peer_authn_policies(&set.peer_authentications),
        &set.mesh.root_namespace,
        namespace,
        labels,
        port,
    )
}

pub(crate) fn unmatched_host_message(host: &str, namespace: &str) -> String {
    format!(
        "egress host `{host}` matches no ServiceEntry visible to namespace `{namespace}`; \
         declare the service with a ServiceEntry (check its hosts and exportTo)"
    )
}

/// Whether an egress listener is an explicit forward proxy: `port.protocol: HTTP_PROXY`
/// (Istio's protocol for a listener that serves HTTP CONNECT and absolute-form requests).
fn is_forward_proxy(egress: &IstioEgressListener) -> bool {
    egress
        .port
        .as_ref()
        .and_then(|p| p.protocol.as_deref())
        .is_some_and(|p| p.eq_ignore_ascii_case("HTTP_PROXY"))
}

/// The ServiceEntry ports an egress listener serves: the one with the listener's port
/// number, or every port when the listener has none.
fn ports_for<'s>(egress: &IstioEgressListener, se: &'s ServiceEntrySpec) -> Vec<&'s ServicePort> {
    match egress.port.as_ref().and_then(|p| p.number) {
        Some(number) => se.ports().iter().filter(|p| p.number == number).collect(),
        None => se.ports().iter().collect(),
    }
}

/// Several services may share a listener only when it speaks HTTP: the proxy then routes each
/// request by its `Host` / `:authority` (`crate::routes`; docs/http.md, "Outbound: routing by
/// Host"). A TCP listener forwards whole connections, so it has exactly one service.
fn check_shared_listeners(
    sidecar: &Resource<SidecarSpec>,
    workload: &Workload<'_>,
    listeners: &[OutboundListener],
) -> Vec<Diagnostic> {
    let mut by_bind: BTreeMap<SocketAddr, Vec<&OutboundListener>> = BTreeMap::new();
    for listener in listeners {
        by_bind.entry(listener.bind).or_default().push(listener);
    }
    let mut errors = Vec::new();
    for (bind, group) in by_bind {
        let services: BTreeSet<(&str, u16)> = group
            .iter()
            .map(|l| (l.service.as_str(), l.service_port))
            .collect();
        if services.len() > 1 && group.iter().any(|l| !l.protocol.is_http()) {
            let names: Vec<String> = services.iter().map(|(s, p)| format!("{s}:{p}")).collect();
            errors.push(sidecar.diagnostic(
                Severity::Error,
                code::LISTENER_CONFLICT,
                "spec.egress",
                format!(
                    "for workload {}, the TCP listener {bind} would serve several services ({}); \
                     give each its own egress port or bind address",
                    workload.resource.key(),
                    names.join(", ")
                ),
            ));
        }
    }
    errors
}

/// An outbound listener must not take an inbound listener's or the app's address.
fn check_binds(
    workload: &Workload<'_>,
    sidecar: &Resource<SidecarSpec>,
    inbound: &[InboundPort],
    outbound: &[OutboundListener],
) -> Vec<Diagnostic> {
    let mut taken: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for port in inbound {
        taken.insert(
            SocketAddr::new(workload.address, port.port),
            format!("inbound port {}", port.port),
        );
        taken.insert(
            port.target,
            format!("the app endpoint of inbound port {}", port.port),
        );
    }
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for listener in outbound {
        if !seen.insert(listener.bind) {
            continue;
        }
        if let Some(owner) = taken.get(&listener.bind) {
            errors.push(sidecar.diagnostic(
                Severity::Error,
                code::LISTENER_CONFLICT,
                "spec.egress",
                format!(
                    "for workload {}, the egress listener {} for {} collides with {owner}",
                    workload.resource.key(),
                    listener.bind,
                    listener.service
                ),
            ));
        }
    }
    errors
}

/// WorkloadEntries with a parsed address, merged labels and identity; reports addresses that
/// are not IPs or are claimed twice.
fn index_workloads<'a>(set: &'a ConfigSet, errors: &mut Vec<Diagnostic>) -> Vec<Workload<'a>> {
    let mut workloads: Vec<Workload<'a>> = Vec::new();
    for we in &set.workload_entries {
        let Some(address) = we.spec.ip() else {
            errors.push(we.diagnostic(
                Severity::Error,
                code::INVALID,
                "spec.address",
                "Ward needs an IP address here (it does not resolve DNS names)",
            ));
            continue;
        };
        if let Some(first) = workloads.iter().find(|w| w.address == address) {
            errors.push(we.diagnostic(
                Severity::Error,
                code::ADDRESS_CONFLICT,
                "spec.address",
                format!(
                    "address {address} is already used by {}; each workload needs its own \
                     address",
                    first.resource.object()
                ),
            ));
            continue;
        }
        let identity = match ward_identity::SpiffeId::new(
            &set.mesh.trust_domain,
            &we.meta.namespace,
            we.spec.service_account(),
        ) {
            Ok(id) => id.to_string(),
            Err(err) => {
                errors.push(we.diagnostic(
                    Severity::Error,
                    code::INVALID,
                    "spec.serviceAccount",
                    format!("cannot form the workload's SPIFFE id: {err}"),
                ));
                continue;
            }
        };
        workloads.push(Workload {
            resource: we,
            address,
            labels: workload_labels(we),
            identity,
        });
    }
    workloads
}

/// istio/istio `pilot/pkg/serviceregistry/serviceentry` `ConvertWorkloadEntry`: "we will
/// merge labels from metadata with spec, with precedence to the metadata".
pub(crate) fn workload_labels(we: &Resource<WorkloadEntrySpec>) -> BTreeMap<String, String> {
    let mut labels = we.spec.labels.clone().unwrap_or_default();
    labels.extend(we.meta.labels.clone());
    labels
}

/// PeerAuthentications with their creation order: by `creationTimestamp` when present (older
/// first; in Istio the oldest `creationTimestamp` wins: docs/istio-semantics.md,
/// "PeerAuthentication resolution"), then those without one in load order, as if created when
/// loaded.
pub(crate) fn peer_authn_policies(
    resources: &[Resource<PeerAuthenticationSpec>],
) -> Vec<PeerAuthnPolicy> {
    let mut ranked: Vec<(usize, &Resource<PeerAuthenticationSpec>)> =
        resources.iter().enumerate().collect();
    ranked.sort_by_key(|(index, r)| {
        let created = r
            .meta
            .creation_timestamp
            .as_deref()
            .and_then(parse_timestamp);
        (created.is_none(), created, *index)
    });
    let mut policies: Vec<(usize, PeerAuthnPolicy)> = ranked
        .into_iter()
        .enumerate()
        .map(|(order, (index, r))| {
            (
                index,
                PeerAuthnPolicy {
                    policy: PolicyRef::new(r.meta.namespace.clone(), r.meta.name.clone()),
                    spec: r.spec.clone(),
                    order: u64::try_from(order).unwrap_or(u64::MAX),
                },
            )
        })
        .collect();
    policies.sort_by_key(|(index, _)| *index);
    policies.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::load_str;
    use crate::snapshot::CapturedDestination;

    fn we(ns: &str, name: &str, address: &str, spec_extra: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{address: \"{address}\", labels: {{app: {name}}}{spec_extra}}}\n"
        )
    }

    fn doc(kind: &str, ns: &str, name: &str, spec: &str) -> String {
        let group = match kind {
            "PeerAuthentication" | "AuthorizationPolicy" => "security.istio.io",
            _ => "networking.istio.io",
        };
        format!("---\napiVersion: {group}/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
    }

    fn snapshot(yaml: &str) -> MeshSnapshot {
        let set = load_str("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
        translate(&set).unwrap_or_else(|e| panic!("{e}"))
    }

    /// (line, code, field) of each translation error.
    fn errors(yaml: &str) -> Vec<(Option<usize>, &'static str, Option<String>)> {
        let set = load_str("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
        match translate(&set) {
            Ok(_) => Vec::new(),
            Err(diags) => diags
                .0
                .into_iter()
                .map(|d| (d.line, d.code, d.field))
                .collect(),
        }
    }

    #[test]
    fn trusted_proxies_come_from_the_annotation_else_the_mesh_default() {
        let mesh = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    defaultConfig:\n      gatewayTopology: {numTrustedProxies: 2}\n";
        let annotated = "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: edge\n  namespace: gw\n  annotations:\n    proxy.istio.io/config: |\n      gatewayTopology:\n        numTrustedProxies: 1\nspec: {address: 10.0.0.1}\n";
        let plain = we("gw", "plain", "10.0.0.2", "");
        let snap = snapshot(&format!("{mesh}{annotated}{plain}"));
        assert_eq!(snap.proxies["gw/edge"].workload.num_trusted_proxies, 1);
        assert_eq!(snap.proxies["gw/plain"].workload.num_trusted_proxies, 2);
        let snap = snapshot(&format!("{annotated}{plain}"));
        assert_eq!(snap.proxies["gw/plain"].workload.num_trusted_proxies, 0);
        // An annotation whose count is not a non-negative integer does not load.
        let bad = annotated.replace("numTrustedProxies: 1", "numTrustedProxies: -1");
        let err = load_str("t.yaml", &bad).unwrap_err().to_string();
        assert!(err.contains("proxy.istio.io/config"), "{err}");
    }

    fn sidecar_ingress(port: u16, endpoint: &str) -> String {
        format!("{{ingress: [{{port: {{number: {port}, name: tcp}}, defaultEndpoint: \"{endpoint}\"}}]}}")
    }

    #[test]
    fn the_most_specific_sidecar_wins() {
        let base = [
            we("a", "x", "10.0.0.1", ""),
            we("a", "y", "10.0.0.2", ""),
            we("b", "z", "10.0.0.3", ""),
            we("c", "w", "10.0.0.4", ""),
            doc("Sidecar", "a", "for-x", "{workloadSelector: {labels: {app: x}}, ingress: [{port: {number: 1}, defaultEndpoint: \"127.0.0.1:11\"}]}"),
            doc("Sidecar", "a", "ns-default", &sidecar_ingress(2, "127.0.0.1:12")),
            doc("Sidecar", "istio-system", "mesh-default", &sidecar_ingress(3, "127.0.0.1:13")),
            doc("Sidecar", "c", "for-nobody", "{workloadSelector: {labels: {app: nobody}}}"),
        ]
        .concat();
        let snap = snapshot(&base);
        let port_of = |key: &str| {
            snap.proxies[key]
                .inbound
                .iter()
                .map(|p| p.port)
                .collect::<Vec<_>>()
        };
        assert_eq!(port_of("a/x"), vec![1]);
        assert_eq!(port_of("a/y"), vec![2]);
        assert_eq!(port_of("b/z"), vec![3]);
        assert_eq!(port_of("c/w"), vec![3]);

        let two_selectors = format!(
            "{base}{}",
            doc(
                "Sidecar",
                "a",
                "also-x",
                "{workloadSelector: {labels: {app: x}}}"
            )
        );
        assert_eq!(
            errors(&two_selectors),
            vec![(
                Some(45),
                code::SIDECAR_CONFLICT,
                Some("spec.workloadSelector".into())
            )]
        );
        let two_defaults = format!("{base}{}", doc("Sidecar", "a", "another", "{}"));
        assert_eq!(
            errors(&two_defaults),
            vec![(
                Some(44),
                code::SIDECAR_CONFLICT,
                Some("metadata.name".into())
            )]
        );
    }

    #[test]
    fn inbound_ports_carry_protocol_target_and_mtls() {
        let yaml = [
            we("a", "x", "10.0.0.1", ""),
            doc("Sidecar", "a", "s", "{ingress: [{port: {number: 9080, name: http-web}, defaultEndpoint: \"127.0.0.1:8080\"}, {port: {number: 9443, protocol: TCP}, defaultEndpoint: \"0.0.0.0:8443\"}]}"),
            doc("PeerAuthentication", "a", "ns", "{mtls: {mode: PERMISSIVE}}"),
            doc("PeerAuthentication", "a", "x-ports", "{selector: {matchLabels: {app: x}}, portLevelMtls: {9443: {mode: DISABLE}}}"),
        ]
        .concat();
        let snap = snapshot(&yaml);
        let inbound = &snap.proxies["a/x"].inbound;
        assert_eq!(
            inbound,
            &vec![
                InboundPort {
                    port: 9080,
                    protocol: Protocol::Http,
                    target: "127.0.0.1:8080".parse().unwrap(),
                    mtls: MtlsMode::Permissive,
                    mtls_policy: Some(PolicyRef::new("a", "ns")),
                },
                InboundPort {
                    port: 9443,
                    protocol: Protocol::Tcp,
                    target: "10.0.0.1:8443".parse().unwrap(),
                    mtls: MtlsMode::Disable,
                    mtls_policy: Some(PolicyRef::new("a", "x-ports")),
                },
            ]
        );

        let no_pa = [
            we("a", "x", "10.0.0.1", ""),
            doc("Sidecar", "a", "s", &sidecar_ingress(1, "127.0.0.1:2")),
        ]
        .concat();
        let port = &snapshot(&no_pa).proxies["a/x"].inbound[0];
        assert_eq!(
            (port.mtls, port.mtls_policy.as_ref()),
            (MtlsMode::Strict, None)
        );

        let looped = [
            we("a", "x", "10.0.0.1", ""),
            doc("Sidecar", "a", "s", &sidecar_ingress(80, "0.0.0.0:80")),
        ]
        .concat();
        assert_eq!(
            errors(&looped),
            vec![(
                Some(10),
                code::LISTENER_CONFLICT,
                Some("spec.ingress[0].defaultEndpoint".into())
            )]
        );
    }

    #[test]
    fn services_get_addresses_ports_and_endpoints_for_capture() {
        let yaml = [
            we("a", "cli", "10.0.0.1", ""),
            we("b", "db", "10.0.0.2", ", ports: {tcp-db: 15432}"),
            doc("ServiceEntry", "b", "db", "{hosts: [db.b.svc.cluster.local], location: MESH_INTERNAL, workloadSelector: {labels: {app: db}}, ports: [{number: 5432, name: tcp-db}, {number: 8080, name: http-api, targetPort: 18080}]}"),
            doc("ServiceEntry", "b", "ext", "{hosts: [api.example.com, \"*.wild.example.com\"], addresses: [192.0.2.10, 198.51.100.0/24], resolution: STATIC, ports: [{number: 443, name: tls}], endpoints: [{address: 192.0.2.99}]}"),
            doc("ServiceEntry", "b", "hidden", "{hosts: [hidden.b.svc.cluster.local], exportTo: [.], ports: [{number: 1, name: tcp}]}"),
        ]
        .concat();
        let snap = snapshot(&yaml);
        let cli = &snap.proxies["a/cli"];
        let names: Vec<&str> = cli.services.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "*.wild.example.com",
                "api.example.com",
                "db.b.svc.cluster.local"
            ],
            "exportTo hides b/hidden from namespace a"
        );
        let db = &cli.services["db.b.svc.cluster.local"];
        assert!(db.auto_allocated);
        let vip = match db.addresses.as_slice() {
            [IpNet::V4(net)] if net.prefix_len() == 32 => net.addr(),
            other => panic!("one IPv4 address expected, got {other:?}"),
        };
        assert_eq!(
            vip,
            crate::vip::allocate(&["b/db.b.svc.cluster.local".to_owned()].into(), &[])
                ["b/db.b.svc.cluster.local"]
        );
        assert_eq!(
            db.hostnames,
            ["db.b.svc.cluster.local", "db.b.svc", "db.b"],
            "no short name outside namespace b"
        );
        assert_eq!(
            snap.proxies["b/db"].services["db.b.svc.cluster.local"].hostnames,
            ["db.b.svc.cluster.local", "db.b.svc", "db.b", "db"]
        );
        let ports: Vec<(u16, Protocol, Option<u16>, String)> = db
            .ports
            .iter()
            .map(|p| {
                (
                    p.number,
                    p.protocol,
                    p.target_port,
                    p.endpoints[0].address.to_string(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                (5432, Protocol::Tcp, None, "10.0.0.2:15432".to_owned()),
                (
                    8080,
                    Protocol::Http,
                    Some(18080),
                    "10.0.0.2:18080".to_owned()
                ),
            ]
        );
        assert_eq!(db.ports[0].endpoints[0].transport, Transport::Hbone);
        let ext = &cli.services["api.example.com"];
        assert!(!ext.auto_allocated);
        assert_eq!(
            ext.addresses,
            [
                "192.0.2.10/32".parse::<IpNet>().unwrap(),
                "198.51.100.0/24".parse().unwrap()
            ]
        );
        assert!(
            cli.services["*.wild.example.com"].addresses.len() == 2,
            "a wildcard host has only the entry's explicit addresses"
        );

        // What a captured connection is for.
        let at = |dst: &str| cli.captured_destination(dst.parse().unwrap());
        assert!(matches!(
            at(&format!("{vip}:5432")),
            CapturedDestination::Service { host: "db.b.svc.cluster.local", port } if port.number == 5432
        ));
        assert!(matches!(
            at("198.51.100.7:443"),
            CapturedDestination::Service {
                host: "*.wild.example.com",
                ..
            }
        ));
        assert_eq!(at(&format!("{vip}:9999")), CapturedDestination::Unknown);
        match at("10.0.0.2:7000") {
            CapturedDestination::Workload(ep) => {
                assert_eq!(ep.address.to_string(), "10.0.0.2:7000");
                assert_eq!(
                    ep.identity.as_deref(),
                    Some("spiffe://cluster.local/ns/b/sa/default")
                );
            }
            other => panic!("workload expected, got {other:?}"),
        }
        assert_eq!(at("203.0.113.1:80"), CapturedDestination::Unknown);
        assert_eq!(
            at("192.0.2.99:443"),
            CapturedDestination::Unknown,
            "not a mesh workload"
        );
    }

    #[test]
    fn captured_inbound_ports_come_from_service_entries_unless_a_sidecar_names_them() {
        let entries = [
            we("b", "db", "10.0.0.2", ", ports: {tcp-db: 15432, http-metrics: 9090}"),
            doc("ServiceEntry", "b", "db", "{hosts: [db.b.svc.cluster.local], location: MESH_INTERNAL, workloadSelector: {labels: {app: db}}, ports: [{number: 5432, name: tcp-db}, {number: 8080, name: http-api, targetPort: 18080}]}"),
            doc("PeerAuthentication", "b", "p", "{selector: {matchLabels: {app: db}}, mtls: {mode: STRICT}, portLevelMtls: {9090: {mode: PERMISSIVE}}}"),
        ]
        .concat();
        let snap = snapshot(&entries);
        let db = &snap.proxies["b/db"];
        assert!(
            db.inbound.is_empty(),
            "no Sidecar: nothing is bound explicitly"
        );
        let ports: Vec<(u16, Protocol, String, MtlsMode)> = db
            .service_inbound
            .iter()
            .map(|p| (p.port, p.protocol, p.target.to_string(), p.mtls))
            .collect();
        assert_eq!(
            ports,
            [
                (
                    15432,
                    Protocol::Tcp,
                    "10.0.0.2:15432".to_owned(),
                    MtlsMode::Strict
                ),
                (
                    18080,
                    Protocol::Http,
                    "10.0.0.2:18080".to_owned(),
                    MtlsMode::Strict
                ),
                (
                    9090,
                    Protocol::Http,
                    "10.0.0.2:9090".to_owned(),
                    MtlsMode::Permissive
                ),
            ]
        );
        assert_eq!(db.with_service_inbound().inbound, db.service_inbound);

        let narrowed = [
            entries,
            doc(
                "Sidecar",
                "b",
                "s",
                &sidecar_ingress(15432, "127.0.0.1:5432"),
            ),
        ]
        .concat();
        let db = &snapshot(&narrowed).proxies["b/db"];
        assert!(
            db.service_inbound.is_empty(),
            "a Sidecar's ingress listeners replace them"
        );
        assert_eq!(db.with_service_inbound().inbound, db.inbound);
    }

    #[test]
    fn http_proxy_egress_listeners_are_forward_proxies_over_the_hosts_they_select() {
        let yaml = [
            we("clinic", "emr", "10.0.0.1", ""),
            doc("ServiceEntry", "clinic", "quay", "{hosts: [quay.io], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}"),
            doc("ServiceEntry", "clinic", "docker", "{hosts: [\"*.docker.io\"], ports: [{number: 443, name: tls}], resolution: DNS}"),
            doc("ServiceEntry", "clinic", "other", "{hosts: [other.org], ports: [{number: 443, name: tls}], resolution: STATIC, endpoints: [{address: 192.0.2.1}]}"),
            doc("ServiceEntry", "elsewhere", "private", "{hosts: [private.org], exportTo: [.], ports: [{number: 443, name: tls}]}"),
            doc("Sidecar", "clinic", "emr", "{workloadSelector: {labels: {app: emr}}, egress: [{port: {number: 15080, protocol: HTTP_PROXY}, bind: 127.0.0.7, hosts: [./quay.io, \"./*.docker.io\", \"*/private.org\"]}]}"),
        ]
        .concat();
        let proxy = &snapshot(&yaml).proxies["clinic/emr"];
        assert!(proxy.outbound.is_empty(), "{:?}", proxy.outbound);
        assert_eq!(
            proxy.egress.forward_proxies,
            vec![ForwardProxy {
                bind: "127.0.0.7:15080".parse().unwrap(),
                // private.org is not exported to clinic; other.org is not among the hosts.
                hosts: vec!["quay.io".into(), "*.docker.io".into()],
            }]
        );
        assert_eq!(
            proxy.services["quay.io"].resolution,
            crate::istio::Resolution::Dns
        );
        assert!(proxy
            .listeners()
            .iter()
            .any(|l| l.addr == "127.0.0.7:15080".parse().unwrap()));
        let missing_port = [
            we("clinic", "emr", "10.0.0.1", ""),
            doc("Sidecar", "clinic", "emr", "{workloadSelector: {labels: {app: emr}}, egress: [{port: {protocol: HTTP_PROXY}, hosts: [./quay.io]}]}"),
        ]
        .concat();
        // The loader already requires the port a forward proxy listens on.
        let err = load_str("t.yaml", &missing_port).unwrap_err().to_string();
        assert!(
            err.contains("spec.egress[0].port: missing required field `number`"),
            "{err}"
        );
    }

    #[test]
    fn workload_info_merges_labels_and_forms_the_identity() {
        let yaml = format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: vm\n  namespace: shop\n  labels: {{version: v2, tier: web}}\n  annotations: {{ward.dev/demo-app: echo}}\nspec: {{address: \"fd00::1\", labels: {{app: vm, version: v1}}, serviceAccount: cart}}\n{}",
            doc("Sidecar", "shop", "s", "{outboundTrafficPolicy: {mode: REGISTRY_ONLY}}")
        );
        let snap = snapshot(&yaml);
        let proxy = &snap.proxies["shop/vm"];
        let info = &proxy.workload;
        assert_eq!(info.identity, "spiffe://cluster.local/ns/shop/sa/cart");
        assert_eq!(info.address, "fd00::1".parse::<IpAddr>().unwrap());
        let labels: Vec<(&str, &str)> = info
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            vec![("app", "vm"), ("tier", "web"), ("version", "v2")]
        );
        assert_eq!(info.demo_app, Some(DemoApp::Echo));
        assert_eq!(proxy.outbound_traffic_policy, "REGISTRY_ONLY");
        assert_eq!(
            snapshot(&we("a", "x", "10.0.0.1", "")).proxies["a/x"].outbound_traffic_policy,
            "REGISTRY_ONLY",
            "Ward's default is REGISTRY_ONLY (docs/security.md, \"Egress\")"
        );
        assert_eq!(
            snapshot(&we("a", "x", "10.0.0.1", "")).proxies["a/x"]
                .workload
                .service_account,
            "default"
        );
    }

    #[test]
    fn outbound_listeners_follow_egress_hosts_ports_and_visibility() {
        let services = [
            we("db", "pg", "10.0.0.9", ", ports: {tcp-pg: 15432}"),
            doc("ServiceEntry", "db", "pg", "{hosts: [pg.db.svc], location: MESH_INTERNAL, ports: [{number: 5432, name: tcp-pg}, {number: 9187, name: http-metrics, targetPort: 19187}], workloadSelector: {labels: {app: pg}}}"),
            doc("ServiceEntry", "db", "hidden", "{hosts: [hidden.db.svc], exportTo: [\".\"], ports: [{number: 1, name: tcp}], resolution: STATIC, endpoints: [{address: 10.9.9.9}]}"),
            doc("ServiceEntry", "ext", "api", "{hosts: [api.example.com], ports: [{number: 443, name: tls, protocol: TLS}], resolution: STATIC, endpoints: [{address: 203.0.113.7}]}"),
        ]
        .concat();
        let client = |egress: &str| {
            format!(
                "{services}{}{}",
                we("app", "c", "10.0.0.1", ""),
                doc("Sidecar", "app", "s", &format!("{{egress: {egress}}}"))
            )
        };
        let listeners = |egress: &str| snapshot(&client(egress)).proxies["app/c"].outbound.clone();

        // No port: one listener per service port, each at its own number.
        let all = listeners("[{hosts: [\"db/pg.db.svc\"]}]");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].bind, "127.0.0.1:5432".parse::<SocketAddr>().unwrap());
        assert_eq!(
            all[0].endpoints[0].address,
            "10.0.0.9:15432".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(all[0].protocol, Protocol::Tcp);
        assert_eq!(all[1].service_port, 9187);
        assert_eq!(all[1].protocol, Protocol::Http);
        assert_eq!(
            all[1].endpoints[0].address,
            "10.0.0.9:19187".parse::<SocketAddr>().unwrap()
        );

        // A port picks that service port; bind moves the listener.
        let one = listeners("[{port: {number: 5432}, bind: 127.0.0.5, hosts: [\"*/*.svc\"]}]");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].bind, "127.0.0.5:5432".parse::<SocketAddr>().unwrap());
        assert_eq!(one[0].service, "pg.db.svc");
        assert_eq!(
            one[0].endpoints,
            vec![Endpoint {
                address: "10.0.0.9:15432".parse().unwrap(),
                workload: Some("db/pg".into()),
                identity: Some("spiffe://cluster.local/ns/db/sa/default".into()),
                transport: Transport::Hbone,
            }]
        );

        // External: plaintext, no identity. `~/*` imports nothing.
        let ext = listeners("[{hosts: [\"ext/api.example.com\", \"~/*\"]}]");
        assert_eq!(ext.len(), 1);
        assert_eq!(
            (
                ext[0].protocol,
                ext[0].endpoints[0].transport,
                ext[0].endpoints[0].identity.clone()
            ),
            (Protocol::Tls, Transport::Plaintext, None)
        );

        // exportTo "." hides a service from other namespaces: the host matches nothing, which
        // gives no listener and is no error (`ward analyze` warns, WARD0211); neither is
        // Istio's default Sidecar, whose wildcards match nothing here.
        assert_eq!(errors(&client("[{hosts: [\"db/hidden.db.svc\"]}]")), vec![]);
        assert_eq!(listeners("[{hosts: [\"db/hidden.db.svc\"]}]"), vec![]);
        assert_eq!(
            errors(&client("[{hosts: [\"./*\", \"istio-system/*\"]}]")),
            vec![]
        );
        assert_eq!(
            listeners("[{hosts: [\"./*\", \"istio-system/*\"]}]"),
            vec![]
        );
        // A port that none of the matched services has: no listener and no error (Istio accepts
        // it; `ward analyze` warns, WARD0211). The other egress entry still gets its listener.
        let no_port = "[{port: {number: 7777}, hosts: [\"db/pg.db.svc\"]}, {port: {number: 443}, hosts: [\"ext/*\"]}]";
        assert_eq!(errors(&client(no_port)), vec![]);
        let ext_only: Vec<(SocketAddr, String)> = listeners(no_port)
            .into_iter()
            .map(|l| (l.bind, l.service))
            .collect();
        assert_eq!(
            ext_only,
            vec![(
                "127.0.0.1:443".parse().unwrap(),
                "api.example.com".to_owned()
            )]
        );
        // Two services on one TCP listener cannot be told apart.
        assert_eq!(
            errors(&client("[{port: {number: 443}, hosts: [\"*/*\"]}, {port: {number: 5432}, bind: 127.0.0.1, hosts: [\"*/*\"]}]")).len(),
            0
        );
        let shared = format!("{}{}", client("[{port: {number: 5432}, hosts: [\"*/*\"]}]"), doc("ServiceEntry", "db", "pg2", "{hosts: [pg2.db.svc], ports: [{number: 5432, name: tcp}], resolution: STATIC, endpoints: [{address: 10.0.0.8}]}"));
        assert_eq!(
            errors(&shared),
            vec![(
                Some(30),
                code::LISTENER_CONFLICT,
                Some("spec.egress".into())
            )]
        );
    }

    #[test]
    fn http_services_may_share_a_listener() {
        let yaml = [
            doc("ServiceEntry", "a", "one", "{hosts: [one.a], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 10.1.0.1}]}"),
            doc("ServiceEntry", "a", "two", "{hosts: [two.a], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 10.1.0.2}]}"),
            we("a", "c", "10.0.0.1", ""),
            doc("Sidecar", "a", "s", "{egress: [{hosts: [\"./*\"]}]}"),
        ]
        .concat();
        let outbound = &snapshot(&yaml).proxies["a/c"].outbound;
        assert_eq!(
            outbound
                .iter()
                .map(|l| l.service.as_str())
                .collect::<Vec<_>>(),
            vec!["one.a", "two.a"]
        );
        assert!(outbound.iter().all(|l| l.bind.port() == 80));
    }

    #[test]
    fn transport_follows_auto_mtls() {
        let dest = [
            we("db", "pg", "10.0.0.9", ", ports: {tcp: 5432}"),
            doc("ServiceEntry", "db", "pg", "{hosts: [pg.db], location: MESH_INTERNAL, ports: [{number: 5432, name: tcp}], workloadSelector: {labels: {app: pg}}}"),
            we("app", "c", "10.0.0.1", ""),
            doc("Sidecar", "app", "s", "{egress: [{hosts: [\"*/*\"]}]}"),
        ]
        .concat();
        let transport = |extra: &str| {
            snapshot(&format!("{dest}{extra}")).proxies["app/c"].outbound[0].endpoints[0].transport
        };
        assert_eq!(transport(""), Transport::Hbone);
        assert_eq!(
            transport(&doc(
                "PeerAuthentication",
                "db",
                "off",
                "{mtls: {mode: DISABLE}}"
            )),
            Transport::Plaintext
        );
        assert_eq!(
            transport(&doc(
                "PeerAuthentication",
                "db",
                "p",
                "{mtls: {mode: PERMISSIVE}}"
            )),
            Transport::Hbone
        );
        let auto_off = "---\napiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: x}\nspec: {meshConfig: {enableAutoMtls: false}}\n";
        assert_eq!(transport(auto_off), Transport::Plaintext);
    }

    #[test]
    fn inline_endpoints_resolve_ports_and_workloads() {
        let yaml = [
            we("a", "srv", "10.0.0.9", ", serviceAccount: srv"),
            doc("ServiceEntry", "a", "s", "{hosts: [s.a], location: MESH_INTERNAL, resolution: STATIC, ports: [{number: 80, name: http, targetPort: 8000}], endpoints: [{address: 10.0.0.9}, {address: 10.0.0.10, ports: {http: 8080}}]}"),
            we("a", "c", "10.0.0.1", ""),
            doc("Sidecar", "a", "c", "{workloadSelector: {labels: {app: c}}, egress: [{hosts: [\"./s.a\"]}]}"),
        ]
        .concat();
        let endpoints = &snapshot(&yaml).proxies["a/c"].outbound[0].endpoints;
        assert_eq!(
            endpoints,
            &vec![
                Endpoint {
                    address: "10.0.0.9:8000".parse().unwrap(),
                    workload: Some("a/srv".into()),
                    identity: Some("spiffe://cluster.local/ns/a/sa/srv".into()),
                    transport: Transport::Hbone,
                },
                Endpoint {
                    address: "10.0.0.10:8080".parse().unwrap(),
                    workload: None,
                    identity: None,
                    transport: Transport::Plaintext,
                },
            ]
        );

        let dns = [
            doc("ServiceEntry", "a", "s", "{hosts: [s.a], resolution: DNS, ports: [{number: 80, name: http}], endpoints: [{address: s.example.com}]}"),
            we("a", "c", "10.0.0.1", ""),
            doc("Sidecar", "a", "c", "{egress: [{hosts: [\"./s.a\"]}]}"),
        ]
        .concat();
        assert_eq!(
            errors(&dns),
            vec![(
                Some(5),
                code::ENDPOINT_INVALID,
                Some("spec.endpoints[0].address".into())
            )]
        );
    }

    #[test]
    fn workload_and_policy_errors_are_located() {
        let yaml = [
            we("a", "x", "10.0.0.1", ""),
            we("b", "y", "10.0.0.1", ""),
            doc(
                "AuthorizationPolicy",
                "a",
                "bad",
                "{rules: [{from: [{source: {ipBlocks: [\"10.0.0.0/33\"]}}]}]}",
            ),
        ]
        .concat();
        let got = errors(&yaml);
        assert_eq!(
            got,
            vec![
                (
                    Some(10),
                    code::ADDRESS_CONFLICT,
                    Some("spec.address".into())
                ),
                (
                    Some(15),
                    code::POLICY_INVALID,
                    Some("spec.rules[0].from[0].source.ipBlocks[0]".into())
                ),
            ]
        );
    }

    #[test]
    fn source_trust_domains_load_and_expand_the_mesh_aliases() {
        let yaml = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    trustDomain: new.td\n    trustDomainAliases: [old.td]\n{}{}",
            we("a", "x", "10.0.0.1", ""),
            doc(
                "AuthorizationPolicy",
                "a",
                "allow-td",
                "{rules: [{from: [{source: {trustDomains: [old.td], notTrustDomains: [\"evil.*\"]}}]}]}"
            )
        );
        let snap = snapshot(&yaml);
        let authz = &snap.proxies["a/x"].authz;
        let decide = |td: &str| {
            let peer = ward_policy::Peer::new(td, "b", "y");
            let ip: std::net::IpAddr = "10.0.0.2".parse().unwrap();
            authz
                .evaluate_l4(&ward_policy::L4Attributes {
                    peer: Some(&peer),
                    source_ip: ip,
                    remote_ip: ip,
                    destination_ip: "10.0.0.1".parse().unwrap(),
                    destination_port: 8080,
                    sni: None,
                })
                .is_allowed()
        };
        assert!(
            decide("new.td"),
            "the mesh's trust domain is an alias of old.td"
        );
        assert!(decide("old.td"));
        assert!(!decide("other.td"));
    }

    #[test]
    fn authz_is_selected_per_workload_with_dry_run() {
        let yaml = format!(
            "{}{}{}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: audit\n  namespace: a\n  annotations: {{istio.io/dry-run: \"true\"}}\nspec: {{action: DENY, rules: [{{}}]}}\n{}",
            we("a", "x", "10.0.0.1", ""),
            we("a", "y", "10.0.0.2", ""),
            doc("AuthorizationPolicy", "istio-system", "mesh", "{}"),
            doc("AuthorizationPolicy", "a", "only-y", "{selector: {matchLabels: {app: y}}}")
        ) + &we("a", "z", "10.0.0.3", "")
            + &we("b", "w", "10.0.0.4", "")
            + &doc("AuthorizationPolicy", "b", "only-v", "{selector: {matchLabels: {app: v}}}");
        let snap = snapshot(&yaml);
        let names = |key: &str| {
            snap.proxies[key]
                .authz
                .policies()
                .iter()
                .map(|p| (p.policy.name.clone(), p.dry_run))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names("a/x"),
            vec![("mesh".into(), false), ("audit".into(), true)]
        );
        assert_eq!(
            names("a/y"),
            vec![
                ("mesh".into(), false),
                ("audit".into(), true),
                ("only-y".into(), false)
            ]
        );
        // Another namespace's policies never apply; the root's always do.
        assert_eq!(names("b/w"), vec![("mesh".into(), false)]);
        // Workloads that the same policies select share one compiled set.
        let set = |key: &str| snap.proxies[key].authz.clone();
        assert!(Arc::ptr_eq(&set("a/x"), &set("a/z")));
        assert!(!Arc::ptr_eq(&set("a/x"), &set("a/y")));
    }

    #[test]
    fn peer_authentication_order_is_creation_then_load_order() {
        let pa = |name: &str, ts: Option<&str>| {
            let ts = ts
                .map(|t| format!(", creationTimestamp: \"{t}\""))
                .unwrap_or_default();
            format!("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: a{ts}}}\n")
        };
        let yaml = [
            pa("late", None),
            pa("newer", Some("2024-06-01T00:00:00Z")),
            pa("older", Some("2024-06-01T01:00:00+02:00")),
            pa("later", None),
        ]
        .concat();
        let set = load_str("t.yaml", &yaml).unwrap();
        let orders: Vec<(String, u64)> = peer_authn_policies(&set.peer_authentications)
            .into_iter()
            .map(|p| (p.policy.name, p.order))
            .collect();
        assert_eq!(
            orders,
            vec![
                ("late".into(), 2),
                ("newer".into(), 1),
                ("older".into(), 0),
                ("later".into(), 3)
            ]
        );
    }
}
