//! Loading: YAML files in, validated typed resources and diagnostics out.
//!
//! A path is a file or a directory (searched recursively for `*.yaml` / `*.yml`, in sorted
//! order so that loading is deterministic; hidden entries are skipped). Each file may hold
//! several documents (`---`); empty documents are skipped and `kind: List` is unpacked.
//!
//! Every served apiVersion of a kind maps to one schema (Istio keeps the schema identical
//! across versions). Ward enforces WorkloadEntry, ServiceEntry, Sidecar, PeerAuthentication,
//! AuthorizationPolicy, RequestAuthentication and the mesh settings; other Istio kinds load
//! with a WARD0102 warning, never silently (the networking ones still have their specs decoded
//! and checked: `load/unenforced.rs`). Kubernetes objects from outside the Istio API
//! (Service, Deployment, Namespace, NetworkPolicy, Gateway API kinds, other ConfigMaps, ...)
//! load with a WARD0115 info finding and are not read, so manifests can sit next to policies
//! (only a Namespace's labels are kept, for `ward analyze`).
//! Unknown Istio kinds, misspelt Istio apiVersions and unknown fields are errors: Ward is
//! stricter than Istio, which only warns about unknown fields. A top-level `status` is ignored.
//!
//! This is the only impure part of the crate ([`read_paths`], and [`load_paths`] through it,
//! read files); [`load_files`] and everything after it are pure functions of what was read.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ward_authn::spec::RequestAuthenticationSpec;
use ward_policy::spec::{AuthorizationPolicySpec, PeerAuthenticationSpec};

use crate::decode::{closest, decode};
use crate::diag::{code, Diagnostic, Diagnostics, Finding, Severity};
use crate::istio::{AddressRule, ServiceEntrySpec, SidecarSpec, WorkloadEntrySpec};
use crate::mesh::{self, MeshParse, MeshSettings, SourceRef};
use crate::meta::{self, check_labels, decode_finding, ObjectMeta};
use crate::snapshot::{
    DemoApp, AUDIT_ON_FAILURE_ANNOTATION, DEMO_APP_ANNOTATION, KEEP_OVERRIDE_HEADERS_ANNOTATION,
};
use crate::yaml::{parse_documents, push_key, Node, Value};

mod cache;
mod unenforced;

pub use cache::{load_files_cached, LoadCache, LoadStats};

pub use crate::yaml::FieldLines;

/// One loaded Istio object.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource<T> {
    /// `apiVersion` as written, e.g. `networking.istio.io/v1`.
    pub api_version: String,
    /// The kind, e.g. `Sidecar`.
    pub kind: &'static str,
    /// `metadata`.
    pub meta: ObjectMeta,
    /// `spec`.
    pub spec: T,
    /// Where the object starts.
    pub source: SourceRef,
    /// The line of each field, to place later diagnostics on the field they concern.
    pub field_lines: FieldLines,
}

impl<T> Resource<T> {
    /// `namespace/name` (just `name` for a cluster-scoped object).
    pub fn key(&self) -> String {
        if self.meta.namespace.is_empty() {
            // A cluster-scoped object (the Sail operator's kinds).
            self.meta.name.clone()
        } else {
            format!("{}/{}", self.meta.namespace, self.meta.name)
        }
    }

    /// `Kind namespace/name`, as diagnostics name objects.
    pub fn object(&self) -> String {
        format!("{} {}", self.kind, self.key())
    }

    /// The line of `field` (e.g. `spec.egress[0].hosts[1]`), or of its closest ancestor.
    pub fn line_of(&self, field: &str) -> usize {
        self.field_lines.line_of(field).unwrap_or(self.source.line)
    }

    /// A diagnostic about this object's `field`.
    pub fn diagnostic(
        &self,
        severity: Severity,
        code: &'static str,
        field: &str,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic::new(severity, code, message)
            .at(self.source.file.clone(), Some(self.line_of(field)))
            .object(self.object())
            .field(field)
    }

    pub(crate) fn finding(&self, finding: Finding) -> Diagnostic {
        let line = finding.line.unwrap_or_else(|| self.line_of(&finding.field));
        Diagnostic::new(finding.severity, finding.code, finding.message)
            .at(self.source.file.clone(), Some(line))
            .object(self.object())
            .field(finding.field)
    }
}

/// Everything loaded: the objects Ward enforces and the mesh settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigSet {
    /// Mesh-wide settings (defaults when no document sets them).
    pub mesh: MeshSettings,
    /// WorkloadEntries: one proxy each.
    pub workload_entries: Vec<Resource<WorkloadEntrySpec>>,
    /// ServiceEntries: the services proxies can call.
    pub service_entries: Vec<Resource<ServiceEntrySpec>>,
    /// Sidecars: each workload's listeners.
    pub sidecars: Vec<Resource<SidecarSpec>>,
    /// PeerAuthentications, in load order.
    pub peer_authentications: Vec<Resource<PeerAuthenticationSpec>>,
    /// AuthorizationPolicies, in load order.
    pub authorization_policies: Vec<Resource<AuthorizationPolicySpec>>,
    /// RequestAuthentications (JWT rules), in load order.
    pub request_authentications: Vec<Resource<RequestAuthenticationSpec>>,
    /// VirtualServices, in load order: not enforced yet; `crate::http_routing` compiles them.
    pub virtual_services: Vec<Resource<crate::istio::VirtualServiceSpec>>,
    /// Gateways, in load order: served by the workloads their `selector` matches
    /// (`crate::gateways`).
    pub gateways: Vec<Resource<crate::istio::GatewaySpec>>,
    /// DestinationRules, in load order: not enforced; read by `ward analyze` only (WARD0225).
    pub destination_rules: Vec<Resource<crate::istio::DestinationRuleSpec>>,
    /// OpenShift Service Mesh 2 control planes (`maistra.io/v2`): not enforced; their
    /// `spec.security.dataPlane` is read by `ward analyze` only (WARD0229).
    pub control_planes: Vec<Resource<crate::istio::ControlPlaneSpecV2>>,
    /// Telemetries, in load order: their `tracing` is served (`crate::tracing_policy`), the
    /// rest is checked and reported as not enforced (WARD0102).
    pub telemetries: Vec<Resource<crate::istio::TelemetrySpec>>,
    /// `v1` Namespace objects, by name (the first of a name). Ward reads only their labels, and
    /// only for `ward analyze` (ambient mode, docs/analyze.md "What Ward reads").
    pub namespaces: BTreeMap<String, NamespaceObject>,
    /// `v1` Secrets, by `namespace/name` (the first of a name): the credentials a
    /// DestinationRule's or Gateway's `credentialName` names (`crate::origination`,
    /// `crate::gateways`).
    pub secrets: BTreeMap<String, crate::origination::SecretObject>,
    /// Every `metadata.namespace` written in the config, whatever the object's kind (Istio
    /// kinds Ward does not keep and Kubernetes objects included), and the name of every
    /// Namespace object: the namespaces the config shows to exist, for `ward analyze`.
    pub object_namespaces: BTreeSet<String>,
    /// The warnings found while loading.
    pub warnings: Vec<Diagnostic>,
}

/// A `v1` Namespace object: its labels and where it is. Nothing else of it is read.
#[derive(Clone, Debug, PartialEq)]
pub struct NamespaceObject {
    /// `metadata.labels` (entries whose key or value is not a scalar are skipped).
    pub labels: BTreeMap<String, String>,
    /// Where the object starts.
    pub source: SourceRef,
    /// The line of each field, to point at a label.
    pub field_lines: FieldLines,
}

impl NamespaceObject {
    /// `file:line` of the label `key` (of its closest enclosing field when it is absent).
    pub fn label_location(&self, key: &str) -> String {
        let line = self
            .field_lines
            .line_of(&push_key("metadata.labels", key))
            .unwrap_or(self.source.line);
        format!("{}:{line}", self.source.file)
    }
}

/// Loads files and directories. Fails with every error found (and the warnings), in file and
/// line order.
pub fn load_paths(paths: &[PathBuf]) -> Result<ConfigSet, Diagnostics> {
    load_files(&read_paths(paths))
}

/// The config files under some paths, read once: what [`load_files`] loads. Two reads are equal
/// exactly when they found the same files with the same bytes (and the same problems), so a
/// caller can compare reads to tell whether the config changed, then load the very bytes it
/// compared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigFiles(Vec<ConfigFile>);

/// One file as read, or a path that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ConfigFile {
    /// How diagnostics name it: the path as given, or as found under a directory.
    name: String,
    /// The bytes (shared: a cached load keeps them to compare with the next read), or the
    /// message of the error that stands in for them.
    content: Result<Arc<[u8]>, String>,
}

