//! The config stream's pure part: one proxy's configuration cut into named sections with
//! hashes, what a proxy holding some sections must be sent, and how the proxy rebuilds its
//! configuration from what it received (docs/multi-host.md, "The config stream").
//!
//! The sections are the top-level fields of [`ProxyConfig`] in its serde (JSON) form, plus
//! [`MESH_SECTION`] for the mesh-wide facts a sidecar needs. A change to one policy changes
//! only the `authz` section of the proxies it applies to: only that section is sent, and only
//! to them. A field added to `ProxyConfig` becomes a section of its own with no change here.
//!
//! Versions are content hashes, so a control plane that restarts with the same files computes
//! the same versions, and a proxy that reconnects holding them is sent nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{digest, SHA256};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
// SHA-256, lowercase hex: the same function as the audit trail's record hash.
use ward_audit::record::hash as sha256_hex;
use ward_config::telemetry::{DirectoryPart, MeshDirectory};
use ward_config::ProxyConfig;

/// The section holding [`MeshInfo`]; no field of [`ProxyConfig`] may have this name.
pub const MESH_SECTION: &str = "mesh";

/// Longest section body a proxy accepts (a large proxy's `outbound` is tens of KiB).
pub const MAX_SECTION_BYTES: usize = 16 * 1024 * 1024;

/// Mesh-wide facts every sidecar needs beside its own configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshInfo {
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// Trust domains treated as the mesh's own.
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
    /// Where mesh-wide policy lives.
    pub root_namespace: String,
}

/// One section: its hash and its JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// SHA-256 of `body`, lowercase hex.
    pub hash: String,
    /// The section's JSON, shared between the proxies that have the same section.
    pub body: Bytes,
}

impl Section {
    pub(crate) fn new(body: Vec<u8>) -> Section {
        Section {
            hash: sha256_hex(&body),
            body: body.into(),
        }
    }
}

/// The proxy configuration field every proxy of one configuration shares: the mesh directory
/// (`ProxyConfig::directory`, one `Arc` per configuration). It is sent as
/// [`DIRECTORY_PARTS`] sections named `directory.00` … (`MeshDirectory::split`, a workload or
/// service to the part its key hashes to), each serialized once per configuration and its bytes
/// shared by every stream: a change to one workload resends one part, not the directory.
pub const DIRECTORY_SECTION: &str = "directory";
/// The services a proxy can see (`ProxyConfig::services`), large in a large mesh: sent as
/// [`SERVICES_PARTS`] sections `services.00` …, by host.
const SERVICES_SECTION: &str = "services";
/// The section of a proxy's egress listeners (`ProxyConfig::outbound`).
const OUTBOUND_SECTION: &str = "outbound";
/// How many parts the directory and a service table are cut into.
pub const DIRECTORY_PARTS: usize = 64;
pub const SERVICES_PARTS: usize = 16;

/// The part `key` (a workload `namespace/name`, or a host) belongs to: a hash, so parts are
/// balanced and the same across control-plane restarts.
fn part_of(key: &str) -> usize {
    usize::from(digest(&SHA256, key.as_bytes()).as_ref()[0])
}

/// The section name of part `i` of `field`.
fn part_name(field: &str, i: usize) -> String {
    format!("{field}.{i:02x}")
}

/// The field a part section belongs to (`directory.1f` → `directory`), if it is one.
fn part_field(name: &str) -> Option<&str> {
    let (field, part) = name.split_once('.')?;
    let parted = field == DIRECTORY_SECTION || field == SERVICES_SECTION;
    (parted && part.len() == 2 && part.bytes().all(|b| b.is_ascii_hexdigit())).then_some(field)
}

/// The shared sections of the current configuration, kept by the control plane for all its
/// streams.
#[derive(Debug, Default)]
pub struct SharedSections {
    directory: Mutex<Option<(Arc<MeshDirectory>, Parts)>>,
    /// The service tables of the current config (one per namespace), by their `Arc`.
    services: Mutex<Vec<(Arc<Services>, Parts)>>,
}

