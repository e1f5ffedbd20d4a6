//! Ward's configuration: the Istio YAML users already have, turned into what Ward runs.
//!
//! Role. Three steps, each usable on its own:
//! 1. [`load_paths`] / [`load_str`]: files → validated typed resources ([`ConfigSet`]), or
//!    [`Diagnostics`] naming file, line, object and field path of every problem
//!    (`examples/x.yaml:12: error[WARD0101] AuthorizationPolicy foo/deny-x:
//!    spec.rules[0].from[0]: unknown field ...`).
//! 2. [`translate()`]: a `ConfigSet` → one [`ProxyConfig`] per WorkloadEntry ([`MeshSnapshot`]),
//!    the contract with the proxy.
//! 3. [`analyze()`]: a `ConfigSet` → `ward analyze` findings (stable codes, `docs/analyze.md`).
//!
//! Where Ward is deliberately stricter than Istio:
//! - An unknown field anywhere is an error (Istio warns); so is an unknown Istio kind or a
//!   misspelt Istio apiVersion. Kubernetes objects from outside the Istio API are accepted and
//!   not read (a WARD0115 info finding each).
//!   Istio kinds Ward does not enforce load with a warning (WARD0102), and fields it does not
//!   act on yet with another (WARD0103): nothing is silently dropped. The specs of the kinds
//!   Ward does not enforce are still decoded and checked against their schema (the operators'
//!   Helm `values` trees excepted), so their typos are errors today.
//! - WorkloadEntry addresses must be IP addresses: Ward resolves no DNS names.
//! - Sidecar listeners are explicit: ingress listeners need a `defaultEndpoint`, and apps call
//!   egress listeners on their bind address. Transparent capture (`ward up --capture`,
//!   docs/capture.md) is per workload; a listener's `captureMode: IPTABLES` is not read.
//! - An AuthorizationPolicy that does not compile rejects the config (Istio skips the rule);
//!   so does a RequestAuthentication `jwtRules` entry Ward cannot use (e.g. a plain-http
//!   `jwksUri` to a host that is not loopback, or one at a Ward listener), or one issuer in two
//!   rules of one workload.
//!
//! Must not: do I/O outside [`read_paths`] (which only reads files; [`load_paths`] is it plus
//! [`load_files`]), hold global state, or panic on any input (the YAML is untrusted; property
//! tests cover the whole pipeline).
//!
//! Layout:
//! - [`load`]: files and documents → [`ConfigSet`]; kinds, duplicates, metadata checks.
//! - [`istio`]: WorkloadEntry, ServiceEntry and Sidecar specs with their validation, and the
//!   specs of the kinds Ward checks without enforcing (VirtualService, DestinationRule, Gateway,
//!   WorkloadGroup, EnvoyFilter, Telemetry, WasmPlugin, ProxyConfig, the operator kinds)
//!   (PeerAuthentication and AuthorizationPolicy specs are `ward_policy::spec`,
//!   RequestAuthentication's is `ward_authn::spec`).
//! - [`mesh`]: mesh settings from the Sail `Istio` resource, an `IstioOperator` or the
//!   ConfigMap `istio`.
//! - [`meta`]: Kubernetes object metadata.
//! - [`snapshot`]: the per-proxy types; [`translate`](mod@translate): building them.
//! - [`mesh_routing`]: the `mesh` VirtualService table and DestinationRule policies a sidecar
//!   serves on its outbound HTTP side, carried in [`ProxyConfig`]; [`traffic_policy`]:
//!   DestinationRule subsets and load balancing (pure).
//! - [`routes`]: routing HTTP requests by authority (Envoy virtual hosts; the egress listeners
//!   several HTTP services share), built once per config from a [`ProxyConfig`].
//! - [`analyze`](mod@analyze): findings beyond errors.
//! - `plaintext` (private): whether a PERMISSIVE port would let some plaintext client past
//!   its AuthorizationPolicies (WARD0208), by the proxy's own policy evaluation.
//! - [`check`]: `ward check` what-if queries, decided by the proxy's own functions, and
//!   [`check::cases`]: files of queries with their expected outcomes (`--cases`).
//! - [`matrix`]: `ward access-matrix` (who can reach what: every source class × service and
//!   workload port, decided with `check`'s functions on probe requests) and [`matrix::diff`]
//!   (`ward diff`: what a change opens or closes).
//! - `request_authn` (private): RequestAuthentication at every stage: load checks (the spec
//!   type and the JWT rules belong to `ward_authn`), scope, issuer conflicts, and the
//!   analysis of requests without a token.
//! - [`diag`]: diagnostics and their codes.
//! - `yaml` / `decode` (private): YAML as a tree of located nodes, and a serde deserializer
//!   over it that tracks field paths, which is what gives every error its line and path.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod access_log_policy;
pub mod analyze;
pub mod check;
mod decode;
pub mod diag;
pub mod egress;
pub mod gateways;
pub mod http_routing;
pub mod istio;
pub mod load;
pub mod matrix;
pub mod mesh;
pub mod mesh_routing;
pub mod meta;
pub mod metrics_policy;
pub mod origination;
mod plaintext;
mod request_authn;
pub mod routes;
pub mod snapshot;
pub mod telemetry;
pub mod tracing_policy;
pub mod traffic_policy;
pub mod translate;
pub mod vip;
mod yaml;

pub use analyze::{all_findings, analyze};
pub use diag::{code, Diagnostic, Diagnostics, Severity};
pub use istio::{ServiceEntrySpec, SidecarSpec, WorkloadEntrySpec};
pub use load::{
    load_files, load_files_cached, load_paths, load_paths_partial, load_str, read_paths,
    served_api_versions, served_kinds, ConfigFiles, ConfigSet, FieldLines, LoadCache, LoadStats,
    NamespaceObject, Resource,
};
pub use mesh::{MeshSettings, SourceRef};
pub use meta::ObjectMeta;
pub use routes::EgressRoutes;
pub use snapshot::{
    CapturedDestination, DemoApp, EgressSettings, Endpoint, ForwardProxy, InboundPort, MeshService,
    MeshServicePort, MeshSnapshot, OutboundListener, Protocol, ProxyConfig, Transport,
    WorkloadInfo, AUDIT_ON_FAILURE_ANNOTATION, HBONE_PORT, KEEP_OVERRIDE_HEADERS_ANNOTATION,
    PROXY_CONFIG_ANNOTATION,
};
pub use telemetry::{MeshDirectory, ServiceMeta, WorkloadMeta, CLUSTER_ID};
pub use translate::translate;
