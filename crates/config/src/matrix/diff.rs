//! `ward diff`: what a config change opens or closes.
//!
//! Both configs are decided as [`super::access_matrix`] decides one, with the same rows (every
//! row of either config; a workload's row keeps its identity and address when the workload is
//! gone, so it stands for the same client) and the same probe requests (per destination, every
//! value the policies behind it name in either config), so a cell of one is comparable, probe by
//! probe, with the cell of the other:
//! - `opened`: denied before (or no such destination), allowed or conditional now;
//! - `closed`: the reverse;
//! - `widened` / `narrowed`: reachable in both, with probes allowed now that were refused
//!   before / the reverse, and which methods and paths they were;
//! - `jwtRemoved` / `jwtAdded`: a token was required for every allowed probe and no longer is
//!   / the reverse;
//! - `plaintextAllowed` / `plaintextRefused`: a workload port that refused plaintext accepts it
//!   now (PERMISSIVE, DISABLE) / the reverse;
//! - `egressAdded` / `egressRemoved`: an external host (MESH_EXTERNAL ServiceEntry) newly visible
//!   to a workload / no longer: the declared allow-list, which Ward enforces under
//!   REGISTRY_ONLY on the traffic its sidecars and gateways proxy.
//!
//! Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use ward_policy::MtlsMode;

use super::{
    build, columns, source_rows, Access, Cell, Column, Matrix, ProbeRequest, SourceRow, Vocabulary,
};
use crate::load::ConfigSet;
use crate::snapshot::MeshSnapshot;

/// One config, loaded and translated.
#[derive(Clone, Copy)]
pub struct Side<'a> {
    /// The loaded config.
    pub set: &'a ConfigSet,
    /// Its translation.
    pub snapshot: &'a MeshSnapshot,
}

/// What changed in access.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diff {
    /// Pairs that became reachable.
    pub opened: Vec<Change>,
    /// Pairs that are no longer reachable.
    pub closed: Vec<Change>,
    /// Reachable pairs that allow more requests.
    pub widened: Vec<Change>,
    /// Reachable pairs that allow fewer requests.
    pub narrowed: Vec<Change>,
    /// Reachable pairs that no longer require a token.
    pub jwt_removed: Vec<Change>,
    /// Reachable pairs that now require a token.
    pub jwt_added: Vec<Change>,
    /// Workload ports that now accept plaintext.
    pub plaintext_allowed: Vec<PortChange>,
    /// Workload ports that no longer accept plaintext.
    pub plaintext_refused: Vec<PortChange>,
    /// External hosts newly visible to a workload.
    pub egress_added: Vec<EgressChange>,
    /// External hosts no longer visible to a workload.
    pub egress_removed: Vec<EgressChange>,
}

/// An external host whose visibility to a workload changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressChange {
    /// `ns/name`.
    pub workload: String,
    /// The ServiceEntry host.
    pub host: String,
    /// The ServiceEntry, `ns/name`.
    pub service_entry: String,
}

impl Diff {
    /// Whether the change opens anything: a pair opened or widened, a token no longer
    /// required, plaintext newly accepted, an external host newly visible.
    pub fn opens(&self) -> bool {
        !(self.opened.is_empty()
            && self.widened.is_empty()
            && self.jwt_removed.is_empty()
            && self.plaintext_allowed.is_empty()
            && self.egress_added.is_empty())
    }

    /// Whether the change closes anything.
    pub fn narrows(&self) -> bool {
        !(self.closed.is_empty()
            && self.narrowed.is_empty()
            && self.jwt_added.is_empty()
            && self.plaintext_refused.is_empty()
            && self.egress_removed.is_empty())
    }

    /// No change in access.
    pub fn is_empty(&self) -> bool {
        !self.opens() && !self.narrows()
    }
}

/// A source and destination whose access changed.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// The row's key (`ward check --from`).
    pub from: String,
    /// The column's key (`ward check --to`).
    pub to: String,
    /// Before; `None`: no such destination.
    pub old: Option<Access>,
    /// After; `None`: no such destination.
    pub new: Option<Access>,
    /// The condition before.
    pub old_condition: String,
    /// The condition after.
    pub new_condition: String,
    /// What changed, e.g. `methods newly allowed: DELETE`, `now allowed without a token`.
    pub details: Vec<String>,
    /// A request whose answer changed (HTTP ports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<ProbeRequest>,
}