/// The part sections of one directory or service table, shared.
type Parts = Arc<Vec<Section>>;

/// `ProxyConfig::services`.
type Services = BTreeMap<String, ward_config::MeshService>;

impl SharedSections {
    /// The directory's part sections, serialized once per directory.
    fn directory(&self, directory: &Arc<MeshDirectory>) -> Result<Parts, SectionError> {
        let mut cached = self
            .directory
            .lock()
            .map_err(|_| SectionError("section cache poisoned".into()))?;
        if let Some((d, sections)) = cached.as_ref() {
            if Arc::ptr_eq(d, directory) {
                return Ok(sections.clone());
            }
        }
        let sections = Arc::new(directory_sections(directory)?);
        *cached = Some((directory.clone(), sections.clone()));
        Ok(sections)
    }

    /// A service table's part sections, serialized once per table and shared by the streams of
    /// the proxies that have it (all the workloads of a namespace). Tables of older configs are
    /// dropped once no config holds them.
    fn services(&self, services: &Arc<Services>) -> Result<Parts, SectionError> {
        let mut cached = self
            .services
            .lock()
            .map_err(|_| SectionError("section cache poisoned".into()))?;
        if let Some((_, sections)) = cached.iter().find(|(s, _)| Arc::ptr_eq(s, services)) {
            return Ok(sections.clone());
        }
        cached.retain(|(s, _)| Arc::strong_count(s) > 1);
        let sections = Arc::new(services_sections(services)?);
        cached.push((services.clone(), sections.clone()));
        Ok(sections)
    }
}

fn directory_sections(directory: &MeshDirectory) -> Result<Vec<Section>, SectionError> {
    directory
        .split(DIRECTORY_PARTS, part_of)
        .iter()
        .map(|part| {
            serde_json::to_vec(part)
                .map(Section::new)
                .map_err(|e| SectionError(e.to_string()))
        })
        .collect()
}

fn services_sections(services: &Services) -> Result<Vec<Section>, SectionError> {
    let mut parts = vec![Services::new(); SERVICES_PARTS];
    for (host, service) in services {
        parts[part_of(host) % SERVICES_PARTS].insert(host.clone(), service.clone());
    }
    parts
        .iter()
        .map(|part| {
            serde_json::to_vec(part)
                .map(Section::new)
                .map_err(|e| SectionError(e.to_string()))
        })
        .collect()
}

/// Why a configuration could not be cut into sections (a bug: every config serializes).
#[derive(Debug, thiserror::Error)]
#[error("proxy configuration cannot be serialized: {0}")]
pub struct SectionError(String);

/// A proxy's whole configuration as sections, by name, and its version ([`Sections::version`]),
/// computed once: a config stream asks for it at every response and acknowledgement, and with
/// a hundred sections it was a twentieth of a change's CPU at 1,000 proxies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sections(BTreeMap<String, Section>, String);

impl Default for Sections {
    fn default() -> Sections {
        Sections::new(BTreeMap::new())
    }
}

/// What to send a proxy: the sections it lacks or holds in another version, and the names of
/// those it holds that no longer exist.
#[derive(Debug, PartialEq, Eq)]
pub struct Delta<'a> {
    /// Sections to send, by name.
    pub changed: Vec<(&'a str, &'a Section)>,
    /// Sections the proxy must drop.
    pub removed: Vec<String>,
}

impl Delta<'_> {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

impl Sections {
    /// Cuts `config` into sections, with `mesh` as [`MESH_SECTION`].
    pub fn of(mesh: &MeshInfo, config: &ProxyConfig) -> Result<Sections, SectionError> {
        Sections::of_shared(mesh, config, &SharedSections::default(), None)
    }

