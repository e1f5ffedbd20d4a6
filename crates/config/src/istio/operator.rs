//! The operator kinds next to the Sail `Istio` (which `crate::mesh` reads): the Sail operator's
//! IstioRevision, IstioRevisionTag, IstioCNI and ZTunnel (`sailoperator.io`;
//! istio-ecosystem/sail-operator `api/v1/*_types.go` and `api/v1alpha1/ztunnel_types.go`), and
//! OpenShift Service Mesh 2's ServiceMeshControlPlane, ServiceMeshMemberRoll and
//! ServiceMeshMember (`maistra.io`; maistra/istio-operator `pkg/apis/maistra/v1` and `v2`).
//!
//! Ward enforces none of them (WARD0102). Their top-level spec fields are checked as the Go types
//! define them (and so are the `Istio`'s, see [`IstioSpec`]); below that, Helm `values` trees and most control-plane sections are very large
//! and are accepted as any mapping ([`Struct`]), as the Sail `Istio`'s `values` are. Validation
//! is what the CRDs' rules reject.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::checks::{max_len, non_empty};
use super::proto::{FreeForm, Struct};
use crate::decode::unknown_name_message;
use crate::diag::{code, Finding};
use crate::load::Resource;
use crate::meta::check_labels;
use crate::yaml::{push_index, push_key};

/// `spec` of the Sail `Istio` (`v1`; `v1alpha1` had the same fields). `crate::mesh` reads
/// `namespace` and `values.meshConfig`; this type checks the other fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioSpec {
    /// The Istio version (not checked against the operator's list).
    pub version: Option<String>,
    /// How a new version replaces the running control plane.
    pub update_strategy: Option<IstioUpdateStrategy>,
    /// The installation profile (not checked, as `version`).
    pub profile: Option<String>,
    /// The control plane's namespace (checked where `crate::mesh` reads it).
    pub namespace: Option<FreeForm>,
    /// Helm values of the istiod chart: any mapping; `meshConfig` is checked where
    /// `crate::mesh` reads it, the rest is not.
    pub values: Option<Struct>,
}

/// Sail `IstioUpdateStrategy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioUpdateStrategy {
    /// `InPlace` (the default) or `RevisionBased`.
    #[serde(rename = "type")]
    pub type_: Option<UpdateStrategyType>,
    /// Seconds before an unused revision is removed (the CRD's minimum is 0).
    pub inactive_revision_deletion_grace_period_seconds: Option<u64>,
    /// Whether the operator moves workloads to the new revision.
    pub update_workloads: Option<bool>,
}

/// Sail `UpdateStrategyType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum UpdateStrategyType {
    /// Update the running control plane.
    InPlace,
    /// Run a new revision next to the old one.
    RevisionBased,
}

/// `spec` of a Sail IstioCNI (`v1`; `v1alpha1` had the same fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioCniSpec {
    /// The Istio version, e.g. `v1.26.0` (the operator's list changes with each release, so
    /// Ward does not check it).
    pub version: Option<String>,
    /// The installation profile, e.g. `default` or `openshift` (not checked, as `version`).
    pub profile: Option<String>,
    /// The namespace of the CNI DaemonSet; `istio-cni` when absent.
    pub namespace: Option<String>,
    /// Helm values of the CNI chart: any mapping, not checked.
    pub values: Option<Struct>,
}

/// `spec` of a Sail IstioRevision (`v1`; `v1alpha1` had the same fields). The operator writes
/// these for each `Istio`; users rarely do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioRevisionSpec {
    /// The Istio version (required; not checked against the operator's list).
    pub version: String,
    /// The namespace of the control plane (required).
    pub namespace: String,
    /// Helm values of the istiod chart: any mapping, not checked below the two fields the CRD
    /// rules read (`global.istioNamespace`, `revision`).
    pub values: Option<Struct>,
}

/// `spec` of a Sail IstioRevisionTag.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioRevisionTagSpec {
    /// The `Istio` or `IstioRevision` the tag points to (required).
    pub target_ref: SailTargetReference,
}

/// Sail `TargetReference`: an `Istio` or `IstioRevision` by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SailTargetReference {
    /// `Istio` or `IstioRevision` (`v1`; `v1alpha1` took any kind).
    pub kind: String,
    /// The target's name.
    pub name: String,
}