/// A workload port whose plaintext acceptance changed.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortChange {
    /// `ns/name:port`.
    pub port: String,
    /// The mode before; `None`: no such port.
    pub old_mode: Option<MtlsMode>,
    /// The mode after; `None`: no such port.
    pub new_mode: Option<MtlsMode>,
    /// The PeerAuthentication that set the new mode (or the old one when the port is gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// The two matrices, decided with the same rows and probes.
pub fn matrices(old: Side<'_>, new: Side<'_>) -> (Matrix, Matrix) {
    let old_columns = columns(old.set, old.snapshot);
    let new_columns = columns(new.set, new.snapshot);
    // A column's probes: the values either config's workloads behind it name.
    let vocabulary = |column: &Column| {
        let of = |side: Side<'_>, list: &[Column]| {
            list.iter()
                .find(|c| c.to == column.to)
                .map(|c| Vocabulary::of_column(side.snapshot, c))
                .unwrap_or_default()
        };
        of(old, &old_columns).union(&of(new, &new_columns))
    };
    let mut rows: Vec<SourceRow> = source_rows(new.snapshot);
    for row in source_rows(old.snapshot) {
        if !rows.iter().any(|r| r.from == row.from) {
            rows.push(row);
        }
    }
    (
        build(old.set, old.snapshot, &rows, &vocabulary),
        build(new.set, new.snapshot, &rows, &vocabulary),
    )
}

/// What changes from `old` to `new`.
pub fn diff(old: Side<'_>, new: Side<'_>) -> Diff {
    let (a, b) = matrices(old, new);
    compare(&a, old, &b, new)
}

fn compare(a: &Matrix, old: Side<'_>, b: &Matrix, new: Side<'_>) -> Diff {
    let mut out = Diff::default();
    let old_cells: BTreeMap<(&str, &str), &Cell> = a
        .cells
        .iter()
        .map(|c| ((c.from.as_str(), c.to.as_str()), c))
        .collect();
    let new_cells: BTreeMap<(&str, &str), &Cell> = b
        .cells
        .iter()
        .map(|c| ((c.from.as_str(), c.to.as_str()), c))
        .collect();
    let keys: BTreeSet<(&str, &str)> = old_cells.keys().chain(new_cells.keys()).copied().collect();
    for key in keys {
        compare_cell(
            &mut out,
            old_cells.get(&key).copied(),
            new_cells.get(&key).copied(),
            (a, old),
            (b, new),
        );
    }
    compare_ports(&mut out, a, b);
    compare_egress(&mut out, a, b);
    out
}

/// `(workload, host, ServiceEntry)` of every external host of a matrix.
fn external_hosts(m: &Matrix) -> BTreeSet<(String, String, String)> {
    m.egress
        .iter()
        .flat_map(|e| {
            e.external_hosts
                .iter()
                .map(|h| (e.workload.clone(), h.host.clone(), h.service_entry.clone()))
        })
        .collect()
}

fn compare_egress(out: &mut Diff, a: &Matrix, b: &Matrix) {
    let (before, after) = (external_hosts(a), external_hosts(b));
    let change = |(workload, host, service_entry): &(String, String, String)| EgressChange {
        workload: workload.clone(),
        host: host.clone(),
        service_entry: service_entry.clone(),
    };
    out.egress_added = after.difference(&before).map(change).collect();
    out.egress_removed = before.difference(&after).map(change).collect();
}

fn reachable(cell: Option<&Cell>) -> bool {
    cell.is_some_and(|c| c.access != Access::Denied)
}

