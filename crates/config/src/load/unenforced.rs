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
    /// spec is dropped: nothing reads it yet.
    pub(super) fn check_unenforced(
        &mut self,
        doc: &Doc<'_>,
        resource: &Resource<()>,
        meta_ok: bool,
        kind: &'static str,
    ) {
        // One arm per kind: decode with `self.load_spec::<Spec>(doc, resource, meta_ok, validate)`.
        match kind {
            "VirtualService" => {
                let validate = |r: &Resource<VirtualServiceSpec>| r.spec.validate();
                self.load_spec(doc, resource, meta_ok, validate);
            }
            "DestinationRule" => {
                let validate = |r: &Resource<DestinationRuleSpec>| r.spec.validate();
                self.load_spec(doc, resource, meta_ok, validate);
            }
            "Gateway" => {
                let validate = |r: &Resource<GatewaySpec>| r.spec.validate();
                self.load_spec(doc, resource, meta_ok, validate);
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
