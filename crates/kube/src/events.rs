//! Kubernetes Events on invalid objects: where `kubectl describe` and `kubectl get events` show
//! them. A diagnostic's file names its object (`translate::document_name`), so the event goes
//! to that object, with the field path and the reason.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use tokio::sync::watch;
use ward_config::Diagnostic;

/// The reference of the object a document name (`k8s:<apiVersion>/<Kind>/<ns>/<name>`)
/// stands for; `None` for a file on disk.
pub fn object_of(file: &str) -> Option<ObjectReference> {
    let rest = file.strip_prefix("k8s:")?;
    let parts: Vec<&str> = rest.split('/').collect();
    // apiVersion has a group (`g/v`) or not (`v1`); the namespace may be absent.
    let (api_version, kind, namespace, name) = match parts.as_slice() {
        [g, v, k, ns, n] => (format!("{g}/{v}"), *k, Some(*ns), *n),
        [g, v, k, n] if g.contains('.') => (format!("{g}/{v}"), *k, None, *n),
        [v, k, ns, n] => ((*v).to_owned(), *k, Some(*ns), *n),
        [v, k, n] => ((*v).to_owned(), *k, None, *n),
        _ => return None,
    };
    Some(ObjectReference {
        api_version: Some(api_version),
        kind: Some(kind.to_owned()),
        namespace: namespace.map(str::to_owned),
        name: Some(name.to_owned()),
        ..ObjectReference::default()
    })
}

/// The note of an event: the diagnostic, less the file the object already is.
pub fn note(d: &Diagnostic) -> String {
    let field = d.field.as_deref().unwrap_or("");
    let mut note = format!("{} {}", d.code, d.message);
    if !field.is_empty() {
        note = format!("{field}: {note}");
    }
    // The API server caps a note at 1 kB.
    note.chars().take(1000).collect()
}

/// Publishes Warning events for the errors of a rejected config, as `ward-control-plane`; only
/// while this replica leads ([`crate::leader`]). A replica that is not leading keeps the errors
/// of the config it last rejected and publishes them if it comes to lead while that config is
/// still the latest.
pub struct Events {
    recorder: Recorder,
    leading: watch::Receiver<bool>,
    /// The errors of the last rejected config not yet published (a replica not leading).
    pending: Vec<Diagnostic>,
}

impl Events {
    /// A publisher using `client`; `instance` names this control plane (its pod name);
    /// `leading` says whether this replica leads.
    pub fn new(client: Client, instance: Option<String>, leading: watch::Receiver<bool>) -> Events {
        Events {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "ward-control-plane".into(),
                    instance,
                },
            ),
            leading,
            pending: Vec::new(),
        }
    }

    /// The errors of a config just loaded (none when it was valid): one event per error whose
    /// object is a Kubernetes object, now if this replica leads, else when it comes to lead.
    /// Failures are logged only.
    pub async fn publish(&mut self, errors: &[Diagnostic]) {
        self.pending = errors.to_vec();
        let leading = *self.leading.borrow();
        if leading {
            self.flush().await;
        }
    }

    /// Publishes what is pending (after this replica came to lead).
    pub async fn flush(&mut self) {
        for d in std::mem::take(&mut self.pending) {
            let Some(reference) = object_of(&d.file) else {
                continue;
            };
            let event = Event {
                type_: EventType::Warning,
                reason: "InvalidConfig".into(),
                note: Some(note(&d)),
                action: "Load".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(target: "kubernetes", object = %d.file, error = %e, "cannot record the event");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_names_map_back_to_their_objects() {
        let r = object_of("k8s:security.istio.io/v1/AuthorizationPolicy/app/p").unwrap();
        assert_eq!(r.api_version.as_deref(), Some("security.istio.io/v1"));
        assert_eq!(r.kind.as_deref(), Some("AuthorizationPolicy"));
        assert_eq!(r.namespace.as_deref(), Some("app"));
        assert_eq!(r.name.as_deref(), Some("p"));
        let ns = object_of("k8s:v1/Namespace/app").unwrap();
        assert_eq!(
            (ns.kind.as_deref(), ns.namespace),
            (Some("Namespace"), None)
        );
        let cm = object_of("k8s:v1/ConfigMap/istio-system/istio").unwrap();
        assert_eq!(cm.namespace.as_deref(), Some("istio-system"));
        assert!(object_of("/etc/ward/policy.yaml").is_none());
    }
}