    /// [`Sections::of`], taking the sections every proxy shares from `shared`, and reusing the
    /// large sections of `previous` (this proxy's last config and its sections) where their
    /// field did not change: a policy change costs the serialization of the small sections
    /// only, not of the proxy's view of every service.
    pub fn of_shared(
        mesh: &MeshInfo,
        config: &ProxyConfig,
        shared: &SharedSections,
        previous: Option<(&ProxyConfig, &Sections)>,
    ) -> Result<Sections, SectionError> {
        let fail = |e: serde_json::Error| SectionError(e.to_string());
        // The large parts are cut apart; the rest of the config is small.
        let mut own = config.clone();
        own.directory = Arc::default();
        own.services = Arc::default();
        own.outbound = Vec::new();
        let Value::Object(mut fields) = serde_json::to_value(&own).map_err(fail)? else {
            return Err(SectionError("not a JSON object".into()));
        };
        fields.remove(DIRECTORY_SECTION);
        fields.remove(SERVICES_SECTION);
        fields.remove(OUTBOUND_SECTION);
        let mut out = BTreeMap::new();
        out.insert(
            MESH_SECTION.to_owned(),
            Section::new(serde_json::to_vec(mesh).map_err(fail)?),
        );
        for (name, value) in fields {
            if name == MESH_SECTION {
                return Err(SectionError(format!("a field is named {MESH_SECTION:?}")));
            }
            out.insert(
                name,
                Section::new(serde_json::to_vec(&value).map_err(fail)?),
            );
        }
        let reused = |name: &str| previous.and_then(|(_, s)| s.0.get(name).cloned());
        // By pointer: the control plane keeps the previous table's `Arc` when a new config has
        // the same content (crates/control/src/source.rs, `keep_shared`), so a different
        // pointer is a different table, and comparing content for each of a thousand proxies
        // would cost more than looking up the shared serialization.
        let same_services =
            previous.is_some_and(|(p, _)| Arc::ptr_eq(&p.services, &config.services));
        if same_services {
            for i in 0..SERVICES_PARTS {
                let name = part_name(SERVICES_SECTION, i);
                let section =
                    reused(&name).ok_or_else(|| SectionError(format!("{name} missing")))?;
                out.insert(name, section);
            }
        } else {
            for (i, section) in shared.services(&config.services)?.iter().enumerate() {
                out.insert(part_name(SERVICES_SECTION, i), section.clone());
            }
        }
        let outbound = match reused(OUTBOUND_SECTION)
            .filter(|_| previous.is_some_and(|(p, _)| p.outbound == config.outbound))
        {
            Some(section) => section,
            None => Section::new(serde_json::to_vec(&config.outbound).map_err(fail)?),
        };
        out.insert(OUTBOUND_SECTION.to_owned(), outbound);
        for (i, section) in shared.directory(&config.directory)?.iter().enumerate() {
            out.insert(part_name(DIRECTORY_SECTION, i), section.clone());
        }
        Ok(Sections::new(out))
    }

    fn new(sections: BTreeMap<String, Section>) -> Sections {
        let version = version_of(sections.iter().map(|(n, s)| (n.as_str(), s.hash.as_str())));
        Sections(sections, version)
    }

    /// The version of the whole configuration: a hash of every section's name and hash.
    pub fn version(&self) -> String {
        self.1.clone()
    }

    /// Each section's hash, by name.
    pub fn hashes(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(n, s)| (n.clone(), s.hash.clone()))
            .collect()
    }

    /// What a proxy holding `held` (name → hash) must be sent to hold these sections.
    pub fn delta(&self, held: &BTreeMap<String, String>) -> Delta<'_> {
        let changed = self
            .0
            .iter()
            .filter(|(name, s)| held.get(*name) != Some(&s.hash))
            .map(|(name, s)| (name.as_str(), s))
            .collect();
        let removed = held
            .keys()
            .filter(|name| !self.0.contains_key(*name))
            .cloned()
            .collect();
        Delta { changed, removed }
    }

    /// The total size of every section's body.
    pub fn body_bytes(&self) -> usize {
        self.0.values().map(|s| s.body.len()).sum()
    }
}