impl ConfigFiles {
    /// Files given by name and content, e.g. read from a git revision (`ward diff --git`);
    /// `name` is how diagnostics name each. Loaded as [`read_paths`]'s files are.
    pub fn from_contents(files: Vec<(String, Vec<u8>)>) -> ConfigFiles {
        ConfigFiles::from_shared(
            files
                .into_iter()
                .map(|(name, content)| (name, content.into()))
                .collect(),
        )
    }

    /// [`ConfigFiles::from_contents`] with contents already shared (a renderer that keeps each
    /// document between renderings hands out the same bytes without copying them).
    pub fn from_shared(files: Vec<(String, Arc<[u8]>)>) -> ConfigFiles {
        ConfigFiles(
            files
                .into_iter()
                .map(|(name, content)| ConfigFile {
                    name,
                    content: Ok(content),
                })
                .collect(),
        )
    }

    /// These files followed by `other`'s (e.g. files on disk, then objects read from the
    /// Kubernetes API server), loaded as one config.
    pub fn join(&self, other: &ConfigFiles) -> ConfigFiles {
        ConfigFiles(self.0.iter().chain(other.0.iter()).cloned().collect())
    }

    /// How many files there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no files.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The files that are empty (zero bytes), by name.
    pub fn empty_files(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(|f| f.content.as_ref().is_ok_and(|c| c.is_empty()))
            .map(|f| f.name.as_str())
    }
}

/// Reads the YAML files of `paths` (a file, or a directory searched as the module doc says).
/// Never fails: a path that cannot be read is kept as an error for [`load_files`] to report.
pub fn read_paths(paths: &[PathBuf]) -> ConfigFiles {
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    for path in paths {
        read_path(path, &mut files, &mut seen);
    }
    ConfigFiles(files)
}

fn read_path(path: &Path, files: &mut Vec<ConfigFile>, seen: &mut BTreeSet<PathBuf>) {
    let name = path.display().to_string();
    let problem = |message: String| ConfigFile {
        name: name.clone(),
        content: Err(message),
    };
    let metadata = match fs::metadata(path) {
        Ok(m) => m,
        Err(err) => {
            files.push(problem(format!("cannot read: {err}")));
            return;
        }
    };
    if !metadata.is_dir() {
        read_file(path, files, seen);
        return;
    }
    let mut found = Vec::new();
    let mut visited = BTreeSet::new();
    if let Err(err) = collect_yaml_files(path, &mut found, &mut visited) {
        files.push(problem(format!("cannot read directory: {err}")));
    }
    if found.is_empty() {
        files.push(problem("no *.yaml or *.yml files in this directory".into()));
    }
    for file in found {
        read_file(&file, files, seen);
    }
}

fn read_file(path: &Path, files: &mut Vec<ConfigFile>, seen: &mut BTreeSet<PathBuf>) {
    // A file named directly and through its directory loads once.
    let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if !seen.insert(canonical) {
        return;
    }
    files.push(ConfigFile {
        name: path.display().to_string(),
        content: fs::read(path)
            .map(Arc::from)
            .map_err(|err| format!("cannot read: {err}")),
    });
}

/// Loads files read by [`read_paths`]. Fails with every error found (and the warnings), in file
/// and line order.
pub fn load_files(files: &ConfigFiles) -> Result<ConfigSet, Diagnostics> {
    on_parser_stack(|| Loader::of_files(&files.0).finish()).unwrap_or_else(Err)
}

/// Runs a load on one thread with the parser's stack (`yaml::on_parser_stack`), so its files
/// do not each start a thread; the error is why that thread could not start.
fn on_parser_stack<R: Send>(load: impl FnOnce() -> R + Send) -> Result<R, Diagnostics> {
    crate::yaml::on_parser_stack(load)
        .map_err(|message| Diagnostics(vec![Diagnostic::error(code::PARSE, message)]))
}

/// Loads what it can of the files under `paths`: every object that loaded, and every diagnostic
/// (errors included, in file and line order). For `ward analyze`, which reports the findings of
/// the objects that loaded next to the errors of those that did not; `ward up` uses
/// [`load_paths`], which refuses the whole config on any error.
pub fn load_paths_partial(paths: &[PathBuf]) -> (ConfigSet, Diagnostics) {
    let files = read_paths(paths);
    on_parser_stack(|| Loader::of_files(&files.0).finish_partial())
        .unwrap_or_else(|errors| (ConfigSet::default(), errors))
}

/// Loads one file's text; `file` names it in diagnostics.
pub fn load_str(file: &str, yaml: &str) -> Result<ConfigSet, Diagnostics> {
    let mut loader = Loader::default();
    loader.load_text(file, yaml);
    loader.finish()
}

/// What Ward does with a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    WorkloadEntry,
    ServiceEntry,
    Sidecar,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    /// An Istio kind Ward accepts but does not enforce.
    NotEnforced(&'static str),
    /// Sail operator `Istio`: mesh settings.
    SailIstio,
    /// `IstioOperator`: mesh settings.
    IstioOperator,
    /// `v1` ConfigMap: the mesh settings when named `istio`.
    ConfigMap,
    /// `v1` List: its items are loaded.
    List,
    /// A Kubernetes object from outside the Istio API (Service, Deployment, Namespace,
    /// NetworkPolicy, Gateway API kinds, ...): accepted and not read.
    NotRead,
}

/// (group, served versions, kinds). istio.io blog "Introducing Istio v1 APIs": "Istio
/// maintains the same schema across API versions", so each kind has one schema.
const SERVED: &[(&str, &[&str], &[&str])] = &[
    (
        "security.istio.io",
        &["v1", "v1beta1"],
        &[
            "AuthorizationPolicy",
            "PeerAuthentication",
            "RequestAuthentication",
        ],
    ),
    (
        "networking.istio.io",
        &["v1", "v1beta1", "v1alpha3"],
        &[
            "WorkloadEntry",
            "ServiceEntry",
            "Sidecar",
            "DestinationRule",
            "Gateway",
            "VirtualService",
            "WorkloadGroup",
        ],
    ),
    ("networking.istio.io", &["v1alpha3"], &["EnvoyFilter"]),
    ("networking.istio.io", &["v1beta1"], &["ProxyConfig"]),
    ("telemetry.istio.io", &["v1", "v1alpha1"], &["Telemetry"]),
    ("extensions.istio.io", &["v1alpha1"], &["WasmPlugin"]),
    (
        "sailoperator.io",
        &["v1", "v1alpha1"],
        &[
            "Istio",
            "IstioRevision",
            "IstioRevisionTag",
            "IstioCNI",
            "ZTunnel",
        ],
    ),
    ("install.istio.io", &["v1alpha1"], &["IstioOperator"]),
    // OpenShift Service Mesh 2.x: read by nothing in Ward, but users bring it (warned). Only
    // the control plane has a `v2` (maistra/istio-operator `pkg/apis/maistra/v2` holds no
    // member types), so a `v2` member roll is an error, as the API server would say.
    ("maistra.io", &["v1", "v2"], &["ServiceMeshControlPlane"]),
    (
        "maistra.io",
        &["v1"],
        &["ServiceMeshMemberRoll", "ServiceMeshMember"],
    ),
    ("", &["v1"], &["ConfigMap", "List"]),
];

