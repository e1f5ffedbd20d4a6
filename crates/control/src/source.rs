//! Config from files: load, validate, translate, publish; poll the files and reload on change.
//! An update with any error is rejected whole and the last good config keeps serving (Envoy SotW
//! semantics; docs/threats.md, "Config with errors").
//!
//! A change applies only once the files have kept the same bytes for a settle interval
//! ([`Settling`]). A file rewritten in place (`generate > policy.yaml`) is first empty, then
//! half-written; either can be a valid config with fewer policies, which would allow what both
//! the old and the new file deny. The bytes that settled are the bytes loaded: the watcher
//! never reads the files a second time to build the config.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use ward_config::{ConfigFiles, ConfigSet, Diagnostics, LoadCache, MeshSettings, Severity};
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
    /// When the files last loaded cleanly, whether or not they changed the config (seconds
    /// since the epoch; the start, before any reload).
    pub last_success_at: u64,
    /// The last rejected update's diagnostics, if the last attempt failed.
    pub last_rejection: Option<String>,
    /// Rejected updates since start.
    pub rejections: u64,
    /// File changes that loaded cleanly since start, whether or not they changed the snapshot.
    pub reloads: u64,
    /// Warnings of the serving config.
    pub warnings: Vec<String>,
}

/// Fingerprint of the watched files: path, length, modification time. Only a cheap test of
/// whether to read the files; what applies is decided on their bytes.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// How the watcher polls the files.
#[derive(Clone, Copy, Debug)]
pub struct ReloadTiming {
    /// How often the files are checked for changes.
    pub poll: Duration,
    /// How long changed files must keep the same bytes before they apply. Zero applies the
    /// first read of a change, even one caught half-written.
    pub settle: Duration,
}

/// What the watcher does with one read of the files.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The files hold what was last applied (or rejected): nothing to do.
    Idle,
    /// The files changed but have not kept these bytes for the settle interval yet: read
    /// again, at the latest after this long.
    Wait(Duration),
    /// The files have kept these bytes for the settle interval: load them.
    Apply,
}

/// The watcher's memory between reads: what was last applied, and a change since then with
/// the time its bytes were first seen. Pure: time comes in as an argument.
#[derive(Debug)]
struct Settling<T> {
    /// The contents last loaded, whether they applied or were rejected (a rejected change is
    /// not retried until the files change again).
    current: T,
    /// Contents different from `current`, seen at every read since the instant given.
    pending: Option<(T, Instant)>,
}

impl<T: PartialEq> Settling<T> {
    fn new(current: T) -> Settling<T> {
        Settling {
            current,
            pending: None,
        }
    }

    /// Whether a change is waiting to settle (the files must then be read at every poll).
    fn is_settling(&self) -> bool {
        self.pending.is_some()
    }

    /// Decide on a read taken at `now`. On [`Step::Apply`], `current` holds the read. Any
    /// difference between two reads restarts the wait, so a writer that pauses for less than
    /// `settle` between writes is never applied half-way.
    fn observe(&mut self, read: T, now: Instant, settle: Duration) -> Step {
        if read == self.current {
            // Unchanged, or a change undone before it settled.
            self.pending = None;
            return Step::Idle;
        }
        let since = match &self.pending {
            Some((pending, since)) if *pending == read => *since,
            _ => now,
        };
        let held = now.saturating_duration_since(since);
        if held >= settle {
            self.pending = None;
            self.current = read;
            Step::Apply
        } else {
            self.pending = Some((read, since));
            Step::Wait(settle - held)
        }
    }
}

/// `Kind namespace/name` of every object that grants or restricts access: an update that
/// drops one of them is logged.
fn security_objects(set: &ConfigSet) -> BTreeSet<String> {
    let pa = set.peer_authentications.iter().map(|r| r.object());
    let ra = set.request_authentications.iter().map(|r| r.object());
    let ap = set.authorization_policies.iter().map(|r| r.object());
    pa.chain(ra).chain(ap).collect()
}