/// The version of a set of (name, hash) pairs, sorted by name: the first 16 bytes of the
/// SHA-256 of `name=hash\n` lines, hex.
fn version_of<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut text = String::new();
    for (name, hash) in pairs {
        // Plain pushes: formatting each line was most of the cost of a version.
        text.push_str(name);
        text.push('=');
        text.push_str(hash);
        text.push('\n');
    }
    let mut hex = sha256_hex(text.as_bytes());
    hex.truncate(32);
    hex
}

/// One response as the proxy received it.
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// The version the control plane says the proxy holds after applying it.
    pub version: String,
    /// Sections added or changed: (name, hash, body).
    pub sections: Vec<(String, String, Vec<u8>)>,
    /// Sections to drop.
    pub removed: Vec<String>,
}

/// What a proxy holds: every section it applied, by name, with its hash and parsed body.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Held {
    sections: BTreeMap<String, (String, Arc<Value>)>,
    /// The directory's and the service table's parts, parsed once when they arrive (kept as
    /// `Null` in `sections`), and the directory and table joined from them.
    directory_parts: BTreeMap<String, Arc<DirectoryPart>>,
    services_parts: BTreeMap<String, Arc<Services>>,
    directory: Arc<MeshDirectory>,
    services: Arc<Services>,
}

/// A configuration rebuilt from the sections a proxy holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Assembled {
    /// The mesh-wide facts.
    pub mesh: MeshInfo,
    /// The proxy's configuration.
    pub config: ProxyConfig,
    /// Its version.
    pub version: String,
}

impl Held {
    /// Each held section's hash, by name (sent on reconnect).
    pub fn hashes(&self) -> BTreeMap<String, String> {
        self.sections
            .iter()
            .map(|(n, (h, _))| (n.clone(), h.clone()))
            .collect()
    }

    /// The version of what is held.
    pub fn version(&self) -> String {
        version_of(
            self.sections
                .iter()
                .map(|(n, (h, _))| (n.as_str(), h.as_str())),
        )
    }

    /// Applies `response` to a copy of what is held and rebuilds the configuration from it.
    /// Any error is the NACK's reason, and what is held is unchanged: a body whose hash is not
    /// its own, a body that is not JSON, a version that does not match the sections held
    /// afterwards (a section missed), or sections that do not make a configuration.
    pub fn apply(&self, response: &Received) -> Result<(Held, Assembled), String> {
        let mut next = self.clone();
        let (mut directory_changed, mut services_changed) = (false, false);
        for name in &response.removed {
            next.sections.remove(name);
            directory_changed |= next.directory_parts.remove(name).is_some();
            services_changed |= next.services_parts.remove(name).is_some();
        }
        for (name, hash, body) in &response.sections {
            if body.len() > MAX_SECTION_BYTES {
                return Err(format!(
                    "section {name:?} is {} bytes, more than {MAX_SECTION_BYTES}",
                    body.len()
                ));
            }
            if sha256_hex(body) != *hash {
                return Err(format!(
                    "section {name:?}: its body does not match its hash"
                ));
            }
            let value = match part_field(name) {
                Some(DIRECTORY_SECTION) => {
                    let part: DirectoryPart = serde_json::from_slice(body).map_err(|e| {
                        format!("section {name:?} is not a part of the mesh directory: {e}")
                    })?;
                    next.directory_parts.insert(name.clone(), Arc::new(part));
                    directory_changed = true;
                    Value::Null
                }
                Some(_) => {
                    let part: Services = serde_json::from_slice(body).map_err(|e| {
                        format!("section {name:?} is not a part of a service table: {e}")
                    })?;
                    next.services_parts.insert(name.clone(), Arc::new(part));
                    services_changed = true;
                    Value::Null
                }
                None => serde_json::from_slice(body)
                    .map_err(|e| format!("section {name:?} is not JSON: {e}"))?,
            };
            next.sections
                .insert(name.clone(), (hash.clone(), Arc::new(value)));
        }
        let version = next.version();
        if version != response.version {
            return Err(format!(
                "the sections held make version {version}, not {}: a section is missing",
                response.version
            ));
        }
        if directory_changed {
            next.directory = Arc::new(MeshDirectory::join(
                next.directory_parts.values().map(|p| &**p),
            ));
        }
        if services_changed {
            next.services = Arc::new(
                next.services_parts
                    .values()
                    .flat_map(|p| p.iter().map(|(h, s)| (h.clone(), s.clone())))
                    .collect(),
            );
        }
        let assembled = next.assemble(version)?;
        Ok((next, assembled))
    }

