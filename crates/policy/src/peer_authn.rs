//! Resolving `PeerAuthentication` policies to the mTLS mode of one workload port.
//!
//! Scope and precedence (istio/api `security/v1beta1/peer_authentication.proto`; istio/istio
//! `pilot/pkg/model/authentication.go` and `pilot/pkg/security/authn/policy_applier.go`):
//! - mesh: a PA in the root namespace without selector; namespace: a PA elsewhere without
//!   selector; workload: a PA with `selector.matchLabels` outside the root namespace. An empty
//!   `matchLabels` counts as no selector ("Mesh & namespace level policy are those that have
//!   empty selector"). Selector PAs in the root namespace are ignored.
//! - Workload > namespace > mesh. Several at one level: the oldest (lowest `order`) wins.
//! - `UNSET` inherits from the parent. `portLevelMtls` is honoured only on a workload PA; a
//!   port's `UNSET` inherits the workload's effective mode.
//!
//! WARD DEFAULT, DELIBERATELY STRICTER THAN ISTIO: with no PA at any level, or `UNSET` all the
//! way up, the mode is STRICT. Istio says PERMISSIVE, which accepts plaintext "and no
//! authentication or authorization checks will be performed for plaintext traffic by default";
//! Ward fails closed and makes plaintext an explicit choice.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::decision::PolicyRef;
use crate::spec::{MtlsModeSpec, PeerAuthenticationSpec, PeerMtls};

/// The effective mTLS mode of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// mTLS only; plaintext is reset.
    Strict,
    /// mTLS and plaintext both accepted.
    Permissive,
    /// Plaintext only.
    Disable,
}

impl MtlsMode {
    /// Why a connection is refused under this mode before any AuthorizationPolicy, or `None`
    /// when the mode accepts it: STRICT refuses plaintext (`peer_authentication_strict`),
    /// DISABLE refuses mTLS (`peer_authentication_disable`), PERMISSIVE accepts both. The
    /// proxy's inbound path and `ward check` both ask this.
    pub fn refusal(self, mtls: bool) -> Option<&'static str> {
        match (self, mtls) {
            (MtlsMode::Strict, false) => Some("peer_authentication_strict"),
            (MtlsMode::Disable, true) => Some("peer_authentication_disable"),
            _ => None,
        }
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MtlsMode::Strict => "STRICT",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Disable => "DISABLE",
        })
    }
}

/// A `PeerAuthentication` object as the resolver needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAuthnPolicy {
    /// Which policy this is.
    pub policy: PolicyRef,
    /// Its spec.
    pub spec: PeerAuthenticationSpec,
    /// Creation order: lower = older (creationTimestamp, else load order).
    pub order: u64,
}

/// The mode of one workload port and the policy that decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveMtls {
    /// The mode.
    pub mode: MtlsMode,
    /// Which PA decided; `None` = Ward default (STRICT).
    pub policy: Option<PolicyRef>,
    /// The level of `policy`; `None` with it.
    pub level: Option<PeerAuthnLevel>,
    /// Whether the mode came from `policy`'s `portLevelMtls` entry for the port.
    pub port_level: bool,
}

/// The scope of a `PeerAuthentication`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerAuthnLevel {
    /// Root namespace, no selector.
    Mesh,
    /// Another namespace, no selector.
    Namespace,
    /// A selector, outside the root namespace.
    Workload,
}

impl fmt::Display for PeerAuthnLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerAuthnLevel::Mesh => "mesh",
            PeerAuthnLevel::Namespace => "namespace",
            PeerAuthnLevel::Workload => "workload",
        })
    }
}

/// A problem `ward analyze` reports about `PeerAuthentication` objects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum PeerAuthnLint {
    /// Several policies at one level for the same workloads; only the oldest is used.
    Conflict {
        /// The level.
        level: PeerAuthnLevel,
        /// The policy in effect (lowest `order`).
        used: PolicyRef,
        /// The policies ignored because of it.
        ignored: Vec<PolicyRef>,
    },
    /// A selector PA in the root namespace: Istio and Ward ignore it.
    RootSelectorIgnored(PolicyRef),
    /// `portLevelMtls` without a selector: invalid (CRD rule "portLevelMtls requires selector"),
    /// and ignored.
    PortLevelWithoutSelector(PolicyRef),
    /// A `portLevelMtls` key outside 1..=65535.
    InvalidPort {
        /// The policy.
        policy: PolicyRef,
        /// The key as written.
        port: u32,
    },
}