/// `spec` of a Sail ZTunnel, `sailoperator.io/v1`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZTunnelSpec {
    /// The Istio version (not checked against the operator's list).
    pub version: Option<String>,
    /// The namespace of the ztunnel DaemonSet; `ztunnel` when absent.
    pub namespace: Option<String>,
    /// Helm values of the ztunnel chart: any mapping, not checked.
    pub values: Option<Struct>,
    /// The `Istio` or `IstioRevision` whose settings ztunnel takes.
    pub target_ref: Option<SailTargetReference>,
}

/// `spec` of a Sail ZTunnel, `sailoperator.io/v1alpha1` (a `profile`, no `targetRef`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZTunnelV1Alpha1Spec {
    /// The Istio version (not checked against the operator's list).
    pub version: Option<String>,
    /// The installation profile; `ambient` when absent (not checked).
    pub profile: Option<String>,
    /// The namespace of the ztunnel DaemonSet; `ztunnel` when absent.
    pub namespace: Option<String>,
    /// Helm values of the ztunnel chart: any mapping, not checked.
    pub values: Option<Struct>,
}

/// `spec` of a ServiceMeshControlPlane, `maistra.io/v2`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneSpecV2 {
    /// Profiles giving the defaults; `default` when absent.
    pub profiles: Option<Vec<String>>,
    /// The Maistra version, e.g. `v2.6`.
    pub version: Option<String>,
    /// `MultiTenant` (the default) or `ClusterWide`.
    pub mode: Option<ControlPlaneMode>,
    /// Cluster, network and multi-cluster settings: any mapping, not checked.
    pub cluster: Option<Struct>,
    /// Mesh settings passed to istiod: any mapping, not checked (and not read: Ward takes mesh
    /// settings from an Istio, IstioOperator or ConfigMap `istio`).
    pub mesh_config: Option<Struct>,
    /// General settings: any mapping, not checked.
    pub general: Option<Struct>,
    /// Policy settings: any mapping, not checked.
    pub policy: Option<Struct>,
    /// Sidecar defaults: any mapping, not checked.
    pub proxy: Option<Struct>,
    /// Security settings.
    pub security: Option<MaistraSecurityConfig>,
    /// Telemetry settings: any mapping, not checked.
    pub telemetry: Option<Struct>,
    /// Tracing settings: any mapping, not checked.
    pub tracing: Option<Struct>,
    /// Gateways: any mapping, not checked.
    pub gateways: Option<Struct>,
    /// Runtime settings of the components: any mapping, not checked.
    pub runtime: Option<Struct>,
    /// Kiali, Prometheus, Grafana ...: any mapping, not checked.
    pub addons: Option<Struct>,
    /// Switches for features that are not GA: any mapping, not checked.
    pub tech_preview: Option<Struct>,
}

/// `ControlPlaneMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ControlPlaneMode {
    /// Watches the member namespaces only (the default).
    MultiTenant,
    /// Watches the whole cluster.
    ClusterWide,
}

/// SMCP v2 `SecurityConfig`, typed down to the mTLS switches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaistraSecurityConfig {
    /// Trust domain settings: any mapping, not checked.
    pub trust: Option<Struct>,
    /// The CA: any mapping, not checked.
    pub certificate_authority: Option<Struct>,
    /// Workload identity settings: any mapping, not checked.
    pub identity: Option<Struct>,
    /// Control-plane security.
    pub control_plane: Option<ControlPlaneSecurity>,
    /// Data-plane security.
    pub data_plane: Option<DataPlaneSecurity>,
    /// Whether the operator manages NetworkPolicies.
    pub manage_network_policy: Option<bool>,
    /// A CA bundle for fetching JWKS.
    #[serde(rename = "jwksResolverCA")]
    pub jwks_resolver_ca: Option<String>,
}

/// SMCP v2 `ControlPlaneSecurityConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneSecurity {
    /// mTLS between control-plane components.
    pub mtls: Option<bool>,
    /// Who issues istiod's serving certificate (`Istiod`, `Kubernetes`, `Custom`).
    pub cert_provider: Option<String>,
    /// TLS versions and ciphers: any mapping, not checked.
    pub tls: Option<Struct>,
}

