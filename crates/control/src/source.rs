//! Config from files: load, validate, translate, publish; poll the files and reload on change.
//! An update with any error is rejected whole and the last good config keeps serving (Envoy SotW
//! semantics; threats.md §3 "Config with errors").

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use ward_config::{ConfigSet, Diagnostics, MeshSettings};
use ward_config::{MeshSnapshot, ProxyConfig};

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The files have errors; nothing was applied.
    #[error("config rejected, the last good config keeps serving:\n{0}")]
    Invalid(Diagnostics),
    /// The mesh identity settings changed; they need a restart.
    #[error("config rejected: {0} changed; restart ward to change it")]
    NeedsRestart(&'static str),
}

/// What the admin API shows about config.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConfigStatus {
    /// Bumped on every applied change.
    pub generation: u64,
    /// When the serving config was applied (seconds since the epoch).
    pub applied_at: u64,
    /// The last rejected update's diagnostics, if the last attempt failed.
    pub last_rejection: Option<String>,
    /// Rejected updates since start.
    pub rejections: u64,
    /// File changes that loaded cleanly since start, whether or not they changed the snapshot.
    pub reloads: u64,
    /// Warnings of the serving config.
    pub warnings: Vec<String>,
}

/// Fingerprint of the watched files: path, length, modification time.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The file-backed control plane.
pub struct ControlPlane {
    paths: Vec<PathBuf>,
    mesh: MeshSettings,
    /// The whole mesh; the supervisor watches it to add and remove sidecars.
    snapshot: watch::Sender<Arc<MeshSnapshot>>,
    /// One channel per proxy; written only by `apply`, read by each proxy.
    proxies: Mutex<BTreeMap<String, watch::Sender<Arc<ProxyConfig>>>>,
    status: Mutex<ConfigStatus>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn build(paths: &[PathBuf]) -> Result<(ConfigSet, MeshSnapshot), Diagnostics> {
    let set = ward_config::load_paths(paths)?;
    let snap = ward_config::translate(&set)?;
    Ok((set, snap))
}

impl ControlPlane {
    /// Load `paths`; fails with every diagnostic if the initial config has errors.
    pub fn start(paths: Vec<PathBuf>) -> Result<Arc<ControlPlane>, Diagnostics> {
        let (set, snap) = build(&paths)?;
        for w in &set.warnings {
            tracing::warn!(target: "config", "{w}");
        }
        let status = ConfigStatus {
            generation: 1,
            applied_at: now_secs(),
            last_rejection: None,
            rejections: 0,
            reloads: 0,
            warnings: set.warnings.iter().map(|w| w.to_string()).collect(),
        };
        let proxies = snap
            .proxies
            .iter()
            .map(|(k, p)| (k.clone(), watch::channel(Arc::new(p.clone())).0))
            .collect();
        Ok(Arc::new(ControlPlane {
            paths,
            mesh: set.mesh,
            snapshot: watch::channel(Arc::new(snap)).0,
            proxies: Mutex::new(proxies),
            status: Mutex::new(status),
        }))
    }

    /// Mesh settings fixed at start (trust domain, root namespace).
    pub fn mesh(&self) -> &MeshSettings {
        &self.mesh
    }

    /// The whole mesh snapshot.
    pub fn snapshot(&self) -> watch::Receiver<Arc<MeshSnapshot>> {
        self.snapshot.subscribe()
    }

    /// The config stream of one proxy (`ns/name` of its WorkloadEntry); `None` if unknown.
    pub fn subscribe(&self, proxy: &str) -> Option<watch::Receiver<Arc<ProxyConfig>>> {
        self.proxies
            .lock()
            .ok()?
            .get(proxy)
            .map(|tx| tx.subscribe())
    }

    /// Config status for the admin API.
    pub fn status(&self) -> ConfigStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Reload the files now. On error nothing changes.
    pub fn reload(&self) -> Result<bool, ReloadError> {
        let result = build(&self.paths)
            .map_err(ReloadError::Invalid)
            .and_then(|(set, snap)| {
                if set.mesh.trust_domain != self.mesh.trust_domain
                    || set.mesh.trust_domain_aliases != self.mesh.trust_domain_aliases
                {
                    return Err(ReloadError::NeedsRestart("the trust domain"));
                }
                if set.mesh.root_namespace != self.mesh.root_namespace {
                    return Err(ReloadError::NeedsRestart("the root namespace"));
                }
                Ok((set, snap))
            });
        let (set, snap) = match result {
            Ok(x) => x,
            Err(e) => {
                if let Ok(mut st) = self.status.lock() {
                    st.rejections += 1;
                    st.last_rejection = Some(e.to_string());
                }
                return Err(e);
            }
        };
        let changed = self.apply(snap);
        if let Ok(mut st) = self.status.lock() {
            st.last_rejection = None;
            st.reloads += 1;
            st.warnings = set.warnings.iter().map(|w| w.to_string()).collect();
            if changed {
                st.generation += 1;
                st.applied_at = now_secs();
            }
        }
        Ok(changed)
    }

    /// Publish a new snapshot: per-proxy channels first (so a new sidecar finds its channel),
    /// then the mesh snapshot. Returns whether anything changed.
    fn apply(&self, snap: MeshSnapshot) -> bool {
        if **self.snapshot.borrow() == snap {
            return false;
        }
        if let Ok(mut proxies) = self.proxies.lock() {
            proxies.retain(|k, _| snap.proxies.contains_key(k));
            for (k, p) in &snap.proxies {
                match proxies.get(k) {
                    Some(tx) => {
                        tx.send_if_modified(|cur| {
                            if **cur == *p {
                                false
                            } else {
                                *cur = Arc::new(p.clone());
                                true
                            }
                        });
                    }
                    None => {
                        proxies.insert(k.clone(), watch::channel(Arc::new(p.clone())).0);
                    }
                }
            }
        }
        self.snapshot.send_replace(Arc::new(snap));
        true
    }

    fn fingerprint(&self) -> Fingerprint {
        let mut out = Vec::new();
        let mut stack: Vec<PathBuf> = self.paths.clone();
        while let Some(p) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&p) else {
                out.push((p, u64::MAX, None));
                continue;
            };
            if meta.is_dir() {
                if let Ok(rd) = std::fs::read_dir(&p) {
                    stack.extend(rd.flatten().map(|e| e.path()));
                }
            } else {
                out.push((p, meta.len(), meta.modified().ok()));
            }
        }
        out.sort();
        out
    }

    /// Poll the files every `interval` and reload on change, until `shutdown` flips to true.
    /// Polling (rather than inotify) works the same on every filesystem, including the bind
    /// mounts and network shares config directories often live on.
    pub async fn watch_files(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut last = self.fingerprint();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let now = self.fingerprint();
            if now == last {
                continue;
            }
            last = now;
            match self.reload() {
                Ok(true) => {
                    tracing::info!(target: "config", generation = self.status().generation, "config change applied")
                }
                Ok(false) => tracing::debug!(target: "config", "files changed, config unchanged"),
                Err(e) => tracing::error!(target: "config", "{e}"),
            }
        }
    }
}