impl fmt::Display for PeerAuthnLint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAuthnLint::Conflict {
                level,
                used,
                ignored,
            } => {
                let ignored: Vec<String> = ignored.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "several {level}-level PeerAuthentications apply to the same workloads: \
                     {used} (oldest) is used, {} ignored",
                    ignored.join(", ")
                )
            }
            PeerAuthnLint::RootSelectorIgnored(policy) => write!(
                f,
                "PeerAuthentication {policy} has a selector in the root namespace and is ignored"
            ),
            PeerAuthnLint::PortLevelWithoutSelector(policy) => write!(
                f,
                "PeerAuthentication {policy}: portLevelMtls requires a selector and is ignored"
            ),
            PeerAuthnLint::InvalidPort { policy, port } => write!(
                f,
                "PeerAuthentication {policy}: portLevelMtls port {port} is not in 1..=65535"
            ),
        }
    }
}

/// The selector labels of a PA, `None` when it has none (absent or empty `matchLabels`).
fn selector(spec: &PeerAuthenticationSpec) -> Option<&BTreeMap<String, String>> {
    spec.selector
        .as_ref()
        .map(|s| &s.match_labels)
        .filter(|labels| !labels.is_empty())
}

/// The level of a PA, `None` if it is ignored (selector in the root namespace).
fn level(policy: &PeerAuthnPolicy, root_namespace: &str) -> Option<PeerAuthnLevel> {
    let in_root = policy.policy.namespace == root_namespace;
    match (selector(&policy.spec), in_root) {
        (None, true) => Some(PeerAuthnLevel::Mesh),
        (None, false) => Some(PeerAuthnLevel::Namespace),
        (Some(_), false) => Some(PeerAuthnLevel::Workload),
        (Some(_), true) => None,
    }
}

/// The oldest policy; ties broken by name so the choice never depends on input order.
fn oldest<'a>(
    candidates: impl Iterator<Item = &'a PeerAuthnPolicy>,
) -> Option<&'a PeerAuthnPolicy> {
    candidates.min_by(|a, b| (a.order, &a.policy).cmp(&(b.order, &b.policy)))
}

fn mode_of(mtls: Option<&PeerMtls>) -> Option<MtlsMode> {
    match mtls.and_then(|m| m.mode).unwrap_or_default() {
        MtlsModeSpec::Unset => None,
        MtlsModeSpec::Disable => Some(MtlsMode::Disable),
        MtlsModeSpec::Permissive => Some(MtlsMode::Permissive),
        MtlsModeSpec::Strict => Some(MtlsMode::Strict),
    }
}

/// The mTLS mode of `port` (a workload/target port) on a workload in `workload_namespace` with
/// `labels`, and the policy that decided it.
pub fn effective_mtls(
    policies: &[PeerAuthnPolicy],
    root_namespace: &str,
    workload_namespace: &str,
    labels: &BTreeMap<String, String>,
    port: u16,
) -> EffectiveMtls {
    let at = |wanted: PeerAuthnLevel| {
        policies
            .iter()
            .filter(move |p| level(p, root_namespace) == Some(wanted))
    };
    let mesh = oldest(at(PeerAuthnLevel::Mesh));
    let namespace =
        oldest(at(PeerAuthnLevel::Namespace).filter(|p| p.policy.namespace == workload_namespace));
    let workload = oldest(at(PeerAuthnLevel::Workload).filter(|p| {
        p.policy.namespace == workload_namespace
            && selector(&p.spec)
                .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }));

    // Walk from the narrowest scope up; the first explicit mode decides.
    let mut decided = None;
    for policy in [workload, namespace, mesh].into_iter().flatten() {
        if let Some(mode) = mode_of(policy.spec.mtls.as_ref()) {
            decided = Some((mode, policy));
            break;
        }
    }
    let inherited = match decided {
        Some((mode, policy)) => EffectiveMtls {
            mode,
            policy: Some(policy.policy.clone()),
            level: level(policy, root_namespace),
            port_level: false,
        },
        None => EffectiveMtls {
            mode: MtlsMode::Strict,
            policy: None,
            level: None,
            port_level: false,
        },
    };

    // istio/api peer_authentication.proto: "Port specific mutual TLS settings"; the key is the
    // workload (container) port, and a port's UNSET inherits the workload's effective mode.
    let port_mode = workload.and_then(|policy| {
        let ports = policy.spec.port_level_mtls.as_ref()?;
        mode_of(ports.get(&u32::from(port))).map(|mode| (mode, policy))
    });
    match port_mode {
        Some((mode, policy)) => EffectiveMtls {
            mode,
            policy: Some(policy.policy.clone()),
            level: Some(PeerAuthnLevel::Workload),
            port_level: true,
        },
        None => inherited,
    }
}

