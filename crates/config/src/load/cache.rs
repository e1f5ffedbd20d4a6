//! The load cache: each file loaded on its own, once per content, and the loads joined in file
//! order.
//!
//! A control plane loads its whole config again on every change; on Kubernetes that is one
//! document per object, tens of thousands of them, of which a change touches one. A file's load
//! depends on the state before it only where files interact:
//! - the same object (kind, namespace, name) defined twice: the second is a duplicate;
//! - mesh settings in two files: the second conflicts;
//! - a Namespace or a Secret of one name twice: the first is kept, silently.
//!
//! When no two files define the same object or mesh settings, loading them in sequence is the
//! same as loading each alone and joining the results in file order, keeping the first
//! Namespace or Secret of a name (diagnostics are sorted by file and line at the end, with a
//! stable sort). So [`load_files_cached`] keeps each file's own load, keyed by its name and
//! compared by its bytes, loads only the files that are new or changed, and joins. When files do
//! interact it loads them in sequence, exactly as [`load_files`], so which object wins and what
//! is reported never depends on the cache. `tests::cached_equals_sequential` checks both.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{load_files, ConfigFiles, ConfigSet, Loader};
use crate::diag::Diagnostics;

/// What [`load_files_cached`] keeps between loads: each file's own load, by name, with the bytes
/// it was made from. It holds the files of the last load only.
#[derive(Default)]
pub struct LoadCache {
    files: HashMap<String, (Arc<[u8]>, Arc<Loader>)>,
    last: LoadStats,
}

/// What one [`load_files_cached`] did, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Files loaded (new or changed since the last load, or not cacheable).
    pub loaded: usize,
    /// Files whose last load was reused.
    pub reused: usize,
    /// Whether files interacted, so that the config was loaded again in sequence.
    pub sequential: bool,
}

impl LoadCache {
    /// An empty cache: its first load loads every file.
    pub fn new() -> LoadCache {
        LoadCache::default()
    }

    /// What the last load did.
    pub fn last(&self) -> LoadStats {
        self.last
    }
}

impl std::fmt::Debug for LoadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadCache")
            .field("files", &self.files.len())
            .field("last", &self.last)
            .finish()
    }
}

/// Loads `files` as [`load_files`] does, with the same result, loading again only the files
/// that are new or changed since the last load through `cache`.
pub fn load_files_cached(
    files: &ConfigFiles,
    cache: &mut LoadCache,
) -> Result<ConfigSet, Diagnostics> {
    super::on_parser_stack(|| load_on_parser_stack(files, cache)).unwrap_or_else(Err)
}

fn load_on_parser_stack(
    files: &ConfigFiles,
    cache: &mut LoadCache,
) -> Result<ConfigSet, Diagnostics> {
    let mut stats = LoadStats::default();
    let mut next = HashMap::with_capacity(files.0.len());
    let mut parts: Vec<Arc<Loader>> = Vec::with_capacity(files.0.len());
    for file in &files.0 {
        let bytes = match &file.content {
            Ok(bytes) => bytes,
            Err(_) => {
                // A path that could not be read: one diagnostic, nothing to keep.
                stats.loaded += 1;
                parts.push(Arc::new(Loader::of_files([file])));
                continue;
            }
        };
        let hit = cache
            .files
            .remove(&file.name)
            .filter(|(was, _)| Arc::ptr_eq(was, bytes) || was[..] == bytes[..]);
        let part = match hit {
            Some((_, part)) => {
                stats.reused += 1;
                part
            }
            None => {
                stats.loaded += 1;
                Arc::new(Loader::of_files([file]))
            }
        };
        next.insert(file.name.clone(), (bytes.clone(), part.clone()));
        parts.push(part);
    }
    cache.files = next;
    if !independent(&parts) {
        stats.sequential = true;
        cache.last = stats;
        return load_files(files);
    }
    cache.last = stats;
    let mut joined = Loader::default();
    for part in &parts {
        joined.append(part);
    }
    joined.finish()
}

/// Whether no two of `parts` define the same object or mesh settings (the module doc says why
/// that is enough).
fn independent(parts: &[Arc<Loader>]) -> bool {
    let mut objects = HashSet::new();
    let mut mesh = false;
    for part in parts {
        if part.mesh.is_some() {
            if mesh {
                return false;
            }
            mesh = true;
        }
        if !part.seen.keys().all(|k| objects.insert(k)) {
            return false;
        }
    }
    true
}