/// Finds what Ward does with `apiVersion` + `kind`. An object from outside the Istio API (see
/// [`is_outside_istio`]) is [`Kind::NotRead`]; anything else Ward does not serve is an error.
fn resolve_kind(api_version: &str, kind: &str) -> Result<Kind, String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let mut group_known = false;
    let mut versions_of_kind: Vec<&str> = Vec::new();
    for (g, versions, kinds) in SERVED {
        if *g != group {
            continue;
        }
        group_known = true;
        if let Some(name) = kinds.iter().find(|k| **k == kind) {
            if versions.contains(&version) {
                return Ok(classify(group, name));
            }
            versions_of_kind.extend(versions.iter());
        }
    }
    if !versions_of_kind.is_empty() {
        let served: Vec<String> = versions_of_kind
            .iter()
            .map(|v| api_version_of(group, v))
            .collect();
        return Err(format!(
            "apiVersion `{api_version}` does not serve kind {kind}; use {}",
            served.join(" or ")
        ));
    }
    let istio_api_versions = istio_api_versions_of(kind);
    // The Gateway API (`gateway.networking.k8s.io`) has a kind named Gateway too.
    let kubernetes_gateway = kind == "Gateway" && group.ends_with("k8s.io");
    if !istio_api_versions.is_empty() && !kubernetes_gateway {
        // An Istio kind under another apiVersion: a misspelt or wrong apiVersion.
        return Err(format!(
            "apiVersion `{api_version}` does not serve kind {kind}; use {}",
            istio_api_versions.join(" or ")
        ));
    }
    if is_outside_istio(group, version) {
        return Ok(Kind::NotRead);
    }
    if group_known {
        let kinds: Vec<&str> = SERVED
            .iter()
            .filter(|(g, _, _)| *g == group)
            .flat_map(|(_, _, kinds)| kinds.iter().copied())
            .collect();
        let hint = closest(kind, &kinds)
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        return Err(format!(
            "unknown kind `{kind}` for apiVersion `{api_version}`{hint}; Ward reads the Istio \
             API (WorkloadEntry, ServiceEntry, Sidecar, PeerAuthentication, AuthorizationPolicy \
             ...) and the mesh settings (Istio, IstioOperator, ConfigMap istio)"
        ));
    }
    let groups = istio_groups();
    let hint = closest(group, &groups)
        .map(|g| format!(" (did you mean `{g}`?)"))
        .unwrap_or_default();
    Err(format!(
        "unknown apiVersion `{api_version}` (kind {kind}){hint}; Ward reads the Istio API groups \
         security.istio.io and networking.istio.io and the mesh settings"
    ))
}

/// Whether an apiVersion Ward does not serve belongs to an API outside Istio's, whose objects
/// Ward accepts without reading them (docs/analyze.md, "What Ward reads"): the core group `v1`
/// and any group that is not an `*.istio.io` group, one Ward serves, or a near-miss spelling
/// of one (`networking.istio.oi`).
fn is_outside_istio(group: &str, version: &str) -> bool {
    if group.is_empty() {
        return version == "v1";
    }
    !group.ends_with("istio.io")
        && !SERVED.iter().any(|(g, _, _)| *g == group)
        && closest(group, &istio_groups()).is_none()
}

/// The API groups Ward serves, other than the core group.
fn istio_groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = SERVED
        .iter()
        .map(|(g, _, _)| *g)
        .filter(|g| !g.is_empty())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// Every apiVersion under which Ward loads `kind`, in the order Ward lists them (newest first
/// within a group): `security.istio.io/v1` and `security.istio.io/v1beta1` for
/// AuthorizationPolicy, `v1` for ConfigMap; empty for a kind Ward does not serve (Kubernetes
/// kinds it skips, such as Service, included). All of a kind's versions share one schema, so
/// an object loads the same under each.
pub fn served_api_versions(kind: &str) -> Vec<String> {
    SERVED
        .iter()
        .filter(|(_, _, kinds)| kinds.contains(&kind))
        .flat_map(|(g, versions, _)| versions.iter().map(|v| api_version_of(g, v)))
        .collect()
}

/// The kinds Ward loads in API group `group` (e.g. `security.istio.io`), each with the versions
/// Ward accepts for it, newest first: what the Kubernetes source watches and what
/// `ward install crds` serves.
pub fn served_kinds(group: &str) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for (g, versions, kinds) in SERVED {
        if *g != group {
            continue;
        }
        for kind in kinds.iter() {
            match out.iter_mut().find(|(k, _)| k == kind) {
                Some((_, v)) => v.extend(versions.iter()),
                None => out.push((kind, versions.to_vec())),
            }
        }
    }
    out
}

/// Every `group/version` that serves `kind` outside the core group (empty for a kind that is
/// not one of Istio's).
fn istio_api_versions_of(kind: &str) -> Vec<String> {
    served_api_versions(kind)
        .into_iter()
        .filter(|v| v.contains('/'))
        .collect()
}

/// `group/version`, or just `version` for the core group.
fn api_version_of(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

fn classify(group: &str, kind: &'static str) -> Kind {
    match (group, kind) {
        (_, "WorkloadEntry") => Kind::WorkloadEntry,
        (_, "ServiceEntry") => Kind::ServiceEntry,
        (_, "Sidecar") => Kind::Sidecar,
        (_, "PeerAuthentication") => Kind::PeerAuthentication,
        (_, "AuthorizationPolicy") => Kind::AuthorizationPolicy,
        (_, "RequestAuthentication") => Kind::RequestAuthentication,
        ("sailoperator.io", "Istio") => Kind::SailIstio,
        (_, "IstioOperator") => Kind::IstioOperator,
        ("", "ConfigMap") => Kind::ConfigMap,
        ("", "List") => Kind::List,
        (_, other) => Kind::NotEnforced(other),
    }
}

/// Whether objects of `api_version` are cluster-scoped: every Sail operator kind is
/// (istio-ecosystem/sail-operator `chart/crds/sailoperator.io_*.yaml`, `scope: Cluster`).
fn is_cluster_scoped(api_version: &str) -> bool {
    api_version.starts_with("sailoperator.io/")
}

/// The name of the mesh ConfigMap istiod reads.
const MESH_CONFIG_MAP: &str = "istio";

/// Top-level fields of every object; `status` is written by a cluster and ignored.
const OBJECT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
const CONFIG_MAP_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "data",
    "binaryData",
    "immutable",
];
const LIST_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "items"];

/// Accumulates objects and diagnostics across files.
#[derive(Debug, Default)]
struct Loader {
    set: ConfigSet,
    mesh: Option<MeshSettings>,
    diagnostics: Vec<Diagnostic>,
    /// (kind, namespace, name) → where first defined.
    seen: BTreeMap<(&'static str, String, String), SourceRef>,
}

/// An object whose metadata has been read.
struct Prepared {
    /// The object without its spec.
    resource: Resource<()>,
    /// How messages name it (`Kind namespace/name`, or just the kind when unnamed).
    object: String,
    /// Whether the metadata is valid (an object with bad metadata is not kept).
    meta_ok: bool,
    /// Whether `metadata.namespace` was written.
    namespace_given: bool,
}

/// A document being loaded: where it is and what it is.
struct Doc<'a> {
    file: &'a str,
    node: &'a Node,
    api_version: String,
    kind: Kind,
    kind_name: &'static str,
}