/// The control plane: config from files, and from documents another source renders (the
/// Kubernetes API server's objects, `ward-kube`), loaded together as one config.
pub struct ControlPlane {
    paths: Vec<PathBuf>,
    /// The file contents the first config was built from: where the watcher starts.
    started_from: ConfigFiles,
    /// The files last read, valid or not: what an update of `external` is loaded with.
    /// Written by `reload`.
    files: Mutex<ConfigFiles>,
    /// The documents of the external source last given ([`ControlPlane::set_external`]),
    /// valid or not: what a file change is loaded with. Written by `set_external`.
    external: Mutex<ConfigFiles>,
    mesh: MeshSettings,
    /// The whole mesh; the supervisor watches it to add and remove sidecars.
    snapshot: watch::Sender<Arc<MeshSnapshot>>,
    /// One channel per proxy; written only by `apply`, read by each proxy.
    proxies: Mutex<BTreeMap<String, watch::Sender<Arc<ProxyConfig>>>>,
    status: Mutex<ConfigStatus>,
    /// [`security_objects`] of the serving config; written by `reload`, to log what an update
    /// removes.
    security: Mutex<BTreeSet<String>>,
    /// The warnings and notes of the serving config, as found (the Kubernetes source writes
    /// them into the objects' `status.validationMessages`). Written by `reload`.
    findings: Mutex<Vec<ward_config::Diagnostic>>,
    /// Each config file's own load, kept so a change loads only the files it touched
    /// (`ward_config::load_files_cached`). Used by `reload`.
    loads: Mutex<LoadCache>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Loads `files` (again only those that changed since the load `loads` remembers) and
/// translates them.
fn build(
    files: &ConfigFiles,
    loads: &mut LoadCache,
) -> Result<(ConfigSet, MeshSnapshot), Diagnostics> {
    let set = ward_config::load_files_cached(files, loads)?;
    let snap = ward_config::translate(&set)?;
    Ok((set, snap))
}

impl ControlPlane {
    /// Load `paths`; fails with every diagnostic if the initial config has errors.
    pub fn start(paths: Vec<PathBuf>) -> Result<Arc<ControlPlane>, Diagnostics> {
        ControlPlane::start_with(paths, ConfigFiles::default())
    }

