//! `status.validationMessages` on the Istio objects a finding is about, where Istio's analyzers
//! (istiod's status controller with `PILOT_ENABLE_STATUS`, `istioctl analyze --write-status`)
//! put theirs, so `kubectl get -o yaml` shows them next to the object.
//!
//! The shape is Istio's: `status` is an `IstioStatus` (istio/api meta/v1alpha1/status.proto)
//! whose `validationMessages` are `AnalysisMessageBase`s (istio/api
//! analysis/v1alpha1/message.proto): `type: {name, code}`, `level` (`ERROR`, `WARNING`, `INFO`)
//! and `documentationUrl`. Ward's codes are its own (`WARD0103`, named `FieldNotEnforced`;
//! docs/analyze.md lists them all). Like Istio's, a message carries no text: the Event on the
//! object ([`crate::events`]) and the control plane's log do.
//!
//! [`desired`] is pure (findings → messages per object); [`StatusWriter`] compares it with the
//! status the watches last saw and patches only what differs, through the status subresource,
//! and only while this replica leads. An object whose findings are gone has its
//! `validationMessages` removed.

use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;
use ward_config::{Diagnostic, Severity};

use crate::events::object_of;
use crate::source::ISTIO_GROUPS;
use crate::translate::{document_name, Objects};

/// Where a Ward code is explained (`documentationUrl`).
pub const DOCUMENTATION_URL: &str =
    "https://github.com/ward-mesh/ward/blob/main/docs/analyze.md#codes";

/// One `AnalysisMessageBase`.
pub fn message(d: &Diagnostic) -> Value {
    let level = match d.severity {
        Severity::Error => "ERROR",
        Severity::Warning => "WARNING",
        Severity::Info => "INFO",
    };
    json!({
        "type": {"code": d.code, "name": ward_config::code::name(d.code).unwrap_or(d.code)},
        "level": level,
        "documentationUrl": DOCUMENTATION_URL,
    })
}

/// Whether a document name (`k8s:<group>/<version>/<Kind>/...`) is an Istio object (the kinds
/// whose CRDs have a status Ward may write; Pods, Services and the mesh ConfigMap have not).
fn is_istio(file: &str) -> bool {
    file.strip_prefix("k8s:")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|group| ISTIO_GROUPS.contains(&group))
}

/// The messages each Istio object should carry for `findings`, by document name; sorted and
/// without duplicates (two findings of one code and level on one object are one message, as
/// the message has no text to tell them apart).
pub fn desired(findings: &[Diagnostic]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for d in findings.iter().filter(|d| is_istio(&d.file)) {
        out.entry(d.file.clone()).or_default().push(message(d));
    }
    for messages in out.values_mut() {
        messages.sort_by_key(|m| m.to_string());
        messages.dedup();
    }
    out
}

/// The patches that bring the cluster's Istio objects (as the watches last saw them) to
/// `want`: (object's document name, `validationMessages` to write, `None` to remove).
pub fn patches(
    want: &BTreeMap<String, Vec<Value>>,
    objects: &Objects,
) -> Vec<(String, Option<Vec<Value>>)> {
    let mut out = Vec::new();
    for o in &objects.passthrough {
        let (Some(api_version), Some(kind), Some(name)) = (
            o["apiVersion"].as_str(),
            o["kind"].as_str(),
            o["metadata"]["name"].as_str(),
        ) else {
            continue;
        };
        let namespace = o["metadata"]["namespace"].as_str().unwrap_or("");
        let file = document_name(api_version, kind, namespace, name);
        if !is_istio(&file) {
            continue;
        }
        let have = o["status"]["validationMessages"].as_array();
        let wanted = want.get(&file).filter(|m| !m.is_empty());
        match (have.filter(|h| !h.is_empty()), wanted) {
            (None, None) => {}
            (Some(h), Some(w)) if h == w => {}
            (_, w) => out.push((file, w.cloned())),
        }
    }
    out
}

/// Writes [`desired`] messages to the objects' status while this replica leads.
pub struct StatusWriter {
    client: Client,
    leading: watch::Receiver<bool>,
    want: BTreeMap<String, Vec<Value>>,
}