impl Loader {
    /// `files` loaded in order.
    fn of_files<'a>(files: impl IntoIterator<Item = &'a ConfigFile>) -> Loader {
        let mut loader = Loader::default();
        for file in files {
            loader.load_file(file);
        }
        loader
    }

    fn load_file(&mut self, file: &ConfigFile) {
        let name = file.name.as_str();
        match &file.content {
            Err(message) => self
                .diagnostics
                .push(Diagnostic::error(code::PARSE, message.clone()).at(name, None)),
            Ok(bytes) => match std::str::from_utf8(&bytes[..]) {
                Ok(text) => self.load_text(name, text),
                Err(_) => self
                    .diagnostics
                    .push(Diagnostic::error(code::PARSE, "not UTF-8 text").at(name, None)),
            },
        }
    }

    fn load_text(&mut self, file: &str, text: &str) {
        match parse_documents(text) {
            Err(err) => self.diagnostics.push(
                Diagnostic::error(code::PARSE, format!("invalid YAML: {}", err.message))
                    .at(file, err.line),
            ),
            Ok(docs) => {
                for doc in &docs {
                    self.load_document(file, doc);
                }
            }
        }
    }

    fn load_document(&mut self, file: &str, node: &Node) {
        let error_here =
            |message: String| Diagnostic::error(code::PARSE, message).at(file, Some(node.line));
        if !matches!(node.value, Value::Map(_)) {
            self.diagnostics.push(error_here(format!(
                "a document must be a Kubernetes object (a mapping), found {}",
                node.describe()
            )));
            return;
        }
        let (api_version, kind_name) =
            match (text_field(node, "apiVersion"), text_field(node, "kind")) {
                (Ok(a), Ok(k)) => (a, k),
                (Err(why), _) | (_, Err(why)) => {
                    self.diagnostics
                        .push(Diagnostic::error(code::INVALID, why.1).at(file, Some(why.0)));
                    return;
                }
            };
        let kind = match resolve_kind(&api_version, &kind_name) {
            Ok(kind) => kind,
            Err(why) => {
                let line = node.get("kind").map_or(node.line, |k| k.line);
                let mut diagnostic =
                    Diagnostic::error(code::UNKNOWN_KIND, why).at(file, Some(line));
                if let Some(name) = metadata_text(node, "name") {
                    let namespace =
                        metadata_text(node, "namespace").unwrap_or(meta::DEFAULT_NAMESPACE);
                    diagnostic = diagnostic.object(format!("{kind_name} {namespace}/{name}"));
                }
                self.diagnostics.push(diagnostic);
                return;
            }
        };
        if let Some(namespace) = metadata_text(node, "namespace") {
            self.set.object_namespaces.insert(namespace.to_owned());
        }
        if kind == Kind::NotRead && api_version == "v1" && kind_name == "Namespace" {
            self.read_namespace(file, node);
        }
        if kind == Kind::NotRead && api_version == "v1" && kind_name == "Secret" {
            self.read_secret(file, node);
        }
        let mesh_config_map = metadata_text(node, "name") == Some(MESH_CONFIG_MAP);
        if kind == Kind::NotRead || (kind == Kind::ConfigMap && !mesh_config_map) {
            self.diagnostics
                .push(not_read(file, node, &api_version, &kind_name, kind));
            return;
        }
        let kind_name = kind_static_name(&kind_name);
        let doc = Doc {
            file,
            node,
            api_version,
            kind,
            kind_name,
        };
        match kind {
            Kind::List => self.load_list(&doc),
            _ => self.load_object(&doc),
        }
    }

    /// Keeps the name and labels of a `v1` Namespace, read leniently: it is not an Istio object,
    /// so nothing in it is an error (its WARD0115 info finding still applies).
    fn read_namespace(&mut self, file: &str, node: &Node) {
        let Some(name) = metadata_text(node, "name") else {
            return;
        };
        self.set.object_namespaces.insert(name.to_owned());
        let labels = node
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .map(|labels| {
                labels
                    .entries()
                    .iter()
                    .filter_map(|(k, v)| Some((k.text()?, v.text()?)))
                    .collect()
            })
            .unwrap_or_default();
        self.set
            .namespaces
            .entry(name.to_owned())
            .or_insert_with(|| NamespaceObject {
                labels,
                source: SourceRef {
                    file: file.to_owned(),
                    line: node.line,
                },
                field_lines: FieldLines::index(node),
            });
    }

    /// Keeps a `v1` Secret's entries (`data` decoded from base64, then `stringData`) for
    /// `credentialName`. A `data` value that is not base64 text is a warning naming the key,
    /// never the value, and is left out.
    fn read_secret(&mut self, file: &str, node: &Node) {
        let (Some(name), namespace) = (
            metadata_text(node, "name"),
            metadata_text(node, "namespace").unwrap_or(meta::DEFAULT_NAMESPACE),
        ) else {
            return;
        };
        use base64::Engine as _;
        let object = format!("Secret {namespace}/{name}");
        let mut data = BTreeMap::new();
        for section in ["data", "stringData"] {
            for (k, v) in node.get(section).map(Node::entries).unwrap_or_default() {
                let (Some(key), Some(value)) = (k.text(), v.as_str()) else {
                    self.diagnostics.push(
                        Diagnostic::warning(
                            code::KUBERNETES_NOT_READ,
                            "expected a string key and value",
                        )
                        .at(file, Some(k.line))
                        .object(object.clone())
                        .field(section),
                    );
                    continue;
                };
                let text = if section == "data" {
                    let compact: String = value.split_whitespace().collect();
                    match base64::engine::general_purpose::STANDARD
                        .decode(compact)
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                    {
                        Some(text) => text,
                        None => {
                            // Binary data is fine in a Secret; it is just no PEM credential.
                            self.diagnostics.push(
                                Diagnostic::warning(
                                    code::KUBERNETES_NOT_READ,
                                    "not base64-encoded text, so no PEM credential: a \
                                     DestinationRule `credentialName` cannot use this key",
                                )
                                .at(file, Some(v.line))
                                .object(object.clone())
                                .field(push_key(section, &key)),
                            );
                            continue;
                        }
                    }
                } else {
                    value.to_owned()
                };
                data.insert(key, crate::origination::SecretPem(text));
            }
        }
        self.set.object_namespaces.insert(namespace.to_owned());
        self.set
            .secrets
            .entry(format!("{namespace}/{name}"))
            .or_insert_with(|| crate::origination::SecretObject {
                data,
                secret_type: node.get("type").and_then(Node::text),
                source: SourceRef {
                    file: file.to_owned(),
                    line: node.line,
                },
            });
    }

    fn load_list(&mut self, doc: &Doc<'_>) {
        self.check_top_level(doc, LIST_FIELDS, doc.kind_name);
        let Some(items) = doc.node.get("items") else {
            return;
        };
        match &items.value {
            Value::Seq(items) => {
                for item in items {
                    self.load_document(doc.file, item);
                }
            }
            Value::Null => {}
            _ => self.diagnostics.push(
                Diagnostic::error(
                    code::INVALID,
                    format!("expected a list, found {}", items.describe()),
                )
                .at(doc.file, Some(items.line))
                .field("items"),
            ),
        }
    }

    fn load_object(&mut self, doc: &Doc<'_>) {
        let Prepared {
            resource,
            object,
            meta_ok,
            namespace_given,
        } = self.prepare(doc);
        match doc.kind {
            Kind::WorkloadEntry => {
                if let Some(r) = self.load_spec(doc, &resource, meta_ok, validate_workload_entry) {
                    self.set.workload_entries.push(r);
                }
            }
            Kind::ServiceEntry => {
                if let Some(r) = self.load_spec(doc, &resource, meta_ok, validate_service_entry) {
                    self.set.service_entries.push(r);
                }
            }
            Kind::Sidecar => {
                if let Some(r) = self.load_spec(doc, &resource, meta_ok, validate_sidecar) {
                    self.set.sidecars.push(r);
                }
            }
            Kind::PeerAuthentication => {
                if let Some(r) = self.load_spec(doc, &resource, meta_ok, validate_peer_authn) {
                    self.set.peer_authentications.push(r);
                }
            }
            Kind::AuthorizationPolicy => {
                if let Some(r) = self.load_spec(doc, &resource, meta_ok, validate_authz) {
                    self.set.authorization_policies.push(r);
                }
            }
            Kind::RequestAuthentication => {
                let validate = crate::request_authn::validate;
                if let Some(r) = self.load_spec(doc, &resource, meta_ok, validate) {
                    self.set.request_authentications.push(r);
                }
            }
            Kind::NotEnforced(kind) => {
                let mut message = format!("kind {kind} is not enforced by this version of Ward");
                if kind == "DestinationRule" {
                    // docs/egress-tls.md: only TLS origination is applied.
                    message.push_str(
                        " except its SIMPLE and MUTUAL `tls` toward endpoints reached without \
                         HBONE (TLS origination); its other fields are checked, not applied",
                    );
                }
                if kind == "ServiceMeshControlPlane" {
                    // `spec.security.dataPlane.mtls: false` does not disable mTLS in OSSM
                    // either; it creates a PERMISSIVE PeerAuthentication (docs/istio-semantics.md,
                    // "OpenShift `dataPlane.mtls`").
                    message.push_str(
                        "; its settings (including spec.security.dataPlane.mtls) are not read: \
                         set mTLS with PeerAuthentication and mesh settings with an Istio, \
                         IstioOperator or ConfigMap `istio`",
                    );
                }
                if kind == "Telemetry" {
                    // Served in part (docs/tracing.md): the warning names what is not.
                    let before = self.set.telemetries.len();
                    self.check_unenforced(doc, &resource, meta_ok, kind);
                    let unserved = self
                        .set
                        .telemetries
                        .get(before)
                        .map(|r| crate::tracing_policy::unserved_telemetry_fields(&r.spec));
                    let message = match unserved {
                        Some(fields) if fields.is_empty() => return,
                        Some(fields) => format!(
                            "{kind}: these fields are not enforced by this version of Ward: {}",
                            fields.join(", ")
                        ),
                        None => message,
                    };
                    self.diagnostics.push(
                        Diagnostic::warning(code::KIND_NOT_ENFORCED, message)
                            .at(doc.file, Some(doc.node.line))
                            .object(object),
                    );
                    return;
                }
                if matches!(kind, "VirtualService" | "DestinationRule" | "Gateway") {
                    // Served in part (docs/routing.md, docs/ingress.md): the warning names
                    // what is not.
                    let before = (
                        self.set.virtual_services.len(),
                        self.set.destination_rules.len(),
                        self.set.gateways.len(),
                    );
                    self.check_unenforced(doc, &resource, meta_ok, kind);
                    let unserved =
                        match kind {
                            "VirtualService" => self.set.virtual_services.get(before.0).map(|r| {
                                crate::mesh_routing::unserved_virtual_service_fields(&r.spec)
                            }),
                            "Gateway" => self
                                .set
                                .gateways
                                .get(before.2)
                                .map(|r| crate::gateways::unserved_gateway_fields(&r.spec)),
                            _ => self.set.destination_rules.get(before.1).map(|r| {
                                crate::traffic_policy::unserved_destination_rule_fields(&r.spec)
                            }),
                        };
                    let message = match unserved {
                        Some(fields) if fields.is_empty() => return,
                        Some(fields) => format!(
                            "{kind}: these fields are not enforced by this version of Ward: {}",
                            fields.join(", ")
                        ),
                        // Not loaded (its errors say why): nothing of it is enforced.
                        None => message,
                    };
                    self.diagnostics.push(
                        Diagnostic::warning(code::KIND_NOT_ENFORCED, message)
                            .at(doc.file, Some(doc.node.line))
                            .object(object),
                    );
                    return;
                }
                self.diagnostics.push(
                    Diagnostic::warning(code::KIND_NOT_ENFORCED, message)
                        .at(doc.file, Some(doc.node.line))
                        .object(object),
                );
                self.check_unenforced(doc, &resource, meta_ok, kind);
            }
            Kind::SailIstio => self.load_mesh(doc, &resource, mesh::from_sail_istio(doc.node)),
            Kind::IstioOperator => {
                self.load_mesh(doc, &resource, mesh::from_istio_operator(doc.node))
            }
            Kind::ConfigMap => {
                // Only the mesh ConfigMap gets here (load_document).
                let namespace = namespace_given.then_some(resource.meta.namespace.as_str());
                self.load_mesh(doc, &resource, mesh::from_config_map(doc.node, namespace));
            }
            Kind::List | Kind::NotRead => {}
        }
    }

    /// Reads the metadata and checks the top-level fields of an object.
    fn prepare(&mut self, doc: &Doc<'_>) -> Prepared {
        let (parsed, mut meta_findings) = meta::parse(doc.node.get("metadata"));
        let mut meta = parsed.meta;
        if is_cluster_scoped(&doc.api_version) {
            // Kubernetes ignores a namespace there.
            meta.namespace.clear();
        }
        if doc.kind == Kind::IstioOperator && meta.name.is_empty() {
            // `istioctl install -f` takes an IstioOperator without a name (Istio's
            // samples/bookinfo/demo-profile-no-gateways.yaml has no metadata at all).
            meta_findings.retain(|f| f.field != "metadata" && f.field != "metadata.name");
            meta.name = unnamed_operator_key(doc.file);
            meta.namespace.clear();
        }
        let resource = Resource {
            api_version: doc.api_version.clone(),
            kind: doc.kind_name,
            meta,
            spec: (),
            source: SourceRef {
                file: doc.file.to_owned(),
                line: doc.node.line,
            },
            field_lines: FieldLines::index(doc.node),
        };
        let object = if resource.meta.name.is_empty() {
            doc.kind_name.to_owned()
        } else {
            resource.object()
        };
        let fields = if doc.kind == Kind::ConfigMap {
            CONFIG_MAP_FIELDS
        } else {
            OBJECT_FIELDS
        };
        self.check_top_level(doc, fields, &object);
        let meta_ok = !meta_findings.iter().any(|f| f.severity == Severity::Error);
        for finding in meta_findings {
            let mut d = resource.finding(finding);
            d.object = Some(object.clone());
            self.diagnostics.push(d);
        }
        Prepared {
            resource,
            object,
            meta_ok,
            namespace_given: parsed.namespace_given,
        }
    }

    /// Decodes and validates the spec of an enforced kind; `None` when the object is unusable.
    fn load_spec<T: serde::de::DeserializeOwned>(
        &mut self,
        doc: &Doc<'_>,
        resource: &Resource<()>,
        meta_ok: bool,
        validate: impl FnOnce(&Resource<T>) -> Vec<Finding>,
    ) -> Option<Resource<T>> {
        let typed = self.typed::<T>(doc, resource, meta_ok)?;
        let findings = validate(&typed);
        self.report(&typed, findings);
        Some(typed)
    }

    /// Decodes the spec and checks for duplicates; `None` when the object cannot be used.
    fn typed<T: serde::de::DeserializeOwned>(
        &mut self,
        doc: &Doc<'_>,
        resource: &Resource<()>,
        meta_ok: bool,
    ) -> Option<Resource<T>> {
        let empty = Node::empty_map(doc.node.line);
        let spec_node = doc
            .node
            .get("spec")
            .filter(|n| n.value != Value::Null)
            .unwrap_or(&empty);
        let spec = match decode::<T>(spec_node, "spec") {
            Ok(spec) => spec,
            Err(err) => {
                self.diagnostics
                    .push(resource.finding(decode_finding(&err)));
                return None;
            }
        };
        if !meta_ok {
            return None;
        }
        let key = (
            doc.kind_name,
            resource.meta.namespace.clone(),
            resource.meta.name.clone(),
        );
        if let Some(first) = self.seen.get(&key) {
            self.diagnostics.push(resource.diagnostic(
                Severity::Error,
                code::DUPLICATE,
                "metadata.name",
                format!(
                    "duplicate object: {} is already defined at {}:{}",
                    resource.object(),
                    first.file,
                    first.line
                ),
            ));
            return None;
        }
        self.seen.insert(key, resource.source.clone());
        Some(Resource {
            api_version: resource.api_version.clone(),
            kind: resource.kind,
            meta: resource.meta.clone(),
            spec,
            source: resource.source.clone(),
            field_lines: resource.field_lines.clone(),
        })
    }

    fn report<T>(&mut self, resource: &Resource<T>, findings: impl IntoIterator<Item = Finding>) {
        self.diagnostics
            .extend(findings.into_iter().map(|f| resource.finding(f)));
    }

    fn load_mesh(&mut self, doc: &Doc<'_>, resource: &Resource<()>, parse: MeshParse) {
        let object = resource.object();
        for finding in parse.findings {
            self.diagnostics.push(resource.finding(finding));
        }
        if let Some(previous) = self.mesh.as_ref().and_then(|m| m.source.as_ref()) {
            self.diagnostics.push(
                Diagnostic::error(
                    code::MESH_SETTINGS_CONFLICT,
                    format!(
                        "mesh settings are already defined at {}:{}; keep exactly one Istio, \
                         IstioOperator or ConfigMap `{MESH_CONFIG_MAP}`",
                        previous.file, previous.line
                    ),
                )
                .at(doc.file, Some(doc.node.line))
                .object(object),
            );
            return;
        }
        let mut settings = parse.settings;
        settings.source = Some(resource.source.clone());
        self.mesh = Some(settings);
    }

    /// Reports top-level fields the kind does not have.
    fn check_top_level(&mut self, doc: &Doc<'_>, allowed: &[&str], object: &str) {
        for (key, _) in doc.node.entries() {
            let name = key.text().unwrap_or_default();
            if !allowed.contains(&name.as_str()) {
                self.diagnostics.push(
                    Diagnostic::error(
                        code::UNKNOWN_FIELD,
                        crate::decode::unknown_name_message("field", &name, allowed),
                    )
                    .at(doc.file, Some(key.line))
                    .object(object),
                );
            }
        }
    }

    fn finish(self) -> Result<ConfigSet, Diagnostics> {
        let (mut set, all) = self.finish_partial();
        if all.has_errors() {
            return Err(all);
        }
        set.warnings = all.0;
        Ok(set)
    }

    /// What loaded, and every diagnostic (sorted); the set's `warnings` are left empty.
    fn finish_partial(mut self) -> (ConfigSet, Diagnostics) {
        let mut set = self.set;
        set.mesh = self.mesh.take().unwrap_or_default();
        let mut all = Diagnostics(self.diagnostics);
        all.sort();
        (set, all)
    }
}