fn compare_cell(
    out: &mut Diff,
    old_cell: Option<&Cell>,
    new_cell: Option<&Cell>,
    old: (&Matrix, Side<'_>),
    new: (&Matrix, Side<'_>),
) {
    let Some(any) = new_cell.or(old_cell) else {
        return;
    };
    let mut change = Change {
        from: any.from.clone(),
        to: any.to.clone(),
        old: old_cell.map(|c| c.access),
        new: new_cell.map(|c| c.access),
        old_condition: old_cell
            .map_or_else(|| "no such destination".to_owned(), |c| c.condition.clone()),
        new_condition: new_cell
            .map_or_else(|| "no such destination".to_owned(), |c| c.condition.clone()),
        details: Vec::new(),
        example: None,
    };
    match (reachable(old_cell), reachable(new_cell), old_cell, new_cell) {
        (false, true, _, Some(n)) => {
            if old_cell.is_none() {
                change.details.push("a new destination".to_owned());
            }
            change.example = n.example_allowed.clone();
            out.opened.push(change);
        }
        (true, false, Some(o), _) => {
            if new_cell.is_none() {
                change.details.push("the destination is gone".to_owned());
            }
            change.example = o.example_allowed.clone();
            out.closed.push(change);
        }
        (true, true, Some(o), Some(n)) => compare_reachable(out, change, o, n, old, new),
        _ => {}
    }
}

/// Both reachable: compare probe by probe.
fn compare_reachable(
    out: &mut Diff,
    change: Change,
    o: &Cell,
    n: &Cell,
    old: (&Matrix, Side<'_>),
    new: (&Matrix, Side<'_>),
) {
    if o.requires_token && !n.requires_token {
        let mut c = change.clone();
        c.details.push("now allowed without a token".to_owned());
        out.jwt_removed.push(c);
    }
    if !o.requires_token && n.requires_token {
        let mut c = change.clone();
        c.details.push("now requires a token".to_owned());
        out.jwt_added.push(c);
    }
    if o.allowed.len() != n.allowed.len() {
        // The port's protocol changed (TCP and HTTP are probed differently).
        let mut c = change;
        c.details.push("the port's protocol changed".to_owned());
        match n.access.cmp(&o.access) {
            std::cmp::Ordering::Greater => out.widened.push(c),
            std::cmp::Ordering::Less => out.narrowed.push(c),
            std::cmp::Ordering::Equal => {}
        }
        return;
    }
    let gained: Vec<usize> = indices(&n.allowed, &o.allowed);
    let lost: Vec<usize> = indices(&o.allowed, &n.allowed);
    if !gained.is_empty() {
        let mut c = change.clone();
        c.details = what_changed(
            probes_of(new.0, &n.to),
            &gained,
            &o.allowed,
            "newly allowed",
        );
        c.example = example(new, &n.to, gained.first().copied());
        out.widened.push(c);
    }
    if !lost.is_empty() {
        let mut c = change;
        c.details = what_changed(
            probes_of(old.0, &o.to),
            &lost,
            &n.allowed,
            "no longer allowed",
        );
        c.example = example(old, &o.to, lost.first().copied());
        out.narrowed.push(c);
    }
}

/// Probes allowed in `yes` and not in `no`.
fn indices(yes: &[bool], no: &[bool]) -> Vec<usize> {
    yes.iter()
        .zip(no)
        .enumerate()
        .filter(|(_, (y, n))| **y && !**n)
        .map(|(i, _)| i)
        .collect()
}

/// The probes of the column `to`.
fn probes_of<'m>(m: &'m Matrix, to: &str) -> &'m [super::Probe] {
    m.destinations
        .iter()
        .find(|c| c.to == to)
        .map_or(&[], |c| c.probes.as_slice())
}

/// The methods and paths of `changed` probes that no probe of `other` allowed.
fn what_changed(
    probes: &[super::Probe],
    changed: &[usize],
    other: &[bool],
    verb: &str,
) -> Vec<String> {
    let allowed_other: Vec<&super::Probe> = other
        .iter()
        .enumerate()
        .filter(|(_, a)| **a)
        .filter_map(|(i, _)| probes.get(i))
        .collect();
    let mut methods = BTreeSet::new();
    let mut paths = BTreeSet::new();
    let mut without_token = false;
    for probe in changed.iter().filter_map(|i| probes.get(*i)) {
        if !allowed_other.iter().any(|p| p.method == probe.method) {
            methods.insert(probe.method.clone());
        }
        if !allowed_other.iter().any(|p| p.path == probe.path) {
            paths.insert(probe.path.clone());
        }
        without_token |= probe.auth.token.is_none();
    }
    let mut details = Vec::new();
    if !methods.is_empty() {
        details.push(format!(
            "methods {verb}: {}",
            methods.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if !paths.is_empty() {
        details.push(format!(
            "paths {verb}: {}",
            paths.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if without_token {
        details.push(format!("requests without a token {verb}"));
    }
    if details.is_empty() {
        details.push(format!(
            "{} probe request(s) {verb} (other credentials or headers)",
            changed.len()
        ));
    }
    details
}

fn example(side: (&Matrix, Side<'_>), to: &str, probe: Option<usize>) -> Option<ProbeRequest> {
    let (m, s) = side;
    let column = m.destinations.iter().find(|c| c.to == to)?;
    let probe = column.probes.get(probe?)?;
    let proxy = column
        .targets
        .first()
        .and_then(|t| s.snapshot.proxies.get(&t.workload));
    column.protocol.filter(|p| p.is_http())?;
    Some(probe.example(proxy))
}

fn compare_ports(out: &mut Diff, a: &Matrix, b: &Matrix) {
    let keys: BTreeSet<&str> = a
        .ports
        .iter()
        .chain(&b.ports)
        .map(|p| p.port.as_str())
        .collect();
    for key in keys {
        let o = a.ports.iter().find(|p| p.port == key);
        let n = b.ports.iter().find(|p| p.port == key);
        let before = o.is_some_and(|p| p.plaintext_accepted);
        let after = n.is_some_and(|p| p.plaintext_accepted);
        if before == after {
            continue;
        }
        let change = PortChange {
            port: key.to_owned(),
            old_mode: o.map(|p| p.mode),
            new_mode: n.map(|p| p.mode),
            policy: n.or(o).and_then(|p| p.policy.clone()),
        };
        if after {
            out.plaintext_allowed.push(change);
        } else {
            out.plaintext_refused.push(change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEDIC_RULE: &str = "  - from:\n    - source:\n        requestPrincipals: [\"http://127.0.0.1:8180/realms/ward-dev/*\"]\n    to:\n    - operation:\n        methods: [POST]\n        paths: [\"/fhir/*\"]\n    when:\n    - key: request.auth.claims[realm_access][roles]\n      values: [Medic]\n";
    const API: &str = "fhir-server.datamesh.svc.cluster.local:8080";

    /// The fhir example with `medic-post`'s rule replaced.
    fn fhir_with(medic_rule: &str) -> (ConfigSet, MeshSnapshot) {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/fhir");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        names.sort();
        let text: Vec<String> = names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        let text = text.join("---\n");
        assert!(text.contains(MEDIC_RULE));
        let set = crate::load_str("fhir.yaml", &text.replace(MEDIC_RULE, medic_rule)).unwrap();
        let snapshot = crate::translate(&set).unwrap();
        (set, snapshot)
    }

    fn find<'d>(changes: &'d [Change], from: &str) -> &'d Change {
        changes
            .iter()
            .find(|c| c.from == from && c.to == API)
            .unwrap_or_else(|| panic!("no change for {from}: {changes:#?}"))
    }

    #[test]
    fn a_method_added_widens_and_removing_it_narrows() {
        let (a_set, a_snap) = fhir_with(MEDIC_RULE);
        let (b_set, b_snap) = fhir_with(&MEDIC_RULE.replace("[POST]", "[POST, DELETE]"));
        let a = Side {
            set: &a_set,
            snapshot: &a_snap,
        };
        let b = Side {
            set: &b_set,
            snapshot: &b_snap,
        };
        let d = diff(a, b);
        let w = find(&d.widened, "default/client");
        assert_eq!(w.details, ["methods newly allowed: DELETE"]);
        assert_eq!(w.example.as_ref().unwrap().method, "DELETE");
        assert!(
            d.opened.is_empty() && d.jwt_removed.is_empty() && !d.narrows(),
            "{d:#?}"
        );
        let back = diff(b, a);
        let n = find(&back.narrowed, "default/client");
        assert_eq!(n.details, ["methods no longer allowed: DELETE"]);
        assert!(!back.opens(), "{back:#?}");
    }

    #[test]
    fn dropping_the_token_requirement_is_reported() {
        let (a_set, a_snap) = fhir_with(MEDIC_RULE);
        let open =
            "  - to:\n    - operation:\n        methods: [POST]\n        paths: [\"/fhir/*\"]\n";
        let (b_set, b_snap) = fhir_with(open);
        let a = Side {
            set: &a_set,
            snapshot: &a_snap,
        };
        let b = Side {
            set: &b_set,
            snapshot: &b_snap,
        };
        let d = diff(a, b);
        let j = find(&d.jwt_removed, "default/client");
        assert_eq!(j.details, ["now allowed without a token"]);
        let w = find(&d.widened, "default/client");
        assert!(
            w.details
                .contains(&"requests without a token newly allowed".to_owned()),
            "{w:#?}"
        );
        assert!(w.example.as_ref().unwrap().claims.is_none());
        let back = diff(b, a);
        find(&back.jwt_added, "default/client");
        assert!(!back.opens(), "{back:#?}");
    }
}