/// Problems for `ward analyze`: several at one level, selector PA in root namespace (ignored),
/// portLevelMtls without selector (invalid).
///
/// Two workload-level policies conflict when one selector's labels are a subset of the other's
/// (every workload the narrower one selects is selected by both); selectors that merely could
/// overlap are not reported.
pub fn lint(policies: &[PeerAuthnPolicy], root_namespace: &str) -> Vec<PeerAuthnLint> {
    let mut lints = Vec::new();
    for policy in policies {
        let has_ports = policy
            .spec
            .port_level_mtls
            .as_ref()
            .is_some_and(|ports| !ports.is_empty());
        match level(policy, root_namespace) {
            None => lints.push(PeerAuthnLint::RootSelectorIgnored(policy.policy.clone())),
            Some(PeerAuthnLevel::Mesh | PeerAuthnLevel::Namespace) if has_ports => lints.push(
                PeerAuthnLint::PortLevelWithoutSelector(policy.policy.clone()),
            ),
            Some(_) => {}
        }
        for &port in policy.spec.port_level_mtls.iter().flat_map(BTreeMap::keys) {
            if port == 0 || port > u32::from(u16::MAX) {
                lints.push(PeerAuthnLint::InvalidPort {
                    policy: policy.policy.clone(),
                    port,
                });
            }
        }
    }

    // Group policies that compete: same level and namespace (and, for workloads, nested
    // selectors). Each group reports once, naming the policy in effect.
    let mut reported: Vec<&PolicyRef> = Vec::new();
    for policy in policies {
        let Some(lvl) = level(policy, root_namespace) else {
            continue;
        };
        if reported.contains(&&policy.policy) {
            continue;
        }
        let rivals: Vec<&PeerAuthnPolicy> = policies
            .iter()
            .filter(|other| {
                level(other, root_namespace) == Some(lvl)
                    && other.policy.namespace == policy.policy.namespace
                    && (lvl != PeerAuthnLevel::Workload || selectors_nest(policy, other))
            })
            .collect();
        if rivals.len() < 2 {
            continue;
        }
        let Some(used) = oldest(rivals.iter().copied()) else {
            continue;
        };
        let ignored: Vec<PolicyRef> = rivals
            .iter()
            .filter(|p| p.policy != used.policy)
            .map(|p| p.policy.clone())
            .collect();
        reported.extend(rivals.iter().map(|p| &p.policy));
        lints.push(PeerAuthnLint::Conflict {
            level: lvl,
            used: used.policy.clone(),
            ignored,
        });
    }
    lints
}