/// How messages name an IstioOperator without `metadata.name`: `(unnamed, FILE)`, FILE being
/// the base name of its file (docs/analyze.md, "What Ward reads").
fn unnamed_operator_key(file: &str) -> String {
    let base = Path::new(file)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(file);
    format!("(unnamed, {base})")
}

/// `metadata.<key>` when it is a string, read before (and without) validating the metadata.
fn metadata_text<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.get("metadata")
        .and_then(|m| m.get(key))
        .and_then(Node::as_str)
}

/// The info finding for an object Ward accepts and does not read: a Kubernetes object from
/// outside the Istio API, or a ConfigMap other than the mesh ConfigMap. Its fields are not
/// checked. It is named as written: `Kind namespace/name`, or `Kind name` without a namespace
/// (Namespace and other cluster-scoped kinds have none).
fn not_read(file: &str, node: &Node, api_version: &str, kind_name: &str, kind: Kind) -> Diagnostic {
    let object = match (
        metadata_text(node, "namespace"),
        metadata_text(node, "name"),
    ) {
        (Some(namespace), Some(name)) => format!("{kind_name} {namespace}/{name}"),
        (None, Some(name)) => format!("{kind_name} {name}"),
        (_, None) => kind_name.to_owned(),
    };
    let message = if kind == Kind::ConfigMap {
        format!(
            "ConfigMap is not read by Ward (only the mesh ConfigMap `{MESH_CONFIG_MAP}`); it has \
             no effect on the mesh"
        )
    } else if api_version == "v1" && kind_name == "Secret" {
        "Secret (v1) is not part of the Istio API; Ward reads it only as the credential a \
         DestinationRule or Gateway `tls.credentialName` names (docs/egress-tls.md, \
         docs/ingress.md)"
            .to_owned()
    } else if api_version == "v1" && kind_name == "Namespace" {
        "Namespace (v1) is not part of the Istio API; Ward reads only its name and labels, for \
         `ward analyze` (a namespace in ambient mode, WARD0223; a namespace a Sidecar egress \
         host may name, WARD0224), and it has no effect on the mesh"
            .to_owned()
    } else {
        format!(
            "{kind_name} ({api_version}) is not part of the Istio API; Ward does not read it, so \
             it has no effect on the mesh"
        )
    };
    Diagnostic::info(code::KUBERNETES_NOT_READ, message)
        .at(file, Some(node.line))
        .object(object)
}

