//! Pieces shared by the specs Ward validates without enforcing them (Telemetry, WasmPlugin,
//! ProxyConfig and the operator kinds): free-form values, protobuf durations, and the checks
//! istiod makes on `selector` / `targetRef` / `targetRefs`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use ward_policy::duration::{self, Grammar};
use ward_policy::spec::{PolicyTargetReference, WorkloadSelector};

use crate::diag::{code, Finding};
use crate::meta::check_labels;
use crate::yaml::{push_index, push_key};

/// Any YAML value, kept as JSON: a `google.protobuf.Value`, or a subtree Ward does not type
/// (an operator's Helm `values`). Nothing below it is checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct FreeForm(pub serde_json::Value);

/// A `google.protobuf.Struct`: a mapping of any values. Nothing below it is checked.
pub type FreeMap = serde_json::Map<String, serde_json::Value>;

/// A `google.protobuf.Duration`, written as a string: `5s`, `0.5s`, or Go's form (`1m30s`,
/// `300ms`) that Istio also takes (see `ward_policy::duration`). A value that is not a duration
/// is an error at decoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtoDuration(pub Duration);

impl<'de> Deserialize<'de> for ProtoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// Parses inside the deserializer's call, so that an error is placed on the value's line.
struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = ProtoDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as 5s")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<ProtoDuration, E> {
        duration::parse(text, Grammar::ISTIO)
            .map(ProtoDuration)
            .map_err(E::custom)
    }
}

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

/// A required string field (`field` of the object at `path`) that is empty.
pub(crate) fn require(value: &str, path: &str, field: &str) -> Option<Finding> {
    value.is_empty().then(|| {
        Finding::error(
            code::INVALID,
            push_key(path, field),
            format!("`{field}` must not be empty"),
        )
    })
}

/// A string longer than the CRD's `MaxLength` (counted in characters, as Kubernetes does).
pub(crate) fn check_max_len(value: &str, max: usize, path: &str) -> Option<Finding> {
    let len = value.chars().count();
    (len > max).then(|| {
        Finding::error(
            code::INVALID,
            path,
            format!("{len} characters: at most {max} are allowed"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;
    use crate::yaml::parse_documents;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Spec {
        interval: Option<ProtoDuration>,
        config: Option<FreeForm>,
    }

    fn spec(yaml: &str) -> Result<Spec, String> {
        let docs = parse_documents(yaml).unwrap();
        decode::<Spec>(&docs[0], "spec").map_err(|e| {
            let at = e.at().unwrap();
            format!("{}:{}: {e}", at.path, at.line)
        })
    }

    #[test]
    fn durations_are_protobuf_or_go_strings_located_on_error() {
        for (text, want) in [
            ("5s", Duration::from_secs(5)),
            ("0.5s", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
        ] {
            let got = spec(&format!("interval: {text}\n")).unwrap();
            assert_eq!(got.interval, Some(ProtoDuration(want)), "{text}");
        }
        let err = spec("config: {}\ninterval: 5\n").unwrap_err();
        assert!(
            err.starts_with("spec.interval:2: \"5\" is not a duration"),
            "{err}"
        );
        assert!(spec("interval: -1s\n").is_err());
    }

    #[test]
    fn free_form_takes_any_value() {
        let got = spec("config:\n  a: [1, x, {b: null}]\n  8080: true\n").unwrap();
        assert_eq!(
            got.config.unwrap().0,
            serde_json::json!({"a": [1, "x", {"b": null}], "8080": true})
        );
        assert_eq!(spec("config: 3\n").unwrap().config.unwrap().0, 3);
    }

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