/// Whether one selector's labels are contained in the other's.
fn selectors_nest(a: &PeerAuthnPolicy, b: &PeerAuthnPolicy) -> bool {
    let (Some(a), Some(b)) = (selector(&a.spec), selector(&b.spec)) else {
        return false;
    };
    let subset = |x: &BTreeMap<String, String>, y: &BTreeMap<String, String>| {
        x.iter().all(|(k, v)| y.get(k) == Some(v))
    };
    subset(a, b) || subset(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::WorkloadSelector;

    const ROOT: &str = "istio-system";

    #[test]
    fn strict_refuses_plaintext_and_disable_refuses_mtls() {
        use MtlsMode::*;
        let table = [
            (Strict, true, None),
            (Strict, false, Some("peer_authentication_strict")),
            (Permissive, true, None),
            (Permissive, false, None),
            (Disable, true, Some("peer_authentication_disable")),
            (Disable, false, None),
        ];
        for (mode, mtls, want) in table {
            assert_eq!(mode.refusal(mtls), want, "{mode} mtls={mtls}");
        }
    }

    fn pa(ns: &str, name: &str, order: u64, yaml: &str) -> PeerAuthnPolicy {
        PeerAuthnPolicy {
            policy: PolicyRef::new(ns, name),
            spec: serde_saphyr::from_str(yaml).unwrap(),
            order,
        }
    }

    /// `"k=v,k2=v2"` → labels.
    fn labels(pairs: &str) -> BTreeMap<String, String> {
        pairs
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// (name, policies, workload namespace, workload labels `k=v,...`, port, mode, decided by)
    type MtlsCase = (
        &'static str,
        Vec<PeerAuthnPolicy>,
        &'static str,
        &'static str,
        u16,
        MtlsMode,
        Option<&'static str>,
    );

    #[test]
    fn effective_mtls_table() {
        use MtlsMode::*;
        let mesh_permissive = || pa(ROOT, "mesh", 1, "mtls: {mode: PERMISSIVE}");
        let mesh_unset = || pa(ROOT, "mesh", 1, "mtls: {}");
        let ns_disable = || pa("foo", "ns", 2, "mtls: {mode: DISABLE}");
        let ns_unset = || pa("foo", "ns", 2, "{}");
        let db = "selector: {matchLabels: {app: db}}";
        let wl_strict = || {
            let ports = "portLevelMtls: {8080: {mode: PERMISSIVE}, 9090: {}}";
            pa(
                "foo",
                "wl",
                3,
                &format!("{db}\nmtls: {{mode: STRICT}}\n{ports}"),
            )
        };
        let wl_unset = || {
            let ports = "portLevelMtls: {8080: {mode: DISABLE}}";
            pa("foo", "wl", 3, &format!("{db}\n{ports}"))
        };
        let young_old = || {
            vec![
                pa("foo", "young", 9, "mtls: {mode: DISABLE}"),
                pa("foo", "old", 1, "mtls: {mode: PERMISSIVE}"),
            ]
        };
        let two_workload = || {
            vec![
                pa("foo", "a", 5, &format!("{db}\nmtls: {{mode: DISABLE}}")),
                pa("foo", "b", 4, &format!("{db}\nmtls: {{mode: PERMISSIVE}}")),
            ]
        };
        let root_selector = || {
            vec![pa(
                ROOT,
                "sel",
                1,
                &format!("{db}\nmtls: {{mode: DISABLE}}"),
            )]
        };
        let empty_selector = || {
            vec![pa(
                "foo",
                "e",
                1,
                "selector: {matchLabels: {}}\nmtls: {mode: PERMISSIVE}",
            )]
        };
        let ns_ports = || {
            let yaml = "mtls: {mode: STRICT}\nportLevelMtls: {8080: {mode: DISABLE}}";
            vec![pa("foo", "ns", 1, yaml)]
        };
        let (mesh, ns, wl) = (Some("istio-system/mesh"), Some("foo/ns"), Some("foo/wl"));
        let table: Vec<MtlsCase> = vec![
            (
                "no policy: Ward default",
                vec![],
                "foo",
                "",
                80,
                Strict,
                None,
            ),
            (
                "mesh UNSET: Ward default",
                vec![mesh_unset()],
                "foo",
                "",
                80,
                Strict,
                None,
            ),
            (
                "mesh",
                vec![mesh_permissive()],
                "foo",
                "",
                80,
                Permissive,
                mesh,
            ),
            (
                "ns beats mesh",
                vec![mesh_permissive(), ns_disable()],
                "foo",
                "",
                80,
                Disable,
                ns,
            ),
            (
                "other ns",
                vec![mesh_permissive(), ns_disable()],
                "bar",
                "",
                80,
                Permissive,
                mesh,
            ),
            (
                "ns UNSET",
                vec![mesh_permissive(), ns_unset()],
                "foo",
                "",
                80,
                Permissive,
                mesh,
            ),
            (
                "wl beats ns",
                vec![ns_disable(), wl_strict()],
                "foo",
                "app=db",
                80,
                Strict,
                wl,
            ),
            (
                "wl mismatch",
                vec![ns_disable(), wl_strict()],
                "foo",
                "app=web",
                80,
                Disable,
                ns,
            ),
            (
                "port",
                vec![ns_disable(), wl_strict()],
                "foo",
                "app=db",
                8080,
                Permissive,
                wl,
            ),
            (
                "port UNSET",
                vec![ns_disable(), wl_strict()],
                "foo",
                "app=db",
                9090,
                Strict,
                wl,
            ),
            (
                "wl UNSET",
                vec![ns_disable(), wl_unset()],
                "foo",
                "app=db",
                80,
                Disable,
                ns,
            ),
            (
                "port, wl UNSET",
                vec![mesh_permissive(), wl_unset()],
                "foo",
                "app=db",
                8080,
                Disable,
                wl,
            ),
            (
                "oldest ns PA",
                young_old(),
                "foo",
                "",
                80,
                Permissive,
                Some("foo/old"),
            ),
            (
                "oldest wl PA",
                two_workload(),
                "foo",
                "app=db",
                80,
                Permissive,
                Some("foo/b"),
            ),
            (
                "root selector ignored",
                root_selector(),
                "foo",
                "app=db",
                80,
                Strict,
                None,
            ),
            (
                "empty selector = ns",
                empty_selector(),
                "foo",
                "",
                80,
                Permissive,
                Some("foo/e"),
            ),
            (
                "ns port level ignored",
                ns_ports(),
                "foo",
                "",
                8080,
                Strict,
                ns,
            ),
            (
                "root ns workload",
                vec![mesh_permissive()],
                ROOT,
                "",
                80,
                Permissive,
                mesh,
            ),
        ];
        for (name, policies, ns, wl_labels, port, mode, by) in table {
            let got = effective_mtls(&policies, ROOT, ns, &labels(wl_labels), port);
            assert_eq!(got.mode, mode, "{name}");
            assert_eq!(got.policy.map(|p| p.to_string()).as_deref(), by, "{name}");
        }
    }

    #[test]
    fn lint_table() {
        let sel = |app: &str| WorkloadSelector {
            match_labels: labels(&format!("app={app}")),
        };
        let mut nested = pa("foo", "narrow", 7, "mtls: {mode: STRICT}");
        nested.spec.selector = Some(WorkloadSelector {
            match_labels: labels("app=db,v=1"),
        });
        let mut wide = pa("foo", "wide", 3, "mtls: {mode: STRICT}");
        wide.spec.selector = Some(sel("db"));
        let mut other = pa("foo", "other", 1, "mtls: {mode: STRICT}");
        other.spec.selector = Some(sel("web"));
        let policies = vec![
            pa(ROOT, "m1", 2, "{}"),
            pa(ROOT, "m2", 1, "{}"),
            pa(ROOT, "sel", 1, "selector: {matchLabels: {app: x}}"),
            pa("foo", "ports", 1, "portLevelMtls:\n  80: {mode: DISABLE}\n"),
            pa(
                "bar",
                "zero",
                1,
                "selector: {matchLabels: {app: x}}\nportLevelMtls:\n  0: {mode: DISABLE}\n",
            ),
            nested,
            wide,
            other,
        ];
        let got: Vec<String> = lint(&policies, ROOT)
            .iter()
            .map(ToString::to_string)
            .collect();
        let want = [
            "PeerAuthentication istio-system/sel has a selector in the root namespace and is ignored",
            "PeerAuthentication foo/ports: portLevelMtls requires a selector and is ignored",
            "PeerAuthentication bar/zero: portLevelMtls port 0 is not in 1..=65535",
            "several mesh-level PeerAuthentications apply to the same workloads: istio-system/m2 (oldest) is used, istio-system/m1 ignored",
            "several workload-level PeerAuthentications apply to the same workloads: foo/wide (oldest) is used, foo/narrow ignored",
        ];
        assert_eq!(got, want);
        assert!(lint(&[pa("foo", "only", 1, "{}")], ROOT).is_empty());
    }
}
