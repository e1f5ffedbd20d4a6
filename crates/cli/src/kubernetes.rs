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
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use ward_config::ConfigFiles;
use ward_control::{ControlPlane, ReloadError};
use ward_kube::events::Events;
use ward_kube::leader::Elector;
use ward_kube::status::StatusWriter;
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
    /// The watches' caches (also read by the webhooks).
    pub(crate) cluster: Arc<Cluster>,
    /// The API server client.
    pub(crate) client: ward_kube::Client,
    /// Whether this replica leads (holds the Lease): only the leader writes to the API server.
    pub(crate) leading: watch::Receiver<bool>,
    /// The elector's task: it releases the Lease on shutdown (await it then).
    pub(crate) elector: Option<tokio::task::JoinHandle<()>>,
    events: Events,
    /// `status.validationMessages` of the Istio objects with findings.
    status: StatusWriter,
    /// The documents last handed to the control plane.
    last: ConfigFiles,
    /// Translates only the objects that changed since the last rendering.
    renderer: ward_kube::Renderer,
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
    leader: &crate::control_plane::LeaderArgs,
    registry: &mut Registry,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Kubernetes> {
    let timing = leader.timing()?;
    let client = ward_kube::client(kubeconfig).await?;
    // The election runs from the start: a config rejected at start is reported by the leader.
    let identity = leader
        .leader_id
        .clone()
        .unwrap_or_else(ward_kube::leader::default_identity);
    let elector = Elector::new(client.clone(), istio_namespace, identity.clone(), timing);
    let (leading_tx, leading) = watch::channel(false);
    let elector = Some(tokio::spawn(elector.run(leading_tx, shutdown)));
    let gauge = Gauge::<i64>::default();
    registry.register(
        "ward_leader",
        "1 while this replica holds the leader Lease (and so writes to the API server), else 0",
        gauge.clone(),
    );
    tokio::spawn(mirror(leading.clone(), gauge));
    tracing::info!(target: "leader", %identity, namespace = istio_namespace, lease = ward_kube::leader::LEASE_NAME, "taking part in leader election");
    let cluster = Cluster::start(client.clone(), istio_namespace).await?;
    let mut events = Events::new(client.clone(), Some(identity.clone()), leading.clone());
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
    let mut renderer = ward_kube::Renderer::new();
    let mut status = StatusWriter::new(client.clone(), leading.clone());
    loop {
        let objects = cluster.objects();
        let (docs, _) = renderer.render(&objects);
        match ControlPlane::start_with(paths.clone(), docs.clone()) {
            Ok(control) => {
                tracing::info!(target: "kubernetes", documents = docs.len(), "loaded the cluster's config");
                events.publish(&[]).await;
                status.set(&control.findings());
                status.sync(&objects).await;
                return Ok(Kubernetes {
                    control,
                    reviewer: Arc::new(Reviewer::new(client.clone(), AUDIENCE)),
                    cluster: Arc::new(cluster),
                    client,
                    leading,
                    elector,
                    events,
                    status,
                    last: docs,
                    renderer,
                    renders,
                });
            }
            Err(d) => {
                tracing::error!(target: "kubernetes", "config has errors; waiting for a change:\n{d}");
                events
                    .publish(&d.errors().cloned().collect::<Vec<_>>())
                    .await;
                status.set(&d.0);
                status.sync(&objects).await;
                // Wait for a change; a replica that comes to lead meanwhile reports the errors.
                let mut lead = leading.clone();
                loop {
                    tokio::select! {
                        r = changes.changed() => {
                            r.context("the watches stopped")?;
                            break;
                        }
                        r = lead.changed() => {
                            r.context("leader election stopped")?;
                            let now_leading = *lead.borrow_and_update();
                            if now_leading {
                                events.flush().await;
                                status.sync(&cluster.objects()).await;
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Kubernetes {
    /// Loads each change until `shutdown`; on becoming the leader, publishes the errors of a
    /// rejected config that a follower could not.
    ///
    /// Debouncing, as istiod's (`PILOT_DEBOUNCE_AFTER`/`PILOT_DEBOUNCE_MAX`): after a change,
    /// wait until the watches have been quiet for `debounce`, but never longer than
    /// `debounce_max` in all, then render. A lone change waits `debounce` (a few ms by default);
    /// a burst (`kubectl apply -f dir/`, a rollout) loads once. Changes that arrive while a
    /// rendering runs are picked up by the next one.
    pub(crate) async fn follow(
        mut self,
        debounce: Duration,
        debounce_max: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut changes = self.cluster.changes();
        changes.mark_unchanged();
        let mut leading = self.leading.clone();
        loop {
            let came_to_lead = tokio::select! {
                r = changes.changed() => if r.is_err() { return } else { false },
                r = leading.changed() => if r.is_err() { return } else { *leading.borrow_and_update() },
                _ = shutdown.wait_for(|s| *s) => return,
            };
            if came_to_lead {
                self.events.flush().await;
                self.status.sync(&self.cluster.objects()).await;
                continue;
            }
            let first = tokio::time::Instant::now();
            changes.mark_unchanged();
            loop {
                let deadline = (first + debounce_max).min(tokio::time::Instant::now() + debounce);
                match tokio::time::timeout_at(deadline, changes.changed()).await {
                    // Another change within the quiet window: wait again, up to the cap.
                    Ok(Ok(())) if first.elapsed() < debounce_max => {
                        changes.mark_unchanged();
                    }
                    Ok(Ok(())) => {
                        changes.mark_unchanged();
                        break;
                    }
                    Ok(Err(_)) => return,
                    Err(_) => break,
                }
            }
            self.load().await;
        }
    }

    async fn load(&mut self) {
        let started = std::time::Instant::now();
        let objects = self.cluster.objects();
        let (docs, stats) = self.renderer.render(&objects);
        let rendered = started.elapsed();
        if docs == self.last {
            self.count("identical");
            // Someone else may have changed a status Ward writes.
            self.status.sync(&objects).await;
            return;
        }
        self.last = docs.clone();
        let result = self.control.set_external(docs);
        tracing::debug!(target: "kubernetes", translated = stats.translated, reused = stats.reused,
            render_ms = rendered.as_millis() as u64,
            load_ms = started.elapsed().saturating_sub(rendered).as_millis() as u64,
            "rendered the cluster's objects");
        match result {
            Ok(true) => {
                self.events.publish(&[]).await;
                self.status.set(&self.control.findings());
                self.count("applied");
                tracing::info!(target: "kubernetes", generation = self.control.status().generation, "config change applied");
            }
            Ok(false) => {
                self.events.publish(&[]).await;
                self.status.set(&self.control.findings());
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
                    self.status.set(&d.0);
                }
            }
        }
        self.status.sync(&objects).await;
    }

    fn count(&self, result: &str) {
        self.renders
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc();
    }
}

/// Keeps `gauge` at 1 while `leading` says so, else 0.
async fn mirror(mut leading: watch::Receiver<bool>, gauge: Gauge<i64>) {
    loop {
        gauge.set(i64::from(*leading.borrow_and_update()));
        if leading.changed().await.is_err() {
            return;
        }
    }
}

/// `ward install`.
#[derive(clap::Args)]
pub(crate) struct InstallArgs {
    #[command(subcommand)]
    what: Option<InstallWhat>,
    #[command(flatten)]
    common: InstallCommon,
    /// The webhooks' failurePolicy: `Fail` refuses what the webhook could not judge (Istio's
    /// default for injection; Ward's for both), `Ignore` lets it through unchecked.
    #[arg(long, default_value = "Fail", value_parser = ["Fail", "Ignore"])]
    failure_policy: String,
    /// The API server calls the webhooks at this base URL (`https://HOST:PORT`) instead of
    /// through the control plane's Service: a control plane outside the cluster. Give the
    /// control plane the host with `--webhook-san`.
    #[arg(long, value_name = "URL")]
    webhook_url: Option<String>,
    /// The mesh's trust domain (mesh ConfigMap `istio`).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The `ward` image of the control plane (and, through it, of injected sidecars).
    #[arg(long, default_value = crate::control_plane::DEFAULT_IMAGE)]
    image: String,
    /// The image of the injected capture init container (`ward` with `iptables`).
    #[arg(long, default_value = crate::control_plane::DEFAULT_CAPTURE_IMAGE)]
    capture_image: String,
    /// Control-plane replicas: all serve proxies, the one holding the Lease writes. More than
    /// one requires the `cacerts` Secret in the namespace (one CA for every replica): the
    /// replicas do not start until it exists (docs/kubernetes.md, "Replicas").
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    replicas: u32,
}

/// What `ward install` prints besides everything.
#[derive(clap::Subcommand)]
enum InstallWhat {
    /// The CustomResourceDefinitions of the Istio kinds Ward reads, every version served.
    Crds,
}

/// What both `ward install` and `ward uninstall` take.
#[derive(clap::Args)]
pub(crate) struct InstallCommon {
    /// The mesh's root namespace, where the control plane runs.
    #[arg(long, short = 'n', default_value = "istio-system")]
    namespace: String,
    /// The Istio CRDs: `auto` asks the cluster (KUBECONFIG or `--kubeconfig`) and leaves out
    /// those it has from another installer, such as Istio's own (all of them when the cluster
    /// cannot be asked); `always`; `never`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    crds: String,
    /// The kubeconfig asked with `--crds auto`.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
}

/// `--crds auto`: the cluster's CRDs (name → installed by Ward), or `None` when it cannot be
/// asked.
async fn cluster_crds(common: &InstallCommon) -> Option<std::collections::BTreeMap<String, bool>> {
    let client = ward_kube::client(common.kubeconfig.as_deref()).await.ok()?;
    let ask = ward_kube::publish::installed_crds(&client);
    match tokio::time::timeout(Duration::from_secs(10), ask).await {
        Ok(Ok(crds)) => Some(crds),
        Ok(Err(e)) => {
            eprintln!("ward: --crds auto: {e}; printing every CRD");
            None
        }
        Err(_) => {
            eprintln!("ward: --crds auto: the API server did not answer; printing every CRD");
            None
        }
    }
}

/// The CRDs to print: all, or with `auto` those the cluster lacks or Ward installed.
async fn crds_for(common: &InstallCommon, uninstall: bool) -> Vec<serde_json::Value> {
    let all = ward_kube::crds::crds()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let installed = match common.crds.as_str() {
        "never" => return vec![],
        "always" => return all,
        _ => cluster_crds(common).await,
    };
    let Some(installed) = installed else {
        return if uninstall { vec![] } else { all };
    };
    all.into_iter()
        .filter(|c| {
            let name = c["metadata"]["name"].as_str().unwrap_or("");
            match installed.get(name) {
                // Ward's: updated on install, deleted on uninstall.
                Some(true) => true,
                // Someone else's (Istio's): never touched.
                Some(false) => false,
                None => !uninstall,
            }
        })
        .collect()
}

fn print_list(items: Vec<serde_json::Value>) -> anyhow::Result<()> {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    println!("{}", serde_json::to_string_pretty(&list)?);
    Ok(())
}

/// `ward install`.
pub(crate) async fn install(args: InstallArgs) -> anyhow::Result<()> {
    if let Some(InstallWhat::Crds) = args.what {
        return print_list(
            ward_kube::crds::crds()["items"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
    }
    let opts = ward_kube::install::InstallOptions {
        namespace: args.common.namespace.clone(),
        image: args.image,
        capture_image: args.capture_image,
        failure_policy: args.failure_policy,
        webhook_url: args.webhook_url,
        trust_domain: args.trust_domain,
        replicas: args.replicas,
    };
    if args.replicas > 1 {
        eprintln!(
            "ward: --replicas {}: the replicas wait for the Secret `cacerts` in namespace {} \
             (the mesh CA they all sign with; docs/kubernetes.md, \"Replicas\")",
            args.replicas, args.common.namespace
        );
    }
    let mut items = crds_for(&args.common, false).await;
    items.extend(ward_kube::install::manifests(&opts));
    print_list(items)
}

/// `ward uninstall`.
#[derive(clap::Args)]
pub(crate) struct UninstallArgs {
    #[command(flatten)]
    common: InstallCommon,
}

/// `ward uninstall`: what `ward install` printed, webhooks first (so nothing is refused or
/// injected by a control plane on its way out), CRDs last and only Ward's; with `--crds auto`
/// (default) and a reachable cluster, also the root ConfigMaps the control plane wrote.
pub(crate) async fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let opts = ward_kube::install::InstallOptions {
        namespace: args.common.namespace.clone(),
        image: String::new(),
        capture_image: String::new(),
        failure_policy: "Fail".into(),
        webhook_url: None,
        trust_domain: String::new(),
        replicas: 1,
    };
    let mut items = ward_kube::install::manifests(&opts);
    items.reverse();
    if args.common.crds != "never" {
        if let Ok(client) = ward_kube::client(args.common.kubeconfig.as_deref()).await {
            let ask = ward_kube::publish::root_config_maps(&client);
            if let Ok(Ok(namespaces)) = tokio::time::timeout(Duration::from_secs(10), ask).await {
                items.extend(namespaces.into_iter().map(|ns| {
                    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                                       "metadata": {"name": ward_kube::webhook::ROOT_CONFIG_MAP, "namespace": ns}})
                }));
            }
        }
    }
    items.extend(crds_for(&args.common, true).await);
    print_list(items)
}
