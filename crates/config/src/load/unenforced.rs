//! Schema checks for the kinds Ward accepts but does not enforce yet (WARD0102). Their specs are
//! decoded into typed structs that reject unknown fields, exactly like the enforced kinds, so a
//! typo in a VirtualService is an error today rather than a surprise on the day Ward reads it.
//!
//! Each served kind gets one arm in [`Loader::check_unenforced`]; the spec types live in
//! `crate::istio` next to the enforced ones.

use super::{Doc, Loader, Resource};
use crate::istio::{
    DestinationRuleSpec, EnvoyFilterSpec, GatewaySpec, VirtualServiceSpec, WorkloadGroupSpec,
};

impl Loader {
    /// Decodes and validates the spec of a kind Ward accepts without enforcing it. The typed
    /// spec is dropped, except DestinationRules and OSSM 2 control planes, which `ward analyze`
    /// reads (WARD0225, WARD0229), and VirtualServices, which the routing tables are compiled
    /// from (`crate::http_routing`; no proxy serves them yet).
    pub(super) fn check_unenforced(
        &mut self,
        doc: &Doc<'_>,
        resource: &Resource<()>,
        meta_ok: bool,
        kind: &'static str,
    ) {
        // One arm per kind: decode with `self.load_spec::<Spec>(doc, resource, meta_ok, validate)`.
        match kind {
            "Telemetry" => {
                let kept =
                    self.load_spec::<crate::istio::TelemetrySpec>(doc, resource, meta_ok, |r| {
                        r.spec.validate()
                    });
                self.set.telemetries.extend(kept);
            }
            "WasmPlugin" => {
                self.load_spec::<crate::istio::WasmPluginSpec>(doc, resource, meta_ok, |r| {
                    r.spec.validate()
                });
            }
            "ProxyConfig" => {
                self.load_spec::<crate::istio::ProxyConfigSpec>(doc, resource, meta_ok, |r| {
                    r.spec.validate()
                });
            }
            "IstioRevision" => {
                self.load_spec(doc, resource, meta_ok, crate::istio::validate_revision);
            }
            "IstioRevisionTag" => {
                self.load_spec(doc, resource, meta_ok, crate::istio::validate_revision_tag);
            }
            "IstioCNI" => {
                self.load_spec(doc, resource, meta_ok, crate::istio::validate_istio_cni);
            }
            "ZTunnel" if doc.api_version.ends_with("/v1alpha1") => {
                self.load_spec(
                    doc,
                    resource,
                    meta_ok,
                    crate::istio::validate_ztunnel_v1alpha1,
                );
            }
            "ZTunnel" => {
                self.load_spec(doc, resource, meta_ok, crate::istio::validate_ztunnel);
            }
            "ServiceMeshControlPlane" if doc.api_version.ends_with("/v1") => {
                self.load_spec::<crate::istio::ControlPlaneSpecV1>(doc, resource, meta_ok, |_| {
                    Vec::new()
                });
            }
            "ServiceMeshControlPlane" => {
                let kept = self.load_spec::<crate::istio::ControlPlaneSpecV2>(
                    doc,
                    resource,
                    meta_ok,
                    |_| Vec::new(),
                );
                self.set.control_planes.extend(kept);
            }
            "ServiceMeshMemberRoll" => {
                self.load_spec(doc, resource, meta_ok, crate::istio::validate_member_roll);
            }
            "ServiceMeshMember" => {
                self.load_spec::<crate::istio::MemberSpec>(doc, resource, meta_ok, |_| Vec::new());
            }
            "VirtualService" => {
                let validate = |r: &Resource<VirtualServiceSpec>| r.spec.validate();
                let kept = self.load_spec(doc, resource, meta_ok, validate);
                self.set.virtual_services.extend(kept);
            }
            "DestinationRule" => {
                let validate = |r: &Resource<DestinationRuleSpec>| r.spec.validate();
                let kept = self.load_spec(doc, resource, meta_ok, validate);
                self.set.destination_rules.extend(kept);
            }
            "Gateway" => {
                let validate = |r: &Resource<GatewaySpec>| r.spec.validate();
                let kept = self.load_spec(doc, resource, meta_ok, validate);
                self.set.gateways.extend(kept);
            }
            "WorkloadGroup" => {
                let validate = |r: &Resource<WorkloadGroupSpec>| r.spec.validate();
                self.load_spec(doc, resource, meta_ok, validate);
            }
            "EnvoyFilter" => {
                let validate = |r: &Resource<EnvoyFilterSpec>| r.spec.validate();
                self.load_spec(doc, resource, meta_ok, validate);
            }
            _ => {}
        }
    }
}