/// SMCP v2 `DataPlaneSecurityConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataPlaneSecurity {
    /// Mesh-wide mTLS (OSSM makes `false` a PERMISSIVE PeerAuthentication; Ward reads
    /// PeerAuthentications only).
    pub mtls: Option<bool>,
    /// Auto mTLS of clients.
    #[serde(rename = "automtls")]
    pub auto_mtls: Option<bool>,
}

/// `spec` of a ServiceMeshControlPlane, `maistra.io/v1` (Maistra 1.x).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneSpecV1 {
    /// The template of defaults (replaced by `profiles`).
    pub template: Option<String>,
    /// Profiles giving the defaults.
    pub profiles: Option<Vec<String>>,
    /// The Maistra version.
    pub version: Option<String>,
    /// No longer used by the operator.
    pub network_type: Option<String>,
    /// Helm values of the Istio charts: any mapping, not checked.
    pub istio: Option<Struct>,
    /// Helm values of the 3scale chart: any mapping, not checked.
    pub three_scale: Option<Struct>,
}

/// `spec` of a ServiceMeshMemberRoll (`maistra.io/v1`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberRollSpec {
    /// Member namespaces.
    pub members: Option<Vec<String>>,
    /// Namespaces whose labels match any of these selectors are members too.
    pub member_selectors: Option<Vec<LabelSelector>>,
}

/// Kubernetes `metav1.LabelSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Every label must be present with this value.
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Every requirement must hold.
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// Kubernetes `metav1.LabelSelectorRequirement`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label.
    pub key: String,
    /// How the label is compared with `values`.
    pub operator: LabelSelectorOperator,
    /// The values: some for `In` and `NotIn`, none for `Exists` and `DoesNotExist`.
    pub values: Option<Vec<String>>,
}

/// Kubernetes `metav1.LabelSelectorOperator`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum LabelSelectorOperator {
    /// The label has one of the values.
    In,
    /// The label is absent or has none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// `spec` of a ServiceMeshMember (`maistra.io/v1`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberSpec {
    /// The control plane the namespace joins (required).
    pub control_plane_ref: ControlPlaneRef,
}

/// `ServiceMeshControlPlaneRef`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneRef {
    /// The ServiceMeshControlPlane's name (required).
    pub name: String,
    /// Its namespace (required).
    pub namespace: String,
}

/// The kinds a Sail `v1` TargetReference may name (CRD enum).
const SAIL_TARGET_KINDS: &[&str] = &["Istio", "IstioRevision"];
/// The CRD's `MaxLength` of a Sail TargetReference's name (and a `v1alpha1` kind).
const MAX_TARGET_NAME: usize = 253;
/// The only name of an IstioCNI or ZTunnel (CRD rule "metadata.name must be 'default'").
const SINGLETON_NAME: &str = "default";

/// IstioCNI: one per cluster, named `default`.
pub(crate) fn validate_istio_cni(r: &Resource<IstioCniSpec>) -> Vec<Finding> {
    check_singleton(r).into_iter().collect()
}

/// ZTunnel `v1`: one per cluster, named `default`; its `targetRef`.
pub(crate) fn validate_ztunnel(r: &Resource<ZTunnelSpec>) -> Vec<Finding> {
    let mut findings: Vec<Finding> = check_singleton(r).into_iter().collect();
    if let Some(target) = &r.spec.target_ref {
        findings.extend(target.validate("spec.targetRef", true));
    }
    findings
}

/// ZTunnel `v1alpha1`: one per cluster, named `default`.
pub(crate) fn validate_ztunnel_v1alpha1(r: &Resource<ZTunnelV1Alpha1Spec>) -> Vec<Finding> {
    check_singleton(r).into_iter().collect()
}

/// IstioRevisionTag: its `targetRef` (`v1` names the kinds).
pub(crate) fn validate_revision_tag(r: &Resource<IstioRevisionTagSpec>) -> Vec<Finding> {
    let enumerated = r.api_version.ends_with("/v1");
    r.spec.target_ref.validate("spec.targetRef", enumerated)
}