/// A required top-level string (`apiVersion`, `kind`): the value, or (line, message).
fn text_field(node: &Node, name: &str) -> Result<String, (usize, String)> {
    match node.get(name) {
        None => Err((node.line, format!("missing required field `{name}`"))),
        Some(value) => match value.as_str() {
            Some(s) if !s.is_empty() => Ok(s.to_owned()),
            _ => Err((
                value.line,
                format!(
                    "`{name}` must be a non-empty string, found {}",
                    value.describe()
                ),
            )),
        },
    }
}

/// The kind names Ward serves, as `'static` strings for [`Resource::kind`].
fn kind_static_name(kind: &str) -> &'static str {
    SERVED
        .iter()
        .flat_map(|(_, _, kinds)| kinds.iter())
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("Object")
}

/// Walks a directory for YAML files, sorted; skips hidden entries and symlink loops.
fn collect_yaml_files(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    visited: &mut BTreeSet<PathBuf>,
) -> std::io::Result<()> {
    let canonical = fs::canonicalize(dir)?;
    if !visited.insert(canonical) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_yaml_files(&path, files, visited)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
        {
            files.push(path);
        }
    }
    Ok(())
}

fn validate_workload_entry(r: &Resource<WorkloadEntrySpec>) -> Vec<Finding> {
    let mut findings = r.spec.validate("spec", AddressRule::Ip, None);
    findings.extend(proxy_config_finding(&r.meta));
    findings.extend(demo_app_finding(&r.meta));
    findings.extend(keep_override_headers_finding(&r.meta));
    findings.extend(audit_on_failure_finding(&r.meta));
    findings
}

fn validate_service_entry(r: &Resource<ServiceEntrySpec>) -> Vec<Finding> {
    r.spec.validate()
}

fn validate_sidecar(r: &Resource<SidecarSpec>) -> Vec<Finding> {
    let mut findings = r.spec.validate();
    findings.extend(demo_app_finding(&r.meta));
    findings.extend(keep_override_headers_finding(&r.meta));
    findings.extend(audit_on_failure_finding(&r.meta));
    findings
}

/// `proxy.istio.io/config` must be a `ProxyConfig` whose `gatewayTopology.numTrustedProxies`,
/// if set, is a non-negative integer.
fn proxy_config_finding(meta: &ObjectMeta) -> Option<Finding> {
    let value = meta
        .annotations
        .get(crate::snapshot::PROXY_CONFIG_ANNOTATION)?;
    crate::mesh::annotation_trusted_proxies(value)
        .err()
        .map(|why| {
            Finding::error(
                code::INVALID,
                push_key(
                    "metadata.annotations",
                    crate::snapshot::PROXY_CONFIG_ANNOTATION,
                ),
                why,
            )
        })
}

/// `ward.dev/keep-override-headers` must be `"true"` or `"false"`.
fn keep_override_headers_finding(meta: &ObjectMeta) -> Option<Finding> {
    let value = meta.annotations.get(KEEP_OVERRIDE_HEADERS_ANNOTATION)?;
    (value != "true" && value != "false").then(|| {
        Finding::error(
            code::INVALID,
            push_key("metadata.annotations", KEEP_OVERRIDE_HEADERS_ANNOTATION),
            format!("`{value}` is not \"true\" or \"false\""),
        )
    })
}

/// `ward.dev/audit-on-failure` must be `fail-open` or `fail-closed`.
fn audit_on_failure_finding(meta: &ObjectMeta) -> Option<Finding> {
    let value = meta.annotations.get(AUDIT_ON_FAILURE_ANNOTATION)?;
    (value != "fail-open" && value != "fail-closed").then(|| {
        Finding::error(
            code::INVALID,
            push_key("metadata.annotations", AUDIT_ON_FAILURE_ANNOTATION),
            format!("`{value}` is not \"fail-open\" or \"fail-closed\""),
        )
    })
}

/// `ward.dev/demo-app` must name a demo app Ward ships.
fn demo_app_finding(meta: &ObjectMeta) -> Option<Finding> {
    let value = meta.annotations.get(DEMO_APP_ANNOTATION)?;
    DemoApp::parse(value).is_none().then(|| {
        Finding::error(
            code::INVALID,
            push_key("metadata.annotations", DEMO_APP_ANNOTATION),
            format!("unknown demo app `{value}`; Ward ships `echo` and `fhir`"),
        )
    })
}

/// `istio.io/dry-run` must be a boolean as Istio parses it.
fn validate_authz(r: &Resource<AuthorizationPolicySpec>) -> Vec<Finding> {
    let Some(value) = r.meta.annotations.get(ward_policy::DRY_RUN_ANNOTATION) else {
        return Vec::new();
    };
    if ward_policy::parse_dry_run(value).is_some() {
        return Vec::new();
    }
    vec![Finding::error(
        code::INVALID,
        push_key("metadata.annotations", ward_policy::DRY_RUN_ANNOTATION),
        format!("`{value}` is not a boolean (use \"true\" or \"false\")"),
    )]
}