    /// Load `paths` and the documents `external` (loaded after the files, as if they were more
    /// files); fails with every diagnostic if the initial config has errors.
    pub fn start_with(
        paths: Vec<PathBuf>,
        external: ConfigFiles,
    ) -> Result<Arc<ControlPlane>, Diagnostics> {
        let files = ward_config::read_paths(&paths);
        let mut loads = LoadCache::new();
        let (set, snap) = build(&files.join(&external), &mut loads)?;
        for w in &set.warnings {
            // An info finding (a Kubernetes object Ward does not read) is not a warning.
            if w.severity == Severity::Info {
                tracing::info!(target: "config", "{w}");
            } else {
                tracing::warn!(target: "config", "{w}");
            }
        }
        let started = now_secs();
        let status = ConfigStatus {
            generation: 1,
            applied_at: started,
            last_success_at: started,
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
            files: Mutex::new(files.clone()),
            external: Mutex::new(external),
            started_from: files,
            security: Mutex::new(security_objects(&set)),
            findings: Mutex::new(set.warnings.clone()),
            mesh: set.mesh,
            snapshot: watch::channel(Arc::new(snap)).0,
            proxies: Mutex::new(proxies),
            status: Mutex::new(status),
            loads: Mutex::new(loads),
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

    /// The serving config's warnings and notes (no errors: a config with errors never serves).
    pub fn findings(&self) -> Vec<ward_config::Diagnostic> {
        self.findings
            .lock()
            .map(|f| f.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Config status for the admin API.
    pub fn status(&self) -> ConfigStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Replace the external source's documents and reload with the files last read. Returns
    /// whether the serving config changed; on error nothing changes and the last good config
    /// keeps serving (the documents are kept: the next file change loads with them).
    pub fn set_external(&self, external: ConfigFiles) -> Result<bool, ReloadError> {
        if let Ok(mut current) = self.external.lock() {
            *current = external;
        }
        let files = self
            .files
            .lock()
            .map(|f| f.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        self.reload(&files)
    }

    /// Load `files` (read from this plane's paths) with the external documents and apply
    /// them. On error nothing changes.
    fn reload(&self, files: &ConfigFiles) -> Result<bool, ReloadError> {
        if let Ok(mut current) = self.files.lock() {
            current.clone_from(files);
        }
        let external = self
            .external
            .lock()
            .map(|f| f.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let files = &files.join(&external);
        let built = build(
            files,
            &mut self.loads.lock().unwrap_or_else(|p| p.into_inner()),
        );
        let result = built.map_err(ReloadError::Invalid).and_then(|(set, snap)| {
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
        let objects = security_objects(&set);
        if let Ok(mut serving) = self.security.lock() {
            let removed: Vec<&str> = serving.difference(&objects).map(String::as_str).collect();
            if !removed.is_empty() {
                // Names only, never contents: the files may hold anything.
                let empty: Vec<&str> = files.empty_files().collect();
                tracing::warn!(
                    target: "config",
                    removed = %removed.join(", "),
                    empty_files = %empty.join(", "),
                    "config change applied: it removes security objects"
                );
            }
            *serving = objects;
        }
        if let Ok(mut st) = self.status.lock() {
            st.last_rejection = None;
            st.reloads += 1;
            st.last_success_at = now_secs();
            st.warnings = set.warnings.iter().map(|w| w.to_string()).collect();
            if let Ok(mut f) = self.findings.lock() {
                f.clone_from(&set.warnings);
            }
            if changed {
                st.generation += 1;
                st.applied_at = now_secs();
            }
        }
        Ok(changed)
    }

    /// Publish a new snapshot: per-proxy channels first (so a new sidecar finds its channel),
    /// then the mesh snapshot. Returns whether anything changed.
    ///
    /// A proxy whose `jwtRules` did not change keeps its running authenticator, and with it the
    /// tokens it already verified (`ward_authn::JwtRuleSet::keep_compiled`: one comparison
    /// per proxy per push); new rules bring a new authenticator with an empty cache.
    fn apply(&self, mut snap: MeshSnapshot) -> bool {
        keep_shared(&self.snapshot.borrow(), &mut snap);
        if **self.snapshot.borrow() == snap {
            return false;
        }
        if let Ok(mut proxies) = self.proxies.lock() {
            proxies.retain(|k, _| snap.proxies.contains_key(k));
            for (k, p) in &mut snap.proxies {
                match proxies.get(k) {
                    Some(tx) => {
                        tx.send_if_modified(|cur| {
                            p.jwt_rules.keep_compiled(&cur.jwt_rules);
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

    /// Poll the files every `timing.poll` and reload once a change has settled, until
    /// `shutdown` flips to true. Polling (rather than inotify) works the same on every
    /// filesystem, including the bind mounts and network shares config directories often live
    /// on. A file replaced by rename (editors, Kubernetes ConfigMap volumes) settles like any
    /// other change, after `timing.settle`.
    pub async fn watch_files(
        self: Arc<Self>,
        timing: ReloadTiming,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut settling = Settling::new(self.started_from.clone());
        // None: read the files on the first poll, whatever changed since `start` read them.
        let mut last: Option<Fingerprint> = None;
        let mut wait = timing.poll;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            wait = timing.poll;
            let now = self.fingerprint();
            // While a change settles, its bytes are compared at every poll: a rewrite that
            // leaves length and modification time alone must still restart the wait.
            if !settling.is_settling() && last.as_ref() == Some(&now) {
                continue;
            }
            last = Some(now);
            let read = ward_config::read_paths(&self.paths);
            match settling.observe(read, Instant::now(), timing.settle) {
                Step::Idle => {}
                Step::Wait(left) => {
                    tracing::debug!(target: "config", "files changed; waiting for them to settle");
                    wait = left.min(timing.poll);
                }
                Step::Apply => match self.reload(&settling.current) {
                    Ok(true) => {
                        tracing::info!(target: "config", generation = self.status().generation, "config change applied")
                    }
                    Ok(false) => {
                        tracing::debug!(target: "config", "files changed, config unchanged")
                    }
                    Err(e) => tracing::error!(target: "config", "{e}"),
                },
            }
        }
    }
}

/// Gives the proxies of `next` the previous snapshot's shared tables where their content is
/// the same: the mesh directory, and each namespace's service table. Translation builds new
/// ones each time; keeping the old `Arc`s lets unchanged proxies compare equal by pointer, lets
/// the config streams tell an unchanged table by pointer (`crate::push::Sections::of_shared`)
/// and share one serialization of each (`crate::push::SharedSections`). One comparison per
/// table and change, not one per proxy: at 1,000 proxies the per-proxy comparison of their
/// service tables was a fifth of a policy change's CPU (docs/kubernetes.md, "Scale").
fn keep_shared(previous: &MeshSnapshot, next: &mut MeshSnapshot) {
    keep_directory(previous, next);
    keep_services(previous, next);
}

/// [`keep_shared`] for the service tables: each new table is compared once with the table the
/// same proxy had, and when equal the old one takes its place in every proxy that has it
/// (proxies new in this snapshot included).
fn keep_services(previous: &MeshSnapshot, next: &mut MeshSnapshot) {
    use std::collections::HashMap;
    // (new table, old table) → equal; new table → the old one replacing it.
    let mut compared: HashMap<(usize, usize), bool> = HashMap::new();
    let mut kept: HashMap<usize, Arc<_>> = HashMap::new();
    for (key, p) in &next.proxies {
        let Some(old) = previous.proxies.get(key) else {
            continue;
        };
        if Arc::ptr_eq(&old.services, &p.services) {
            continue;
        }
        let new_ptr = Arc::as_ptr(&p.services) as usize;
        let pair = (new_ptr, Arc::as_ptr(&old.services) as usize);
        if *compared
            .entry(pair)
            .or_insert_with(|| *old.services == *p.services)
        {
            kept.entry(new_ptr).or_insert_with(|| old.services.clone());
        }
    }
    for p in next.proxies.values_mut() {
        if let Some(old) = kept.get(&(Arc::as_ptr(&p.services) as usize)) {
            p.services = old.clone();
        }
    }
}

/// [`keep_shared`] for the mesh directory.
fn keep_directory(previous: &MeshSnapshot, next: &mut MeshSnapshot) {
    let Some(old) = previous
        .proxies
        .values()
        .next()
        .map(|p| p.directory.clone())
    else {
        return;
    };
    let Some(new) = next.proxies.values().next().map(|p| p.directory.clone()) else {
        return;
    };
    if std::sync::Arc::ptr_eq(&old, &new) || *old != *new {
        return;
    }
    for p in next.proxies.values_mut() {
        if std::sync::Arc::ptr_eq(&p.directory, &new) {
            p.directory = old.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_change_keeps_the_directory_of_the_serving_snapshot() {
        let mesh = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a, namespace: app}\nspec: {address: 127.0.0.10, serviceAccount: a}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: b, namespace: app}\nspec: {address: 127.0.0.11, serviceAccount: b}\n";
        let policy = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: app}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [x]}}]}]}\n";
        let snap = |yaml: &str| {
            ward_config::translate(&ward_config::load_str("m.yaml", yaml).unwrap()).unwrap()
        };
        let old = snap(mesh);
        let mut next = snap(&format!("{mesh}{policy}"));
        let old_dir = old.proxies["app/a"].directory.clone();
        assert!(!std::sync::Arc::ptr_eq(
            &old_dir,
            &next.proxies["app/a"].directory
        ));
        keep_directory(&old, &mut next);
        for p in next.proxies.values() {
            assert!(std::sync::Arc::ptr_eq(&old_dir, &p.directory));
        }
        // A new workload changes the directory: the new one stays.
        let mut grown = snap(&format!("{mesh}---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: c, namespace: app}}\nspec: {{address: 127.0.0.12, serviceAccount: c}}\n"));
        keep_directory(&old, &mut grown);
        assert!(!std::sync::Arc::ptr_eq(
            &old_dir,
            &grown.proxies["app/a"].directory
        ));
    }

    #[test]
    fn a_policy_change_keeps_each_namespaces_service_table_and_a_service_change_replaces_it() {
        let entry = |name: &str, ns: &str, ip: &str| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{address: {ip}, serviceAccount: {name}, labels: {{app: {name}}}}}\n")
        };
        let service = |name: &str, ns: &str, port: u16| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{hosts: [{name}.{ns}.svc.cluster.local], ports: [{{number: {port}, name: http, protocol: HTTP}}], resolution: STATIC, workloadSelector: {{labels: {{app: {name}}}}}}}\n")
        };
        let mesh = [
            entry("a", "one", "127.0.0.10"),
            entry("b", "one", "127.0.0.11"),
            entry("c", "two", "127.0.0.12"),
            service("a", "one", 8080),
            service("c", "two", 8080),
        ]
        .concat();
        let policy = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: istio-system}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [x]}}]}]}\n";
        let snap = |yaml: &str| {
            ward_config::translate(&ward_config::load_str("m.yaml", yaml).unwrap()).unwrap()
        };
        let table = |s: &MeshSnapshot, k: &str| s.proxies[k].services.clone();
        let old = snap(&mesh);
        // A namespace's workloads share one table.
        assert!(Arc::ptr_eq(&table(&old, "one/a"), &table(&old, "one/b")));

        // A policy changes no table: every proxy keeps the table it had, by pointer, and a
        // proxy new in the snapshot gets the same one as its namespace.
        let mut next = snap(&format!(
            "{mesh}{policy}{}",
            entry("d", "one", "127.0.0.13")
        ));
        assert!(!Arc::ptr_eq(&table(&old, "one/a"), &table(&next, "one/a")));
        keep_shared(&old, &mut next);
        for (k, was) in [
            ("one/a", "one/a"),
            ("one/b", "one/a"),
            ("one/d", "one/a"),
            ("two/c", "two/c"),
        ] {
            assert!(Arc::ptr_eq(&table(&next, k), &table(&old, was)), "{k}");
        }

        // A service's port changes: the new tables stay, and the workloads of a namespace still
        // share theirs.
        let changed = mesh.replace("number: 8080", "number: 9090");
        let mut moved = snap(&changed);
        keep_shared(&old, &mut moved);
        assert!(!Arc::ptr_eq(&table(&moved, "one/a"), &table(&old, "one/a")));
        assert!(Arc::ptr_eq(
            &table(&moved, "one/a"),
            &table(&moved, "one/b")
        ));
        assert_eq!(
            table(&moved, "one/a")["a.one.svc.cluster.local"].ports[0].number,
            9090
        );
    }

    const SETTLE: Duration = Duration::from_millis(300);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A file that held "old", read at the given milliseconds, and what each read decides.
    struct Case {
        name: &'static str,
        reads: Vec<(u64, &'static str)>,
        want: Vec<Step>,
    }

    #[test]
    fn a_change_applies_once_its_bytes_held_across_the_settle_interval() {
        use Step::*;
        let cases = [
            Case {
                name: "unchanged",
                reads: vec![(0, "old"), (500, "old")],
                want: vec![Idle, Idle],
            },
            Case {
                name: "replaced by rename: applies once settled",
                reads: vec![(0, "new"), (200, "new"), (300, "new")],
                want: vec![Wait(ms(300)), Wait(ms(100)), Apply],
            },
            Case {
                name: "truncated, then written: the empty file never applies",
                reads: vec![(0, ""), (200, ""), (250, "new"), (450, "new"), (550, "new")],
                want: vec![
                    Wait(ms(300)),
                    Wait(ms(100)),
                    Wait(ms(300)),
                    Wait(ms(100)),
                    Apply,
                ],
            },
            Case {
                name: "written in chunks: no prefix applies",
                reads: vec![(0, "n"), (200, "ne"), (400, "new"), (700, "new")],
                want: vec![Wait(ms(300)), Wait(ms(300)), Wait(ms(300)), Apply],
            },
            Case {
                name: "rewritten to the same bytes before it settled: nothing to do",
                reads: vec![(0, ""), (100, "old"), (500, "old")],
                want: vec![Wait(ms(300)), Idle, Idle],
            },
            Case {
                name: "emptied and left empty: applies once settled",
                reads: vec![(0, ""), (200, ""), (400, "")],
                want: vec![Wait(ms(300)), Wait(ms(100)), Apply],
            },
            Case {
                name: "back to an earlier pending content: the wait restarts",
                reads: vec![(0, "a"), (200, "b"), (400, "a"), (600, "a"), (700, "a")],
                want: vec![
                    Wait(ms(300)),
                    Wait(ms(300)),
                    Wait(ms(300)),
                    Wait(ms(100)),
                    Apply,
                ],
            },
        ];
        for case in cases {
            let t0 = Instant::now();
            let mut s = Settling::new("old");
            let got: Vec<Step> = case
                .reads
                .iter()
                .map(|(at, read)| s.observe(*read, t0 + ms(*at), SETTLE))
                .collect();
            assert_eq!(got, case.want, "{}", case.name);
        }
    }

    #[test]
    fn after_apply_the_applied_bytes_are_current_and_a_zero_settle_applies_at_once() {
        let t0 = Instant::now();
        let mut s = Settling::new("old");
        assert_eq!(s.observe("new", t0, SETTLE), Step::Wait(SETTLE));
        assert_eq!(s.observe("new", t0 + SETTLE, SETTLE), Step::Apply);
        assert_eq!(s.current, "new");
        assert!(!s.is_settling());
        assert_eq!(s.observe("new", t0 + ms(400), SETTLE), Step::Idle);

        let mut s = Settling::new("old");
        assert_eq!(s.observe("", t0, Duration::ZERO), Step::Apply);
        assert_eq!(s.current, "");
    }

    /// One workload, `app/srv`, with a RequestAuthentication (`audiences`) and an
    /// AuthorizationPolicy (`path`), written to `dir/mesh.yaml`.
    fn write_config(dir: &std::path::Path, audiences: &str, path: &str) {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: srv, namespace: app}}