/// IstioRevision: the CRD's two rules, "spec.values.global.istioNamespace must match
/// spec.namespace" and "spec.values.revision must match metadata.name or be empty when the
/// name is 'default'". Both read `values`, so both need it.
pub(crate) fn validate_revision(r: &Resource<IstioRevisionSpec>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let values = r.spec.values.as_ref();
    let istio_namespace = values
        .and_then(|v| v.get("global"))
        .and_then(|g| g.get("istioNamespace"))
        .and_then(serde_json::Value::as_str);
    if istio_namespace != Some(r.spec.namespace.as_str()) {
        findings.push(Finding::error(
            code::INVALID,
            "spec.values.global.istioNamespace",
            format!(
                "spec.values.global.istioNamespace must be set to spec.namespace (`{}`)",
                r.spec.namespace
            ),
        ));
    }
    let revision = values
        .and_then(|v| v.get("revision"))
        .and_then(serde_json::Value::as_str);
    let name = r.meta.name.as_str();
    let revision_ok = if name == SINGLETON_NAME {
        revision.is_none_or(str::is_empty)
    } else {
        revision == Some(name)
    };
    if !revision_ok {
        findings.push(Finding::error(
            code::INVALID,
            "spec.values.revision",
            format!(
                "spec.values.revision must match metadata.name (`{name}`), or be empty when the \
                 name is `default`"
            ),
        ));
    }
    findings
}

/// ServiceMeshMemberRoll: selectors that Kubernetes can turn into label selectors.
pub(crate) fn validate_member_roll(r: &Resource<MemberRollSpec>) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (i, selector) in r.spec.member_selectors.iter().flatten().enumerate() {
        findings.extend(selector.validate(&push_index("spec.memberSelectors", i)));
    }
    findings
}

fn check_singleton<T>(r: &Resource<T>) -> Option<Finding> {
    (r.meta.name != SINGLETON_NAME).then(|| {
        Finding::error(
            code::INVALID,
            "metadata.name",
            format!(
                "there is one {} per cluster, and it must be named `{SINGLETON_NAME}`",
                r.kind
            ),
        )
    })
}

impl SailTargetReference {
    /// `enumerated`: the `v1` CRD, which allows only [`SAIL_TARGET_KINDS`].
    fn validate(&self, path: &str, enumerated: bool) -> Vec<Finding> {
        let mut findings = Vec::new();
        let kind_path = push_key(path, "kind");
        if enumerated {
            if !SAIL_TARGET_KINDS.contains(&self.kind.as_str()) {
                findings.push(Finding::error(
                    code::INVALID,
                    kind_path,
                    unknown_name_message("value", &self.kind, SAIL_TARGET_KINDS),
                ));
            }
        } else {
            findings.extend(non_empty(&self.kind, path, "kind"));
            findings.extend(max_len(&self.kind, MAX_TARGET_NAME, &kind_path));
        }
        findings.extend(non_empty(&self.name, path, "name"));
        findings.extend(max_len(
            &self.name,
            MAX_TARGET_NAME,
            &push_key(path, "name"),
        ));
        findings
    }
}

impl LabelSelector {
    /// What Kubernetes' `LabelSelectorAsSelector` refuses: bad label keys or values in
    /// `matchLabels`, and values that do not fit the operator.
    fn validate(&self, path: &str) -> Vec<Finding> {
        let mut findings = Vec::new();
        if let Some(labels) = &self.match_labels {
            findings.extend(check_labels(labels, &push_key(path, "matchLabels")));
        }
        let expressions_path = push_key(path, "matchExpressions");
        for (i, requirement) in self.match_expressions.iter().flatten().enumerate() {
            let has_values = requirement.values.as_ref().is_some_and(|v| !v.is_empty());
            let message = match (requirement.operator, has_values) {
                (LabelSelectorOperator::In | LabelSelectorOperator::NotIn, false) => {
                    "the In and NotIn operators need values"
                }
                (LabelSelectorOperator::Exists | LabelSelectorOperator::DoesNotExist, true) => {
                    "the Exists and DoesNotExist operators take no values"
                }
                _ => continue,
            };
            findings.push(Finding::error(
                code::INVALID,
                push_key(&push_index(&expressions_path, i), "values"),
                message,
            ));
        }
        findings
    }
}