    fn assemble(&self, version: String) -> Result<Assembled, String> {
        let mut fields = serde_json::Map::new();
        let mut mesh = None;
        for (name, (_, value)) in &self.sections {
            if name == MESH_SECTION {
                mesh = Some((**value).clone());
            } else if part_field(name).is_none() {
                fields.insert(name.clone(), (**value).clone());
            }
        }
        let mesh = mesh.ok_or_else(|| format!("no {MESH_SECTION:?} section"))?;
        let mesh: MeshInfo =
            serde_json::from_value(mesh).map_err(|e| format!("section \"mesh\": {e}"))?;
        let mut config: ProxyConfig = serde_json::from_value(Value::Object(fields))
            .map_err(|e| format!("the sections do not make a proxy configuration: {e}"))?;
        config.directory = self.directory.clone();
        config.services = self.services.clone();
        Ok(Assembled {
            mesh,
            config,
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh() -> MeshInfo {
        MeshInfo {
            trust_domain: "cluster.local".into(),
            trust_domain_aliases: vec![],
            root_namespace: "istio-system".into(),
        }
    }

    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a, namespace: app}
spec: {address: 127.0.0.10, serviceAccount: sa-a}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b, namespace: app}
spec: {address: 127.0.0.11, serviceAccount: sa-b, labels: {app: b}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: app}
spec:
  hosts: [b.app.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: b}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: c, namespace: app}
spec: {address: 127.0.0.12, serviceAccount: sa-c}
"#;

    const POLICY: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-a, namespace: app}
spec:
  selector: {matchLabels: {app: b}}
  rules: [{from: [{source: {principals: [cluster.local/ns/app/sa/sa-a]}}]}]
