//! `ward control-plane --kubernetes`: the API server as a config source (crates/kube), loaded
//! through the control plane's one reload path; and `ward install crds`.
//!
//! Start: every watch must have listed once before the control plane starts (so it neither
//! serves nor signs before its caches are complete: its admin `/ready` is not even bound yet).
//! Then each change is debounced, rendered and handed to `ControlPlane::set_external`; a
//! rendering equal to the last one (a relist after API server loss or 410 Gone that found
//! nothing new) is not loaded at all, and a config with errors is refused whole, logged and
//! recorded as Events on the offending objects while the last good config keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use ward_config::ConfigFiles;
use ward_control::{ControlPlane, ReloadError};
use ward_kube::events::Events;
use ward_kube::tokens::{Reviewer, AUDIENCE};
use ward_kube::Cluster;

/// Renderings of the API server's objects, by what became of them.
type Renders = Family<Vec<(String, String)>, Counter>;

/// A started Kubernetes source with the control plane it feeds.
pub(crate) struct Kubernetes {
    /// The control plane, loaded with the files and the first complete view of the cluster.
    pub(crate) control: Arc<ControlPlane>,
    /// Checks proxies' ServiceAccount tokens.
    pub(crate) reviewer: Arc<Reviewer>,
    cluster: Cluster,
    events: Events,
    /// The documents last handed to the control plane.
    last: ConfigFiles,
    renders: Renders,
}

/// Connects, starts the watches, waits for all of them to list once, and starts the control
/// plane with `paths` and what they hold. A config with errors at this point does not stop
/// the control plane from waiting: it is reported (log and Events) and loaded again at the next
/// change.
pub(crate) async fn start(
    kubeconfig: Option<&Path>,
    istio_namespace: &str,
    paths: Vec<PathBuf>,
    registry: &mut Registry,
) -> anyhow::Result<Kubernetes> {
    let client = ward_kube::client(kubeconfig).await?;
    let cluster = Cluster::start(client.clone(), istio_namespace).await?;
    let events = Events::new(client.clone(), std::env::var("POD_NAME").ok());
    let renders = Renders::default();
    registry.register(
        "ward_kubernetes_renders",
        "Renderings of the API server's objects after a change, by result: applied, unchanged \
         (the config they gave equals the serving one), identical (the same documents as last \
         time: nothing loaded) or rejected",
        renders.clone(),
    );
    let mut changes = cluster.changes();
    let mut waited = 0u32;
    while !cluster.is_synced() {
        if waited.is_multiple_of(50) {
            tracing::info!(target: "kubernetes", waiting_for = %cluster.unsynced().join(", "), "waiting for the API server's first lists");
        }
        waited += 1;
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
    }
    loop {
        let docs = ward_kube::render(&cluster.objects());
        match ControlPlane::start_with(paths.clone(), docs.clone()) {
            Ok(control) => {
                tracing::info!(target: "kubernetes", documents = docs.len(), "loaded the cluster's config");
                return Ok(Kubernetes {
                    control,
                    reviewer: Arc::new(Reviewer::new(client, AUDIENCE)),
                    cluster,
                    events,
                    last: docs,
                    renders,
                });
            }
            Err(d) => {
                tracing::error!(target: "kubernetes", "config has errors; waiting for a change:\n{d}");
                events
                    .publish(&d.errors().cloned().collect::<Vec<_>>())
                    .await;
                changes.changed().await.context("the watches stopped")?;
            }
        }
    }
}

impl Kubernetes {
    /// Loads each change (after `debounce`) until `shutdown`.
    pub(crate) async fn follow(mut self, debounce: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.cluster.changes();
        changes.mark_unchanged();
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
            tokio::time::sleep(debounce).await;
            changes.mark_unchanged();
            self.load().await;
        }
    }

    async fn load(&mut self) {
        let docs = ward_kube::render(&self.cluster.objects());
        if docs == self.last {
            self.count("identical");
            return;
        }
        self.last = docs.clone();
        match self.control.set_external(docs) {
            Ok(true) => {
                self.count("applied");
                tracing::info!(target: "kubernetes", generation = self.control.status().generation, "config change applied");
            }
            Ok(false) => {
                self.count("unchanged");
                tracing::debug!(target: "kubernetes", "objects changed, config unchanged");
            }
            Err(e) => {
                self.count("rejected");
                tracing::error!(target: "kubernetes", "{e}");
                if let ReloadError::Invalid(d) = &e {
                    self.events
                        .publish(&d.errors().cloned().collect::<Vec<_>>())
                        .await;
                }
            }
        }
    }

    fn count(&self, result: &str) {
        self.renders
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc();
    }
}

/// `ward install crds`: the CRDs of the Istio kinds Ward reads, as a `v1` List (JSON, which
/// `kubectl apply -f -` reads as YAML).
pub(crate) fn print_crds() -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&ward_kube::crds::crds())?;
    println!("{text}");
    Ok(())
}