impl Loader {
    /// Appends `part`, a later file's own load that does not interact with what is here
    /// ([`independent`]). Its `seen` is not carried over: nothing is loaded after a join.
    fn append(&mut self, part: &Loader) {
        // Every field named, so a field added to ConfigSet cannot be forgotten here.
        let ConfigSet {
            mesh: _,
            workload_entries,
            service_entries,
            sidecars,
            peer_authentications,
            authorization_policies,
            request_authentications,
            virtual_services,
            gateways,
            destination_rules,
            control_planes,
            telemetries,
            namespaces,
            secrets,
            object_namespaces,
            warnings: _,
        } = &part.set;
        let set = &mut self.set;
        set.workload_entries.extend_from_slice(workload_entries);
        set.service_entries.extend_from_slice(service_entries);
        set.sidecars.extend_from_slice(sidecars);
        set.peer_authentications
            .extend_from_slice(peer_authentications);
        set.authorization_policies
            .extend_from_slice(authorization_policies);
        set.request_authentications
            .extend_from_slice(request_authentications);
        set.virtual_services.extend_from_slice(virtual_services);
        set.gateways.extend_from_slice(gateways);
        set.destination_rules.extend_from_slice(destination_rules);
        set.control_planes.extend_from_slice(control_planes);
        set.telemetries.extend_from_slice(telemetries);
        // The first of a name is kept, as `Loader::read_namespace` and `read_secret` do.
        for (name, namespace) in namespaces {
            set.namespaces
                .entry(name.clone())
                .or_insert_with(|| namespace.clone());
        }
        for (name, secret) in secrets {
            set.secrets
                .entry(name.clone())
                .or_insert_with(|| secret.clone());
        }
        set.object_namespaces
            .extend(object_namespaces.iter().cloned());
        self.diagnostics.extend_from_slice(&part.diagnostics);
        if part.mesh.is_some() {
            self.mesh.clone_from(&part.mesh);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `files` with and without `cache` and checks the results are equal; returns what
    /// the cached load did.
    fn check(files: &ConfigFiles, cache: &mut LoadCache) -> LoadStats {
        let cached = load_files_cached(files, cache);
        assert_eq!(cached, load_files(files));
        cache.last()
    }

    fn files(docs: &[(&str, &str)]) -> ConfigFiles {
        ConfigFiles::from_contents(
            docs.iter()
                .map(|(n, t)| (n.to_string(), t.as_bytes().to_vec()))
                .collect(),
        )
    }

    fn policy(ns: &str, name: &str, principal: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  \
             name: {name}\n  namespace: {ns}\nspec:\n  rules:\n  - from:\n    - source:\n        \
             principals: [\"{principal}\"]\n"
        )
    }

    fn workload(ns: &str, name: &str, ip: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  \
             name: {name}\n  namespace: {ns}\nspec:\n  address: {ip}\n  \
             serviceAccount: {name}\n  labels:\n    app: {name}\n"
        )
    }

    const MESH: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  \
                        namespace: istio-system\ndata:\n  mesh: |\n    trustDomain: example.org\n";
    const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  \
                             labels:\n    istio-injection: enabled\n";

    #[test]
    fn an_unchanged_file_is_loaded_once_and_a_changed_one_again() {
        let mut cache = LoadCache::new();
        let a = workload("shop", "a", "10.0.0.1");
        let b = workload("shop", "b", "10.0.0.2");
        let p = policy("shop", "p", "cluster.local/ns/shop/sa/a");
        let first = files(&[("a", &a), ("b", &b), ("mesh", MESH), ("p", &p)]);
        let stats = check(&first, &mut cache);
        assert_eq!(
            (stats.loaded, stats.reused, stats.sequential),
            (4, 0, false)
        );
        let p2 = policy("shop", "p", "cluster.local/ns/shop/sa/b");
        let second = files(&[("a", &a), ("b", &b), ("mesh", MESH), ("p", &p2)]);
        let stats = check(&second, &mut cache);
        assert_eq!((stats.loaded, stats.reused), (1, 3));
        let set = load_files_cached(&second, &mut cache).unwrap();
        assert_eq!(
            set.authorization_policies[0].spec,
            load_files(&files(&[("p", &p2)]))
                .unwrap()
                .authorization_policies[0]
                .spec
        );
        // A file gone is gone from the config, and from the cache.
        let third = files(&[("a", &a), ("mesh", MESH)]);
        let stats = check(&third, &mut cache);
        assert_eq!((stats.loaded, stats.reused), (0, 2));
        assert_eq!(cache.files.len(), 2);
    }

    #[test]
    fn files_that_interact_load_in_sequence_so_the_first_wins_as_without_the_cache() {
        let a = workload("shop", "a", "10.0.0.1");
        let a_again = workload("shop", "a", "10.0.0.9");
        let cases: Vec<Vec<(&str, &str)>> = vec![
            // The same object twice: a duplicate error at the second.
            vec![("1", &a), ("2", &a_again)],
            // Mesh settings twice: a conflict at the second.
            vec![("1", MESH), ("2", MESH)],
        ];
        for docs in cases {
            let mut cache = LoadCache::new();
            let stats = check(&files(&docs), &mut cache);
            assert!(stats.sequential, "{docs:?}");
            // Warm: every file reused, and still loaded in sequence.
            let stats = check(&files(&docs), &mut cache);
            assert_eq!((stats.reused, stats.sequential), (2, true), "{docs:?}");
        }
    }

    #[test]
    fn the_first_namespace_of_a_name_is_kept_as_without_the_cache() {
        let other_namespace = NAMESPACE.replace("enabled", "disabled");
        let docs = files(&[("1", NAMESPACE), ("2", &other_namespace)]);
        let mut cache = LoadCache::new();
        for _ in 0..2 {
            assert!(!check(&docs, &mut cache).sequential);
            let set = load_files_cached(&docs, &mut cache).unwrap();
            assert_eq!(set.namespaces["shop"].labels["istio-injection"], "enabled");
        }
    }

    #[test]
    fn errors_and_unreadable_files_are_reported_as_without_the_cache() {
        let mut cache = LoadCache::new();
        let bad = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  \
                   name: p\n  namespace: shop\nspec:\n  action: MAYBE\n";
        let docs = files(&[("bad", bad), ("yaml", "a: [\n"), ("ns", NAMESPACE)]);
        let mut with_unreadable = docs;
        with_unreadable.0.push(super::super::ConfigFile {
            name: "gone".into(),
            content: Err("cannot read: No such file or directory".into()),
        });
        for round in 0..2 {
            let stats = check(&with_unreadable, &mut cache);
            assert_eq!(stats.reused, round * 3);
        }
        assert!(load_files_cached(&with_unreadable, &mut cache).is_err());
    }

    #[test]
    fn a_load_of_many_files_starts_one_parser_thread() {
        let docs: Vec<(String, String)> = (0..50)
            .map(|i| {
                (
                    format!("w{i}"),
                    workload("shop", &format!("w{i}"), &format!("10.0.1.{i}")),
                )
            })
            .collect();
        let all: Vec<(&str, &str)> = docs.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
        let threads = || crate::yaml::PARSER_THREADS.get();
        let before = threads();
        assert_eq!(load_files(&files(&all)).unwrap().workload_entries.len(), 50);
        assert_eq!(threads() - before, 1);
        let before = threads();
        load_files_cached(&files(&all), &mut LoadCache::new()).unwrap();
        assert_eq!(threads() - before, 1);
    }

    /// A small deterministic generator, so the test needs no extra crate.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn cached_equals_sequential() {
        // Random edits to a config of policies, workloads, Namespaces, Secrets and mesh
        // settings, duplicates and errors included; every load through the cache equals a plain load.
        let mut rng = Lcg(7);
        let mut cache = LoadCache::new();
        let mut docs: Vec<(String, String)> = Vec::new();
        let (mut paths, mut reused) = ([0; 2], 0);
        for step in 0..300 {
            let name = format!("f{}", rng.below(12));
            let ns = ["shop", "pay", "istio-system"][rng.below(3) as usize];
            let text = match rng.below(8) {
                0 => policy(ns, &format!("p{}", rng.below(3)), "a"),
                1 => policy(
                    ns,
                    "p0",
                    &format!("cluster.local/ns/{ns}/sa/{}", rng.below(4)),
                ),
                2 => workload(ns, &format!("w{}", rng.below(3)), &format!("10.0.0.{step}")),
                3 => MESH.to_owned(),
                4 => NAMESPACE.replace("shop", ns),
                5 => "kind: [\n".to_owned(),
                6 => format!(
                    "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: {ns}\n\
                     data:\n  key: {}\n",
                    ["djE=", "dj=", "djI="][rng.below(3) as usize]
                ),
                _ => String::new(),
            };
            match docs.iter().position(|(n, _)| *n == name) {
                Some(i) if rng.below(4) == 0 => {
                    docs.remove(i);
                }
                Some(i) => docs[i].1 = text,
                None => docs.push((name, text)),
            }
            let all: Vec<(&str, &str)> =
                docs.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
            let stats = check(&files(&all), &mut cache);
            paths[usize::from(stats.sequential)] += 1;
            reused += stats.reused;
        }
        // Both ways of loading were taken, and files were reused.
        assert!(paths[0] > 30 && paths[1] > 30, "{paths:?}");
        assert!(reused > 300, "{reused}");
    }
}
