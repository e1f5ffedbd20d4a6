//! The checks istiod makes on a policy's attachment, `selector` / `targetRef` / `targetRefs`
//! (Telemetry, WasmPlugin, ProxyConfig).

use ward_policy::spec::{PolicyTargetReference, WorkloadSelector};

use crate::diag::{code, Finding};
use crate::meta::check_labels;
use crate::yaml::{push_index, push_key};

/// The most `targetRefs` a policy may list (istio/api `type/v1beta1/selector.proto` users:
/// `+kubebuilder:validation:MaxItems=16`).
const MAX_TARGET_REFS: usize = 16;

/// The kinds a `targetRef` may name, with their canonical group (istio/istio
/// `pkg/config/validation/validation.go`, `allowedTargetRefs`).
const TARGET_KINDS: &[(&str, &str)] = &[
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

/// istiod's checks of a policy's attachment (istio/istio `pkg/config/validation/validation.go`:
/// `validateOneOfSelectorType`, `validateWorkloadSelector`, `validatePolicyTargetReference`),
/// and the CRD's `MaxItems` on `targetRefs`. Selector labels get the checks of every other
/// selector Ward reads.
pub(crate) fn check_attachment(
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: Option<&[PolicyTargetReference]>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let target_refs = target_refs.unwrap_or_default();
    if let Some(selector) = selector {
        findings.extend(check_labels(
            &selector.match_labels,
            "spec.selector.matchLabels",
        ));
    }
    let set = [
        (selector.is_some(), "spec.selector"),
        (target_ref.is_some(), "spec.targetRef"),
        (!target_refs.is_empty(), "spec.targetRefs"),
    ];
    if let Some((_, field)) = set.iter().filter(|(on, _)| *on).nth(1) {
        findings.push(Finding::error(
            code::INVALID,
            *field,
            "only one of selector, targetRef and targetRefs can be set",
        ));
    }
    if let Some(target) = target_ref {
        findings.extend(check_target_ref(target, "spec.targetRef"));
    }
    if target_refs.len() > MAX_TARGET_REFS {
        findings.push(Finding::error(
            code::INVALID,
            "spec.targetRefs",
            format!(
                "{} targetRefs: at most {MAX_TARGET_REFS} are allowed",
                target_refs.len()
            ),
        ));
    }
    for (i, target) in target_refs.iter().enumerate() {
        findings.extend(check_target_ref(target, &push_index("spec.targetRefs", i)));
    }
    findings
}

fn check_target_ref(target: &PolicyTargetReference, path: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    if target.name.is_empty() {
        findings.push(Finding::error(
            code::INVALID,
            push_key(path, "name"),
            "the target's name must be set",
        ));
    }
    if target.namespace.as_deref().is_some_and(|ns| !ns.is_empty()) {
        findings.push(Finding::error(
            code::INVALID,
            push_key(path, "namespace"),
            "cross-namespace references are not supported: leave namespace empty (the \
             policy's own namespace)",
        ));
    }
    let group = match target.group.as_deref() {
        None | Some("") => "core",
        Some(group) => group,
    };
    if !TARGET_KINDS.contains(&(group, target.kind.as_str())) {
        findings.push(Finding::error(
            code::INVALID,
            push_key(path, "kind"),
            format!(
                "a target must be a Service (group \"\"), a ServiceEntry (group \
                 networking.istio.io), or a Gateway or GatewayClass (group \
                 gateway.networking.k8s.io); found kind `{}` in group `{}`",
                target.kind,
                target.group.as_deref().unwrap_or_default()
            ),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(
        group: Option<&str>,
        kind: &str,
        name: &str,
        ns: Option<&str>,
    ) -> PolicyTargetReference {
        PolicyTargetReference {
            group: group.map(str::to_owned),
            kind: kind.to_owned(),
            name: name.to_owned(),
            namespace: ns.map(str::to_owned),
        }
    }

    fn fields(findings: Vec<Finding>) -> Vec<String> {
        findings.into_iter().map(|f| f.field).collect()
    }

    #[test]
    fn attachment_follows_istiod() {
        let gateway = target(Some("gateway.networking.k8s.io"), "Gateway", "gw", None);
        let service = target(Some(""), "Service", "svc", None);
        let selector = WorkloadSelector::default();
        assert!(check_attachment(None, None, Some(&[gateway.clone(), service.clone()])).is_empty());
        assert!(check_attachment(Some(&selector), None, Some(&[])).is_empty());
        assert_eq!(
            fields(check_attachment(
                Some(&selector),
                None,
                Some(std::slice::from_ref(&service))
            )),
            ["spec.targetRefs"]
        );
        assert_eq!(
            fields(check_attachment(
                None,
                Some(&service),
                Some(std::slice::from_ref(&service))
            )),
            ["spec.targetRefs"]
        );
        assert_eq!(
            fields(check_attachment(Some(&selector), Some(&service), None)),
            ["spec.targetRef"]
        );
        let bad = [
            target(None, "Gateway", "gw", None),
            target(Some("core"), "Service", "", Some("other")),
        ];
        assert_eq!(
            fields(check_attachment(None, None, Some(&bad))),
            [
                "spec.targetRefs[0].kind",
                "spec.targetRefs[1].name",
                "spec.targetRefs[1].namespace"
            ]
        );
        let many = vec![gateway; 17];
        assert_eq!(
            fields(check_attachment(None, None, Some(&many))),
            ["spec.targetRefs"]
        );
    }
}