/// PeerAuthentication checks the CRD itself makes (istio/api
/// `security/v1beta1/peer_authentication.proto`, CRD validation rule "portLevelMtls requires
/// selector").
fn validate_peer_authn(r: &Resource<PeerAuthenticationSpec>) -> Vec<Finding> {
    let spec = &r.spec;
    let mut findings = Vec::new();
    if let Some(selector) = &spec.selector {
        findings.extend(check_labels(
            &selector.match_labels,
            "spec.selector.matchLabels",
        ));
    }
    if let Some(ports) = &spec.port_level_mtls {
        if spec.selector.is_none() && !ports.is_empty() {
            findings.push(Finding::error(
                code::PORT_LEVEL_WITHOUT_SELECTOR,
                "spec.portLevelMtls",
                "portLevelMtls requires a selector (Istio rejects it too): port-level modes \
                 apply to the selected workloads' ports",
            ));
        }
        for port in ports.keys() {
            if crate::istio::port_number(*port).is_none() {
                findings.push(Finding::error(
                    code::INVALID,
                    push_key("spec.portLevelMtls", &port.to_string()),
                    format!("port {port} is out of range 1-65535"),
                ));
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (line, code, object, field) of a diagnostic.
    type Located = (Option<usize>, &'static str, Option<String>, Option<String>);

    /// Every diagnostic, errors and warnings.
    fn diags(yaml: &str) -> Vec<Located> {
        let all = match load_str("t.yaml", yaml) {
            Ok(set) => set.warnings,
            Err(diags) => diags.0,
        };
        all.into_iter()
            .map(|d| (d.line, d.code, d.object, d.field))
            .collect()
    }

    fn one(line: usize, code: &'static str, object: &str, field: &str) -> Located {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        (Some(line), code, opt(object), opt(field))
    }

    const AP: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-x\n  namespace: foo\n";

    #[test]
    fn load_diagnostics_are_located() {
        let cases: Vec<(String, Vec<_>)> = vec![
            (
                format!("{AP}spec:\n  rules:\n  - from:\n    - source:\n        principals: [a]\n      sorce: {{}}\n"),
                vec![one(11, code::UNKNOWN_FIELD, "AuthorizationPolicy foo/deny-x", "spec.rules[0].from[0]")],
            ),
            (
                format!("{AP}spec: {{}}\nextra: 1\n"),
                vec![one(7, code::UNKNOWN_FIELD, "AuthorizationPolicy foo/deny-x", "")],
            ),
            (
                format!("{AP}status: {{anything: [1]}}\n"),
                vec![],
            ),
            (
                "kind: Sidecar\nmetadata: {name: a}\n".to_owned(),
                vec![one(1, code::INVALID, "", "")],
            ),
            (
                "apiVersion: networking.istio.io/v1\nkind: Sidecr\nmetadata: {name: a}\n".to_owned(),
                vec![one(2, code::UNKNOWN_KIND, "Sidecr default/a", "")],
            ),
            (
                "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: a}\n".to_owned(),
                vec![one(2, code::UNKNOWN_KIND, "PeerAuthentication default/a", "")],
            ),
            (
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec: {hosts: [x], http: [{route: [{destination: {host: x}}]}]}\n".to_owned(),
                vec![],
            ),
            (
                // Served in part: the warning names what is not (`tcp[]` on `mesh`).
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec: {hosts: [x], gateways: [mesh], tcp: [{route: [{destination: {host: x}}]}]}\n".to_owned(),
                vec![one(1, code::KIND_NOT_ENFORCED, "VirtualService default/vs", "")],
            ),
            (
                // `tcp[]` at a gateway is served.
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec: {hosts: [x], gateways: [gw], tcp: [{route: [{destination: {host: x}}]}]}\n".to_owned(),
                vec![],
            ),
            (
                // Cluster-scoped: named without a namespace, whether one is written or not.
                "apiVersion: sailoperator.io/v1\nkind: ZTunnel\nmetadata: {name: default}\n---\napiVersion: sailoperator.io/v1alpha1\nkind: IstioCNI\nmetadata: {name: default, namespace: istio-cni}\n".to_owned(),
                vec![
                    one(1, code::KIND_NOT_ENFORCED, "ZTunnel default", ""),
                    one(5, code::KIND_NOT_ENFORCED, "IstioCNI default", ""),
                ],
            ),
            (
                format!("{AP}---\n# again\n{AP}"),
                vec![one(11, code::DUPLICATE, "AuthorizationPolicy foo/deny-x", "metadata.name")],
            ),
            (
                format!("{AP}  nmespace: bar\n"),
                vec![one(6, code::UNKNOWN_FIELD, "AuthorizationPolicy foo/deny-x", "metadata")],
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\ndata: {a: b}\n".to_owned(),
                vec![one(1, code::KUBERNETES_NOT_READ, "ConfigMap other", "")],
            ),
            (
                "a: [1\n".to_owned(),
                vec![one(1, code::PARSE, "", "")],
            ),
            (
                "- 1\n- 2\n".to_owned(),
                vec![one(1, code::PARSE, "", "")],
            ),
            (
                format!("{AP}  annotations: {{istio.io/dry-run: maybe}}\n"),
                vec![one(6, code::INVALID, "AuthorizationPolicy foo/deny-x", "metadata.annotations[\"istio.io/dry-run\"]")],
            ),
            (
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: w\n  annotations: {ward.dev/demo-app: nginx}\nspec: {address: 10.0.0.1}\n".to_owned(),
                vec![one(5, code::INVALID, "WorkloadEntry default/w", "metadata.annotations[\"ward.dev/demo-app\"]")],
            ),
            (
                "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: s\n  annotations: {ward.dev/keep-override-headers: \"yes\"}\nspec: {}\n".to_owned(),
                vec![one(5, code::INVALID, "Sidecar default/s", "metadata.annotations[\"ward.dev/keep-override-headers\"]")],
            ),
            (
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: w\n  annotations: {ward.dev/audit-on-failure: deny}\nspec: {address: 10.0.0.1}\n".to_owned(),
                vec![one(5, code::INVALID, "WorkloadEntry default/w", "metadata.annotations[\"ward.dev/audit-on-failure\"]")],
            ),
            (
                "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  portLevelMtls:\n    8080: {mode: DISABLE}\n    0: {mode: STRICT}\n".to_owned(),
                vec![
                    one(5, code::PORT_LEVEL_WITHOUT_SELECTOR, "PeerAuthentication default/p", "spec.portLevelMtls"),
                    one(7, code::INVALID, "PeerAuthentication default/p", "spec.portLevelMtls[0]"),
                ],
            ),
            (
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec:\n  address: vm.example.com\n  ports: {http: 8080}\n".to_owned(),
                vec![one(5, code::INVALID, "WorkloadEntry default/w", "spec.address")],
            ),
            (
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec:\n  address: 10.0.0.1\n  ports:\n    http: \"8080\"\n".to_owned(),
                vec![one(7, code::INVALID, "WorkloadEntry default/w", "spec.ports.http")],
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(diags(&yaml), want, "{yaml}");
        }
    }

    #[test]
    fn namespaces_keep_their_labels_and_objects_their_namespace() {
        let yaml = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    istio.io/dataplane-mode: ambient\n    n: 1\n    odd: [x]\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {second: copy}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: front}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: routes}\nspec: {hosts: [x], http: [{route: [{destination: {host: x}}]}]}\n";
        let set = load_str("ns.yaml", yaml).unwrap();
        let shop = &set.namespaces["shop"];
        let labels: Vec<(&str, &str)> = shop
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            vec![("istio.io/dataplane-mode", "ambient"), ("n", "1")]
        );
        assert_eq!(shop.label_location("istio.io/dataplane-mode"), "ns.yaml:6");
        assert_eq!(set.namespaces.len(), 1);
        let namespaces: Vec<&str> = set.object_namespaces.iter().map(String::as_str).collect();
        assert_eq!(namespaces, vec!["front", "routes", "shop"]);
        let namespace_info = &set.warnings[0];
        assert_eq!(
            (namespace_info.code, namespace_info.line),
            (code::KUBERNETES_NOT_READ, Some(1))
        );
        assert!(
            namespace_info
                .message
                .contains("Ward reads only its name and labels, for `ward analyze`"),
            "{namespace_info}"
        );
        // Both analyzer uses are named: ambient mode and egress host namespaces.
        for code in ["WARD0223", "WARD0224"] {
            assert!(namespace_info.message.contains(code), "{namespace_info}");
        }
    }

    #[test]
    fn unknown_field_message_names_the_field_and_the_fix() {
        let yaml = format!("{AP}spec:\n  rules:\n  - from:\n    - sorce: {{}}\n");
        let err = load_str("examples/x.yaml", &yaml).unwrap_err();
        assert_eq!(
            err.to_string(),
            "examples/x.yaml:9: error[WARD0101] AuthorizationPolicy foo/deny-x: spec.rules[0].from[0]: unknown field `sorce`, expected `source`"
        );
    }

    #[test]
    fn objects_load_with_metadata_and_source() {
        let yaml = "# leading comment\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: PeerAuthentication\n  metadata:\n    name: default\n    namespace: istio-system\n    uid: 0a\n    creationTimestamp: \"2024-01-01T00:00:00Z\"\n  spec: {mtls: {mode: STRICT}}\n- apiVersion: security.istio.io/v1beta1\n  kind: AuthorizationPolicy\n  metadata: {name: allow-nothing, namespace: foo}\n---\n---\napiVersion: networking.istio.io/v1alpha3\nkind: WorkloadEntry\nmetadata: {name: vm, labels: {app: a}}\nspec: {address: \"10.0.0.1\", ports: {http: 8080}}\n";
        let set = load_str("list.yaml", yaml).unwrap();
        assert_eq!(set.warnings, vec![]);
        let pa = &set.peer_authentications[0];
        assert_eq!(
            (pa.kind, pa.key().as_str(), pa.source.line),
            ("PeerAuthentication", "istio-system/default", 6)
        );
        assert_eq!(
            pa.meta.creation_timestamp.as_deref(),
            Some("2024-01-01T00:00:00Z")
        );
        let ap = &set.authorization_policies[0];
        assert_eq!(
            (ap.api_version.as_str(), ap.key().as_str(), ap.source.line),
            ("security.istio.io/v1beta1", "foo/allow-nothing", 14)
        );
        assert_eq!(ap.spec, AuthorizationPolicySpec::default());
        let we = &set.workload_entries[0];
        assert_eq!(
            (
                we.key().as_str(),
                we.source.line,
                we.line_of("spec.ports.http")
            ),
            ("default/vm", 19, 22)
        );
        assert_eq!(we.meta.labels.get("app").map(String::as_str), Some("a"));
        assert_eq!(set.mesh, MeshSettings::default());
    }

    #[test]
    fn windows_text_loads_with_the_same_lines() {
        let unix = format!("{AP}spec:\n  rules:\n  - from:\n    - sorce: {{}}\n");
        let windows = format!("\u{feff}{}", unix.replace('\n', "\r\n"));
        let line = |text: &str| load_str("w.yaml", text).unwrap_err().0[0].line;
        assert_eq!(line(&windows), line(&unix));
        assert_eq!(line(&unix), Some(9));
    }

    #[test]
    fn mesh_settings_come_from_exactly_one_document() {
        let config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: mesh-system}\ndata:\n  mesh: |\n    trustDomain: td.example\n";
        let set = load_str("cm.yaml", config_map).unwrap();
        assert_eq!(set.mesh.trust_domain, "td.example");
        assert_eq!(set.mesh.root_namespace, "mesh-system");
        assert_eq!(
            set.mesh.source,
            Some(SourceRef {
                file: "cm.yaml".into(),
                line: 1
            })
        );

        let operator = "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: x, namespace: istio-system}\nspec:\n  profile: minimal\n  meshConfig: {rootNamespace: root}\n";
        let set = load_str("op.yaml", operator).unwrap();
        assert_eq!(set.mesh.root_namespace, "root");

        let both = format!("{config_map}---\n{operator}");
        assert_eq!(
            diags(&both),
            vec![one(
                8,
                code::MESH_SETTINGS_CONFLICT,
                "IstioOperator istio-system/x",
                ""
            )]
        );
    }

    #[test]
    fn directories_load_sorted_and_skip_hidden_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("b/nested")).unwrap();
        fs::create_dir_all(root.join(".git")).unwrap();
        let pa = |name: &str| {
            format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}}}\n")
        };
        fs::write(root.join("b/nested/z.yml"), pa("z")).unwrap();
        fs::write(root.join("a.yaml"), pa("a")).unwrap();
        fs::write(root.join("b/c.YAML"), pa("c")).unwrap();
        fs::write(root.join("notes.txt"), "not: yaml: at: all").unwrap();
        fs::write(root.join(".git/x.yaml"), "broken: [").unwrap();
        // The same file named twice loads once (no duplicate error).
        let set = load_paths(&[root.to_path_buf(), root.join("a.yaml")]).unwrap();
        let names: Vec<&str> = set
            .peer_authentications
            .iter()
            .map(|p| p.meta.name.as_str())
            .collect();
        assert_eq!(names, vec!["a", "c", "z"]);

        let empty = tempfile::tempdir().unwrap();
        let err = load_paths(&[empty.path().to_path_buf(), root.join("missing.yaml")]).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(
            err.0
                .iter()
                .all(|d| d.code == code::PARSE && d.line.is_none()),
            "{err}"
        );
    }

    #[test]
    fn served_kinds_merge_the_versions_of_each_kind_of_a_group() {
        let security = served_kinds("security.istio.io");
        assert!(security.contains(&("AuthorizationPolicy", vec!["v1", "v1beta1"])));
        let networking = served_kinds("networking.istio.io");
        assert!(networking.contains(&("EnvoyFilter", vec!["v1alpha3"])));
        assert!(networking.contains(&("ServiceEntry", vec!["v1", "v1beta1", "v1alpha3"])));
        assert!(served_kinds("example.com").is_empty());
    }

    #[test]
    fn served_api_versions_list_every_version_of_a_kind() {
        let cases: &[(&str, &[&str])] = &[
            (
                "AuthorizationPolicy",
                &["security.istio.io/v1", "security.istio.io/v1beta1"],
            ),
            (
                "Sidecar",
                &[
                    "networking.istio.io/v1",
                    "networking.istio.io/v1beta1",
                    "networking.istio.io/v1alpha3",
                ],
            ),
            ("EnvoyFilter", &["networking.istio.io/v1alpha3"]),
            (
                "ZTunnel",
                &["sailoperator.io/v1", "sailoperator.io/v1alpha1"],
            ),
            ("ConfigMap", &["v1"]),
            ("Service", &[]),
            ("AuthorizationPolic", &[]),
        ];
        for (kind, want) in cases {
            assert_eq!(served_api_versions(kind), *want, "{kind}");
            // Each one resolves to the kind, and it is not written off as a Kubernetes object.
            for api_version in *want {
                let resolved = resolve_kind(api_version, kind);
                assert!(
                    matches!(resolved, Ok(k) if k != Kind::NotRead),
                    "{api_version} {kind}: {resolved:?}"
                );
            }
        }
    }

    #[test]
    fn kinds_resolve_per_served_version() {
        let cases: &[(&str, &str, Result<Kind, &str>)] = &[
            (
                "networking.istio.io/v1",
                "WorkloadEntry",
                Ok(Kind::WorkloadEntry),
            ),
            (
                "networking.istio.io/v1alpha3",
                "ServiceEntry",
                Ok(Kind::ServiceEntry),
            ),
            ("networking.istio.io/v1beta1", "Sidecar", Ok(Kind::Sidecar)),
            (
                "security.istio.io/v1beta1",
                "PeerAuthentication",
                Ok(Kind::PeerAuthentication),
            ),
            (
                "security.istio.io/v1",
                "AuthorizationPolicy",
                Ok(Kind::AuthorizationPolicy),
            ),
            (
                "security.istio.io/v1",
                "RequestAuthentication",
                Ok(Kind::RequestAuthentication),
            ),
            (
                "networking.istio.io/v1",
                "VirtualService",
                Ok(Kind::NotEnforced("VirtualService")),
            ),
            (
                "networking.istio.io/v1alpha3",
                "EnvoyFilter",
                Ok(Kind::NotEnforced("EnvoyFilter")),
            ),
            ("sailoperator.io/v1", "Istio", Ok(Kind::SailIstio)),
            (
                "sailoperator.io/v1alpha1",
                "IstioCNI",
                Ok(Kind::NotEnforced("IstioCNI")),
            ),
            (
                "install.istio.io/v1alpha1",
                "IstioOperator",
                Ok(Kind::IstioOperator),
            ),
            ("v1", "ConfigMap", Ok(Kind::ConfigMap)),
            ("v1", "List", Ok(Kind::List)),
            (
                "security.istio.io/v1alpha1",
                "AuthorizationPolicy",
                Err("does not serve kind"),
            ),
            (
                "networking.istio.io/v1",
                "EnvoyFilter",
                Err("does not serve kind"),
            ),
            (
                "networking.istio.io/v1",
                "WorkloadEntri",
                Err("unknown kind"),
            ),
            ("apps/v1", "Deployment", Ok(Kind::NotRead)),
            ("v1", "Service", Ok(Kind::NotRead)),
            ("v1", "Namespace", Ok(Kind::NotRead)),
            ("gateway.networking.k8s.io/v1", "Gateway", Ok(Kind::NotRead)),
            ("rbac.authorization.k8s.io/v1", "Role", Ok(Kind::NotRead)),
            ("example.com/v1", "Widget", Ok(Kind::NotRead)),
            ("v2", "Service", Err("for apiVersion `v2`")),
            ("telemetry.istio.io/v1", "Telemetri", Err("unknown kind")),
            ("istio.io/v1", "Widget", Err("unknown apiVersion")),
            (
                "networking.istio.oi/v1",
                "Widget",
                Err("did you mean `networking.istio.io`?"),
            ),
            ("maistra.io/v2", "ServiceMeshMemberRol", Err("unknown kind")),
            (
                "maistra.io/v2",
                "ServiceMeshMemberRoll",
                Err("use maistra.io/v1"),
            ),
            (
                "maistra.io/v2",
                "ServiceMeshMember",
                Err("use maistra.io/v1"),
            ),
            ("v1", "PeerAuthentication", Err("use security.istio.io/v1")),
            ("apps/v1", "Sidecar", Err("use networking.istio.io/v1")),
            ("v1", "Gateway", Err("use networking.istio.io/v1")),
        ];
        for (api_version, kind, want) in cases {
            match (resolve_kind(api_version, kind), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{api_version} {kind}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{api_version} {kind}: {got}"),
                (got, want) => panic!("{api_version} {kind}: got {got:?}, want {want:?}"),
            }
        }
    }
}