spec: {{address: 127.9.0.10, serviceAccount: srv, labels: {{app: srv}}}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: app}}
spec:
  jwtRules:
  - issuer: https://idp.example.com
    jwksUri: https://idp.example.com/jwks
    audiences: {audiences}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow, namespace: app}}
spec:
  rules:
  - to: [{{operation: {{paths: [{path}]}}}}]
"
        );
        std::fs::write(dir.join("mesh.yaml"), yaml).unwrap();
    }

    #[test]
    fn the_authenticator_is_compiled_once_and_kept_until_the_jwt_rules_change() {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), "[api]", "/a");
        let plane = ControlPlane::start(vec![dir.path().to_owned()]).unwrap();
        let config = plane.subscribe("app/srv").unwrap();
        let authenticator = || config.borrow().jwt_rules.authenticator().cloned().unwrap();
        let reload = || {
            plane
                .reload(&ward_config::read_paths(&plane.paths))
                .unwrap()
        };

        // Two requests read the config and find the same authenticator.
        let first = authenticator();
        assert!(Arc::ptr_eq(&first, &authenticator()));

        // A change to the proxy's config that leaves its rules alone: a new config, the same
        // authenticator (and the tokens it verified).
        let before = config.borrow().clone();
        write_config(dir.path(), "[api]", "/b");
        assert!(reload());
        let after = config.borrow().clone();
        assert_ne!(before.authz, after.authz, "the change reached the proxy");
        assert!(Arc::ptr_eq(&first, &authenticator()));

        // A change to the rules: a new authenticator, enforcing the new rules.
        write_config(dir.path(), "[api, admin]", "/b");
        assert!(reload());
        assert!(!Arc::ptr_eq(&first, &authenticator()));
        assert_eq!(
            config.borrow().jwt_rules.rules()[0].audiences,
            ["api", "admin"]
        );
    }

    #[test]
    fn a_jwt_rule_that_does_not_compile_rejects_the_whole_change() {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), "[api]", "/a");
        let plane = ControlPlane::start(vec![dir.path().to_owned()]).unwrap();
        let config = plane.subscribe("app/srv").unwrap();
        let serving = config.borrow().clone();

        // A bad rule, and a change elsewhere that must not apply without it.
        write_config(dir.path(), "[api]\n    timeout: soon", "/b");
        let err = match plane.reload(&ward_config::read_paths(&plane.paths)) {
            Err(ReloadError::Invalid(diags)) => diags.to_string(),
            other => panic!("not rejected: {other:?}"),
        };
        for part in [
            "mesh.yaml:14",
            "RequestAuthentication app/jwt",
            "spec.jwtRules[0].timeout",
        ] {
            assert!(err.contains(part), "{part:?} not in {err}");
        }
        assert!(
            Arc::ptr_eq(&serving, &config.borrow()),
            "the last good config serves"
        );
        assert_eq!(plane.status().rejections, 1);
    }
}