"#;

    fn proxies(yaml: &str) -> BTreeMap<String, ProxyConfig> {
        let set = ward_config::load_str("mesh.yaml", yaml).expect("loads");
        ward_config::translate(&set).expect("translates").proxies
    }

    fn received(sections: &Sections, held: &Held) -> Received {
        let delta = sections.delta(&held.hashes());
        Received {
            version: sections.version(),
            sections: delta
                .changed
                .iter()
                .map(|(n, s)| (n.to_string(), s.hash.clone(), s.body.to_vec()))
                .collect(),
            removed: delta.removed,
        }
    }

    #[test]
    fn a_proxy_rebuilds_exactly_the_configuration_sent() {
        for (key, config) in proxies(MESH) {
            let sections = Sections::of(&mesh(), &config).unwrap();
            let (held, got) = Held::default()
                .apply(&received(&sections, &Held::default()))
                .unwrap();
            assert_eq!(got.config, config, "{key}");
            assert_eq!(got.mesh, mesh());
            assert_eq!(got.version, sections.version());
            assert_eq!(held.hashes(), sections.hashes());
        }
    }

    #[test]
    fn a_policy_change_sends_only_the_authz_section_of_the_proxies_it_selects() {
        let before = proxies(MESH);
        let after = proxies(&format!("{MESH}{POLICY}"));
        let mut touched = Vec::new();
        for (key, old) in &before {
            let old = Sections::of(&mesh(), old).unwrap();
            let new = Sections::of(&mesh(), &after[key]).unwrap();
            let delta = new.delta(&old.hashes());
            if delta.is_empty() {
                assert_eq!(old.version(), new.version(), "{key}");
                continue;
            }
            let names: Vec<&str> = delta.changed.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, ["authz"], "{key}");
            assert!(delta.removed.is_empty());
            touched.push(key.as_str());
        }
        assert_eq!(touched, ["app/b"]);
    }

    #[test]
    fn a_reconnecting_proxy_holding_the_current_sections_is_sent_nothing() {
        let config = proxies(MESH).remove("app/a").unwrap();
        let sections = Sections::of(&mesh(), &config).unwrap();
        let (held, _) = Held::default()
            .apply(&received(&sections, &Held::default()))
            .unwrap();
        assert!(sections.delta(&held.hashes()).is_empty());
        // A section the control plane no longer has is removed.
        let mut stale = held.hashes();
        stale.insert("gone".into(), "00".into());
        assert_eq!(sections.delta(&stale).removed, ["gone"]);
    }

    #[test]
    fn responses_that_cannot_be_applied_are_refused_and_change_nothing() {
        let config = proxies(MESH).remove("app/a").unwrap();
        let sections = Sections::of(&mesh(), &config).unwrap();
        let good = received(&sections, &Held::default());
        let (held, _) = Held::default().apply(&good).unwrap();

        let mut tampered = good.clone();
        tampered.sections[0].2.push(b' ');
        let mut missing = good.clone();
        missing.sections.retain(|(n, _, _)| n != "authz");
        let mut not_json = good.clone();
        let body = b"{not json".to_vec();
        not_json.sections[0].1 = sha256_hex(&body);
        not_json.sections[0].2 = body;
        let mut no_mesh = good.clone();
        no_mesh.sections.retain(|(n, _, _)| n != MESH_SECTION);
        no_mesh.version = version_of(
            no_mesh
                .sections
                .iter()
                .map(|(n, h, _)| (n.as_str(), h.as_str())),
        );
        let mut wrong_type = good.clone();
        let body = b"42".to_vec();
        let at = wrong_type
            .sections
            .iter()
            .position(|(n, _, _)| n == "inbound")
            .unwrap();
        wrong_type.sections[at] = ("inbound".into(), sha256_hex(&body), body);
        wrong_type.version = version_of(
            wrong_type
                .sections
                .iter()
                .map(|(n, h, _)| (n.as_str(), h.as_str())),
        );
        let cases = [
            (tampered, "does not match its hash"),
            (missing, "a section is missing"),
            (not_json, "is not JSON"),
            (no_mesh, "no \"mesh\" section"),
            (wrong_type, "do not make a proxy configuration"),
        ];
        for (response, why) in cases {
            let err = Held::default().apply(&response).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
            // What was held before stays as it was.
            assert_eq!(held.apply(&good).unwrap().0, held);
        }
    }

    #[test]
    fn the_directory_is_serialized_once_and_shared_by_every_proxy() {
        let proxies = proxies(MESH);
        let shared = SharedSections::default();
        let cut: Vec<Sections> = proxies
            .values()
            .map(|p| Sections::of_shared(&mesh(), p, &shared, None).unwrap())
            .collect();
        let alone = Sections::of(&mesh(), proxies.values().next().unwrap()).unwrap();
        for i in 0..DIRECTORY_PARTS {
            let name = part_name(DIRECTORY_SECTION, i);
            let bodies: Vec<&Bytes> = cut.iter().map(|s| &s.0[&name].body).collect();
            assert!(bodies.windows(2).all(|w| w[0].as_ptr() == w[1].as_ptr()));
            // The same bytes as serializing it alone.
            assert_eq!(alone.0[&name], cut[0].0[&name]);
        }
        let (_, got) = Held::default()
            .apply(&received(&cut[0], &Held::default()))
            .unwrap();
        assert_eq!(&got.config, proxies.values().next().unwrap());
    }

    #[test]
    fn unchanged_large_sections_are_reused_from_the_previous_config() {
        let (before, mut after) = (proxies(MESH), proxies(&format!("{MESH}{POLICY}")));
        let b = &before["app/b"];
        // The control plane gives an unchanged service table the previous snapshot's `Arc`
        // (source.rs, `keep_shared`); a table is told unchanged by that pointer.
        let a = after.get_mut("app/b").unwrap();
        assert_eq!(a.services, b.services);
        let fresh = Sections::of_shared(&mesh(), a, &SharedSections::default(), None).unwrap();
        a.services = b.services.clone();
        let a = &after["app/b"];
        let shared = SharedSections::default();
        let first = Sections::of_shared(&mesh(), b, &shared, None).unwrap();
        let next = Sections::of_shared(&mesh(), a, &shared, Some((b, &first))).unwrap();
        // Kept or rebuilt, the table cuts into the same sections.
        assert_eq!(next, fresh);
        let names = (0..SERVICES_PARTS)
            .map(|i| part_name(SERVICES_SECTION, i))
            .chain([OUTBOUND_SECTION.to_owned()]);
        for name in names {
            assert!(
                first.0[&name].body.as_ptr() == next.0[&name].body.as_ptr(),
                "{name}"
            );
        }
        // Reused or not, the sections are what cutting the config alone gives.
        assert_eq!(next, Sections::of(&mesh(), a).unwrap());
        assert_ne!(first.0["authz"], next.0["authz"]);
    }

    #[test]
    fn hashes_are_lowercase_hex_sha256() {
        // FIPS 180-2's "abc" example.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn versions_depend_on_content_only() {
        let config = proxies(MESH).remove("app/a").unwrap();
        let a = Sections::of(&mesh(), &config).unwrap();
        // The same config rebuilt from its JSON (as after a restart) has the same version.
        let copy: ProxyConfig =
            serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
        let b = Sections::of(&mesh(), &copy).unwrap();
        assert_eq!(a.version(), b.version());
        let mut other = mesh();
        other.root_namespace = "mesh-root".into();
        assert_ne!(
            Sections::of(&other, &config).unwrap().version(),
            a.version()
        );
    }

    #[test]
    fn a_new_workload_resends_one_part_of_the_directory_not_all_of_it() {
        let extra = "\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: d, namespace: app}\nspec: {address: 127.0.0.13, serviceAccount: sa-d}\n";
        let (before, after) = (proxies(MESH), proxies(&format!("{MESH}{extra}")));
        let old = Sections::of(&mesh(), &before["app/a"]).unwrap();
        let new = Sections::of(&mesh(), &after["app/a"]).unwrap();
        let (held, _) = Held::default()
            .apply(&received(&old, &Held::default()))
            .unwrap();
        let delta = new.delta(&held.hashes());
        let names: Vec<&str> = delta.changed.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [part_name(
                DIRECTORY_SECTION,
                part_of("app/d") % DIRECTORY_PARTS
            )]
        );
        let sent: usize = delta.changed.iter().map(|(_, s)| s.body.len()).sum();
        assert!(
            sent * 4 < new.body_bytes(),
            "{sent} of {}",
            new.body_bytes()
        );
        // The proxy rebuilds the whole new configuration from what it held and the one part.
        let (_, got) = held.apply(&received(&new, &held)).unwrap();
        assert_eq!(got.config, after["app/a"]);
        assert!(got.config.directory.workload("app/d").is_some());
    }

    #[test]
    fn part_sections_are_recognised_only_by_their_exact_names() {
        assert_eq!(part_field("directory.0a"), Some(DIRECTORY_SECTION));
        assert_eq!(part_field("services.ff"), Some(SERVICES_SECTION));
        for other in [
            "directory",
            "directory.",
            "directory.0g",
            "authz.00",
            "services.000",
        ] {
            assert_eq!(part_field(other), None, "{other}");
        }
    }
}