impl StatusWriter {
    /// A writer with `client`, writing only while `leading`.
    pub fn new(client: Client, leading: watch::Receiver<bool>) -> StatusWriter {
        StatusWriter {
            client,
            leading,
            want: BTreeMap::new(),
        }
    }

    /// Sets the findings of the config just loaded (the serving one's warnings, or everything
    /// found in a rejected one).
    pub fn set(&mut self, findings: &[Diagnostic]) {
        self.want = desired(findings);
    }

    /// Patches every object whose status differs from what it should be (none when not
    /// leading). Failures are logged; the next sync tries again.
    pub async fn sync(&self, objects: &Objects) {
        if !*self.leading.borrow() {
            return;
        }
        for (file, messages) in patches(&self.want, objects) {
            let Some(reference) = object_of(&file) else {
                continue;
            };
            let (Some(api_version), Some(kind), Some(name)) = (
                reference.api_version.as_deref(),
                reference.kind.as_deref(),
                reference.name.as_deref(),
            ) else {
                continue;
            };
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let resource = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(group, version, kind),
                &crate::crds::plural(kind),
            );
            let api: Api<DynamicObject> = match reference.namespace.as_deref() {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
                None => Api::all_with(self.client.clone(), &resource),
            };
            // A JSON merge patch: `null` removes the field.
            let patch = json!({"status": {"validationMessages": messages}});
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::debug!(target: "kubernetes", object = %file, "status.validationMessages written")
                }
                Err(e) => {
                    tracing::warn!(target: "kubernetes", object = %file, error = %e, "cannot write status.validationMessages")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(severity: Severity, code: &'static str, file: &str) -> Diagnostic {
        Diagnostic::new(severity, code, "m").at(file, Some(3))
    }

    const AP: &str = "k8s:security.istio.io/v1/AuthorizationPolicy/app/p";

    #[test]
    fn findings_become_istio_analysis_messages_on_istio_objects_only() {
        let want = desired(&[
            finding(Severity::Warning, "WARD0103", AP),
            finding(Severity::Warning, "WARD0103", AP),
            finding(Severity::Error, "WARD0108", AP),
            finding(
                Severity::Warning,
                "WARD0103",
                "k8s:v1/ConfigMap/istio-system/istio",
            ),
            finding(Severity::Warning, "WARD0103", "/etc/ward/x.yaml"),
        ]);
        assert_eq!(want.len(), 1, "{want:?}");
        let messages = &want[AP];
        assert_eq!(messages.len(), 2, "{messages:?}");
        let warning = messages.iter().find(|m| m["level"] == "WARNING").unwrap();
        assert_eq!(
            warning,
            &json!({"type": {"code": "WARD0103", "name": "FieldNotEnforced"},
                    "level": "WARNING", "documentationUrl": DOCUMENTATION_URL})
        );
        assert!(messages.iter().any(|m| m["level"] == "ERROR"
            && m["type"]["code"] == "WARD0108"
            && m["type"]["name"] == "PolicyInvalid"));
    }

    #[test]
    fn only_differences_are_patched_and_fixed_objects_are_cleared() {
        let object = |name: &str, status: Value| {
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                   "metadata": {"name": name, "namespace": "app"}, "status": status})
        };
        let want = desired(&[finding(Severity::Warning, "WARD0103", AP)]);
        let current = want[AP].clone();
        let objects = Objects {
            passthrough: vec![
                // Already right.
                object("p", json!({"validationMessages": current})),
                // Fixed: its message goes.
                object("fixed", json!({"validationMessages": current})),
                // Nothing to say, nothing there.
                object("clean", json!({})),
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}),
            ],
            ..Objects::default()
        };
        let p = patches(&want, &objects);
        assert_eq!(
            p,
            vec![(
                "k8s:security.istio.io/v1/AuthorizationPolicy/app/fixed".to_owned(),
                None
            )]
        );
        // A new finding on `clean`.
        let mut more = want;
        more.insert(
            "k8s:security.istio.io/v1/AuthorizationPolicy/app/clean".into(),
            current.clone(),
        );
        let p = patches(&more, &objects);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.contains(&(
            "k8s:security.istio.io/v1/AuthorizationPolicy/app/clean".to_owned(),
            Some(current)
        )));
    }
}
